"""Two processes (gloo, CPU) against one: every backend must reproduce the single-process BLUR-NPO run.

Two launches of 2 workers (`worker.py`: one for the torch backends, one for DeepSpeed's stages, so the
imports are paid twice rather than six times) run, for each backend, 3 BLUR-NPO steps (tiny float32 Llama,
AdamW, global batch 8) several times:
- `batch`: one micro-batch per rank, with gradient checkpointing on;
- `accum`: gradient accumulation, 4 micro-batches of 2 in all (2 per rank);
- `uneven`: a global batch of 5 in micro-batches of 2 (rank 0: 2 + 1 examples; rank 1: 2 + a zero-weight pad);
- `bf16` / `fp16` where the backend offers them, with accumulation.
The fp32 runs must end at the single-process parameters (1e-5 relative) with per-step diagnostics that are the
same on both ranks (bit for bit: they come from one all-reduce) and equal to the single-process ones. The
mixed-precision runs must agree across ranks exactly and with fp32 to within half-precision error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_harness import BATCH, DIAGNOSTICS, launch, single_process_reference, tiny_model

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
MIXED = [(b, mp) for b, (_, _, mps) in BACKENDS.items() for mp in mps]
# Backends launched together (one pair of processes runs all their runs in turn).
GROUPS = {"torch": ("ddp", "fsdp2"), "deepspeed": ("zero0", "zero1", "zero2", "zero3")}


def runs(backend: str) -> list[dict[str, Any]]:
    name, kwargs, precisions = BACKENDS[backend]
    plan = [
        ("batch", None, BATCH, {**kwargs, "gradient_checkpointing": True}),
        ("accum", 2, BATCH, kwargs),
        ("uneven", 2, UNEVEN, kwargs),
    ]
    plan += [(mp, 2, BATCH, {**kwargs, "mixed_precision": mp}) for mp in precisions]
    out = [{"tag": f"{backend}_{tag}", "backend": name, "micro": micro, "batch": batch, "kwargs": kw}
           for tag, micro, batch, kw in plan]
    if "bf16" in precisions:  # a model loaded in bf16 (like the hub configs): the masters must still be float32
        out.append({"tag": f"{backend}_bf16_loaded", "backend": name, "micro": 2, "batch": BATCH,
                    "kwargs": {**kwargs, "mixed_precision": "bf16"}, "model_dtype": "bfloat16"})
    if backend in RESUMABLE:
        out.append({"tag": f"{backend}_resume", "backend": name, "micro": 2, "batch": BATCH, "kwargs": kwargs,
                    "resume_after": 2})
    return out


@pytest.fixture(scope="module")
def references() -> dict[int, dict[str, Any]]:
    """Single-process ground truth by global batch size."""
    return {BATCH: single_process_reference(BATCH), UNEVEN: single_process_reference(UNEVEN)}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], list[dict[str, Any]]]:
    """`results(backend, tag)` -> the per-rank outputs of that run; each group is launched once, on first use."""
    launched: dict[str, Path] = {}

    def get(backend: str, tag: str) -> list[dict[str, Any]]:
        group = next(g for g, members in GROUPS.items() if backend in members)
        if group not in launched:
            out = tmp_path_factory.mktemp(group)
            launch(WORKER, group, [run for member in GROUPS[group] for run in runs(member)], out, WORLD, TIMEOUT_S)
            launched[group] = out
        return [torch.load(launched[group] / f"{backend}_{tag}_rank{r}.pt") for r in range(WORLD)]

    return get


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


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
    for step, ref_row in enumerate(reference["rows"]):
        for key in DIAGNOSTICS:
            got = ranks[0]["rows"][step][key]
            assert got == pytest.approx(ref_row[key], rel=1e-5, abs=1e-7), f"{what} step {step}: {key}"
    for r, rk in enumerate(ranks):
        if backend == "ddp":  # DDP copies into our contiguous buffers' views instead of replacing them
            assert rk["flat_grad_views_intact"] is True, f"{what} rank {r}"
        assert rk["params"].keys() == reference["params"].keys()
        for n, ref_p in reference["params"].items():
            assert rel_error(rk["params"][n], ref_p) < 1e-5, f"{what} rank {r}: {n}"
            torch.testing.assert_close(rk["params"][n], ref_p, rtol=1e-5, atol=1e-6, msg=f"{what} rank {r}: {n}")


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
    for step, ref_row in enumerate(reference["rows"]):
        row = ranks[0]["rows"][step]
        assert row["A_f"] == pytest.approx(1.0, rel=1e-9), what  # BLUR's invariant <g_f, u> = gamma ||g_f||^2
        assert row["loss_f"] == pytest.approx(ref_row["loss_f"], rel=1e-3), f"{what} step {step}"
        for key in ("norm_f", "norm_r", "norm_u"):  # unscaled: fp16 loss scaling must not leak into them
            assert row[key] == pytest.approx(ref_row[key], rel=2e-2), f"{what} step {step}: {key}"
        assert row["cos_fr"] == pytest.approx(ref_row["cos_fr"], abs=1e-2), f"{what} step {step}"
    # Per parameter, half-precision gradients flip Adam's steps where gradients are tiny; over the whole model
    # the parameters stay within half-precision error of the fp32 run.
    names = sorted(reference["params"])
    got = torch.cat([ranks[0]["params"][n].reshape(-1) for n in names])
    want = torch.cat([reference["params"][n].reshape(-1) for n in names])
    err = rel_error(got, want)
    assert err < 3e-2, f"{what}: parameters off by {err:.2e} (relative)"


@pytest.mark.parametrize("backend", [b for b, (_, _, mps) in BACKENDS.items() if "bf16" in mps])
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
def test_resume_after_a_stop_equals_no_stop(backend: str, results, references) -> None:
    """2 steps, checkpoint, a fresh backend loads it and takes step 3: the single-process 3-step parameters."""
    reference = references[BATCH]
    ranks = results(backend, "resume")
    assert_same_on_every_rank(ranks, f"{backend}/resume")
    for r, rk in enumerate(ranks):
        for n, ref_p in reference["params"].items():
            torch.testing.assert_close(rk["params"][n], ref_p, rtol=1e-5, atol=1e-6, msg=f"{backend} rank {r}: {n}")
