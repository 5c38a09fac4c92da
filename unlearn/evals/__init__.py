"""Evaluation: the evaluator interface and registry, pure metrics, and model scoring (NLLs, generations).

Benchmark-specific evaluators live with their benchmark (`unlearn.benchmarks.<name>.evaluator`) and register in
`EVALUATORS` when `unlearn.benchmarks` is imported; benchmark-independent ones (lm-evaluation-harness) live here.
"""

from __future__ import annotations

from unlearn.evals.base import EVALUATORS, Evaluator, build_evaluators, read_items, write_items

__all__ = ["EVALUATORS", "Evaluator", "build_evaluators", "read_items", "write_items"]
