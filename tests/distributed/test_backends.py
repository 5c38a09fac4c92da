"""Two processes (gloo, CPU) against one: every backend must reproduce the single-process BLUR-NPO run.

Two launches of 2 workers (`worker.py`: one for the torch backends, one for DeepSpeed's stages, so the
imports are paid twice rather than six times) run, for each backend, 3 BLUR-NPO steps (tiny float32 Llama,
SGD with momentum, global batch 8) several times:
- `batch`: one micro-batch per rank, with gradient checkpointing on;
- `accum`: gradient accumulation, 4 micro-batches of 2 in all (2 per rank);
- `uneven`: a global batch of 5 in micro-batches of 2 (rank 0: 2 + 1 examples; rank 1: 2 + a zero-weight pad);
- `bf16` / `fp16` where the backend offers them and this machine runs them, with accumulation;
- `adamw` and `resume` (DDP, FSDP2): AdamW without and with a stop after 2 steps.
The fp32 runs must end at the single-process parameters with per-step diagnostics that are the same on both
ranks (bit for bit: they come from one all-reduce) and equal to the single-process ones, within bounds derived
from float32 rounding (`tolerances.py`). The mixed-precision runs must agree across ranks exactly and with fp32
to within half-precision error. Two runs with a small, real divergence must fail those same comparisons.

A configuration that fails in a worker fails only its own tests (`dist_harness.launch`); one that this machine
cannot run (fp16 on a CPU without oneDNN fp16, DeepSpeed not installed) is not launched, and its tests skip
with the capability probe's reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_harness import (
    BATCH,
    DIAGNOSTICS,
    GAMMA,
    STEPS,
    deepspeed_skip_reason,
    launch,
    load_run,
    precision_skip_reason,
    single_process_reference,
    skip_marks,
    tiny_model,
)
from tolerances import (
    HALF_REL,
    U_BF16,
    assert_diagnostics_close,
    assert_weights_close,
    diagnostic_violations,
    weight_bound,
    weight_violations,
)

pytestmark = pytest.mark.distributed

WORLD = 2
WORKER = Path(__file__).with_name("worker.py")
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
TIMEOUT_S = 300
UNEVEN = 5


def zero_config(stage: int) -> dict[str, Any]:
    """The shipped configs/deepspeed/zero<stage>.json, with ZeRO-3 partitioning even the tiny test parameters."""
    cfg = json.loads((CONFIGS / f"zero{stage}.json").read_text())
    if stage == 3:
        # Below this many elements ZeRO-3 keeps a parameter whole on every rank; 0 partitions all of them.
        cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return cfg


# backend id -> (trainer.backend, backend kwargs, mixed precisions to run)
BACKENDS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "ddp": ("ddp", {}, ("bf16",)),
    "fsdp2": ("fsdp2", {}, ("bf16",)),
    "zero0": ("deepspeed", {"zero_stage": 0, "deepspeed_config": zero_config(0)}, ()),
    "zero1": ("deepspeed", {"zero_stage": 1, "deepspeed_config": zero_config(1)}, ("bf16", "fp16")),
    "zero2": ("deepspeed", {"zero_stage": 2, "deepspeed_config": zero_config(2)}, ("bf16",)),
    "zero3": ("deepspeed", {"zero_stage": 3, "deepspeed_config": zero_config(3)}, ("bf16", "fp16")),
}
# Backends launched together (one pair of processes runs all their runs in turn).
GROUPS = {"torch": ("ddp", "fsdp2"), "deepspeed": ("zero0", "zero1", "zero2", "zero3")}
# Small but real divergences, run on DDP (the cheapest backend), that the comparisons must catch:
# `lr_off`: the learning rate 1e-3 higher on both ranks; `batch_off`: rank 1 changes one answer token of each of
# its forget examples.
DIVERGENT = {"lr_off": {"lr_scale": 1.001}, "batch_off": {"perturb_rank": 1}}


def skip_reason(backend: str, precision: str | None = None) -> str | None:
    """Why this machine cannot run `backend` in `precision` (the capability probe's words), else None."""
    if BACKENDS[backend][0] == "deepspeed" and (reason := deepspeed_skip_reason()):
        return reason
    return precision_skip_reason(precision, "cpu")  # the workers hide CUDA: CPU is what they run on


# (backend, precision) pairs; those this machine cannot run skip at collection with the probe's reason.
MIXED = [pytest.param(b, mp, marks=skip_marks(skip_reason(b, mp)))
         for b, (_, _, mps) in BACKENDS.items() for mp in mps]


def runs(backend: str) -> list[dict[str, Any]]:
    """The runs launched for `backend`: only those this machine can run (the others' tests skip)."""
    name, kwargs, precisions = BACKENDS[backend]
    plan = [
        ("batch", None, BATCH, {**kwargs, "gradient_checkpointing": True}),
        ("accum", 2, BATCH, kwargs),
        ("uneven", 2, UNEVEN, kwargs),
    ]
    plan += [(mp, 2, BATCH, {**kwargs, "mixed_precision": mp}) for mp in precisions if not skip_reason(backend, mp)]
    out = [{"tag": f"{backend}_{tag}", "backend": name, "micro": micro, "batch": batch, "kwargs": kw}
           for tag, micro, batch, kw in plan]
    if "bf16" in precisions and not skip_reason(backend, "bf16"):
        # a model loaded in bf16 (like the hub configs): the masters must still be float32
        out.append({"tag": f"{backend}_bf16_loaded", "backend": name, "micro": 2, "batch": BATCH,
                    "kwargs": {**kwargs, "mixed_precision": "bf16"}, "model_dtype": "bfloat16"})
    if backend in RESUMABLE:  # AdamW, whose state must survive the stop; compared bit for bit with no stop
        out += [{"tag": f"{backend}_{tag}", "backend": name, "micro": 2, "batch": BATCH, "kwargs": kwargs,
                 "optimizer": "adamw", **extra} for tag, extra in (("adamw", {}), ("resume", {"resume_after": 2}))]
    if backend == "ddp":
        out += [{"tag": f"ddp_{tag}", "backend": name, "micro": 2, "batch": BATCH, "kwargs": kwargs, **extra}
                for tag, extra in DIVERGENT.items()]
    return out


@pytest.fixture(scope="module")
def references() -> dict[int, dict[str, Any]]:
    """Single-process ground truth by global batch size."""
    return {BATCH: single_process_reference(BATCH), UNEVEN: single_process_reference(UNEVEN)}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], list[dict[str, Any]]]:
    """`results(backend, tag)` -> the per-rank outputs of that run; each group is launched once, on first use.
    A run that failed in the workers fails the calling test with the workers' error text."""
    launched: dict[str, Path] = {}

    def get(backend: str, tag: str) -> list[dict[str, Any]]:
        group = next(g for g, members in GROUPS.items() if backend in members)
        if (reason := skip_reason(backend)) is not None:
            pytest.skip(reason)
        if group not in launched:
            out = tmp_path_factory.mktemp(group)
            launch(WORKER, group, [run for member in GROUPS[group] for run in runs(member)], out, WORLD, TIMEOUT_S)
            launched[group] = out
        return load_run(launched[group], f"{backend}_{tag}", WORLD)

    return get


