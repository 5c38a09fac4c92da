"""TOFU (Maini et al., 2024): the hub benchmark, its embedded version `tofu_mini`, and the TOFU evaluator."""

from unlearn.benchmarks.tofu import benchmark as _benchmark  # noqa: F401  (registers tofu, tofu_mini)
from unlearn.benchmarks.tofu import evaluator as _evaluator  # noqa: F401  (registers the tofu evaluator)
from unlearn.benchmarks.tofu import general as _general  # noqa: F401  (registers TOFU's general-corpus section)
