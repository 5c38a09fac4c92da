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