def assert_same_on_every_rank(ranks: list[dict[str, Any]], what: str) -> None:
    for step in range(len(ranks[0]["rows"])):
        for key in DIAGNOSTICS:
            values = [rk["rows"][step][key] for rk in ranks]
            assert all(v == values[0] for v in values), f"{what} step {step}: {key} differs by rank: {values}"


@pytest.mark.parametrize("tag", ["batch", "accum", "uneven"])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_ranks_match_one_process(backend: str, tag: str, results, references) -> None:
    reference = references[UNEVEN if tag == "uneven" else BATCH]
    ranks = results(backend, tag)
    what = f"{backend}/{tag}"
    assert_same_on_every_rank(ranks, what)
    # Per-step diagnostics within the float32 re-association bounds of tolerances.py (each diagnostic's bound
    # propagated from the Gram entries' through its own formula, at this step's values).
    assert_diagnostics_close(ranks[0]["rows"], reference["rows"], DIAGNOSTICS, what, GAMMA)
    for r, rk in enumerate(ranks):
        if backend == "ddp":  # DDP copies into our contiguous buffers' views instead of replacing them
            assert rk["flat_grad_views_intact"] is True, f"{what} rank {r}"
        # Every parameter, and the whole model: GRAD_REL of the distance moved plus float32 storage rounding.
        assert_weights_close(rk["params"], reference["params"], reference["initial"], STEPS, f"{what} rank {r}")


@pytest.mark.parametrize("divergence", list(DIVERGENT))
def test_a_real_divergence_fails_the_comparison(divergence: str, results, references) -> None:
    """The comparisons above keep their strength: a 1e-3 change of the learning rate, or one token changed per
    forget example on one rank, is caught, by the diagnostics and by the weights, far outside the bounds."""
    reference = references[BATCH]
    names = sorted(reference["params"])
    want, initial = (torch.cat([reference[k][n].reshape(-1) for n in names]) for k in ("params", "initial"))
    for r, rk in enumerate(results("ddp", divergence)):
        assert diagnostic_violations(rk["rows"], reference["rows"], DIAGNOSTICS, GAMMA), \
            f"{divergence} rank {r}: the diagnostics comparison did not notice"
        assert weight_violations(rk["params"], reference["params"], reference["initial"], STEPS), \
            f"{divergence} rank {r}: the weights comparison did not notice"
        # Not a near miss: the whole model is off by many times its bound (measured: 124x for lr_off).
        got = torch.cat([rk["params"][n].reshape(-1) for n in names])
        off, bound = float((got - want).norm()), weight_bound(want, initial, STEPS)
        assert off > 10 * bound, f"{divergence} rank {r}: off by {off:.3e}, only {off / bound:.1f}x the bound"


