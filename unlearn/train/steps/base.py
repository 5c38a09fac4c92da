"""Step strategies: what one optimizer step does, as a pluggable unit (docs/methods.md#step-strategies).

The loop hands a strategy a `StepContext` for the step's forget and retain micro-batches and gets back the step's
diagnostics. The context offers the operations a step is made of, on whatever backend runs it:

* `accumulate(objective, micro)`: backward over the micro-batches into the installed gradient buffers;
* `gradient(objective, micro)`: the same, returned as a per-parameter copy (for steps that keep several);
* `hvp(objective, micro, v)`: a Hessian-vector product, exact (double backward) or by finite differences;
* `dots(pairs)` / `space`: the global inner products of `GradSpace`;
* `write_update(u)` and `optimizer_step()`: write the final update as the gradient and step (with the schedule).

A strategy's own state (OFMU's rho, NGDiff's learning-rate estimate) is a JSON-able dict that the loop writes into
every checkpoint and restores on resume, so resumed runs take exactly the steps uninterrupted ones take. Which
backends a strategy supports is declared (`supported_backends`) and checked before any model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unlearn.directions.base import DirectionRule
from unlearn.directions.gradspace import GradSpace
from unlearn.errors import ConfigError
from unlearn.objectives.base import Objective
from unlearn.registry import Registry

if TYPE_CHECKING:
    from unlearn.train.loop import Unlearner

MicroBatches = list[tuple[dict[str, Tensor], float]]
Vector = list[Tensor]  # one tensor per trainable parameter, in the backend's parameter order

HVP_MODES = ("exact", "finite_difference")


class StepContext:
    """The operations a step strategy may use, bound to one step's micro-batches and the loop's backend."""

    def __init__(self, unlearner: Unlearner, forget: MicroBatches, retain: MicroBatches) -> None:
        self.u = unlearner
        self.forget, self.retain = forget, retain
        self.backend = unlearner.backend
        self.model: nn.Module = unlearner.model
        self.forget_loss: Objective = unlearner.forget_loss
        self.retain_loss: Objective = unlearner.retain_loss
        self.rule: DirectionRule | None = unlearner.rule
        self.max_grad_norm = unlearner.cfg.max_grad_norm

    # -- gradients -------------------------------------------------------------------------------------
    @property
    def space(self) -> GradSpace:
        return self.backend.space

    @property
    def params(self) -> list[nn.Parameter]:
        return self.backend._params

    def accumulate(self, objective: Objective, micro: MicroBatches) -> float:
        """Backward of `objective` over `micro` into the installed buffers (they end up holding the sum)."""
        return self.u._accumulate(objective, micro)

    def gradient(self, objective: Objective, micro: MicroBatches) -> tuple[float, Vector]:
        """(mean loss, this rank's gradient as fresh tensors laid out like the parameters it moves): one tensor
        per parameter in one process and under DDP/ZeRO-0, the local shards under FSDP2, the flat partitions
        (aligned with the fp32 master partitions) under ZeRO-1/2/3 (`Backend.grad_pieces`)."""
        self.backend.zero_grads()
        loss = self.accumulate(objective, micro)
        return loss, [g.detach().clone() for g in self.backend.grad_pieces()]

    def loss(self, objective: Objective, micro: MicroBatches) -> float:
        """The objective's mean over `micro` at the current parameters, without a graph (line searches)."""
        total = 0.0
        with torch.no_grad():
            for batch, weight in micro:
                with self.backend.autocast():
                    total += float(objective(self.model, batch, self.u.reference) * weight)
        return self.backend.reduce_mean(total)

    def hvp(self, objective: Objective, micro: MicroBatches, v: Vector, mode: str, eps: float = 1e-3) -> Vector:
        """`H v`, H the Hessian of `objective` summed over `micro`; see `unlearn.train.steps.hvp`."""
        from unlearn.train.steps.hvp import exact_hvp, finite_difference_hvp

        if mode == "exact":
            return exact_hvp(self, objective, micro, v)
        if mode == "finite_difference":
            return finite_difference_hvp(self, objective, micro, v, eps)
        raise ConfigError(f"method.step.hvp: expected one of {', '.join(HVP_MODES)}, got {mode!r}")

    def dots(self, pairs: Sequence[tuple[Sequence[Tensor], Sequence[Tensor]]]) -> list[float]:
        return self.space.dots(pairs)

    # -- parameters and the update -----------------------------------------------------------------------
    # Vectors are in the layout of `gradient`: each rank moves its own pieces of the parameters (its shards,
    # its master partitions) by its own pieces of v, which together move every entry exactly once.
    @torch.no_grad()
    def add_to_params(self, v: Vector, alpha: float) -> None:
        """theta <- theta + alpha * v (inner steps, finite differences, line searches), on every backend."""
        torch._foreach_add_(self.backend.param_pieces(), list(v), alpha=alpha)
        self.backend.params_written()

    @torch.no_grad()
    def save_params(self) -> Vector:
        """A copy of this rank's pieces of theta (the master weights where the backend keeps them)."""
        return [p.detach().clone() for p in self.backend.param_pieces()]

    @torch.no_grad()
    def load_params(self, saved: Vector, v: Vector | None = None, alpha: float = 0.0) -> None:
        """theta <- saved (+ alpha * v): restores a `save_params` copy bit for bit, or moves from it."""
        pieces = self.backend.param_pieces()
        torch._foreach_copy_(pieces, list(saved))
        if v is not None:
            torch._foreach_add_(pieces, list(v), alpha=alpha)
        self.backend.params_written()

    @torch.no_grad()
    def write_update(self, u: Vector) -> None:
        """Install `u` as the gradient the optimizer steps with."""
        torch._foreach_copy_(self.backend.grad_pieces(), list(u))

    def current_lr(self) -> float:
        opt = self.backend.optimizer
        return float(opt.param_groups[0]["lr"]) if opt is not None else math.nan

    def optimizer_step(self) -> float:
        """Step the optimizer with the installed update, then the schedule; returns the lr used."""
        lr = self.current_lr()
        self.backend.step()
        if self.u.scheduler is not None:
            self.u.scheduler.step()
        return lr


class StepStrategy:
    """Base class. `supported_backends` None means every backend; else the `trainer.backend` names it runs on."""

    #: Does the strategy use `method.direction`? (OFMU does not: its update is no combination of g_f and g_r.)
    uses_rule: bool = True

    def supported_backends(self) -> tuple[str, ...] | None:
        return None

    def check_backend(self, backend_name: str) -> None:
        """A clear one-line error, before anything is loaded, when this strategy cannot run on the backend."""
        ok = self.supported_backends()
        if ok is not None and backend_name not in ok:
            raise ConfigError(
                f"trainer.backend={backend_name}: step strategy {self.describe()} supports only "
                f"{', '.join(ok)}{self.backend_hint()}")

    def describe(self) -> str:
        return type(self).__name__

    def backend_hint(self) -> str:
        return ""

    def step(self, ctx: StepContext) -> dict[str, float]:
        raise NotImplementedError

    # -- checkpointed state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


STEPS: Registry[StepStrategy] = Registry("step strategy", "method.step.name")


def build_step(cfg: Mapping[str, Any] | None) -> StepStrategy:
    """`method.step` (absent: the `direction` step, today's behaviour)."""
    if cfg is None:
        cfg = {"name": "direction"}
    if not isinstance(cfg, Mapping) or "name" not in cfg:
        raise ConfigError("method.step.name: missing (a step strategy needs a name)")
    return STEPS.build(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
