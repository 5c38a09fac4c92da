"""The real CLI under torchrun (`torchrun --nproc_per_node=2 -m unlearn.run trainer=<backend> ...`) and under the
`deepspeed` launcher (`deepspeed --num_gpus 2 --no_local_rank --module unlearn.run trainer=zero2 ...`, which on
a machine without GPUs starts 2 CPU processes).

Two processes on CPU (gloo) unlearn the micro world and must take the same steps as one process: the per-step
diagnostics match, only rank 0 writes the run directory, and the unlearned model is evaluated from the full
(gathered) parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.distributed.dist_harness import free_port

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["benchmark=tofu_micro", "model=tiny_llama_micro", "method=blur_npo", "trainer.max_steps=3",
          "trainer.batch_size=8", "trainer.micro_batch_size=2", "eval_reference_models=false"]


def _run(cmd: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "UNLEARN_CACHE": str(cache)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    cache, run_dir = root / "cache", root / "single"
    _run([sys.executable, "-m", "unlearn.run", *COMMON, f"hydra.run.dir={run_dir}"], cache)
    return cache, run_dir


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus=2", "--no_local_rank"]


@pytest.mark.distributed
@pytest.mark.parametrize(("launcher", "trainer"),
                         [("torchrun", "ddp"), ("torchrun", "fsdp2"), ("torchrun", "zero2"), ("deepspeed", "zero3")])
def test_two_process_cli_run_matches_single_process(launcher: str, trainer: str, single_run: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    cache, single_dir = single_run
    run_dir = tmp_path / trainer
    if launcher == "torchrun":
        start = [*TORCHRUN, f"--master_port={free_port()}", "-m", "unlearn.run"]
    else:
        start = [*DEEPSPEED, f"--master_port={free_port()}", "--module", "unlearn.run"]
    _run([*start, *COMMON, f"trainer={trainer}", f"hydra.run.dir={run_dir}"], cache)
    one = pd.read_csv(single_dir / "diagnostics.csv")
    two = pd.read_csv(run_dir / "diagnostics.csv")
    assert len(two) == 3
    for col in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "A_r"):
        assert two[col].tolist() == pytest.approx(one[col].tolist(), rel=1e-5, abs=1e-7), col
    summary = pd.read_json(run_dir / "summary.json", typ="series")
    reference = pd.read_json(single_dir / "summary.json", typ="series")
    for key in ("forget_prob", "retain_prob", "forget_truth_ratio"):
        assert summary[key] == pytest.approx(reference[key], rel=1e-3), key