# Backends that hand GradSpace only this rank's part of the gradient / hold only part of the reference model.
SHARDED_GRADS = {"fsdp2", "zero1", "zero2", "zero3"}
SHARDED_REFERENCE = {"fsdp2", "zero3"}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_sharded_backends_never_hand_a_full_gradient_to_the_inner_products(backend: str, results) -> None:
    """Under FSDP2 and ZeRO-1/2/3 every Gram call sees about 1/world of the entries on each rank (padding aside),
    never the full gradient; DDP and ZeRO-0 are replicated by design. FSDP2 and ZeRO-3 shard the reference model
    the same way."""
    full = sum(p.numel() for p in tiny_model().parameters())
    for r, rk in enumerate(results(backend, "batch")):
        seen, ref = rk["gram_numel"], rk["ref_local_numel"]
        assert len(seen) == len(rk["rows"]), f"{backend} rank {r}: one Gram call per step"
        if backend in SHARDED_GRADS:
            assert max(seen) <= 0.6 * full, f"{backend} rank {r}: Gram saw {max(seen)} of {full} entries"
            assert min(seen) > 0
        else:
            assert seen == [full] * len(seen), f"{backend} rank {r}: {seen} vs {full}"
        if backend in SHARDED_REFERENCE:
            assert 0 < ref <= 0.6 * full, f"{backend} rank {r}: reference holds {ref} of {full} entries"
        else:
            assert ref == full, f"{backend} rank {r}"


@pytest.mark.parametrize(("backend", "precision"), MIXED)
def test_mixed_precision_agrees_across_ranks_and_with_fp32(backend: str, precision: str, results,
                                                            references) -> None:
    reference = references[BATCH]
    ranks = results(backend, precision)
    what = f"{backend}/{precision}"
    assert_same_on_every_rank(ranks, what)
    for row in ranks[0]["rows"]:
        assert row["A_f"] == pytest.approx(1.0, rel=1e-9), what  # BLUR's invariant <g_f, u> = gamma ||g_f||^2
    # The float32 propagation of tolerances.py with a half-precision error per gradient set (HALF_REL, derived
    # there). The norms are unscaled: fp16 loss scaling leaking into them would be off by the scale (2^16).
    assert_diagnostics_close(ranks[0]["rows"], reference["rows"], DIAGNOSTICS, what, GAMMA, eps=HALF_REL)
    # DeepSpeed hands back its bf16/fp16 working copy of the float32 masters: one more bf16-sized rounding.
    # Whole model only: HALF_REL is a typical (root-sum-square) error, which a parameter tensor that moved little
    # can exceed relative to its own movement (measured: up to 0.6 of the bound per tensor, 0.4 whole-model).
    stored = U_BF16 if BACKENDS[backend][0] == "deepspeed" else 0.0
    for r, rk in enumerate(ranks):
        assert_weights_close(rk["params"], reference["params"], reference["initial"], STEPS, f"{what} rank {r}",
                             eps=HALF_REL, stored_unit=stored, per_parameter=False)


@pytest.mark.parametrize("backend", [pytest.param(b, marks=skip_marks(skip_reason(b, "bf16")))
                                     for b, (_, _, mps) in BACKENDS.items() if "bf16" in mps])
def test_bf16_loaded_model_gets_float32_master_weights(backend: str, results) -> None:
    """Unlearning learning rates move weights by less than bf16's resolution: whatever dtype the model was
    loaded in, the optimizer must update float32 masters (DDP and FSDP2 upcast; DeepSpeed keeps its own)."""
    for r, rk in enumerate(results(backend, "bf16_loaded")):
        assert rk["master_dtypes"] == ["torch.float32"], f"{backend} rank {r}: {rk['master_dtypes']}"
        assert all(row["A_f"] == pytest.approx(1.0, rel=1e-9) for row in rk["rows"])
        assert all(torch.isfinite(p).all() for p in rk["params"].values())


# Backends whose checkpoints are implemented: DDP (replicated, rank 0 writes), FSDP2 (per-rank shards).
RESUMABLE = ("ddp", "fsdp2")


@pytest.mark.parametrize("backend", RESUMABLE)
def test_resume_after_a_stop_equals_no_stop(backend: str, results) -> None:
    """AdamW, 2 steps, checkpoint, a fresh backend (weights scrambled) loads it and takes step 3: exactly the
    parameters and diagnostics of the same backend's run without a stop (same reduction order, so no tolerance:
    any state the checkpoint lost, Adam's moments or step count, would show)."""
    straight, resumed = results(backend, "adamw"), results(backend, "resume")
    assert_same_on_every_rank(resumed, f"{backend}/resume")
    for r, (s, rk) in enumerate(zip(straight, resumed, strict=True)):
        assert rk["rows"] == s["rows"], f"{backend} rank {r}: diagnostics differ from the run without a stop"
        for n, want in s["params"].items():
            torch.testing.assert_close(rk["params"][n], want, rtol=0, atol=0, msg=f"{backend} rank {r}: {n}")
