"""OFMU (arXiv 2509.22483): penalty-based bi-level unlearning with Hessian-vector products.

No public code exists; every choice below is this repository's, with its reason in docs/methods.md#ofmu.
With f the configured forget objective (minimised, e.g. GA = -NLL) and r the retain objective:

    inner:  Psi = f - beta * cos(g_f, g_r)           (the paper's Phi = L_f - beta cos, L_f the NLL, maximised,
                                                        is -Psi up to the sign convention of f)
            grad Psi = g_f - beta * (H_f a_f + H_r a_r),
              a_f = g_r / (|g_f||g_r|) - cos * g_f / |g_f|^2,   a_r = g_f / (|g_f||g_r|) - cos * g_r / |g_r|^2
            T plain gradient steps theta <- theta - inner_lr * grad Psi  (descending Psi = ascending Phi)
    outer:  minimise r + rho * ||grad Psi||^2;  its gradient g_r + 2 rho (Hess Psi) grad Psi is taken as
            u = g_r + 2 rho H_f grad Psi  (the beta * Hess(cos) part of Hess Psi needs third derivatives: dropped;
            exact when beta = 0), handed to the optimizer as the gradient (lr = optimizer.lr, schedule included)
    rho_k = min(rho_max, rho0 * growth ** floor(k / growth_every)),  k = steps taken before this one

The last inner iterate's gradients serve the outer step too (both are evaluated at that point), so a step with
T = 1 costs 2 gradients + 3 Hessian-vector products (2 with beta = 0): about 4x GradDiff's 2 gradients with exact
HVPs (`make bench` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from unlearn.errors import ConfigError
from unlearn.train.steps.base import HVP_MODES, STEPS, StepContext, StepStrategy, Vector


def _number(name: str, value: Any, minimum: float, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        rel = ">" if strict else ">="
        raise ConfigError(f"method.step.{name}: must be a number {rel} {minimum}, got {value!r}")
    return float(value)


def _finite(x: float) -> bool:
    """The inner updates move the weights outside the optimizer, so they skip a non-finite w themselves: under
    fp16 an overflowed gradient must leave the weights untouched, as DeepSpeed's step does when it skips."""
    return math.isfinite(x)


