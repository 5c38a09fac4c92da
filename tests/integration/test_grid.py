"""experiments.grid.run_grid: parallel workers run every missing run once, skip finished ones, and give the
same results as one run at a time (the runs are independent; only the thread count differs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.grid import run_grid

BASE = ["benchmark=tofu_micro", "model=tiny_llama_micro", "method=npo", "trainer.max_steps=2",
        "eval_reference_models=false"]


def _runs(cache: Path) -> list[tuple[str, list[str]]]:
    return [(f"s{seed}", [*BASE, f"cache_dir={cache}", f"seed={seed}"]) for seed in (0, 1)]


def _summary(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())


def test_two_jobs_match_one_job_and_skip_finished(micro_prepared: Any, micro_cache_dir: Path,
                                                  tmp_path: Path) -> None:
    logs: list[str] = []
    ran = run_grid(_runs(micro_cache_dir), tmp_path / "par", log=logs.append, jobs=2)
    assert sorted(ran) == ["s0", "s1"] and any("(2 jobs)" in line for line in logs)
    assert run_grid(_runs(micro_cache_dir), tmp_path / "seq", jobs=1) == ["s0", "s1"]
    for name in ("s0", "s1"):
        par, seq = _summary(tmp_path / "par" / name), _summary(tmp_path / "seq" / name)
        # 2 steps of float32 training on 1 vs 2 threads: reductions may be ordered differently, so agreement is
        # to float32 accumulation error, far below any difference between the two seeds.
        for key in ("forget_quality", "model_utility", "forget_prob"):
            assert par[key] == pytest.approx(seq[key], rel=1e-4, abs=1e-6), key
    assert _summary(tmp_path / "par" / "s0")["forget_prob"] != _summary(tmp_path / "par" / "s1")["forget_prob"]
    before = (tmp_path / "par" / "s0" / "summary.json").stat().st_mtime_ns
    assert run_grid(_runs(micro_cache_dir), tmp_path / "par", jobs=2) == []  # nothing missing: nothing runs
    assert (tmp_path / "par" / "s0" / "summary.json").stat().st_mtime_ns == before


def test_a_failed_run_raises(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path) -> None:
    bad = [("ok", [*BASE, f"cache_dir={micro_cache_dir}"]), ("bad", [*BASE, "method=no_such_method"])]
    with pytest.raises(Exception, match="no_such_method"):
        run_grid(bad, tmp_path, jobs=2)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_grid(bad, tmp_path, jobs=0)


def _model_files(cache: Path) -> dict[str, str]:
    """Cache entry name -> sha256 of its weights, for every model in the cache."""
    import hashlib

    return {p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((cache / "models").glob("*/model.safetensors"))}


def test_parallel_build_builds_the_base_once_then_the_worlds_side_by_side(tmp_path: Path) -> None:
    """prepare_models(jobs=2): the shared base is built in this process with every thread, each world's models in
    a worker with cpu_count // 2 threads, every entry once; the result is what a one-process build with those
    thread counts gives, bit for bit (one machine, fixed thread counts: the build is deterministic)."""
    import os

    import torch

    from experiments.grid import compose_cfg, prepare_models
    from unlearn.benchmarks.base import build_benchmark, prepare_benchmark
    from unlearn.models.cache import read_info

    def runs(cache: Path) -> list[tuple[str, list[str]]]:
        # forget05 and forget10 of world 1 share its target: the build order must not make one wait on the other
        return [(f"w{w}-{s}", ["benchmark=tofu_micro", f"benchmark.world.seed={w}", f"benchmark.forget_split={s}",
                                f"cache_dir={cache}"]) for w, s in ((1, "forget10"), (1, "forget05"), (2, "forget10"))]

    logs: list[str] = []
    par = tmp_path / "par"
    assert prepare_models(runs(par), log=logs.append, jobs=2) == 3
    assert any("at once" in line for line in logs), logs
    infos = {entry.name: read_info(entry) for entry in (par / "models").iterdir() if entry.is_dir()}
    bases = [name for name in infos if name.startswith("base-")]
    assert len(bases) == 1 and len(infos) == 6, sorted(infos)  # base + 2 targets + 3 retain models
    assert infos[bases[0]]["torch_threads"] == torch.get_num_threads()
    worker_threads = max(1, (os.cpu_count() or 1) // 2)
    assert {name: info["torch_threads"] for name, info in infos.items() if name not in bases} == \
        {name: worker_threads for name in infos if name not in bases}
    built = _model_files(par)
    assert prepare_models(runs(par), jobs=2) == 3 and _model_files(par) == built  # cached: nothing rebuilt

    seq = tmp_path / "seq"
    threads = torch.get_num_threads()
    try:
        for k, (_, overrides) in enumerate(runs(seq)):
            cfg = compose_cfg(overrides)
            if k == 0:  # the base first, with every thread, as prepare_models does
                build_benchmark(cfg.benchmark, cfg.model).prepare_shared(seq, log=lambda _msg: None)
            torch.set_num_threads(worker_threads)
            prepare_benchmark(cfg.benchmark, cfg.model, seq, log=lambda _msg: None)
    finally:
        torch.set_num_threads(threads)
    assert _model_files(seq) == built
