"""Mixed precision in one process (`trainer.mixed_precision=bf16`): float32 master weights, bf16 forwards.

The reason it exists: on a model loaded in bf16, an update smaller than bf16's resolution (2^-8 relative) rounds
away. With SGD at lr 1e-4 on the tiny Llama, pure bf16 training changes about 3% of the weights in a step;
with float32 master weights about 98% change.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from tests.distributed.dist_harness import collate, examples, tiny_model
from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner


def make(mixed_precision: str | None, dtype: torch.dtype, lr: float = 1e-4) -> Unlearner:
    model = tiny_model().to(dtype)
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, {"name": "npo", "beta": 0.1}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}),
        rule=build_direction({"name": "blur", "gamma": 1.0}),
        backend=Backend(mixed_precision=mixed_precision),
        make_optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=8, epochs=1),
        ref_model=copy.deepcopy(model).requires_grad_(False),
    )


def flat(u: Unlearner) -> torch.Tensor:
    return torch.cat([p.detach().float().reshape(-1).clone() for p in u.model.parameters()])


def changed_fraction(mixed_precision: str | None) -> tuple[float, Unlearner]:
    u = make(mixed_precision, torch.bfloat16)
    before = flat(u)
    u.step(examples(8, 0), examples(8, 1))
    return float((flat(u) != before).float().mean()), u


def test_bf16_loaded_model_trains_float32_masters_and_keeps_small_updates() -> None:
    mixed, u = changed_fraction("bf16")
    with pytest.warns(UserWarning, match="mixed_precision"):  # the warning below, for exactly this case
        pure, _ = changed_fraction(None)
    assert {p.dtype for p in u.model.parameters()} == {torch.float32}
    assert u.ref_model is not None and next(u.ref_model.parameters()).dtype == torch.bfloat16  # left as loaded
    assert mixed > 0.9, mixed
    assert pure < 0.2, pure  # the failure mode the masters prevent


def test_forwards_run_in_bf16_and_blur_invariant_holds() -> None:
    u = make("bf16", torch.float32)
    seen: list[torch.dtype] = []
    layer = u.model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    row = u.step(examples(8, 0), examples(8, 1))
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in u.model.parameters())
    assert row["A_f"] == pytest.approx(1.0, abs=1e-9)


def test_bf16_diagnostics_are_close_to_float32() -> None:
    rows = {mp: make(mp, torch.float32).step(examples(8, 0), examples(8, 1)) for mp in (None, "bf16")}
    for key in ("loss_f", "loss_r", "norm_f", "norm_r"):
        assert rows["bf16"][key] == pytest.approx(rows[None][key], rel=3e-2), key
    assert rows["bf16"]["loss_r"] != rows[None]["loss_r"]  # it did run in lower precision


def test_fp16_and_unknown_precisions_are_refused_naming_the_key() -> None:
    for value in ("fp16", "int8"):
        with pytest.raises(ConfigError, match=r"trainer\.mixed_precision"):
            Backend(mixed_precision=value)


def test_training_half_precision_weights_without_mixed_precision_warns() -> None:
    with pytest.warns(UserWarning, match=r"trainer\.mixed_precision is null"):
        make(None, torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 weights, or bf16 with masters: nothing to say
        make(None, torch.float32)
        make("bf16", torch.bfloat16)


def test_float64_model_is_not_downcast_by_mixed_precision() -> None:
    u = make("bf16", torch.float64)
    assert {p.dtype for p in u.model.parameters()} == {torch.float64}
