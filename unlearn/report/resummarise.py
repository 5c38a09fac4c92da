"""Re-aggregate a finished run from its per-item files alone, with no model.

A run directory holds the unlearned model's items (`items/<evaluator>.jsonl`) and the reference models' items
(`items/<role>/<evaluator>.jsonl`); the evaluators' `summarise` is pure, so this reproduces `summary.json` exactly,
and lets a table be recomputed after a metric's aggregation changes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from unlearn.benchmarks.base import ROLES
from unlearn.evals.base import build_evaluators, read_items
from unlearn.pipeline import summarise


def resummarise(run_dir: str | Path) -> dict[str, float]:
    """The unlearned model's summary metrics recomputed from `run_dir`'s items (timings and step counts excluded)."""
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    evaluators = build_evaluators(cfg["eval"])
    items = {ev.name: read_items(run_dir / "items" / f"{ev.name}.jsonl") for ev in evaluators}
    references = {}
    for role in ROLES:
        if (run_dir / "items" / role).is_dir():
            references[role] = {ev.name: read_items(run_dir / "items" / role / f"{ev.name}.jsonl")
                                for ev in evaluators}
    return summarise(evaluators, items, references)
