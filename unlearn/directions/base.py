"""The direction-rule interface and its registry.

The loop hands a rule the accumulated forget and retain gradients and gets back a `Direction`: how to combine
them, plus the per-step diagnostics of the BLUR paper (alignments A_f, A_r of eq. 8 and cos(g_f, g_r)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unlearn.directions.gradspace import GradSpace, Gram
from unlearn.errors import ConfigError
from unlearn.registry import Registry

# Re-evaluates (loss_f, loss_r) at the current parameters with a fresh graph; for rules such as OFMU that take
# extra gradient or Hessian-vector products. Linear rules ignore it.
LossClosure = Callable[[], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Direction:
    """The update `u = a * g_f + b * g_r` and what it means for f and r."""

    a: float
    b: float
    gram: Gram

    @property
    def dot_fu(self) -> float:
        return self.a * self.gram.ff + self.b * self.gram.fr

    @property
    def dot_ru(self) -> float:
        return self.a * self.gram.fr + self.b * self.gram.rr

    @property
    def norm_u(self) -> float:
        g = self.gram
        sq = self.a**2 * g.ff + 2 * self.a * self.b * g.fr + self.b**2 * g.rr
        return math.sqrt(max(sq, 0.0))

    def clipped(self, max_norm: float) -> Direction:
        """Scale u to norm `max_norm` if it is longer: clipping acts on the combined direction, not on g_f, g_r."""
        norm = self.norm_u
        if max_norm <= 0 or norm <= max_norm:
            return self
        s = max_norm / norm
        return Direction(a=self.a * s, b=self.b * s, gram=self.gram)

    def diagnostics(self) -> dict[str, float]:
        g = self.gram
        nan = float("nan")
        return {
            "norm_f": g.norm_f,
            "norm_r": g.norm_r,
            "cos_fr": g.cos_fr,
            "A_f": self.dot_fu / g.ff if g.ff > 0 else nan,
            "A_r": self.dot_ru / g.rr if g.rr > 0 else nan,
            "norm_u": self.norm_u,
            "coef_f": self.a,
            "coef_r": self.b,
        }


class DirectionRule:
    """Base class: turns accumulated (g_f, g_r) into a `Direction`."""

    def direction(
        self,
        g_f: Sequence[Tensor],
        g_r: Sequence[Tensor],
        space: GradSpace,
        closure: LossClosure | None = None,
    ) -> Direction:
        raise NotImplementedError


class LinearRule(DirectionRule):
    """A rule whose update is a linear combination `a*g_f + b*g_r` fixed by the Gram matrix alone."""

    def coefficients(self, gram: Gram) -> tuple[float, float]:
        raise NotImplementedError

    def direction(
        self,
        g_f: Sequence[Tensor],
        g_r: Sequence[Tensor],
        space: GradSpace,
        closure: LossClosure | None = None,
    ) -> Direction:
        gram = space.gram(g_f, g_r)
        a, b = self.coefficients(gram)
        return Direction(a=a, b=b, gram=gram)


def apply_direction(direction: Direction, g_f: Sequence[Tensor], g_r: Sequence[Tensor]) -> None:
    """Overwrite `g_r` in place with `u = a*g_f + b*g_r` (fused; no new full-size buffer)."""
    g_r = list(g_r)
    if direction.b != 1.0:
        torch._foreach_mul_(g_r, direction.b)
    if direction.a != 0.0:
        torch._foreach_add_(g_r, list(g_f), alpha=direction.a)


DIRECTIONS: Registry[DirectionRule] = Registry("direction rule", "method.direction.name")


def build_direction(cfg: Mapping[str, Any]) -> DirectionRule:
    if "name" not in cfg:
        raise ConfigError("method.direction.name: missing")
    return DIRECTIONS.build(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"})
