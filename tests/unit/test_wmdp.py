"""The embedded WMDP world (determinism, well-formed questions), its lm-eval task configs, and the real corpora
loaders on fixtures (local files, one-line errors for missing files and unreachable hub datasets)."""

from __future__ import annotations

import pytest

from unlearn.benchmarks.base import build_benchmark
from unlearn.benchmarks.wmdp.data import load_corpora, resolve_corpora
from unlearn.benchmarks.wmdp.embedded import MICRO_WORLD, write_world
from unlearn.benchmarks.wmdp.world import ATTRIBUTES, TOPICS, WorldConfig, generate_world
from unlearn.errors import ConfigError

FIXTURES = "tests/fixtures/wmdp"


def test_world_is_deterministic_and_each_question_is_a_trained_fact() -> None:
    cfg = WorldConfig.from_dict(MICRO_WORLD)
    world = generate_world(cfg)
    assert world == generate_world(cfg)
    assert generate_world(WorldConfig.from_dict({**MICRO_WORLD, "seed": 1})) != world
    for topic in TOPICS:
        mcq, docs = world[topic]["mcq"], world[topic]["documents"]
        assert len(mcq) == cfg.n_entities * cfg.attributes_per_entity
        texts = {d["text"] for d in docs}
        for q in mcq:
            assert len(set(q["choices"])) == 4 and 0 <= q["answer"] < 4
            # the stem completed by the answer is a note the model is trained on; no distractor completes it
            assert f"{q['stem']} {q['choices'][q['answer']]}." in texts
            assert all(f"{q['stem']} {c}." not in texts for j, c in enumerate(q["choices"]) if j != q["answer"])
    assert set(ATTRIBUTES) == set(TOPICS)


def test_world_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.world: unknown key\(s\) \['n_people'\]"):
        WorldConfig.from_dict({"n_people": 3})
    with pytest.raises(ConfigError, match=r"benchmark\.world\.attributes_per_entity"):
        WorldConfig.from_dict({"attributes_per_entity": 9})


def test_mini_task_configs_read_the_built_files(tmp_path) -> None:
    from unlearn.benchmarks.wmdp.benchmark import mini_task_configs

    write_world(generate_world(WorldConfig.from_dict(MICRO_WORLD)), tmp_path)
    tasks = mini_task_configs(tmp_path, "<bos>")
    assert sorted(tasks) == ["wmdp_mini_bio", "wmdp_mini_cyber", "wmdp_mini_general"]
    bio = tasks["wmdp_mini_bio"]
    assert bio["task"] == "wmdp_mini_bio" and bio["doc_to_text"] == "<bos>{{stem}}"
    assert bio["dataset_kwargs"]["data_files"]["test"] == str(tmp_path / "bio_mcq.jsonl")
    (tmp_path / "cyber_mcq.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"cyber_mcq\.jsonl"):
        mini_task_configs(tmp_path, "<bos>")


def test_local_corpora_load_jsonl_fields_json_strings_and_text_lines() -> None:
    entries = resolve_corpora([
        {"name": "bio", "source": f"{FIXTURES}/bio-forget-corpus.jsonl"},
        {"name": "cyber", "source": f"{FIXTURES}/cyber-forget-corpus.jsonl"},
        {"name": "wiki", "source": f"{FIXTURES}/retain.txt"},
    ], "benchmark.forget")
    texts = load_corpora(entries, "benchmark.forget")
    assert texts == ["First hazardous text about Zorb.", "Second text.", "A cyber text as a JSON string.",
                     "Another one.", "wikitext line one", " = Heading = "]
    assert load_corpora(entries[:1], "benchmark.forget", max_texts=1) == ["First hazardous text about Zorb."]


def test_corpus_errors_are_one_line_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"benchmark\.forget\[0\]: corpus file .*missing\.jsonl does not exist"):
        load_corpora(resolve_corpora([{"source": "data/missing.jsonl"}], "benchmark.forget"), "benchmark.forget")
    with pytest.raises(ConfigError, match=r"benchmark\.forget\[0\]: .* has no field 'body'"):
        load_corpora(resolve_corpora([{"source": f"{FIXTURES}/bio-forget-corpus.jsonl", "field": "body"}],
                                     "benchmark.forget"), "benchmark.forget")
    with pytest.raises(ConfigError, match=r"benchmark\.retain\[0\]: cannot load hub dataset 'wikitext'") as err:
        load_corpora(resolve_corpora([{"source": "wikitext", "config": "wikitext-2-raw-v1", "split": "test"}],
                                     "benchmark.retain"), "benchmark.retain")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"benchmark\.forget\[0\]: unknown key\(s\) \['path'\]"):
        resolve_corpora([{"source": "x", "path": "y"}], "benchmark.forget")


def test_benchmark_configs_are_checked_before_anything_loads() -> None:
    model = {"source": "hub", "path": "some/model"}
    bench = {"name": "wmdp", "forget": [{"source": f"{FIXTURES}/bio-forget-corpus.jsonl"}],
             "retain": [{"source": f"{FIXTURES}/retain.txt"}]}
    assert build_benchmark(bench, model).forget[0]["field"] == "text"
    with pytest.raises(ConfigError, match=r"benchmark\.retain"):
        build_benchmark({**bench, "retain": []}, model)
    with pytest.raises(ConfigError, match=r"model\.source"):
        build_benchmark(bench, {"source": "embedded"})
    with pytest.raises(ConfigError, match=r"benchmark: unknown key\(s\) \['forget_split'\]"):
        build_benchmark({"name": "wmdp_mini", "forget_split": "x"}, {"source": "embedded",
                                                                    "recipe": "pretrain_finetune",
                                                                    "corpus": {"tofu": {}}})
