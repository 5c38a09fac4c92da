"""Evaluation: pure metrics, model scoring, and benchmark evaluators behind the `EVALUATORS` registry.

Importing this package registers every evaluator, so `build_evaluator(cfg.eval)` can find any of them.
"""

from __future__ import annotations

from unlearn.evals.registry import EVALUATORS, build_evaluator
from unlearn.evals.tofu import TofuEvalResult, TofuEvaluator, summarise

__all__ = ["EVALUATORS", "TofuEvalResult", "TofuEvaluator", "build_evaluator", "summarise"]
