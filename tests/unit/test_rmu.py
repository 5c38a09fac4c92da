"""RMU losses against hand values, the layer hook and truncation, BLUR on RMU, v across resume, model.trainable."""

from __future__ import annotations

import copy
import fnmatch

import pytest
import torch

from tests.distributed.dist_harness import collate, examples, tiny_model
from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.models.trainable import apply_trainable, resolve_trainable
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.objectives.rmu import control_vector, layer_activations, per_example_mse
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner

DOWN_PROJ = ["model.layers.[0-1].mlp.down_proj.weight"]


def test_per_example_mse_by_hand() -> None:
    # Example 0: two attended tokens, d = 2. Diffs (1, 1) and (2, 0): (1/d)||.||^2 = 1 and 2 -> mean 1.5.
    # Example 1: one attended token, diff (0, 3) -> 4.5; its padded position (diff 100) must not count.
    h = torch.tensor([[[1.0, 1.0], [2.0, 0.0]], [[0.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert float(per_example_mse(h, torch.zeros_like(h), mask)) == pytest.approx((1.5 + 4.5) / 2)


def test_rmu_forget_equals_wmdp_mse_without_padding() -> None:
    """With no padding the loss is exactly F.mse_loss(h_l, c*v) (WMDP's reduction), h_l = hidden_states[l+1]."""
    model = tiny_model().double()
    loss = build_objective(FORGET_LOSSES, {"name": "rmu", "layer": 0, "steering_coeff": 6.5, "seed": 3})
    loss.setup(model)
    batch = collate(examples(4, 1))
    batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
    hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    target = 6.5 * control_vector(16, 3).double()
    want = torch.nn.functional.mse_loss(hs.hidden_states[1], target.expand_as(hs.hidden_states[1]))
    assert float(loss(model, batch, None).detach()) == pytest.approx(float(want.detach()), rel=1e-12)


def test_control_vector_is_a_seeded_positive_unit_vector() -> None:
    v = control_vector(64, 0)
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-6) and bool((v >= 0).all())
    assert torch.equal(v, control_vector(64, 0)) and not torch.equal(v, control_vector(64, 1))


def test_truncation_gives_the_same_activations_and_gradients() -> None:
    batch = collate(examples(4, 2))
    grads = []
    for truncate in (True, False):
        model = tiny_model().double()
        h = layer_activations(model, batch, 0, truncate=truncate)
        h.pow(2).sum().backward()
        grads.append((h.detach(), model.model.layers[0].mlp.down_proj.weight.grad.clone()))
        assert len(model.model.layers) == 2  # restored
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-15)
    with pytest.raises(ConfigError, match=r"method\.forget\.layer"):
        layer_activations(tiny_model(), batch, 5)


def test_rmu_retain_is_zero_at_the_frozen_model_and_positive_after_a_change() -> None:
    model = tiny_model().double()
    ref = copy.deepcopy(model).requires_grad_(False)
    loss = build_objective(RETAIN_LOSSES, {"name": "rmu", "layer": 1})
    batch = collate(examples(4, 3))
    assert float(loss(model, batch, ref).detach()) == 0.0
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.1)
    assert float(loss(model, batch, ref).detach()) > 0.0


def test_bad_rmu_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.forget\.steering_coeff"):
        build_objective(FORGET_LOSSES, {"name": "rmu", "steering_coeff": -1})
    with pytest.raises(ConfigError, match=r"method\.retain\.layer"):
        build_objective(RETAIN_LOSSES, {"name": "rmu", "layer": "7"})


def rmu_unlearner(rule: dict, trainable: list[str] | None = DOWN_PROJ, seed: int = 0) -> Unlearner:
    model = tiny_model().double()
    apply_trainable(model, trainable)
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, {"name": "rmu", "layer": 1, "steering_coeff": 2.0}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": "rmu", "layer": 1}),
        rule=build_direction(rule),
        backend=Backend(),
        make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=8, micro_batch_size=4, epochs=1, seed=seed),
        ref_model=copy.deepcopy(model).requires_grad_(False),
    )


def test_blur_on_rmu_keeps_the_forget_alignment_and_trains_only_the_selected_parameters() -> None:
    """<g_f, u> = gamma ||g_f||^2 with the RMU losses (A_f = gamma), and only down_proj of layers 0-1 moves."""
    u = rmu_unlearner({"name": "blur", "gamma": 0.5})
    before = {n: p.detach().clone() for n, p in u.model.named_parameters()}
    f, r = examples(8, 4), examples(8, 5)
    rows = [u.step(f, r) for _ in range(3)]
    for row in rows:
        assert row["A_f"] == pytest.approx(0.5, rel=1e-9)
    assert rows[-1]["loss_f"] < rows[0]["loss_f"]
    for name, p in u.model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == any(fnmatch.fnmatchcase(name, pat) for pat in DOWN_PROJ), name
    assert len(u.backend.grads()) >= 1 and sum(g.numel() for g in u.backend.grads()) == 2 * 16 * 32


def test_control_vector_survives_resume(tmp_path) -> None:
    """v is saved with the checkpoint: a resumed run (even one whose seed would draw another v) uses the saved v."""
    f, r = examples(16, 6), examples(16, 7)
    first = rmu_unlearner({"name": "weighted", "lam": 1.0}, seed=0)
    first.cfg.max_steps, first.cfg.checkpoint_every = 2, 1
    first.run(f, r, checkpoint_dir=tmp_path)
    resumed = rmu_unlearner({"name": "weighted", "lam": 1.0}, seed=1)
    assert not torch.equal(resumed.forget_loss.v, first.forget_loss.v)
    resumed.cfg.max_steps = 2
    resumed.run(f, r, resume_from=tmp_path / "step-00000001")
    assert torch.equal(resumed.forget_loss.v, first.forget_loss.v)


def test_trainable_patterns() -> None:
    model = tiny_model()
    kept = apply_trainable(model, ["*.down_proj.weight", "lm_head.weight"])
    assert kept == [n for n, _ in model.named_parameters() if n.endswith("down_proj.weight") or n == "lm_head.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == kept
    assert apply_trainable(tiny_model(), None) == [n for n, _ in tiny_model().named_parameters()]
    with pytest.raises(ConfigError, match=r"model\.trainable: pattern\(s\) \['model\.layer\.7\.\*'\]"):
        apply_trainable(tiny_model(), ["*.down_proj.weight", "model.layer.7.*"])
    with pytest.raises(ConfigError, match=r"model\.trainable"):
        resolve_trainable([3])
