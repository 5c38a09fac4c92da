"""Collect finished run directories (any benchmark, any sweep layout) into pandas frames.

A run directory is finished when it holds `summary.json` (the pipeline writes it last). Each finished run gives one
row for the unlearned model and one per reference model (`references.json`: Original, Retain, ...), with:
- identity columns: `run` (path relative to the collected root), `model` (method name or reference role),
  `kind` (`method` or `reference`), `method`, `benchmark`, `split` (the benchmark's tag), `world`
  (`benchmark.world.seed`, None for benchmarks without embedded worlds), `seed` (the unlearning seed);
- every scalar leaf of the config's `method`, `optimizer` and `trainer` sections as dotted columns
  (`method.direction.gamma`, `optimizer.lr`, ...): the hyper-parameters a sweep varies;
- every number of the summary (metric names carry no dots, so the two never clash).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ID_COLUMNS: tuple[str, ...] = ("run", "model", "kind", "method", "benchmark", "split", "world", "seed")
PARAM_SECTIONS: tuple[str, ...] = ("method", "optimizer", "trainer")


def flatten(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Scalar leaves of a nested mapping as `prefix.a.b` keys (lists become strings, so they can be grouped)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, list | tuple):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out


def finished_runs(root: Path) -> Iterator[Path]:
    """Every run directory under `root` (itself included) that holds summary.json and config.yaml, sorted."""
    root = Path(root)
    for summary in sorted(root.rglob("summary.json")):
        run_dir = summary.parent
        if (run_dir / "config.yaml").exists() and ".incomplete" not in run_dir.as_posix():
            yield run_dir


def run_identity(cfg: Mapping[str, Any], run: str) -> dict[str, Any]:
    """The identity and hyper-parameter columns of one run from its saved config."""
    bench = cfg.get("benchmark", {})
    world = bench.get("world")
    ident: dict[str, Any] = {
        "run": run,
        "method": cfg["method"]["name"],
        "benchmark": bench.get("name"),
        "split": bench.get("tag"),
        "world": world.get("seed") if isinstance(world, Mapping) else None,
        "seed": cfg.get("seed"),
    }
    for section in PARAM_SECTIONS:
        if isinstance(cfg.get(section), Mapping):
            ident.update(flatten(cfg[section], section))
    return ident


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def collect(root: str | Path) -> pd.DataFrame:
    """One row per (finished run, model): see the module docstring for the columns."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    for run_dir in finished_runs(root):
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        ident = run_identity(cfg, run_dir.relative_to(root).as_posix() or ".")
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append({**ident, "model": ident["method"], "kind": "method",
                     **{k: _number(v) for k, v in summary.items()}})
        refs_file = run_dir / "references.json"
        refs = json.loads(refs_file.read_text()) if refs_file.exists() else {}
        for name, ref in refs.items():
            rows.append({**ident, "model": name, "kind": "reference", **{k: _number(v) for k, v in ref.items()}})
    if not rows:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    frame = pd.DataFrame(rows)
    front = [c for c in ID_COLUMNS if c in frame.columns]
    return frame[front + [c for c in frame.columns if c not in front]]


def collect_trajectories(root: str | Path) -> pd.DataFrame:
    """One row per evaluated point of every finished run's trajectory.jsonl (identity columns + step, epoch,
    metrics); runs without a trajectory contribute nothing."""
    root = Path(root)
    rows: list[dict[str, Any]] = []
    for run_dir in finished_runs(root):
        path = run_dir / "trajectory.jsonl"
        if not path.exists():
            continue
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        ident = run_identity(cfg, run_dir.relative_to(root).as_posix() or ".")
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append({**ident, "model": ident["method"], "kind": "method", **json.loads(line)})
    return pd.DataFrame(rows)


def collect_diagnostics(root: str | Path) -> pd.DataFrame:
    """Every finished run's per-step diagnostics.csv (losses, norms, cos(g_f, g_r), A_f, A_r) with identity columns."""
    root = Path(root)
    frames = []
    for run_dir in finished_runs(root):
        path = run_dir / "diagnostics.csv"
        if not path.exists():
            continue
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        ident = run_identity(cfg, run_dir.relative_to(root).as_posix() or ".")
        diag = pd.read_csv(path)
        for key in ("run", "method", "benchmark", "split", "world", "seed"):
            diag[key] = ident[key]
        diag["model"] = ident["method"]
        frames.append(diag)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def reference_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The reference models' rows, once per (benchmark, split, world): every run of a world repeats them, and
    counting each copy would shrink their standard deviation for nothing."""
    refs = frame[frame["kind"] == "reference"]
    return refs.drop_duplicates(["benchmark", "split", "world", "model"], keep="first")


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The hyper-parameter columns that vary between the runs of one method (what a sweep swept); a setting that
    only differs between methods (NPO's beta vs GA's none) is part of the method, not a grid point."""
    methods = frame[frame["kind"] == "method"]
    cols = [c for c in frame.columns if "." in c and c.split(".")[0] in PARAM_SECTIONS]
    return [c for c in cols
            if (methods.groupby("method")[c].agg(lambda s: s.astype(str).nunique(dropna=False)) > 1).any()]
