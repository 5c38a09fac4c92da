"""Direction rules: turn the accumulated forget and retain gradients into the update direction."""

from unlearn.directions import rules as _rules  # noqa: F401  (registers the rules)
from unlearn.directions.base import DIRECTIONS, Direction, DirectionRule, LinearRule, build_direction
from unlearn.directions.gradspace import GradSpace, Gram

__all__ = ["DIRECTIONS", "Direction", "DirectionRule", "GradSpace", "Gram", "LinearRule", "build_direction"]
