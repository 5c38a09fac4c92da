"""Sweeps that can be interrupted and re-run: skip what finished, set aside what did not, overwrite nothing.

A run directory is *finished* when it holds `summary.json` (the pipeline writes it last). With `skip_finished=true`
(the `unlearn.run` config key; the table drivers always behave this way) a sweep re-run with the same sweep
directory (`hydra.sweep.dir=outputs/sweeps/<name>`; job directories are keyed by their overrides,
`configs/config.yaml` `hydra.sweep.subdir`) returns the finished runs' summaries without running them again, and an
interrupted run's partial results are moved into `<run dir>/incomplete-<time>/` before the run starts afresh, so no
result file is ever overwritten or deleted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: Files and folders a run writes into its directory (anything else, e.g. Hydra's `.hydra/`, is left in place).
RUN_OUTPUTS: tuple[str, ...] = ("config.yaml", "summary.json", "diagnostics.csv", "trajectory.jsonl",
                                "references.json", "table.csv", "items", "checkpoints", "model", "wandb")


def finished_summary(run_dir: Path) -> dict[str, float] | None:
    """The summary of a finished run in `run_dir`, or None when it has not finished."""
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def set_aside_incomplete(run_dir: Path) -> Path | None:
    """Move an unfinished run's outputs into `run_dir/incomplete-<time>/` (returned); None when there were none."""
    run_dir = Path(run_dir)
    present = [run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not present or (run_dir / "summary.json").exists():
        return None
    aside = run_dir / f"incomplete-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000:06d}"
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    return aside
