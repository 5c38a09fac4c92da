"""DeepSpeed checkpoints (ZeRO-1/2/3: per-rank safetensors): resuming after a stop equals not stopping.

One launch of 2 workers (gloo, CPU) runs, for each stage (0 too: the replicated, rank-0 format) in fp32, and
for ZeRO-1/2/3 in bf16 and fp16 where this machine runs them: 3 AdamW BLUR-NPO steps without a stop; then 2
steps, a checkpoint, a fresh backend whose weights are scrambled, the load and step 3. The resumed run must end
exactly (bit for bit: same backend, same reduction order, so no tolerance) where the run without a stop ends,
with the same diagnostics; that the backend's steps are the single-process ones is `test_backends.py`'s job.
Loading another stage's checkpoint must be refused with an error naming `resume`. The fp16 runs start from a
loss scale of 2^40, so the first steps overflow and are skipped while the scale shrinks: the resumed run must
continue with the saved scale, overflow counters and hysteresis (a fresh scaler would restart at DeepSpeed's
2^16) to end with the same parameters.

A run that fails in the workers fails only its own tests; fp16 on a CPU without oneDNN fp16 is not launched and
its tests skip with the capability probe's reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_harness import deepspeed_skip_reason, launch, load_run, precision_skip_reason, skip_marks

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


def skip_reason(precision: str | None = None) -> str | None:
    return deepspeed_skip_reason() or precision_skip_reason(precision, "cpu")  # the workers hide CUDA


def run_list() -> list[dict[str, Any]]:
    """fp32 for every stage (each trying the previous stage's checkpoint first), then bf16/fp16 where runnable."""
    runs = [{"tag": f"zero{s}", "kwargs": {"zero_stage": s, "deepspeed_config": zero_config(s)},
             "refuse_tag": f"zero{s - 1}" if s > 0 else None} for s in STAGES]
    runs += [{"tag": f"zero{s}_{mp}", "loss_scale": FP16_START_SCALE if mp == "fp16" else None,
              "kwargs": {"zero_stage": s, "deepspeed_config": zero_config(s), "mixed_precision": mp}}
             for s in STAGES if s > 0 for mp in ("bf16", "fp16") if not skip_reason(mp)]
    return runs


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory):
    """`results(tag)` -> the per-rank outputs of that run (one launch for all, on first use); a run that failed
    in the workers fails the calling test with the workers' error text."""
    if (reason := skip_reason()) is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("zero_resume")
    launch(WORKER, "zero resume", run_list(), out, WORLD, TIMEOUT_S)
    return lambda tag: load_run(out, tag, WORLD)


def same(a: float, b: float) -> bool:
    """Bit-for-bit equality that also accepts NaN == NaN (an fp16 step that overflowed logs non-finite norms)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_resumed_equals_straight(ranks: list[dict[str, Any]], what: str) -> None:
    for r, rk in enumerate(ranks):
        for step, (got, want) in enumerate(zip(rk["rows"], rk["uninterrupted_rows"], strict=True)):
            bad = [k for k in want if not same(got[k], want[k])]
            assert not bad, f"{what} rank {r} step {step}: {bad} differ from the run without a stop"
        for n, want in rk["uninterrupted"].items():
            torch.testing.assert_close(rk["params"][n], want, rtol=0, atol=0, msg=f"{what} rank {r}: {n}")


@pytest.mark.parametrize("stage", STAGES)
def test_zero_resume_equals_no_stop(stage: int, results) -> None:
    ranks = results(f"zero{stage}")
    assert ranks[0]["files"] == FILES[stage]
    for step in range(len(ranks[0]["rows"])):
        for key in ranks[0]["rows"][step]:
            values = [rk["rows"][step][key] for rk in ranks]
            assert all(v == values[0] for v in values), f"zero{stage} step {step}: {key} differs by rank"
    assert_resumed_equals_straight(ranks, f"zero{stage}")


@pytest.mark.parametrize("stage", STAGES[1:])
def test_other_stage_checkpoint_is_refused(stage: int, results) -> None:
    for rk in results(f"zero{stage}"):
        assert rk["refused"] is not None and rk["refused"].startswith("resume:"), rk["refused"]
        assert f"zero_stage={stage - 1}" in rk["refused"]


@pytest.mark.parametrize("precision", [pytest.param(mp, marks=skip_marks(skip_reason(mp))) for mp in ("bf16", "fp16")])
@pytest.mark.parametrize("stage", STAGES[1:])
def test_zero_mixed_precision_resume_equals_no_stop(stage: int, precision: str, results) -> None:
    what = f"zero{stage}/{precision}"
    ranks = results(f"zero{stage}_{precision}")
    assert_resumed_equals_straight(ranks, what)
    for r, rk in enumerate(ranks):
        if precision == "fp16":
            straight, resumed = rk["uninterrupted_scaler"], rk["scaler"]
            assert straight["skipped_steps"] >= 1, f"{what}: no overflow, the scaler state was never exercised"
            assert straight["cur_scale"] < FP16_START_SCALE
            assert resumed == straight, f"{what} rank {r}: loss scaler {resumed} != uninterrupted {straight}"
