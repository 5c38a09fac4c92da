"""The report's figures (matplotlib, Agg backend, PNG), each from a collected frame and written to a path.

- `tradeoff`: forget quality vs model utility per method, mean ± std over worlds x seeds (the BLUR paper's Fig. 1);
- `trajectories`: metrics over epochs of unlearning, mean ± std band per method (Fig. C.1);
- `diagnostics`: per-step diagnostics such as `A_f`/`A_r` and `cos_fr` = cos(g_f, g_r) per method (Figs. 2, 3);
- `heatmap`: a metric's mean over two swept parameters (Fig. C.7).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

LOG_SCALE = frozenset({"forget_quality"})  # p-values span orders of magnitude


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def tradeoff(agg: pd.DataFrame, path: Path, x: str = "model_utility", y: str = "forget_quality",
             title: str = "") -> Path:
    """One point per row of `agg` (from `aggregate`, index level `model`), error bars = std over runs."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for idx, row in agg.iterrows():
        name = idx[-1] if isinstance(idx, tuple) else idx
        xerr = row.get(f"{x}_std")
        yerr = row.get(f"{y}_std")
        ax.errorbar(row[x], row[y], xerr=None if pd.isna(xerr) else xerr, yerr=None if pd.isna(yerr) else yerr,
                    fmt="s" if name in ("Original", "Retain") else "o", capsize=3, label=str(name))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if y in LOG_SCALE:
        ax.set_yscale("log")
    ax.set_title(title or f"{y} vs {x} (mean ± std over worlds x seeds)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _bands(ax: plt.Axes, frame: pd.DataFrame, x: str, y: str, by: str) -> None:
    for name, group in frame.groupby(by, sort=False):
        stats = group.groupby(x)[y].agg(["mean", "std"]).sort_index()
        xs, mean, std = stats.index.to_numpy(float), stats["mean"].to_numpy(float), stats["std"].fillna(0).to_numpy()
        ax.plot(xs, mean, marker=".", label=str(name))
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)


def trajectories(points: pd.DataFrame, path: Path, metrics: Sequence[str], by: str = "method",
                 x: str = "epoch") -> Path:
    """One panel per metric: mean over runs at each `x` per `by` group, shaded ± std."""
    metrics = [m for m in metrics if m in points.columns]
    if not metrics:
        raise ValueError("trajectories: none of the requested metrics is in the trajectory frame")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        _bands(ax, points, x, m, by)
        if m in LOG_SCALE:
            ax.set_yscale("log")
        if m.endswith("_gap"):
            ax.axhline(0.0, color="k", lw=0.8, ls="--")  # the retain model
        ax.set_xlabel(x)
        ax.set_title(m)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def diagnostics(diag: pd.DataFrame, path: Path, columns: Sequence[str], by: str = "method") -> Path:
    """Per-step diagnostics (e.g. `A_f`, `A_r`, `cos_fr`), one panel per column, mean ± std over runs."""
    columns = [c for c in columns if c in diag.columns]
    if not columns:
        raise ValueError("diagnostics: none of the requested columns is in diagnostics.csv")
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, c in zip(axes[0], columns, strict=True):
        _bands(ax, diag, "step", c, by)
        ax.set_xlabel("step")
        ax.set_title(c)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def heatmap_frame(rows: pd.DataFrame, x: str, y: str, metric: str) -> pd.DataFrame:
    """The metric's mean over runs on the (y, x) grid: rows = values of `y`, columns = values of `x`."""
    missing = [c for c in (x, y, metric) if c not in rows.columns]
    if missing:
        raise ValueError(f"heatmap: no column(s) {', '.join(missing)} in the collected runs")
    return rows.pivot_table(index=y, columns=x, values=metric, aggfunc="mean").sort_index().sort_index(axis=1)


def heatmap(rows: pd.DataFrame, path: Path, x: str, y: str, metric: str, title: str = "") -> Path:
    grid = heatmap_frame(rows, x, y, metric)
    fig, ax = plt.subplots(figsize=(1.2 * grid.shape[1] + 2.5, 1.0 * grid.shape[0] + 1.8))
    values = grid.to_numpy(float)
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"{v:g}" if isinstance(v, float) else str(v) for v in grid.index])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or metric)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)
