"""Step strategies (docs/methods.md#step-strategies): the default `direction` step, OFMU, NGDiff's adaptive lr."""

from unlearn.train.steps import adaptive_lr as _adaptive_lr  # noqa: F401  (registers adaptive_lr)
from unlearn.train.steps import direction as _direction  # noqa: F401  (registers direction)
from unlearn.train.steps import ofmu as _ofmu  # noqa: F401  (registers ofmu)
from unlearn.train.steps.base import HVP_MODES, STEPS, StepContext, StepStrategy, build_step

__all__ = ["HVP_MODES", "STEPS", "StepContext", "StepStrategy", "build_step"]
