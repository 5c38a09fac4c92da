"""Step strategies: Hessian-vector products (exact vs explicit Hessian vs finite differences), OFMU's gradient of
Psi and its bi-level fixed point on a quadratic, NGDiff's parabola fit on a known optimum, exact resume of both,
and the backend declarations."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn

from tests.distributed.dist_harness import collate, examples
from tests.distributed.dist_harness import tiny_model as harness_tiny_model
from unlearn.directions import build_direction
from unlearn.errors import ConfigError
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.objectives.base import Objective
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner
from unlearn.train.steps import StepContext, build_step
from unlearn.train.steps.adaptive_lr import fit_parabola, next_scale
from unlearn.train.steps.ofmu import OFMUStep


# ------------------------------------------------------------------------------------------- toy problems
class Vec(nn.Module):
    """theta in R^n, the only parameter."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(init.clone().double())


class MLP(nn.Module):
    """A 2-layer tanh network with 4*3 + 3 + 3 = 18 parameters: small enough for an explicit Hessian."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(4, 3).double()
        self.l2 = nn.Linear(3, 1, bias=False).double()


class Quadratic(Objective):
    """0.5 (theta - c)^T A (theta - c), independent of the batch (each micro-batch weight sums it to one)."""

    def __init__(self, A: Tensor, c: Tensor) -> None:
        self.A, self.c = A.double(), c.double()

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: object) -> Tensor:
        d = model.theta - self.c
        return 0.5 * d @ self.A @ d


class MLPLoss(Objective):
    """Mean over the batch's rows of (mlp(x) - y)^2 + (1/4) mlp(x)^4: curved, with non-zero third derivatives."""

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: object) -> Tensor:
        out = model.l2(torch.tanh(model.l1(batch["x"]))).squeeze(-1)
        return ((out - batch["y"]) ** 2 + 0.25 * out**4).mean()


def rows(n: int, seed: int) -> list[dict[str, list[float]]]:
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(4, generator=g, dtype=torch.float64).tolist(),
             "y": [float(torch.randn(1, generator=g, dtype=torch.float64))]} for _ in range(n)]


def collate_rows(batch: list[dict[str, list[float]]]) -> dict[str, Tensor]:
    return {"x": torch.tensor([r["x"] for r in batch], dtype=torch.float64),
            "y": torch.tensor([r["y"][0] for r in batch], dtype=torch.float64)}


def toy(model: nn.Module, f: Objective, r: Objective, step: dict | None = None, rule: dict | None = None,
        lr: float = 0.1, batch: int = 8, micro: int | None = None, collate_fn=collate_rows) -> Unlearner:
    return Unlearner(model=model, forget_loss=f, retain_loss=r,
                     rule=build_direction(rule) if rule else None, backend=Backend(),
                     make_optimizer=lambda p: torch.optim.SGD(p, lr=lr), make_scheduler=None, collate=collate_fn,
                     cfg=LoopConfig(batch_size=batch, micro_batch_size=micro, epochs=1),
                     step=build_step(step) if step else None)


def flat(v: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in v])


def unflat(x: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(x[i : i + t.numel()].view_as(t).clone())
        i += t.numel()
    return out


def mlp_context(micro: int | None = 2) -> tuple[StepContext, Unlearner]:
    u = toy(MLP(), MLPLoss(), MLPLoss(), rule={"name": "weighted"}, micro=micro)
    return StepContext(u, u._micro_batches(rows(8, 1)), u._micro_batches(rows(8, 2))), u


def explicit_hessian(u: Unlearner, data: list[dict]) -> Tensor:
    params = u.backend._params
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    batch = collate_rows(data)

    def loss(x: Tensor) -> Tensor:
        parts = torch.split(x, sizes)
        w1, b1, w2 = (p.view(s) for p, s in zip(parts, shapes, strict=True))
        out = (torch.tanh(batch["x"] @ w1.T + b1) @ w2.T).squeeze(-1)
        return ((out - batch["y"]) ** 2 + 0.25 * out**4).mean()

    return torch.autograd.functional.hessian(loss, flat([p.detach() for p in params]))


# ------------------------------------------------------------------------------------------- HVPs
def test_exact_hvp_equals_the_explicit_hessian_times_v_over_micro_batches() -> None:
    ctx, u = mlp_context(micro=2)  # 4 micro-batches of 2: the per-micro-batch HVPs must sum to the batch's
    H = explicit_hessian(u, rows(8, 1))
    assert torch.linalg.eigvalsh(H).abs().max() > 1e-2  # a real, curved problem
    v = unflat(torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3)),
               u.backend._params)
    hv = flat(ctx.hvp(ctx.forget_loss, ctx.forget, v, "exact"))
    # Both are float64 sums of the same ~100 products per entry in different orders: agreement to ~1e-14.
    torch.testing.assert_close(hv, H @ flat(v), rtol=1e-11, atol=1e-13)


