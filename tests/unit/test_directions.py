"""Direction rules: BLUR's invariant, the zero-norm fallback, clipping on u, and the paper's toy Example 1."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn.directions import DIRECTIONS, GradSpace, build_direction
from unlearn.directions.base import apply_direction
from unlearn.errors import ConfigError


def _grads(seed: int, shapes=((5, 3), (7,), (2, 2, 2)), dtype=torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype) for s in shapes]


def _dot(xs, ys) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(xs, ys, strict=True)))


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_blur_invariant_holds_exactly(gamma: float) -> None:
    g_f, g_r = _grads(0), _grads(1)
    ff = _dot(g_f, g_f)
    d = build_direction({"name": "blur", "gamma": gamma}).direction(g_f, g_r, GradSpace())
    u = [t.clone() for t in g_r]
    apply_direction(d, g_f, u)
    # <g_f, u> = gamma * ||g_f||^2, measured on the materialised u, and as reported by the diagnostics.
    assert _dot(g_f, u) == pytest.approx(gamma * ff, rel=1e-12)
    assert d.diagnostics()["A_f"] == pytest.approx(gamma, rel=1e-12)
    # u keeps exactly the part of g_r orthogonal to g_f: u - gamma g_f is orthogonal to g_f.
    rest = [ui - gamma * fi for ui, fi in zip(u, g_f, strict=True)]
    assert abs(_dot(g_f, rest)) < 1e-10 * ff


def test_blur_invariant_in_float32_buffers() -> None:
    g_f, g_r = _grads(2, dtype=torch.float32), _grads(3, dtype=torch.float32)
    d = build_direction({"name": "blur", "gamma": 1.0}).direction(g_f, g_r, GradSpace())
    apply_direction(d, g_f, g_r)
    assert _dot(g_f, g_r) == pytest.approx(_dot(g_f, g_f), rel=1e-5)


def test_gram_and_diagnostics_match_direct_computation() -> None:
    g_f, g_r = _grads(4), _grads(5)
    gram = GradSpace().gram(g_f, g_r)
    assert gram.ff == pytest.approx(_dot(g_f, g_f))
    assert gram.fr == pytest.approx(_dot(g_f, g_r))
    assert gram.cos_fr == pytest.approx(_dot(g_f, g_r) / math.sqrt(_dot(g_f, g_f) * _dot(g_r, g_r)))
    d = build_direction({"name": "weighted", "lam": 0.3}).direction(g_f, g_r, GradSpace())
    u = [f + 0.3 * r for f, r in zip(g_f, g_r, strict=True)]
    diag = d.diagnostics()
    assert diag["A_f"] == pytest.approx(_dot(g_f, u) / _dot(g_f, g_f))
    assert diag["A_r"] == pytest.approx(_dot(g_r, u) / _dot(g_r, g_r))
    assert diag["norm_u"] == pytest.approx(math.sqrt(_dot(u, u)))


def test_ngdiff_normalises_each_gradient() -> None:
    g_f, g_r = _grads(6), _grads(7)
    d = build_direction({"name": "ngdiff"}).direction(g_f, g_r, GradSpace())
    assert d.a == pytest.approx(1 / math.sqrt(_dot(g_f, g_f)))
    assert d.b == pytest.approx(1 / math.sqrt(_dot(g_r, g_r)))


def test_blur_zero_forget_gradient_falls_back_to_retain() -> None:
    g_f = [torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    g_r = _grads(8, shapes=((3,), (2,)))
    expected = [t.clone() for t in g_r]
    d = build_direction({"name": "blur"}).direction(g_f, g_r, GradSpace())
    apply_direction(d, g_f, g_r)
    for got, want in zip(g_r, expected, strict=True):
        assert torch.equal(got, want)
    assert all(math.isfinite(v) for k, v in d.diagnostics().items() if k not in ("A_f", "cos_fr"))


def test_clipping_acts_on_combined_direction() -> None:
    g_f, g_r = _grads(9), _grads(10)
    d = build_direction({"name": "blur", "gamma": 1.0}).direction(g_f, g_r, GradSpace())
    clipped = d.clipped(0.5)
    u = [t.clone() for t in g_r]
    apply_direction(clipped, g_f, u)
    assert math.sqrt(_dot(u, u)) == pytest.approx(0.5, rel=1e-10)
    # The direction is preserved: BLUR's alignment with g_f is still gamma (before scaling) times the factor.
    assert clipped.a / clipped.b == pytest.approx(d.a / d.b)


def test_unknown_rule_and_bad_gamma_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"method.direction.name.*'nope'"):
        build_direction({"name": "nope"})
    with pytest.raises(ConfigError, match=r"gamma"):
        build_direction({"name": "blur", "gamma": 0.0})
    assert {"weighted", "ngdiff", "blur"} <= set(DIRECTIONS.names())


def _toy_run(rule_cfg: dict, t0: float, steps: int = 3000, lr: float = 0.005) -> float:
    """Example 1 of the BLUR paper: f(t) = |t-1| + |t+1| (argmin [-1, 1]), r(t) = (t-2)^2; plain SGD on u."""
    t = torch.tensor([t0], dtype=torch.float64, requires_grad=True)
    rule, space = build_direction(rule_cfg), GradSpace()
    for _ in range(steps):
        (g_f,) = torch.autograd.grad((t - 1).abs().sum() + (t + 1).abs().sum(), [t])
        (g_r,) = torch.autograd.grad(((t - 2) ** 2).sum(), [t])
        u = [g_r.clone()]
        apply_direction(rule.direction([g_f], [g_r], space), [g_f], u)
        with torch.no_grad():
            t -= lr * u[0]
    return float(t.detach())


@pytest.mark.parametrize("t0", [-0.5, 0.0, 3.0])
def test_toy_example_blur_reaches_bilevel_solution(t0: float) -> None:
    assert _toy_run({"name": "blur", "gamma": 1.0}, t0) == pytest.approx(1.0, abs=0.02)


def test_toy_example_weighted_sum_stops_at_two_minus_lambda() -> None:
    # r + lambda f with lambda = 0.5: stationary where 2(t-2) + 0.5*2 = 0, i.e. t = 1.5, not the bi-level t* = 1.
    t = _toy_run({"name": "weighted", "forget_weight": 0.5, "lam": 1.0}, 0.0)
    assert t == pytest.approx(1.5, abs=0.02)
