"""Run a grid of configs, one run directory each, skipping runs that already finished.

Re-running a grid after an interruption only runs what is missing, and a finished run's results are never
touched. Results are gathered from each run's summary.json / references.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

from unlearn.pipeline import run_experiment

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def compose_cfg(overrides: Sequence[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def run_grid(runs: Iterable[tuple[str, Sequence[str]]], root: Path, log=print) -> list[str]:
    """Run each (name, overrides) into root/name unless root/name/summary.json exists; the names it ran.

    A name may contain `/` (nested run directories)."""
    runs = list(runs)
    ran = []
    for i, (name, overrides) in enumerate(runs, 1):
        run_dir = root / name
        if (run_dir / "summary.json").exists():
            log(f"[grid] {i}/{len(runs)} {name}: done, skipping")
            continue
        if run_dir.exists():  # an interrupted attempt: keep it aside rather than delete anything
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{int(time.time())}"))
        t0 = time.perf_counter()
        run_experiment(compose_cfg(overrides), run_dir, console_print=False)
        ran.append(name)
        log(f"[grid] {i}/{len(runs)} {name}: {time.perf_counter() - t0:.0f}s")
    return ran


def collect(root: Path) -> pd.DataFrame:
    """One row per finished run: its config choices, its summary, and the reference models' summaries."""
    rows = []
    for summary_file in sorted(root.glob("*/summary.json")):
        run_dir = summary_file.parent
        cfg = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
        base = {"run": run_dir.name, "method": cfg["method"]["name"], "split": cfg["benchmark"].get("tag"),
                "seed": cfg["seed"]}
        rows.append({**base, "model": cfg["method"]["name"], **json.loads(summary_file.read_text())})
        refs = json.loads((run_dir / "references.json").read_text())
        for ref_name, ref in refs.items():
            rows.append({**base, "model": ref_name, **ref})
    return pd.DataFrame(rows)
