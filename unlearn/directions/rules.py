"""Weighted sum, NGDiff and BLUR (docs/methods.md#direction-rules), each a linear rule on the Gram matrix."""

from __future__ import annotations

import math

from unlearn.directions.base import DIRECTIONS, LinearRule
from unlearn.directions.gradspace import Gram
from unlearn.errors import ConfigError


@DIRECTIONS.register("weighted")
class Weighted(LinearRule):
    """`u = forget_weight * g_f + lam * g_r`: GA (lam 0), GradDiff, NPO, SimNPO, RMU.

    Which objective wins depends on the step's gradient magnitudes, so the update can flip between serving f and
    serving r; that is the failure mode BLUR removes.
    """

    def __init__(self, lam: float = 1.0, forget_weight: float = 1.0) -> None:
        if lam < 0 or forget_weight < 0:
            raise ConfigError(f"method.direction: lam and forget_weight must be >= 0, got {lam}, {forget_weight}")
        self.lam = float(lam)
        self.forget_weight = float(forget_weight)

    def coefficients(self, gram: Gram) -> tuple[float, float]:
        return self.forget_weight, self.lam


@DIRECTIONS.register("ngdiff")
class NGDiff(LinearRule):
    """NGDiff (Bu et al., 2024): `u = g_f/||g_f|| + g_r/||g_r||`, each objective on an equal footing.

    The paper's adaptive learning rate (a GeN-style parabola fit) is not implemented yet: the step size comes
    from the optimizer's fixed schedule. A zero gradient contributes nothing instead of dividing by zero.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = float(eps)

    def coefficients(self, gram: Gram) -> tuple[float, float]:
        a = 1.0 / gram.norm_f if gram.ff > self.eps else 0.0
        b = 1.0 / gram.norm_r if gram.rr > self.eps else 0.0
        return a, b


@DIRECTIONS.register("blur")
class BLUR(LinearRule):
    """BLUR: `u = gamma*g_f + g_r - (<g_f,g_r>/||g_f||^2) g_f`, so `<g_f, u> = gamma*||g_f||^2` exactly.

    f has priority: u always descends f at rate gamma*||g_f||^2, and of g_r only the component orthogonal to g_f
    is kept. When `||g_f||^2 <= eps` the projection is undefined; f is then (near) stationary, so u = g_r.
    """

    def __init__(self, gamma: float = 1.0, eps: float = 1e-12) -> None:
        if not gamma > 0:
            raise ConfigError(f"method.direction.gamma: must be > 0, got {gamma}")
        self.gamma = float(gamma)
        self.eps = float(eps)

    def coefficients(self, gram: Gram) -> tuple[float, float]:
        if gram.ff <= self.eps or not math.isfinite(gram.ff):
            return 0.0, 1.0
        return self.gamma - gram.fr / gram.ff, 1.0
