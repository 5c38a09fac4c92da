"""Benchmarks: each subpackage holds one benchmark's loader, embedded world, evaluator and registration.

Importing this package registers every benchmark (in `BENCHMARKS`) and every benchmark-specific evaluator (in
`unlearn.evals.EVALUATORS`).
"""

from unlearn.benchmarks import muse as _muse  # noqa: F401  (registers muse, muse_mini and the muse evaluator)
from unlearn.benchmarks import tofu as _tofu  # noqa: F401  (registers tofu, tofu_mini and the tofu evaluator)
from unlearn.benchmarks import wmdp as _wmdp  # noqa: F401  (registers wmdp and wmdp_mini)
from unlearn.benchmarks.base import BENCHMARKS, Benchmark, Task, build_benchmark, prepare_benchmark

__all__ = ["BENCHMARKS", "Benchmark", "Task", "build_benchmark", "prepare_benchmark"]