def test_finite_difference_hvp_converges_to_the_exact_one_at_second_order() -> None:
    ctx, u = mlp_context()
    v = [torch.randn_like(p) for p in u.backend._params]
    exact = flat(ctx.hvp(ctx.forget_loss, ctx.forget, v, "exact"))
    before = flat([p.detach().clone() for p in u.backend._params])
    errors = []
    for eps in (1e-2, 5e-3):
        fd = flat(ctx.hvp(ctx.forget_loss, ctx.forget, v, "finite_difference", eps=eps))
        errors.append(float((fd - exact).norm() / exact.norm()))
    # The parameters are restored from a copy: bit for bit what they were.
    assert torch.equal(flat([p.detach() for p in u.backend._params]), before)
    # Central differences: error ~ C eps^2, so halving eps divides it by ~4 (rounding, ~1e-16/eps, is negligible).
    assert errors[0] < 1e-3
    assert 3.0 < errors[0] / errors[1] < 5.0, errors


def test_finite_difference_hvp_is_exact_on_a_quadratic() -> None:
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    u = toy(Vec(torch.tensor([0.3, -0.2, 0.7])), Quadratic(A, torch.zeros(3)), Quadratic(torch.eye(3), torch.ones(3)),
            rule={"name": "weighted"}, collate_fn=collate)
    ctx = StepContext(u, u._micro_batches(examples(8, 0)), u._micro_batches(examples(8, 1)))
    v = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)]
    for mode in ("exact", "finite_difference"):
        # The gradient is linear: the difference quotient has only rounding error, ~1e-16 * ||g|| / eps.
        torch.testing.assert_close(ctx.hvp(ctx.forget_loss, ctx.forget, v, mode)[0], A @ v[0], rtol=1e-10,
                                   atol=1e-10)


# ------------------------------------------------------------------------------------------- OFMU
def test_ofmu_grad_psi_equals_autograd_of_psi() -> None:
    """grad Psi from g_f, g_r and two HVPs equals autograd through Psi = f - beta cos(grad f, grad r)."""
    ctx, u = mlp_context(micro=None)
    beta = 0.7
    step = OFMUStep(beta=beta, hvp="exact")
    _, g_f = ctx.gradient(ctx.forget_loss, ctx.forget)
    _, g_r = ctx.gradient(ctx.retain_loss, ctx.retain)
    w, _ = step.grad_psi(ctx, g_f, g_r)

    params = u.backend._params
    (bf, _), (br, _) = ctx.forget[0], ctx.retain[0]
    f = MLPLoss()(u.model, bf, None)
    r = MLPLoss()(u.model, br, None)
    gf = flat(torch.autograd.grad(f, params, create_graph=True))
    gr = flat(torch.autograd.grad(r, params, create_graph=True))
    psi = f - beta * torch.nn.functional.cosine_similarity(gf, gr, dim=0)
    expected = flat(torch.autograd.grad(psi, params))
    torch.testing.assert_close(flat(w), expected, rtol=1e-10, atol=1e-12)
    assert float((flat(w) - flat(g_f)).norm()) > 1e-3 * float(flat(g_f).norm())  # the cosine term mattered


