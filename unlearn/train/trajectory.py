"""Evaluation during unlearning: when to evaluate (`eval.every`) and the trajectory file it writes.

Unlearning metrics are not monotone in the number of steps (a method can over-forget, collapse and recover), so a
final number alone hides the path; the BLUR paper's Fig. C.1 plots them over epochs, and checkpoint selection by a
declared rule needs them. Evaluating the embedded benchmarks is cheap (seconds), so the whole trajectory is recorded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from unlearn.errors import ConfigError

UNITS = ("epoch", "step")


@dataclass(frozen=True)
class Schedule:
    """Evaluate every `every` units (`epoch` or `step`); `every` 0 turns it off."""

    every: float = 0
    unit: str = "epoch"

    @classmethod
    def from_config(cls, every: Any, unit: Any) -> Schedule:
        if unit not in UNITS:
            raise ConfigError(f"eval.every_unit: expected one of {', '.join(UNITS)}, got {unit!r}")
        if every is None or (every == 0 and not isinstance(every, bool)):
            return cls(0, str(unit))
        if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
            raise ConfigError(f"eval.every: expected a positive number (or null/0 for off), got {every!r}")
        if unit == "step" and not float(every).is_integer():
            raise ConfigError(f"eval.every: with eval.every_unit=step it must be a whole number, got {every!r}")
        return cls(float(every), str(unit))

    def steps(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """The optimizer steps (1-based) after which to evaluate, the last step always included."""
        if not self.every:
            return []
        period = self.every * (steps_per_epoch if self.unit == "epoch" else 1)
        marks = range(1, math.ceil(total_steps / period) + 1)
        out = sorted({min(total_steps, max(1, round(k * period))) for k in marks})
        return out if out and out[-1] == total_steps else [*out, total_steps]


class TrajectoryWriter:
    """Appends one JSON line per evaluation (`step`, `epoch`, summary metrics); full float precision.

    On resume, rows after the checkpoint are dropped (the resumed run evaluates those steps again); a new run
    refuses to overwrite an existing file.
    """

    def __init__(self, path: Path, resume_after_step: int | None = None) -> None:
        self.path = Path(path)
        kept: list[str] = []
        if resume_after_step is None:
            if self.path.exists():
                raise FileExistsError(f"{self.path} exists; refusing to overwrite a previous run's trajectory")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_after_step]
        self._fh: IO[str] = self.path.open("w")
        for line in kept:
            self._fh.write(line + "\n")
        self._fh.flush()

    def write(self, row: dict[str, float]) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_trajectory(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
