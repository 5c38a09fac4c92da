"""DeepSpeed checkpoints (ZeRO-1/2/3: per-rank safetensors): resuming after a stop equals not stopping.

One launch of 2 workers (gloo, CPU) runs, for each stage (0 too: the replicated, rank-0 format), in fp32:
2 BLUR-NPO steps, a checkpoint, a fresh backend whose weights are scrambled, the load and step 3; the parameters
must be the single-process 3-step ones on both ranks. Loading another stage's checkpoint must be refused with an
error naming `resume`. In bf16 and fp16 (ZeRO-1/2/3; no single-process ground truth) the resumed run must end
exactly where the same run without a stop ends. The fp16 runs start from a loss scale of 2^40, so the first steps
overflow and are skipped while the scale shrinks: the resumed run must continue with the saved scale, overflow
counters and hysteresis (a fresh scaler would restart at DeepSpeed's 2^16) to end with the same parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_harness import DIAGNOSTICS, launch, single_process_reference

pytestmark = pytest.mark.distributed

WORLD = 2
WORKER = Path(__file__).with_name("zero_resume_worker.py")
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
TIMEOUT_S = 300
FP16_START_SCALE = 2.0**40
STAGES = (0, 1, 2, 3)  # 0: replicated, rank 0 writes the single-process format
FILES = {
    0: ["model.safetensors", "optimizer.safetensors", "trainer_state.json"],
    **{s: ["rank00000.safetensors", "rank00001.safetensors", "trainer_state.json"] for s in (1, 2, 3)},
}


def zero_config(stage: int) -> dict[str, Any]:
    cfg = json.loads((CONFIGS / f"zero{stage}.json").read_text())
    if stage == 3:
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny parameters
    return cfg


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("zero_resume")
    runs = [{"tag": f"zero{s}", "kwargs": {"zero_stage": s, "deepspeed_config": zero_config(s)}} for s in STAGES]
    runs += [{"tag": f"zero{s}_{mp}", "uninterrupted": True, "loss_scale": FP16_START_SCALE if mp == "fp16" else None,
              "kwargs": {"zero_stage": s, "deepspeed_config": zero_config(s), "mixed_precision": mp}}
             for s in STAGES if s > 0 for mp in ("bf16", "fp16")]
    launch(WORKER, "zero resume", runs, out, WORLD, TIMEOUT_S)
    tags = [run["tag"] for run in runs]
    return {tag: [torch.load(out / f"{tag}_rank{r}.pt") for r in range(WORLD)] for tag in tags}


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return single_process_reference()


@pytest.mark.parametrize("stage", STAGES)
def test_zero_resume_equals_no_stop(stage: int, results, reference) -> None:
    ranks = results[f"zero{stage}"]
    assert ranks[0]["files"] == FILES[stage]
    for step, ref_row in enumerate(reference["rows"]):
        for key in DIAGNOSTICS:
            values = [rk["rows"][step][key] for rk in ranks]
            assert all(v == values[0] for v in values), f"zero{stage} step {step}: {key} differs by rank"
            assert values[0] == pytest.approx(ref_row[key], rel=1e-5, abs=1e-7), f"zero{stage} step {step}: {key}"
    for r, rk in enumerate(ranks):
        assert rk["params"].keys() == reference["params"].keys()
        for n, ref_p in reference["params"].items():
            torch.testing.assert_close(rk["params"][n], ref_p, rtol=1e-5, atol=1e-6, msg=f"zero{stage} rank {r}: {n}")


@pytest.mark.parametrize("stage", STAGES[1:])
def test_other_stage_checkpoint_is_refused(stage: int, results) -> None:
    for rk in results[f"zero{stage}"]:
        assert rk["refused"] is not None and rk["refused"].startswith("resume:"), rk["refused"]
        assert f"zero_stage={stage - 1}" in rk["refused"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("stage", STAGES[1:])
def test_zero_mixed_precision_resume_equals_no_stop(stage: int, precision: str, results) -> None:
    what = f"zero{stage}/{precision}"
    for r, rk in enumerate(results[f"zero{stage}_{precision}"]):
        for n, want in rk["uninterrupted"].items():
            torch.testing.assert_close(rk["params"][n], want, rtol=0, atol=0, msg=f"{what} rank {r}: {n}")
        if precision == "fp16":
            straight, resumed = rk["uninterrupted_scaler"], rk["scaler"]
            assert straight["skipped_steps"] >= 1, f"{what}: no overflow, the scaler state was never exercised"
            assert straight["cur_scale"] < FP16_START_SCALE
            assert resumed == straight, f"{what} rank {r}: loss scaler {resumed} != uninterrupted {straight}"
