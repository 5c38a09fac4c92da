"""The evaluator interface, its registry, and per-item result files.

An evaluator splits its work the way open-unlearning's metrics and lm-evaluation-harness's tasks do: `evaluate`
runs the model once and returns a per-item table (one row per question, text or sample); `summarise` turns per-item
tables into numbers *without a model*, from the item table and the reference models' item tables. So:
- reference models (target, retain) are evaluated once and cached by everything their items depend on
  (`version`, `settings()`, the model, the task's fingerprint);
- a summary that needs another model's results (TOFU's forget quality needs the retain model's truth ratios, MUSE's
  PrivLeak the retrained model's AUC) declares the role in `uses` and reads it from `references` (a benchmark
  without that model gets the summary without those numbers);
- tables re-aggregate from saved items with no recomputation (`read_items` + `summarise` reproduce summary.json).

`eval=` in the config selects one or several evaluators (`eval=[tofu,lm_eval]`); each has its own section
`eval.<name>` (`configs/eval/<name>.yaml`, `# @package eval.<name>`).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from unlearn.errors import ConfigError
from unlearn.registry import Registry

if TYPE_CHECKING:
    from unlearn.benchmarks.base import Task


class Evaluator(ABC):
    """Evaluates a model on a task: per-item results, then a pure summary.

    Class attributes:
        name: the registry name and the key of its config section (`eval.<name>`).
        version: bump whenever `evaluate` changes its per-item results; it is part of the reference cache key.
        data: the `Task.eval_data` key this evaluator reads (None: it needs no benchmark data, e.g. lm-eval tasks).
        uses: reference roles whose items `summarise` reads when the task has them (e.g. `("retain",)`).
        headline: summary keys for the printed table, in order.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    data: ClassVar[str | None] = None
    uses: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[tuple[str, ...]] = ()

    def settings(self) -> dict[str, Any]:
        """Everything configurable that the per-item results depend on (enters the cache key)."""
        return {}

    def check(self, task: Task) -> None:
        """Raise ConfigError when the task lacks what this evaluator reads (called before unlearning)."""
        if self.data is not None and self.data not in task.eval_data:
            raise ConfigError(
                f"eval.{self.name}: benchmark {task.benchmark!r} has no {self.data!r} evaluation data "
                f"(it provides: {', '.join(sorted(task.eval_data)) or 'none'})"
            )

    @abstractmethod
    def evaluate(self, model: Any, task: Task) -> pd.DataFrame:
        """Run the model; one row per item (a `split` column where the evaluator has several splits)."""

    @abstractmethod
    def summarise(self, items: pd.DataFrame, references: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        """Summary numbers from per-item tables alone; `references` maps role -> that model's items."""

    def evaluate_forget(self, model: Any, task: Task) -> pd.DataFrame:
        """Only the items the forget-side numbers need. The relearning attack re-measures what comes back of the
        forgotten knowledge, not utility, so an evaluator that can split its work skips the rest (TOFU: the
        forget split alone). Default: everything (`evaluate`)."""
        return self.evaluate(model, task)

    def summarise_forget(self, items: pd.DataFrame, references: Mapping[str, pd.DataFrame]) -> dict[str, float]:
        """The forget-side summary from `evaluate_forget`'s items: the same values `summarise` gives those keys on
        the full table. Default: `summarise`."""
        return self.summarise(items, references)


EVALUATORS: Registry[Evaluator] = Registry("evaluator", "eval")
#: Keys of the `eval` section that are not evaluators: when to evaluate during unlearning (unlearn.train.trajectory).
SCHEDULE_KEYS: tuple[str, ...] = ("every", "every_unit")


def build_evaluators(cfg: Mapping[str, Any] | None) -> list[Evaluator]:
    """The evaluators the `eval` section selects: `{name: {settings...}, ...}`, one per configured name.

    Unknown names and bad settings raise ConfigError naming `eval.<name>`.
    """
    import unlearn.benchmarks  # noqa: F401  (registers every benchmark's evaluator)
    from unlearn.evals import harness as _harness  # noqa: F401  (registers lm_eval)

    if not isinstance(cfg, Mapping) or not set(cfg) - set(SCHEDULE_KEYS):
        raise ConfigError(f"eval: choose at least one evaluator (eval=<name> or eval=[a,b]); known: "
                          f"{', '.join(EVALUATORS.names())}")
    out = []
    for name, settings in cfg.items():
        if name in SCHEDULE_KEYS:
            continue
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"eval.{name}: expected a mapping of settings, got {settings!r}")
        factory = EVALUATORS.get(str(name))
        try:
            out.append(factory(**dict(settings)))
        except TypeError as err:
            raise ConfigError(f"eval.{name}: bad settings {sorted(settings)}: {err}") from err
    return out


def merge_summaries(parts: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """One flat summary from several evaluators'; a key produced twice is an error, never silently overwritten."""
    out: dict[str, float] = {}
    owner: dict[str, str] = {}
    for name, summary in parts.items():
        for key, value in summary.items():
            if key in out:
                raise ConfigError(f"eval: evaluators {owner[key]!r} and {name!r} both report {key!r}")
            out[key], owner[key] = float(value), name
    return out


# ---------------------------------------------------------------------------------------------------- item files
def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; floats stay floats (inf and NaN included)."""
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_items(items: pd.DataFrame, path: Path) -> None:
    """Per-item results as JSON lines at full precision.

    Python's `json` writes floats with `repr`, which round-trips every float64 exactly, and writes inf/NaN as
    `Infinity`/`NaN` (which it reads back), so re-aggregating a file reproduces the summary bit for bit, a collapsed
    model's 1e-300 probabilities and infinite NLLs included (pandas' `to_json` keeps 10 digits and writes inf as
    null).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in items.to_dict(orient="records"):
            fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}, ensure_ascii=False) + "\n")


def read_items(path: Path) -> pd.DataFrame:
    """Read a file written by `write_items` (same columns, same float64 values)."""
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    return pd.DataFrame.from_records(records)


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
