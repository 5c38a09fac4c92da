"""NGDiff's adaptive learning rate (Bu et al., arXiv 2410.22086): a GeN-style parabola fit along the update.

Every `every` steps the loss is measured at theta_old - d, theta_old and theta_old + d, where d = theta_new -
theta_old is the update the optimizer just took (with its own preconditioning, so the fit is along the step really
taken). With x in {-1, 0, 1} those are L(-1), L(0), L(1); the parabola through them,
`L(x) = c + b x + a x^2`, a = (L(1) + L(-1) - 2 L(0)) / 2, b = (L(1) - L(-1)) / 2, has its minimiser at
x* = -b / (2a). It is accepted only when the curvature is positive (a > 0) and the step descends (b < 0, i.e. a
positive slope of decrease): then the fitted learning rate x* * lr is clamped to [lr/2, 2 lr] (lr the current
one) and smoothed, `scale <- (1 - smoothing) * scale + smoothing * x* * scale`. Otherwise the scale is kept.
The scale multiplies the scheduled learning rate of every parameter group from the next step on.

The loss fitted is NGDiff's own objective, `f / ||g_f|| + r / ||g_r||` with the norms of this step (its gradient
is exactly the NGDiff direction), on the step's forget and retain batches, forward only. The extra cost is three
forwards per refresh step (the loss at theta_old, -d, +d) and two copies of this rank's pieces of the parameters
(its shards or master partitions on sharded backends) while they are probed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from unlearn.directions.base import apply_direction
from unlearn.errors import ConfigError
from unlearn.train.steps.base import STEPS, StepContext
from unlearn.train.steps.direction import DirectionStep


def fit_parabola(l_minus: float, l_zero: float, l_plus: float) -> tuple[float, float, float | None]:
    """(a, b, x*) of `c + b x + a x^2` through (-1, l_minus), (0, l_zero), (1, l_plus); x* None when the fit is
    rejected (not convex, or not a descent direction)."""
    a = (l_plus + l_minus - 2.0 * l_zero) / 2.0
    b = (l_plus - l_minus) / 2.0
    if not (a > 0 and b < 0) or not (math.isfinite(a) and math.isfinite(b)):
        return a, b, None
    return a, b, -b / (2.0 * a)


def next_scale(scale: float, x_star: float | None, smoothing: float) -> float:
    """The accepted minimiser, clamped to [1/2, 2] times the current lr, smoothed into the scale."""
    if x_star is None:
        return scale
    target = scale * min(2.0, max(0.5, x_star))
    return (1.0 - smoothing) * scale + smoothing * target


@STEPS.register("adaptive_lr")
class AdaptiveLRStep(DirectionStep):
    """The direction step (NGDiff's rule) with a learning rate refreshed by a parabola fit every `every` steps."""

    def __init__(self, every: int = 10, smoothing: float = 0.5) -> None:
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"method.step.every: must be an integer >= 1, got {every!r}")
        if not (isinstance(smoothing, int | float) and 0 < smoothing <= 1):
            raise ConfigError(f"method.step.smoothing: must be in (0, 1], got {smoothing!r}")
        self.every, self.smoothing = every, float(smoothing)
        self.scale = 1.0
        self.steps_taken = 0

    def supported_backends(self) -> tuple[str, ...]:
        # The probes move each rank's pieces of the parameters (StepContext.load_params): every backend.
        return ("single", "ddp", "fsdp2", "deepspeed")

    def describe(self) -> str:
        return "adaptive_lr"

    def _objective_loss(self, ctx: StepContext, nf: float, nr: float) -> float:
        lf = ctx.loss(ctx.forget_loss, ctx.forget)
        lr_ = ctx.loss(ctx.retain_loss, ctx.retain)
        return (lf / nf if nf > 0 else 0.0) + (lr_ / nr if nr > 0 else 0.0)

    def step(self, ctx: StepContext) -> dict[str, float]:
        loss_f, loss_r, direction, g_f, g_r = self.direction(ctx)
        apply_direction(direction, g_f, g_r)
        opt = ctx.backend.optimizer
        assert opt is not None
        scheduled = [g["lr"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["lr"] = g["lr"] * self.scale
        refresh = self.steps_taken % self.every == 0
        row: dict[str, float] = {}
        if refresh:
            old = ctx.save_params()
        lr = ctx.current_lr()
        ctx.backend.step()
        for g, s in zip(opt.param_groups, scheduled, strict=True):  # the scheduler keeps its own values
            g["lr"] = s
        if refresh:
            row = self._refresh(ctx, old, direction.gram.norm_f, direction.gram.norm_r)
        if ctx.u.scheduler is not None:
            ctx.u.scheduler.step()
        self.steps_taken += 1
        return {"lr": lr, "loss_f": loss_f, "loss_r": loss_r, **direction.diagnostics(), "lr_scale": self.scale,
                **row}

    @torch.no_grad()
    def _refresh(self, ctx: StepContext, old: list[torch.Tensor], nf: float, nr: float) -> dict[str, float]:
        new = ctx.save_params()
        l_plus = self._objective_loss(ctx, nf, nr)
        ctx.load_params(old)
        l_zero = self._objective_loss(ctx, nf, nr)
        delta = torch._foreach_sub(new, old)
        ctx.load_params(old, delta, -1.0)
        l_minus = self._objective_loss(ctx, nf, nr)
        ctx.load_params(new)  # the step taken stays taken: the fit steers the next ones
        a, b, x_star = fit_parabola(l_minus, l_zero, l_plus)
        self.scale = next_scale(self.scale, x_star, self.smoothing)
        return {"fit_a": a, "fit_b": b, "fit_x": math.nan if x_star is None else x_star}

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "steps_taken": self.steps_taken}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scale, self.steps_taken = float(state["scale"]), int(state["steps_taken"])