@pytest.mark.parametrize("hvp", ["exact", "finite_difference"])
def test_ofmu_on_a_quadratic_reaches_its_penalised_fixed_point_which_tends_to_the_bilevel_solution(hvp: str) -> None:
    """f = 0.5 (t-a)^T A (t-a) with A = diag(1, 2, 0) singular (argmin f is a line), r = 0.5 ||t - b||^2.

    The bi-level solution is b projected onto argmin f: (a_1, a_2, b_3). With beta = 0 one OFMU step with SGD is
    t <- t - eta_in A (t-a) - eta ((t-b) + 2 rho A^2 (t-a)), whose fixed point in an eigendirection lambda is
    t = (eta b + s a) / (eta + s), s = eta_in lambda + 2 eta rho lambda^2: b's coordinate where lambda = 0, and
    -> a as rho grows. The run must land on that point (to the rounding of 500 contracting steps)."""
    lam = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    a = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([3.0, 2.0, 5.0], dtype=torch.float64)
    eta, eta_in = 0.05, 0.2
    f, r = Quadratic(torch.diag(lam), a), Quadratic(torch.eye(3), b)
    bilevel = torch.tensor([1.0, -1.0, 5.0], dtype=torch.float64)

    def fixed_point(rho: float) -> Tensor:
        s = eta_in * lam + 2 * eta * rho * lam**2
        return (eta * b + s * a) / (eta + s)

    u = toy(Vec(torch.zeros(3)), f, r, lr=eta, collate_fn=collate,
            step={"name": "ofmu", "beta": 0.0, "rho0": 2.0, "growth": 1.0, "inner_lr": eta_in, "hvp": hvp})
    for _ in range(500):  # slowest contraction: 1 - eta = 0.95 per step (the null direction); 0.95^500 ~ 7e-12
        u.step(examples(8, 0), examples(8, 1))
    torch.testing.assert_close(u.model.theta.detach(), fixed_point(2.0), rtol=0, atol=1e-9)
    assert float(u.model.theta.detach()[2]) == pytest.approx(5.0, abs=1e-9)  # b's coordinate along argmin f
    # A larger rho moves the fixed point towards the bi-level solution; a weighted sum f + r stays away from it.
    gaps = [float((fixed_point(rho) - bilevel).norm()) for rho in (1.0, 2.0, 100.0, 1e4)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3
    weighted = (lam * a + b) / (lam + 1)
    assert float((weighted - bilevel).norm()) > gaps[1]


def test_ofmu_rho_schedule() -> None:
    s = OFMUStep(rho0=0.5, growth=3.0, growth_every=2, rho_max=10.0)
    seen = []
    for k in range(8):
        s.steps_taken = k
        seen.append(s.rho)
    assert seen == [0.5, 0.5, 1.5, 1.5, 4.5, 4.5, 10.0, 10.0]


# ------------------------------------------------------------------------------------------- NGDiff adaptive
def test_parabola_fit_finds_a_known_minimiser_and_rejects_bad_fits() -> None:
    def L(x: float) -> float:
        return 3.0 * (x - 0.8) ** 2 + 1.0

    a, _, x = fit_parabola(L(-1), L(0), L(1))
    assert a == pytest.approx(3.0) and x == pytest.approx(0.8, rel=1e-12)
    assert fit_parabola(1.0, 2.0, 1.0)[2] is None  # concave
    assert fit_parabola(0.0, 1.0, 3.0)[2] is None  # ascending along the step
    assert next_scale(1.0, None, 0.5) == 1.0
    assert next_scale(1.0, 10.0, 0.5) == pytest.approx(1.5)  # clamped to 2x, then smoothed
    assert next_scale(1.0, 0.1, 1.0) == pytest.approx(0.5)  # clamped to lr/2


def test_adaptive_lr_fit_on_isotropic_quadratics_gives_the_optimal_step() -> None:
    """f = 0.5 h_f |t-c|^2, r = 0.5 h_r |t-c|^2: NGDiff's u = 2 (t-c)/|t-c| and its objective along the SGD step
    t - x lr u is |t-c| (1 - 2 x lr / |t-c|)^2, minimised at x* = |t-c| / (2 lr); here |t-c| = 1, lr 0.4: 1.25."""
    c = torch.tensor([1.0, 2.0])
    start = c + torch.tensor([0.6, 0.8], dtype=torch.float64)  # |t - c| = 1
    u = toy(Vec(start), Quadratic(3.0 * torch.eye(2), c), Quadratic(0.5 * torch.eye(2), c), lr=0.4,
            rule={"name": "ngdiff"}, step={"name": "adaptive_lr", "every": 2, "smoothing": 0.5}, collate_fn=collate)
    first = u.step(examples(8, 0), examples(8, 1))
    assert first["fit_x"] == pytest.approx(1.25, rel=1e-10) and first["lr"] == pytest.approx(0.4)
    assert first["lr_scale"] == pytest.approx(1.125)
    second = u.step(examples(8, 0), examples(8, 1))
    assert second["lr"] == pytest.approx(0.4 * 1.125) and "fit_x" not in second  # no refresh at odd steps
    assert u.backend.optimizer.param_groups[0]["lr"] == pytest.approx(0.4)  # the schedule's own value is kept


# ------------------------------------------------------------------------------------------- resume
def _llama_unlearner(step: dict, rule: dict | None) -> Unlearner:
    model = harness_tiny_model(0).double()
    u = Unlearner(model=model, forget_loss=build_objective(FORGET_LOSSES, {"name": "ga"}),
                  retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}),
                  rule=build_direction(rule) if rule else None, backend=Backend(),
                  make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), make_scheduler=None, collate=collate,
                  cfg=LoopConfig(batch_size=8, micro_batch_size=4, max_steps=6, checkpoint_every=3),
                  step=build_step(step))
    u._make_scheduler = lambda opt, n: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=n)
    return u


