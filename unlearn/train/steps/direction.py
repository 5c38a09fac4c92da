"""The `direction` step (the default): accumulate g_f, accumulate g_r, the rule, clipping, the optimizer step.

This is the loop's original step, operation for operation, so every method that does not name a step strategy
takes bit-identical steps to before. It runs on every backend (its gradients never leave the backend's buffers).
"""

from __future__ import annotations

from unlearn.directions.base import Direction, apply_direction
from unlearn.errors import ConfigError
from unlearn.train.steps.base import STEPS, StepContext, StepStrategy


@STEPS.register("direction")
class DirectionStep(StepStrategy):
    """u = rule(g_f, g_r), clipped, handed to the optimizer as the gradient."""

    def direction(self, ctx: StepContext) -> tuple[float, float, Direction, list, list]:
        """The forget and retain passes and the (clipped) direction; u is not yet written."""
        b = ctx.backend
        if ctx.rule is None:
            raise ConfigError("method.direction.name: missing required key (the direction step needs a rule)")
        b.zero_grads()
        loss_f = ctx.accumulate(ctx.forget_loss, ctx.forget)
        g_f = b.take_grads()
        loss_r = ctx.accumulate(ctx.retain_loss, ctx.retain)
        g_r = b.grads()
        direction = ctx.rule.direction(g_f, g_r, b.space, closure=None)
        return loss_f, loss_r, direction.clipped(ctx.max_grad_norm), g_f, g_r

    def step(self, ctx: StepContext) -> dict[str, float]:
        loss_f, loss_r, direction, g_f, g_r = self.direction(ctx)
        apply_direction(direction, g_f, g_r)
        lr = ctx.optimizer_step()
        return {"lr": lr, "loss_f": loss_f, "loss_r": loss_r, **direction.diagnostics()}
