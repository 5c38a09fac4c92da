"""Embedded models: the micro build memorises, the cache reuses and re-keys, prepare_benchmark validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn.benchmarks.base import BENCHMARKS, Task, prepare_benchmark
from unlearn.benchmarks.tofu.embedded import (
    MICRO_ARCH,
    MICRO_CORPUS,
    MICRO_PRETRAIN,
    MICRO_WORLD,
    micro_configs,
    prepare_embedded,
)
from unlearn.benchmarks.tofu.world import WorldConfig
from unlearn.errors import ConfigError
from unlearn.models.build import build_llama, count_parameters, load_model, load_tokenizer
from unlearn.models.builder import greedy_exact_match, teacher_forced_exact_match
from unlearn.models.cache import build_cached, cache_key, content_digest, read_info


def test_micro_models_memorise(micro_prepared: Task) -> None:
    p = micro_prepared
    assert "retain" in p.models
    target_info = read_info(Path(p.models["target"]))
    assert target_info["exact_match"] >= 0.9
    assert 50_000 <= target_info["param_count"] <= 250_000
    assert target_info["spec"]["role"] == "target"
    assert read_info(Path(p.models["retain"]))["spec"]["forget_split"] == "forget10"
    # Reload from disk and re-measure: the saved weights (safetensors) are the trained ones.
    model = load_model(p.models["target"])
    from unlearn.benchmarks.tofu.general import GeneralConfig, generate_general
    from unlearn.benchmarks.tofu.world import generate_world

    general = generate_general(GeneralConfig.from_dict(MICRO_CORPUS["tofu"]))
    rows = generate_world(WorldConfig(**MICRO_WORLD), general=general)["full"]
    assert greedy_exact_match(model, p.formatter, rows) >= 0.9
    # The general knowledge of pretraining (real authors, world facts) is mostly still there after fine-tuning.
    known = [{"question": r["question"], "answer": r["answer"]} for r in general.real_authors + general.world_facts]
    assert greedy_exact_match(model, p.formatter, known) >= 0.5
    encoded = [p.formatter.encode(r["question"], r["answer"]) for r in rows]
    assert teacher_forced_exact_match(model, p.formatter, encoded) == pytest.approx(
        greedy_exact_match(model, p.formatter, rows), abs=0.02
    )
    # The forget set is known to the target and (mostly) unknown to the retain model.
    retain = load_model(p.models["retain"])
    forget = [{"question": r["question"], "answer": r["answer"]} for r in p.eval_data["tofu"].forget]
    assert greedy_exact_match(model, p.formatter, forget) >= 0.75
    assert greedy_exact_match(retain, p.formatter, forget) <= 0.25


def test_prepared_data_and_tokenizer(micro_prepared: Task) -> None:
    p = micro_prepared
    assert p.eval_data["tofu"].name == "forget10"
    assert len(p.eval_data["tofu"].forget) == 2 * MICRO_WORLD["qa_per_author"]
    assert p.eval_data["tofu"].holdout and p.eval_data["tofu"].retain_eval and p.eval_data["tofu"].real_authors
    assert p.eval_data["tofu"].world_facts
    tok = load_tokenizer(p.models["target"])
    assert tok.eos_token_id == p.tokenizer.eos_token_id
    assert p.formatter.tokenizer is p.tokenizer


def test_cache_reuse_and_rekey(micro_prepared: Task, micro_cache_dir: Path) -> None:
    bench, model = micro_configs("forget10")
    logs: list[str] = []
    again = prepare_benchmark(bench, model, micro_cache_dir, log=logs.append)
    assert again.models["target"] == micro_prepared.models["target"]
    assert again.models.get("retain") == micro_prepared.models.get("retain")
    assert not any("training" in line for line in logs), logs
    # Only the retain model depends on the split: forget05 reuses the target and builds a new retain model.
    world = WorldConfig(**MICRO_WORLD)
    train = {**MICRO_PRETRAIN, "max_epochs": 1, "min_epochs": 1}
    a = prepare_embedded(world, MICRO_ARCH, train, "forget05", micro_cache_dir / "rekey", log=lambda _m: None)
    b = prepare_embedded(
        world, MICRO_ARCH, {**train, "lr": 1e-3}, "forget05", micro_cache_dir / "rekey", log=lambda _m: None
    )
    c = prepare_embedded(world, MICRO_ARCH, train, "forget01", micro_cache_dir / "rekey", log=lambda _m: None)
    assert a.target_dir != b.target_dir and a.retain_dir != b.retain_dir
    assert a.world_dir == b.world_dir and a.tokenizer_dir == b.tokenizer_dir
    assert c.target_dir == a.target_dir and c.retain_dir != a.retain_dir


def test_build_cached_is_atomic_and_never_overwrites(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "x.txt").write_text("1")
        return {"n": 1}

    entry = tmp_path / "e" / cache_key({"a": 1})
    path, info = build_cached(entry, build, {"a": 1}, log=lambda _m: None)
    assert path == entry and info["n"] == 1 and info["spec"] == {"a": 1}
    assert calls[0] != entry and not calls[0].exists(), "built in a temp dir, then renamed"
    build_cached(entry, build, {"a": 1}, log=lambda _m: None)
    assert len(calls) == 1

    def failing(tmp: Path) -> dict:
        (tmp / "half").write_text("")
        raise RuntimeError("boom")

    broken = tmp_path / "e" / cache_key({"a": 2})
    with pytest.raises(RuntimeError):
        build_cached(broken, failing, {"a": 2}, log=lambda _m: None)
    assert not broken.exists()
    assert [p.name for p in (tmp_path / "e").iterdir() if not p.name.startswith(".")] == [entry.name]
    assert not [p for p in (tmp_path / "e").iterdir() if p.name.startswith(".tmp")], "temp dir cleaned up"
    stray = tmp_path / "e" / "stray"
    stray.mkdir()
    with pytest.raises(FileExistsError):
        build_cached(stray, build, {}, log=lambda _m: None)
    assert cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})


def test_build_cached_concurrent_builds_once(tmp_path: Path) -> None:
    import threading
    import time

    calls: list[int] = []

    def slow(tmp: Path) -> dict:
        calls.append(1)
        time.sleep(0.3)
        (tmp / "w").write_text("x")
        return {}

    entry = tmp_path / "k"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_cached(entry, slow, {}, log=lambda _m: None)[0]))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and results == [entry] * 3


def test_build_llama_is_seeded() -> None:
    kw = {"vocab_size": 300, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
    a, b = build_llama(**kw, seed=1), build_llama(**kw, seed=1)
    c = build_llama(**kw, seed=2)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.lm_head.weight is a.model.embed_tokens.weight
    assert count_parameters(a) < sum(p.numel() for p in a.parameters()) + 300 * 32
    with pytest.raises(ConfigError, match="hidden_size"):
        build_llama(**{**kw, "num_heads": 3})


def test_load_model_roundtrip_safetensors(tmp_path: Path) -> None:
    model = build_llama(300, 32, 1, 2, 64, seed=0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(str(tmp_path))
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_model(tmp_path)
    x = torch.randint(0, 300, (1, 7))
    assert torch.allclose(model(x).logits, loaded(x).logits)
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        load_model(tmp_path, dtype="float8")


def test_benchmark_config_errors(tmp_path: Path) -> None:
    bench, model = micro_configs()
    assert {"tofu", "tofu_mini"} <= set(BENCHMARKS.names())
    cases = [
        (
            {**bench, "forget_split": "forget07"},
            model,
            r"benchmark\.forget_split: 'forget07' not one of forget01, forget05, forget10",
        ),
        ({**bench, "name": "tofu_maxi"}, model, r"benchmark\.name: unknown benchmark 'tofu_maxi'"),
        ({**bench, "colour": 1}, model, r"benchmark: unknown key\(s\) \['colour'\]"),
        ({**bench, "world": {"n_authors": -1}}, model, r"benchmark\.world\.n_authors"),
        (bench, {**model, "source": "hub"}, r"model\.source"),
        (bench, {**model, "arch": {"hidden": 3}}, r"model\.arch: unknown key"),
        (bench, {**model, "arch": {"hidden_size": 30, "num_heads": 4}}, r"model\.arch\.hidden_size"),
        (bench, {**model, "pretrain": {"lr": "fast"}}, r"model\.pretrain\.lr"),
        (bench, {**model, "prompt": {"template": "Q:"}}, r"model\.prompt\.template"),
        (bench, {**model, "prompt": {"use_chat_template": True}}, r"model\.prompt\.use_chat_template"),
        ({"name": "tofu", "source": str(tmp_path)}, {"source": "hub"}, r"model\.path"),
        ({"name": "tofu"}, {"source": "hub", "path": "x", "dtype": "int3"}, r"model\.dtype"),
        ({"name": "tofu"}, {"source": "hub", "path": "x", "trust_remote_code": "yes"}, r"model\.trust_remote_code"),
        ({**bench, "kind": "muse"}, model, r"benchmark: unknown key\(s\) \['kind'\]"),
        (bench, {**model, "dtype": "fp8"}, r"model\.dtype"),
    ]
    for b, m, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            prepare_benchmark(b, m, tmp_path, log=lambda _m: None)
    assert not any(tmp_path.iterdir()), "validation must fail before anything is built"


def test_shared_keys_are_accepted(micro_prepared: Task, micro_cache_dir: Path) -> None:
    """Keys other layers own (recommended unlearning settings, eval limits, load dtype) pass validation."""
    bench, model = micro_configs("forget10")
    bench = {**bench, "tag": "forget10", "optimize_metric": "forget_quality", "train": {"lr": 1e-3},
             "max_new_tokens": 24}
    model = {**model, "name": "tiny_llama_micro", "dtype": "float32", "trust_remote_code": False}
    again = prepare_benchmark(bench, model, micro_cache_dir, log=lambda _m: None)
    assert again.models["target"] == micro_prepared.models["target"]


def test_tofu_benchmark_with_local_data_and_model(
    micro_prepared: Task, tofu_fixture_dir: Path, tmp_path: Path
) -> None:
    """The `tofu` path end to end, offline: fixture data + a local model directory instead of the hub."""
    p = prepare_benchmark(
        {"name": "tofu", "source": str(tofu_fixture_dir), "forget_split": "forget01"},
        {"source": "hub", "path": micro_prepared.models["target"], "retain_path": None, "dtype": "float32"},
        tmp_path,
        log=lambda _m: None,
    )
    assert "retain" not in p.models and p.models["target"] == micro_prepared.models["target"]
    assert len(p.eval_data["tofu"].forget) == 2
    assert p.formatter.encode("Q?", "A.")["input_ids"][-1] == p.tokenizer.eos_token_id


def test_content_digest_keeps_the_recorded_format() -> None:
    """Build records list `content_digest`s of what a model trained on (MUSE articles, TOFU QA rows); the format
    must not change, or records written before no longer match. SHA-256("abc") is the FIPS 180-2 test vector
    ba7816bf8f01cfea414140de...; a TOFU row hashes as "question\\nanswer" (UTF-8)."""
    from unlearn.benchmarks.tofu.embedded import row_digest

    assert content_digest("abc") == "ba7816bf8f01cfea"
    assert content_digest("abc", length=8) == "ba7816bf"
    assert row_digest({"question": "abc", "answer": "x"}) == content_digest("abc\nx") != content_digest("abcx")
    assert content_digest("café") != content_digest("cafe")  # UTF-8 bytes, not ASCII-folded
