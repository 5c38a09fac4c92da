"""The loop: gradient accumulation is exact, g_f and g_r are summed before the projection, clipping acts on u."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.distributed.dist_harness import collate, examples
from tests.distributed.dist_harness import tiny_model as harness_tiny_model
from unlearn.directions import GradSpace, build_direction
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    """The distributed tests' tiny Llama, in float64 so accumulation can be compared to 1e-9."""
    return harness_tiny_model(seed).double()


def make(direction: dict, micro: int | None, optimizer: str = "sgd", clip: float = 0.0, model=None,
         backend: Backend | None = None):
    model = model if model is not None else tiny_model()
    ref = copy.deepcopy(model).requires_grad_(False)
    opt = (lambda p: torch.optim.SGD(p, lr=0.1)) if optimizer == "sgd" else (lambda p: torch.optim.AdamW(p, lr=1e-2))
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, {"name": "npo", "beta": 0.1}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}),
        rule=build_direction(direction),
        backend=backend if backend is not None else Backend(),
        make_optimizer=opt,
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=8, micro_batch_size=micro, max_grad_norm=clip, epochs=1),
        ref_model=ref,
    )


def params(u: Unlearner) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in u.model.parameters()])


@pytest.mark.parametrize("rule", [{"name": "blur", "gamma": 1.0}, {"name": "ngdiff"}, {"name": "weighted"}])
def test_four_micro_batches_equal_one_batch(rule: dict) -> None:
    f, r = examples(8, 0), examples(8, 1)
    one, four = make(rule, micro=None, optimizer="adamw"), make(rule, micro=2, optimizer="adamw")
    for _ in range(3):
        d1, d4 = one.step(f, r), four.step(f, r)
        for k in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "A_r"):
            assert d4[k] == pytest.approx(d1[k], rel=1e-9, abs=1e-12), k
    torch.testing.assert_close(params(four), params(one), rtol=1e-9, atol=1e-12)


def test_blur_step_matches_hand_projection_of_summed_gradients() -> None:
    """The projection uses g_f and g_r summed over the whole step, not per micro-batch."""
    f, r = examples(8, 2), examples(8, 3)
    u = make({"name": "blur", "gamma": 0.7}, micro=2)
    model = copy.deepcopy(u.model)
    ref = copy.deepcopy(model).requires_grad_(False)
    batch_f, batch_r = collate(f), collate(r)
    npo = build_objective(FORGET_LOSSES, {"name": "npo", "beta": 0.1})
    nll = build_objective(RETAIN_LOSSES, {"name": "nll"})
    ps = list(model.parameters())
    g_f = torch.autograd.grad(npo(model, batch_f, ref), ps)
    g_r = torch.autograd.grad(nll(model, batch_r, ref), ps)
    flat_f, flat_r = torch.cat([g.reshape(-1) for g in g_f]), torch.cat([g.reshape(-1) for g in g_r])
    expected_u = 0.7 * flat_f + flat_r - (flat_f @ flat_r) / (flat_f @ flat_f) * flat_f
    before = params(u)
    diag = u.step(f, r)
    torch.testing.assert_close((before - params(u)) / 0.1, expected_u, rtol=1e-8, atol=1e-10)
    assert diag["A_f"] == pytest.approx(0.7)
    assert diag["norm_f"] == pytest.approx(float(flat_f.norm()))


def test_clipping_bounds_the_update_not_the_raw_gradients() -> None:
    f, r = examples(8, 4), examples(8, 5)
    u = make({"name": "blur"}, micro=4, clip=1e-3)
    before = params(u)
    diag = u.step(f, r)
    step_norm = float((before - params(u)).norm()) / 0.1
    assert step_norm == pytest.approx(1e-3, rel=1e-6)
    assert diag["norm_u"] == pytest.approx(1e-3, rel=1e-6)
    assert diag["norm_f"] > 1e-3  # the raw gradient was larger than the clip: u was scaled, not g_f


def test_run_streams_one_row_per_step() -> None:
    u = make({"name": "blur"}, micro=None)
    rows = []
    out = u.run(examples(20, 6), examples(30, 7), on_step=rows.append)
    assert len(out) == len(rows) == 3  # ceil(20 / 8) steps for one epoch
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert GradSpace().dots([]) == []


def test_resume_after_a_stop_equals_no_stop(tmp_path) -> None:
    """Stop after step 3 of 6 (checkpoint every 3), resume in a fresh process state: same parameters, same rows."""
    f, r = examples(20, 8), examples(30, 9)

    def unlearner() -> Unlearner:
        u = make({"name": "blur", "gamma": 1.0}, micro=4, optimizer="adamw")
        u.cfg.max_steps, u.cfg.checkpoint_every = 6, 3
        u._make_scheduler = lambda opt, n: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=n)
        return u

    straight = unlearner()
    rows_straight = straight.run(f, r)

    class Stop(Exception):
        pass

    def stop_at_4(row):
        if row["step"] == 4:
            raise Stop

    first = unlearner()
    with pytest.raises(Stop):
        first.run(f, r, on_step=stop_at_4, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003"]

    resumed = unlearner()  # fresh weights: everything must come from the checkpoint
    rows_resumed = resumed.run(f, r, checkpoint_dir=tmp_path, resume_from=tmp_path / "step-00000003")
    assert [row["step"] for row in rows_resumed] == [4, 5, 6]
    torch.testing.assert_close(params(resumed), params(straight), rtol=1e-12, atol=1e-12)
    for a, b in zip(rows_resumed, rows_straight[3:], strict=True):
        assert a["lr"] == pytest.approx(b["lr"]) and a["loss_f"] == pytest.approx(b["loss_f"], rel=1e-10)
    assert (tmp_path / "step-00000006" / "model.safetensors").exists()


def test_single_process_steps_keep_gradients_in_the_flat_buffers() -> None:
    """Autograd and the optimizer leave every `.grad` a view into the backend's contiguous buffers."""
    u = make({"name": "blur", "gamma": 1.0}, micro=2, optimizer="adamw")
    for k in range(2):
        u.step(examples(8, 2 * k), examples(8, 2 * k + 1))
    assert u.backend._buffers is not None and u.backend._buffers.views_intact()
    assert len(u.backend.grads()) == 1  # one float64 group: the loop sees one tensor, not one per parameter


def test_gradient_checkpointing_in_one_process_takes_the_same_step() -> None:
    """trainer.gradient_checkpointing on the single backend recomputes activations and changes nothing else."""
    f, r = examples(8, 4), examples(8, 5)
    plain = make({"name": "blur", "gamma": 1.0}, micro=4)
    ckpt = make({"name": "blur", "gamma": 1.0}, micro=4, backend=Backend(gradient_checkpointing=True))
    assert ckpt.model.is_activation_checkpointing and not plain.model.is_activation_checkpointing
    d_plain, d_ckpt = plain.step(f, r), ckpt.step(f, r)
    for k in ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr"):
        assert d_ckpt[k] == pytest.approx(d_plain[k], rel=1e-12), k
    torch.testing.assert_close(params(ckpt), params(plain), rtol=1e-12, atol=1e-14)
