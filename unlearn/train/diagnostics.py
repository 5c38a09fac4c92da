"""Per-step diagnostics, written as CSV as they are produced (a crashed run keeps its rows)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import IO

# The paper's per-step quantities first (alignments A_f, A_r of eq. 8; cos(g_f, g_r) of Figs. 2-3), then extras.
COLUMNS = ["step", "lr", "loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "A_r",
           "norm_u", "coef_f", "coef_r", "step_time"]


class DiagnosticsWriter:
    """Appends one row per optimizer step to `path`; refuses to overwrite an existing file."""

    def __init__(self, path: Path, resume_after_step: int | None = None) -> None:
        self.path = Path(path)
        kept: list[dict[str, str]] = []
        if resume_after_step is None:
            if self.path.exists():
                raise FileExistsError(f"{self.path} exists; refusing to overwrite a previous run's diagnostics")
        elif self.path.exists():
            # Resuming this run: keep the rows up to the checkpoint; later ones are replayed by the resumed run.
            with self.path.open(newline="") as fh:
                kept = [row for row in csv.DictReader(fh) if int(row["step"]) <= resume_after_step]
        self._fh: IO[str] = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=COLUMNS, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept)

    def write(self, row: dict[str, float]) -> None:
        self._writer.writerow({k: _fmt(row.get(k, math.nan)) for k in COLUMNS})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _fmt(v: float) -> str | int:
    if isinstance(v, int):
        return v
    return repr(float(v))
