"""WMDP (Li et al., 2024): the real benchmark (`wmdp`) and the embedded world (`wmdp_mini`); scored by the
lm-evaluation-harness stage (`unlearn.evals.harness`)."""

from unlearn.benchmarks.wmdp import benchmark as _benchmark  # noqa: F401  (registers wmdp and wmdp_mini)
