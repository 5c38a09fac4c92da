"""Sweeps: Hydra multirun through the real CLI skips finished jobs and overwrites nothing; submitit's local
executor runs a 2-job sweep; the set-aside of an unfinished attempt keeps every file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from unlearn.sweep import finished_summary, set_aside_incomplete

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ["benchmark=tofu_micro", "method=npo", "trainer.max_steps=1", "eval_reference_models=false",
         "seed=0,1", "skip_finished=true"]


def test_set_aside_keeps_an_unfinished_attempt(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert set_aside_incomplete(run) is None  # nothing there: nothing to move
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text("a: 1\n")
    (run / "diagnostics.csv").write_text("step\n1\n")
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    aside = set_aside_incomplete(run)
    assert aside is not None and aside.parent == run
    assert (aside / "config.yaml").read_text() == "a: 1\n" and (aside / "diagnostics.csv").exists()
    assert (aside / "checkpoints" / "step-1").is_dir()
    assert (run / ".hydra").is_dir() and not (run / "config.yaml").exists()  # Hydra's own files stay
    assert finished_summary(run) is None
    (run / "summary.json").write_text(json.dumps({"forget_quality": 0.5}))
    (run / "config.yaml").write_text("a: 2\n")
    assert set_aside_incomplete(run) is None  # a finished run is never moved
    assert finished_summary(run) == {"forget_quality": 0.5}


def _cli(args: list[str], cache: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "UNLEARN_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-m", "unlearn.run", "--multirun", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _jobs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


@pytest.mark.slow
def test_multirun_skips_finished_jobs(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _cli([*SWEEP, f"hydra.sweep.dir={sweep}"], micro_cache_dir)
    first = _jobs(sweep)
    # Job directories are keyed by the overrides that change the result (skip_finished, cache_dir excluded).
    assert [n.split("_", 1)[1] for n in sorted(first)] == [
        f"benchmark=tofu_micro,eval_reference_models=False,method=npo,seed={s},trainer.max_steps=1" for s in (0, 1)]
    stamps = {p: p.stat().st_mtime_ns for p in sweep.glob("*/*") if p.is_file()}
    again = _cli([*SWEEP, f"hydra.sweep.dir={sweep}"], micro_cache_dir)
    assert again.stdout.count("skipping (skip_finished=true)") == 2
    assert _jobs(sweep) == first
    for path, stamp in stamps.items():  # no result file was rewritten
        assert path.stat().st_mtime_ns == stamp, path


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(micro_prepared: Any, micro_cache_dir: Path,
                                                      tmp_path: Path) -> None:
    sweep = tmp_path / "submitit"
    _cli([*SWEEP, f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local_jobs"], micro_cache_dir)
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    assert all(0.0 <= s["forget_quality"] <= 1.0 and s["steps"] == 1.0 for s in jobs.values())
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit ran them as its jobs
