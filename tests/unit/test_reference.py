"""The precomputed NPO reference gives the losses and gradients the in-memory reference model gives, under
shuffling and micro-batching, resumes bit for bit, and the pipeline keeps a model copy only where it is needed.

Tolerance: both paths compute the same float64 log-probabilities, the precomputed one in differently composed
(and so differently padded) batches. Attention over padding is masked exactly and every row's arithmetic is the
same up to the order of a few reductions (summing 8 x 32 logits per row), so the values agree to a few float64
ulps of |logp| ~ 30: relative 1e-13. Through the loss and a few SGD steps that stays below relative 1e-11.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.distributed.dist_harness import collate, examples
from tests.distributed.dist_harness import tiny_model as harness_tiny_model
from tests.integration.helpers import micro_cfg
from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.objectives.base import reference_logp
from unlearn.pipeline import build_reference, needs_reference_copy, plan, reference_kind
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner
from unlearn.train.reference import AdapterDisabledReference, PrecomputedReference, row_keys


def make(copy_ref: bool, micro: int | None = 2, max_steps: int | None = None, every: int = 0) -> Unlearner:
    model = harness_tiny_model(0).double()
    return Unlearner(
        model=model, forget_loss=build_objective(FORGET_LOSSES, {"name": "npo", "beta": 0.1}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}), rule=build_direction({"name": "blur"}),
        backend=Backend(), make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        make_scheduler=None, collate=collate,
        cfg=LoopConfig(batch_size=8, micro_batch_size=micro, epochs=2, max_steps=max_steps,
                       checkpoint_every=every),
        ref_model=copy.deepcopy(model).requires_grad_(False) if copy_ref else None,
    )


def flat_params(u: Unlearner) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in u.model.parameters()])


def test_lookup_equals_the_reference_forward_whatever_the_padding_and_order() -> None:
    model = harness_tiny_model(0).double().eval()
    forget = examples(12, 3)
    pre = PrecomputedReference.compute(model, forget, collate, torch.device("cpu"), Backend().autocast, 5)
    shuffled = [forget[i] for i in (7, 2, 11, 0)]
    batch = collate(shuffled)
    torch.testing.assert_close(pre.sequence_logp(batch), reference_logp(model, batch), rtol=1e-13, atol=0)
    # Right-padded to another length: the same key (padding is not part of it).
    wide = {k: torch.nn.functional.pad(v, (0, 3), value=0 if k != "labels" else -100) for k, v in batch.items()}
    assert row_keys(wide) == row_keys(batch)
    with pytest.raises(RuntimeError, match="not precomputed"):
        pre.sequence_logp(collate(examples(2, 99)))


def test_precomputed_reference_gives_the_same_losses_gradients_and_steps() -> None:
    """One epoch and a half of shuffled, micro-batched BLUR-NPO: every loss, gradient statistic and weight agrees
    with the in-memory reference model's run."""
    f, r = examples(20, 8), examples(30, 9)
    with_model, precomputed = make(copy_ref=True), make(copy_ref=False)
    assert precomputed.ref_model is None and precomputed.precomputes_reference
    rows_a, rows_b = with_model.run(f, r), precomputed.run(f, r)
    assert len(rows_a) == 6
    for a, b in zip(rows_a, rows_b, strict=True):
        for k in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "norm_u"):
            assert b[k] == pytest.approx(a[k], rel=1e-11, abs=1e-14), k
    torch.testing.assert_close(flat_params(precomputed), flat_params(with_model), rtol=1e-11, atol=1e-13)


def test_precomputed_reference_gradient_equals_the_model_reference_gradient() -> None:
    f = examples(8, 4)
    a, b = make(copy_ref=True, micro=None), make(copy_ref=False, micro=None)
    b.precompute_reference(f, [])
    batch = collate(f)
    ps_a, ps_b = list(a.model.parameters()), list(b.model.parameters())
    ga = torch.autograd.grad(a.forget_loss(a.model, batch, a.reference), ps_a)
    gb = torch.autograd.grad(b.forget_loss(b.model, batch, b.reference), ps_b)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-11, atol=1e-14)


def test_resume_restores_the_precomputed_values_bit_for_bit(tmp_path: Path) -> None:
    f, r = examples(20, 8), examples(30, 9)
    straight = make(copy_ref=False, max_steps=6)
    straight.run(f, r)

    class Stop(Exception):
        pass

    def stop(row: dict) -> None:
        if row["step"] == 4:
            raise Stop

    with pytest.raises(Stop):
        make(copy_ref=False, max_steps=6, every=3).run(f, r, on_step=stop, checkpoint_dir=tmp_path)
    resumed = make(copy_ref=False, max_steps=6, every=3)
    resumed.run(f, r, checkpoint_dir=tmp_path, resume_from=tmp_path / "step-00000003")
    assert torch.equal(resumed.precomputed.values, straight.precomputed.values)
    assert torch.equal(flat_params(resumed), flat_params(straight))


def test_step_before_precompute_is_a_clear_error() -> None:
    u = make(copy_ref=False)
    with pytest.raises(RuntimeError, match="precompute_reference"):
        u.step(examples(8, 0), examples(8, 1))


@pytest.mark.parametrize("overrides,copy_needed", [
    (["method=npo"], False),
    (["method=blur_npo"], False),
    (["method=npo", "method.reference=copy"], True),
    (["method=npo", "method.retain.name=kl"], True),  # KL needs the reference's full distributions
    (["method=graddiff"], False),
])
def test_the_pipeline_keeps_a_model_copy_only_where_needed(overrides: list[str], copy_needed: bool,
                                                          tmp_path: Path) -> None:
    assert needs_reference_copy(plan(micro_cfg(tmp_path, *overrides))) is copy_needed


LORA = "model.lora={r:2,alpha:4,target_modules:[q_proj,v_proj]}"


@pytest.mark.parametrize("overrides,kind", [
    (["method=npo"], "precompute"),
    (["method=npo", "method.retain.name=kl"], "copy"),  # KL on retain batches without LoRA: the full copy
    (["method=graddiff"], "none"),
    (["method=npo", LORA], "precompute"),  # cheaper than any forward: a table lookup
    (["method=blur_npo", LORA], "precompute"),
    (["method=npo", "method.retain.name=kl", LORA], "adapters"),
    (["method=npo", "method.reference=adapters", LORA], "adapters"),  # NPO with precompute off
    (["method=npo", "method.retain.name=kl", "method.reference=copy", LORA], "copy"),
    (["method=graddiff", LORA], "none"),
])
def test_auto_picks_the_cheapest_exact_reference(overrides: list[str], kind: str, tmp_path: Path) -> None:
    assert reference_kind(plan(micro_cfg(tmp_path, *overrides))) == kind


def test_under_lora_the_pipeline_builds_no_copy(tmp_path: Path) -> None:
    from unlearn.models.lora import apply_lora

    p = plan(micro_cfg(tmp_path, "method=npo", "method.retain.name=kl", LORA))
    model = apply_lora(harness_tiny_model(0), {"r": 2, "target_modules": ["q_proj", "v_proj"]})
    ref = build_reference(p, model)
    assert isinstance(ref, AdapterDisabledReference) and ref.module is model
    assert not isinstance(ref, torch.nn.Module)  # nothing of its own: no second set of parameters


@pytest.mark.parametrize("overrides,match", [
    (["method=npo", "method.reference=adapters"], "needs model.lora"),
    (["method=npo", "method.reference=bogus"], "expected one of auto, copy, adapters"),
])
def test_bad_reference_mode_is_a_clear_error(overrides: list[str], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        plan(micro_cfg(tmp_path, *overrides))