@pytest.mark.parametrize("step,rule", [
    ({"name": "ofmu", "beta": 0.1, "rho0": 1.0, "growth": 2.0, "growth_every": 2, "inner_steps": 2,
      "inner_lr": 1e-3}, None),
    ({"name": "adaptive_lr", "every": 2}, {"name": "ngdiff"}),
])
def test_resume_is_exact(step: dict, rule: dict | None, tmp_path) -> None:
    """Stop after step 4, resume from the step-3 checkpoint: the strategy's state (rho's step count, the lr
    scale) comes back with the weights, and the resumed run takes bit-identical steps."""
    f, r = examples(20, 8), examples(30, 9)
    straight = _llama_unlearner(step, rule)
    rows_straight = straight.run(f, r)

    class Stop(Exception):
        pass

    def stop_at_4(row: dict) -> None:
        if row["step"] == 4:
            raise Stop

    with pytest.raises(Stop):
        _llama_unlearner(step, rule).run(f, r, on_step=stop_at_4, checkpoint_dir=tmp_path)
    resumed = _llama_unlearner(step, rule)
    rows_resumed = resumed.run(f, r, checkpoint_dir=tmp_path, resume_from=tmp_path / "step-00000003")
    for p, q in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(p, q)
    for a, b in zip(rows_resumed, rows_straight[3:], strict=True):
        for k in ("lr", "loss_f", "loss_r", "rho", "lr_scale"):
            if k in b:
                assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), k
    assert resumed.step_strategy.state_dict() == straight.step_strategy.state_dict()


# ------------------------------------------------------------------------------------------- declarations
def test_backends_are_declared_and_refused_with_the_key() -> None:
    """Exact HVPs (double backward) run in one process only; finite differences and the adaptive lr run on every
    backend (tests/distributed/test_steps_backends.py). A refusal is one line naming the keys to change."""
    exact = build_step({"name": "ofmu", "hvp": "exact"})
    exact.check_backend("single")
    for name in ("ddp", "fsdp2", "deepspeed"):
        with pytest.raises(ConfigError, match=rf"trainer\.backend={name}.*method\.step\.hvp=finite_difference") as err:
            exact.check_backend(name)
        assert "\n" not in str(err.value)
    fd = build_step({"name": "ofmu", "hvp": "finite_difference"})
    adaptive = build_step({"name": "adaptive_lr"})
    for name in ("single", "ddp", "fsdp2", "deepspeed"):
        fd.check_backend(name)
        adaptive.check_backend(name)
    with pytest.raises(ConfigError, match=r"trainer\.backend=other: step strategy ofmu"):
        fd.check_backend("other")  # a backend the strategy does not declare is refused, not assumed to work
    build_step(None).check_backend("other")  # the default step runs everywhere
    with pytest.raises(ConfigError, match=r"method\.step\.hvp"):
        build_step({"name": "ofmu", "hvp": "magic"})
    with pytest.raises(ConfigError, match=r"method\.step\.name"):
        build_step({"name": "nope"})


def test_the_default_step_is_the_direction_step_bit_for_bit() -> None:
    """Unlearner without `step` and with step=direction take identical steps (both are the loop's old step)."""
    def make(step):
        model = harness_tiny_model(0).double()
        return Unlearner(model=model, forget_loss=build_objective(FORGET_LOSSES, {"name": "npo"}),
                         retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}),
                         rule=build_direction({"name": "blur"}), backend=Backend(),
                         make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), make_scheduler=None,
                         collate=collate, cfg=LoopConfig(batch_size=8, micro_batch_size=2, epochs=1),
                         ref_model=copy.deepcopy(model).requires_grad_(False), step=step)

    a, b = make(None), make(build_step({"name": "direction"}))
    for k in range(2):
        assert a.step(examples(8, k), examples(8, k + 5)) == b.step(examples(8, k), examples(8, k + 5))
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