@STEPS.register("ofmu")
class OFMUStep(StepStrategy):
    """One OFMU iteration per optimizer step: T inner steps on Psi, then the penalised outer step."""

    uses_rule = False

    def __init__(self, beta: float = 0.1, rho0: float = 1.0, growth: float = 1.1, growth_every: int = 10,
                 rho_max: float = 1e3, inner_steps: int = 1, inner_lr: float = 1e-4, hvp: str = "exact",
                 fd_eps: float = 1e-3) -> None:
        self.beta = _number("beta", beta, 0.0)
        self.rho0 = _number("rho0", rho0, 0.0)
        self.growth = _number("growth", growth, 1.0)
        if not isinstance(growth_every, int) or growth_every < 1:
            raise ConfigError(f"method.step.growth_every: must be an integer >= 1, got {growth_every!r}")
        self.growth_every = growth_every
        self.rho_max = _number("rho_max", rho_max, self.rho0)
        if not isinstance(inner_steps, int) or inner_steps < 1:
            raise ConfigError(f"method.step.inner_steps: must be an integer >= 1, got {inner_steps!r}")
        self.inner_steps = inner_steps
        self.inner_lr = _number("inner_lr", inner_lr, 0.0)
        if hvp not in HVP_MODES:
            raise ConfigError(f"method.step.hvp: expected one of {', '.join(HVP_MODES)}, got {hvp!r}")
        self.hvp = hvp
        self.fd_eps = _number("fd_eps", fd_eps, 0.0, strict=True)
        self.steps_taken = 0

    def supported_backends(self) -> tuple[str, ...]:
        # Finite differences and the inner steps move each rank's pieces of the parameters: every backend.
        return ("single",) if self.hvp == "exact" else ("single", "ddp", "fsdp2", "deepspeed")

    def describe(self) -> str:
        return f"ofmu (method.step.hvp={self.hvp})"

    def backend_hint(self) -> str:
        # Only the exact mode is ever refused.
        return (" (double backward does not pass through DDP's reducer, FSDP2's sharded parameters or DeepSpeed's "
                "gradient hooks; method.step.hvp=finite_difference runs on every backend)")

    @property
    def rho(self) -> float:
        return min(self.rho_max, self.rho0 * self.growth ** (self.steps_taken // self.growth_every))

    def grad_psi(self, ctx: StepContext, g_f: Vector, g_r: Vector) -> tuple[Vector, dict[str, float]]:
        """grad Psi at the current parameters from g_f, g_r and (beta > 0) two Hessian-vector products."""
        ff, fr, rr = ctx.dots([(g_f, g_f), (g_f, g_r), (g_r, g_r)])
        nf, nr = math.sqrt(max(ff, 0.0)), math.sqrt(max(rr, 0.0))
        cos = fr / (nf * nr) if nf > 0 and nr > 0 else math.nan
        w = [g.clone() for g in g_f]
        if self.beta > 0 and nf > 0 and nr > 0:
            a_f = torch._foreach_mul(g_r, 1.0 / (nf * nr))
            torch._foreach_add_(a_f, g_f, alpha=-cos / ff)
            a_r = torch._foreach_mul(g_f, 1.0 / (nf * nr))
            torch._foreach_add_(a_r, g_r, alpha=-cos / rr)
            torch._foreach_add_(w, ctx.hvp(ctx.forget_loss, ctx.forget, a_f, self.hvp, self.fd_eps),
                                alpha=-self.beta)
            torch._foreach_add_(w, ctx.hvp(ctx.retain_loss, ctx.retain, a_r, self.hvp, self.fd_eps),
                                alpha=-self.beta)
        return w, {"norm_f": nf, "norm_r": nr, "cos_fr": cos, "ff": ff, "rr": rr}

    def step(self, ctx: StepContext) -> dict[str, float]:
        rho = self.rho
        for t in range(self.inner_steps):
            loss_f, g_f = ctx.gradient(ctx.forget_loss, ctx.forget)
            loss_r, g_r = ctx.gradient(ctx.retain_loss, ctx.retain)
            w, stats = self.grad_psi(ctx, g_f, g_r)
            if t < self.inner_steps - 1 and _finite(ctx.dots([(w, w)])[0]):
                ctx.add_to_params(w, -self.inner_lr)
        # Outer direction at the last inner iterate (before its own inner update is applied).
        u = [g.clone() for g in g_r]
        if rho > 0:
            torch._foreach_add_(u, ctx.hvp(ctx.forget_loss, ctx.forget, w, self.hvp, self.fd_eps), alpha=2 * rho)
        (ww, fu, ru, uu) = ctx.dots([(w, w), (g_f, u), (g_r, u), (u, u)])
        norm_u = math.sqrt(max(uu, 0.0))
        if ctx.max_grad_norm > 0 and norm_u > ctx.max_grad_norm:  # clipping acts on u, as in the direction step
            torch._foreach_mul_(u, ctx.max_grad_norm / norm_u)
            fu, ru, norm_u = (x * ctx.max_grad_norm / norm_u for x in (fu, ru, norm_u))
        if _finite(ww):
            ctx.add_to_params(w, -self.inner_lr)
        ctx.write_update(u)
        lr = ctx.optimizer_step()
        self.steps_taken += 1
        ff, rr = stats["ff"], stats["rr"]
        return {"lr": lr, "loss_f": loss_f, "loss_r": loss_r, "norm_f": stats["norm_f"], "norm_r": stats["norm_r"],
                "cos_fr": stats["cos_fr"], "A_f": fu / ff if ff > 0 else math.nan,
                "A_r": ru / rr if rr > 0 else math.nan, "norm_u": norm_u, "rho": rho, "penalty": ww,
                "coef_f": math.nan, "coef_r": math.nan}

    def state_dict(self) -> dict[str, Any]:
        return {"steps_taken": self.steps_taken}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps_taken = int(state["steps_taken"])
