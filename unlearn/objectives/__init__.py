"""Forget and retain objectives: each turns a collated batch into a scalar loss to be *minimised*.

Every objective is a mean over examples of a per-example quantity. That is what makes gradient accumulation
exact: micro-batches weighted by their share of the step's examples sum to the full batch's loss.
"""

from unlearn.objectives import forget as _forget  # noqa: F401  (registers forget losses)
from unlearn.objectives import retain as _retain  # noqa: F401  (registers retain losses)
from unlearn.objectives import rmu as _rmu  # noqa: F401  (registers RMU's forget and retain losses)
from unlearn.objectives.base import FORGET_LOSSES, RETAIN_LOSSES, Objective, build_objective

__all__ = ["FORGET_LOSSES", "RETAIN_LOSSES", "Objective", "build_objective"]
