"""Summary tables: the printed per-run table and the multi-run (mean ± std) tables of the README."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from rich.console import Console
from rich.table import Table

TOFU_COLUMNS = ["forget_quality", "forget_truth_ratio", "model_utility", "forget_rouge", "forget_prob",
                "retain_rouge", "retain_prob"]


def _fmt(v: float) -> str:
    if v != v:  # NaN
        return "-"
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"


def summary_frame(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] = TOFU_COLUMNS) -> pd.DataFrame:
    """One row per model (Original, Retain, the unlearned method) with the headline metrics."""
    frame = pd.DataFrame.from_dict({k: dict(v) for k, v in rows.items()}, orient="index")
    return frame.reindex(columns=[c for c in columns if c in frame.columns])


def print_table(frame: pd.DataFrame, title: str, console: Console | None = None) -> None:
    table = Table(title=title)
    table.add_column("model")
    for col in frame.columns:
        table.add_column(col, justify="right")
    for name, row in frame.iterrows():
        table.add_row(str(name), *(_fmt(float(v)) for v in row))
    # Wide enough for every column even when stdout is not a terminal (logs, CI), where rich assumes 80.
    (console or Console(width=200)).print(table)


def mean_std_table(results: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Aggregate per-run results (one row per run) into 'mean ± std' strings grouped by `by`."""
    grouped = results.groupby(list(by), sort=False)[list(metrics)]
    mean, std, n = grouped.mean(), grouped.std(ddof=1).fillna(0.0), grouped.size()
    out = pd.DataFrame(index=mean.index)
    for m in metrics:
        out[m] = [f"{_fmt(a)} ± {_fmt(b)}" for a, b in zip(mean[m], std[m], strict=True)]
    out["runs"] = n
    return out


def _cell(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1):
        return str(int(v))
    return _fmt(float(v))


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-markdown table (no tabulate dependency)."""
    index_names = [n or "" for n in (frame.index.names or [frame.index.name])]
    header = [*index_names, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in frame.iterrows():
        idx_vals = idx if isinstance(idx, tuple) else (idx,)
        cells = [str(v) for v in idx_vals] + [_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
