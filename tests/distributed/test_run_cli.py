"""The real CLI under torchrun (`torchrun --nproc_per_node=2 -m unlearn.run trainer=<backend> ...`) and under the
`deepspeed` launcher (`deepspeed --num_gpus 2 --no_local_rank --module unlearn.run trainer=zero3 ...`, which on
a machine without GPUs starts 2 CPU processes).

Two processes on CPU (gloo) unlearn the micro world and must take the same steps as one process: the per-step
diagnostics and the saved unlearned weights agree within bounds derived from float32 rounding
(`tolerances.py`), only rank 0 writes the run directory, and the unlearned model is evaluated from the full
(gathered) parameters. A single-process run with a learning rate 1e-3 higher must fail the same comparisons.

The runs use SGD with momentum rather than the default AdamW: Adam's per-coordinate normalisation turns the
float32 rounding that differs between reduction orders into weight differences of up to 2*lr in coordinates
whose gradient cancels to below its eps (measured with AdamW on a 2-core AMD EPYC: step-0 diagnostics within
1.5e-7, later steps 1e-5 to 2e-5 off, all of it from that amplification), so no tolerance derived from the
arithmetic can hold for later steps under AdamW. SGD is linear in the direction and keeps every step comparable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from tests.distributed.dist_harness import deepspeed_skip_reason, free_port
from tests.distributed.tolerances import (
    assert_diagnostics_close,
    diagnostic_violations,
    sgd_travel_bound,
    travel_bound,
)

ROOT = Path(__file__).resolve().parents[2]
STEPS, MOMENTUM, LR, GAMMA = 3, 0.9, 5e-3, 1.0
COMMON = ["benchmark=tofu_micro", "model=tiny_llama_micro", "method=blur_npo", f"trainer.max_steps={STEPS}",
          "trainer.batch_size=8", "trainer.micro_batch_size=2", "optimizer=sgd", f"optimizer.momentum={MOMENTUM}",
          "save_model=true"]
KEYS = ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "A_r", "norm_u")
EVAL_KEYS = ("forget_prob", "retain_prob", "forget_truth_ratio")
# Evaluation metrics: a check that rank 0 evaluated (and wrote) the trained weights, which are compared tightly
# below. 1e-3 relative is far above what float32-close weights can change (a smooth function of weights that
# agree to ~1e-7: measured 1e-7 to 1e-6) and far below what evaluating other weights does: the test asserts that
# the target model's forget_prob differs from the unlearned one's by more than 10 times this tolerance.
EVAL_REL = 1e-3


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "UNLEARN_CACHE": str(cache)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _single(run_dir: Path, cache: Path, lr: float) -> None:
    _run([sys.executable, "-m", "unlearn.run", *COMMON, f"optimizer.lr={lr}", f"hydra.run.dir={run_dir}"], cache)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    cache, run_dir = root / "cache", root / "single"
    _single(run_dir, cache, LR)
    return cache, run_dir


def rows(run_dir: Path) -> list[dict[str, float]]:
    return pd.read_csv(run_dir / "diagnostics.csv").to_dict("records")


def weights_off(run_dir: Path, reference_dir: Path) -> tuple[float, float]:
    """(distance between the two runs' saved weights, its bound), whole model.

    The bound is tolerances.travel_bound, with the distance the weights travelled bounded from the reference's
    per-step diagnostics (so the target model's weights are not needed): GRAD_REL of it, plus float32 storage
    rounding.
    """
    import torch

    got, want = (load_file(str(d / "model" / "model.safetensors")) for d in (run_dir, reference_dir))
    names = sorted(want)
    g = torch.cat([got[n].double().reshape(-1) for n in names])
    w = torch.cat([want[n].double().reshape(-1) for n in names])
    travel = sgd_travel_bound(rows(reference_dir), MOMENTUM)
    return float((g - w).norm()), travel_bound(travel, float(w.norm()), STEPS)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus=2", "--no_local_rank"]


@pytest.mark.distributed
@pytest.mark.parametrize(("launcher", "trainer"),
                         [("torchrun", "ddp"), ("torchrun", "fsdp2"), ("torchrun", "zero2"), ("deepspeed", "zero3")])
def test_two_process_cli_run_matches_single_process(launcher: str, trainer: str, single_run: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    if (launcher == "deepspeed" or trainer.startswith("zero")) and (reason := deepspeed_skip_reason()):
        pytest.skip(reason)
    cache, single_dir = single_run
    run_dir = tmp_path / trainer
    if launcher == "torchrun":
        start = [*TORCHRUN, f"--master_port={free_port()}", "-m", "unlearn.run"]
    else:
        start = [*DEEPSPEED, f"--master_port={free_port()}", "--module", "unlearn.run"]
    _run([*start, *COMMON, f"optimizer.lr={LR}", "eval_reference_models=false", f"trainer={trainer}",
          f"hydra.run.dir={run_dir}"], cache)
    two = rows(run_dir)
    assert len(two) == STEPS
    # Each diagnostic within its float32 bound (tolerances.diagnostic_bounds: GRAD_REL per gradient set,
    # propagated through the diagnostic's formula at this step's values; A_r's conditioning included).
    assert_diagnostics_close(two, rows(single_dir), KEYS, f"{launcher}/{trainer}", GAMMA)
    off, bound = weights_off(run_dir, single_dir)
    assert off <= bound, f"{launcher}/{trainer}: unlearned weights off by {off:.3e} > bound {bound:.3e}"
    summary = pd.read_json(run_dir / "summary.json", typ="series")
    reference = pd.read_json(single_dir / "summary.json", typ="series")
    for key in EVAL_KEYS:
        assert summary[key] == pytest.approx(reference[key], rel=EVAL_REL), key


def test_cli_comparison_catches_a_slightly_different_lr(single_run: tuple[Path, Path], tmp_path: Path) -> None:
    """The same comparisons against a single-process run whose learning rate is 1e-3 higher: a small but real
    divergence must fail them (and the metric tolerance must separate the unlearned model from the target)."""
    cache, single_dir = single_run
    other = tmp_path / "lr_off"
    _single(other, cache, LR * 1.001)
    assert diagnostic_violations(rows(other), rows(single_dir), KEYS, GAMMA), "diagnostics did not notice"
    off, bound = weights_off(other, single_dir)
    assert off > 10 * bound, f"weights off by only {off:.3e} (bound {bound:.3e})"
    original = pd.read_json(single_dir / "references.json")["Original"]
    unlearned = pd.read_json(single_dir / "summary.json", typ="series")
    assert abs(original["forget_prob"] - unlearned["forget_prob"]) > 10 * EVAL_REL * unlearned["forget_prob"]
