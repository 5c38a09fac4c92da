"""The pretrain-then-fine-tune recipe: the general corpus, the shared cached base, and what each model trained on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from unlearn.benchmarks.base import Task, prepare_benchmark
from unlearn.benchmarks.tofu.embedded import MICRO_CORPUS, micro_configs, row_digest
from unlearn.benchmarks.tofu.general import GeneralConfig, generate_general, phrasings
from unlearn.benchmarks.tofu.world import REAL_AUTHOR_ATTRIBUTE, WorldConfig, generate_world
from unlearn.errors import ConfigError
from unlearn.models.cache import read_info
from unlearn.models.pretrain import general_corpus, resolve_corpus, resolve_finetune, resolve_recipe

SMALL = GeneralConfig(n_people=10, facts_per_person=5, n_real_authors=6, n_world_facts=8)


def test_general_knowledge_is_deterministic_and_seeded() -> None:
    a, b = generate_general(SMALL), generate_general(SMALL)
    assert a.documents == b.documents and a.qa == b.qa and a.real_authors == b.real_authors
    other = generate_general(GeneralConfig(**{**SMALL.to_dict(), "seed": 1}))
    assert other.documents != a.documents
    assert len(a.real_authors) == 6 and len(a.world_facts) == 8
    # Every biography states each chosen fact once: 10 people x 2 bios, then 3 statements per real-author/world fact.
    assert len(a.documents) == 10 * 2 + 3 * (6 + 8)


def test_real_author_perturbations_keep_the_answer_phrasing() -> None:
    """TOFU's truth ratio on real authors compares perturbed answers with the answer itself: same phrasing."""
    g = generate_general(SMALL)
    template = REAL_AUTHOR_ATTRIBUTE.answers[0]
    prefix, suffix = template.split("{value}")
    for row in g.real_authors:
        title = row["question"].split('"')[1]
        for text in [row["answer"], *row["perturbed_answer"]]:
            assert text.startswith(prefix.format(title=title)) and text.endswith(suffix)
        assert row["answer"] not in row["perturbed_answer"]


def test_world_reuses_no_general_name_and_takes_general_utility_sets() -> None:
    g = generate_general(SMALL)
    world = generate_world(WorldConfig(n_authors=20, qa_per_author=4, n_holdout_authors=2), general=g)
    assert world["real_authors_perturbed"] == g.real_authors and world["world_facts_perturbed"] == g.world_facts
    authors = {" ".join(r["answer"].split()[:2]) for r in world["full"] if r["answer"].split()[0][0].isupper()}
    text = " ".join(g.documents)
    fictitious = {r["question"] for r in world["full"]}
    assert not any(q in text for q in fictitious)
    for name in g.names:
        assert all(name not in r["question"] for r in world["full"]), name
    assert authors  # the check above looked at real names


def test_every_phrasing_mentions_name_and_value() -> None:
    from unlearn.benchmarks.tofu.world import ATTRIBUTES, WORLD_FACT_ATTRIBUTES

    for attr in (*ATTRIBUTES, *WORLD_FACT_ATTRIBUTES):
        for p in phrasings(attr):
            assert "{name}" in p and "{value}" in p, (attr.key, p)
    for p in phrasings(REAL_AUTHOR_ATTRIBUTE):
        assert "{title}" in p and "{value}" in p


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.recipe"):
        resolve_recipe({"recipe": "distil"})
    with pytest.raises(ConfigError, match=r"model\.corpus: unknown general corpus section 'novels'"):
        resolve_corpus({"novels": {}})
    with pytest.raises(ConfigError, match=r"model\.corpus\.tofu: unknown key\(s\) \['n_books'\]"):
        general_corpus({"tofu": {"n_books": 3}})
    with pytest.raises(ConfigError, match=r"model\.finetune\.replay"):
        resolve_finetune({"replay": -1})
    with pytest.raises(ConfigError, match=r"model\.finetune\.lr"):
        resolve_finetune({"lr": "fast"})


# ------------------------------------------------------------------------------------ the micro build (shared fixture)
def _tree_digest(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_retain_model_never_saw_the_forget_split(micro_prepared: Task) -> None:
    """Checked from the builds' own records of what they were fine-tuned on, not assumed from the code."""
    data = micro_prepared.eval_data["tofu"]
    forget = {row_digest(r) for r in data.forget}
    retain_rows = {row_digest(r) for r in data.retain}
    target = read_info(Path(micro_prepared.models["target"]))
    retain = read_info(Path(micro_prepared.models["retain"]))
    assert forget <= set(target["trained_rows"]), "the target must have been fine-tuned on the forget split"
    assert not forget & set(retain["trained_rows"]), "the retain model was fine-tuned on forget rows"
    assert set(retain["trained_rows"]) == retain_rows
    assert target["base"] == retain["base"], "target and retain model must start from the same base"
    # The replayed general examples come from the general corpus, which holds no fictitious author at all.
    text = " ".join(d for s in general_corpus(MICRO_CORPUS).values() for d in s.documents)
    assert not any(r["question"] in text or r["answer"] in text for r in data.forget)


def test_the_cached_base_is_reused_not_rebuilt(micro_prepared: Task, micro_cache_dir: Path) -> None:
    """Another forget split (a new retain model) and another world reuse the one base; building leaves it untouched."""
    # Other tests may have built other benchmarks' bases (MUSE's, WMDP's corpora) into the shared cache first.
    bases = sorted((micro_cache_dir / "models").glob("base-*"))
    mine = micro_cache_dir / "models" / f"base-{read_info(Path(micro_prepared.models['target']))['base']}"
    assert mine in bases
    before = _tree_digest(mine)
    logs: list[str] = []
    bench, model = micro_configs("forget05")
    bench["world"]["seed"] = 7
    other = prepare_benchmark(bench, model, micro_cache_dir, log=logs.append)
    assert any(m.startswith("[cache] reuse") and "base-" in m for m in logs), logs
    assert not any("[pretrain]" in m for m in logs), "the base was trained again"
    assert sorted((micro_cache_dir / "models").glob("base-*")) == bases
    assert _tree_digest(mine) == before
    assert read_info(Path(other.models["target"]))["base"] == read_info(Path(micro_prepared.models["target"]))["base"]
