"""Experiment loggers. The run directory's diagnostics.csv is always written; these add external sinks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unlearn.registry import Registry


class Logger:
    """No-op logger; the base for the others."""

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None: ...

    def log(self, row: Mapping[str, float], step: int) -> None: ...

    def summary(self, metrics: Mapping[str, float]) -> None: ...

    def finish(self) -> None: ...


LOGGERS: Registry[Logger] = Registry("logger", "logger.name")
LOGGERS.register("none")(Logger)


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """Weights & Biases; imported lazily so the dependency is optional (`pip install .[logging]`)."""

    def __init__(self, project: str = "unlearn", entity: str | None = None, mode: str = "online",
                 tags: list[str] | None = None) -> None:
        self.kwargs = {"project": project, "entity": entity, "mode": mode, "tags": list(tags or [])}
        self.run: Any = None

    def start(self, config: Mapping[str, Any], run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(config=dict(config), dir=str(run_dir), name=run_dir.name, **self.kwargs)

    def log(self, row: Mapping[str, float], step: int) -> None:
        self.run.log(dict(row), step=step)

    def summary(self, metrics: Mapping[str, float]) -> None:
        self.run.summary.update(dict(metrics))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
