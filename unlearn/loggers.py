"""Experiment loggers. The run directory's diagnostics.csv is always written; these add external sinks.

The pipeline calls, on rank 0: `start(config, run_dir)`, `log(row, step)` per optimizer step (`train/*`) and per
evaluation (`eval/*`, the trajectory), `table(name, frame)` for per-item results and the results table,
`summary(metrics)`, `image(name, path)` for figures, and `finish(failed)` — also when the run fails.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.registry import Registry


class Logger:
    """No-op logger; the base for the others."""

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None: ...

    def log(self, row: Mapping[str, float], step: int) -> None: ...

    def table(self, name: str, frame: pd.DataFrame) -> None: ...

    def image(self, name: str, path: Path) -> None: ...

    def summary(self, metrics: Mapping[str, float]) -> None: ...

    def finish(self, failed: bool = False) -> None: ...


LOGGERS: Registry[Logger] = Registry("logger", "logger.name")
LOGGERS.register("none")(Logger)


def _cell(value: Any) -> Any:
    """A W&B table cell: lists (e.g. per-perturbation NLLs) as strings, non-finite floats as None."""
    if isinstance(value, list | tuple):
        return str(list(value))
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """Weights & Biases; imported lazily so the dependency is optional (`pip install .[logging]`).

    `mode` offline (the default under `WANDB_MODE=offline`, which the Makefile and tests set) writes
    `<run dir>/wandb/offline-run-*` and needs no network or account; `wandb sync` uploads it later.
    """

    def __init__(self, project: str = "unlearn", entity: str | None = None, mode: str = "online",
                 tags: list[str] | None = None, group: str | None = None) -> None:
        self.kwargs = {"project": project, "entity": entity, "mode": mode, "tags": list(tags or []), "group": group}
        self.run: Any = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(config=dict(config), dir=str(run_dir), name=run_dir.name, reinit="finish_previous",
                              **self.kwargs)

    def log(self, row: Mapping[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(dict(row), step=step)

    def table(self, name: str, frame: pd.DataFrame) -> None:
        import wandb

        if self.run is not None:
            frame = frame.reset_index() if frame.index.name or not isinstance(frame.index, pd.RangeIndex) else frame
            rows = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
            self.run.log({name: wandb.Table(columns=[str(c) for c in frame.columns], data=rows)})

    def image(self, name: str, path: Path) -> None:
        import wandb

        if self.run is not None:
            self.run.log({name: wandb.Image(str(path))})

    def summary(self, metrics: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(metrics))

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
