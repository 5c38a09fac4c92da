"""Mean ± std over worlds x seeds, with the spread across worlds kept visible.

Seeds of the unlearning data order do not measure the variance that matters most: a different embedded world (its
own target and retain models) moves results far more (issue 10). So every aggregate reports, per metric:
- `<m>`: the mean over all runs of the group (every world x seed),
- `<m>_std`: their standard deviation (ddof 1; NaN for a single run),
- `<m>_world_std`: the standard deviation of the per-world means (NaN with one world): the spread across worlds,
and the group's `runs` and `worlds` counts. `format_table` renders a cell as `mean ± std [world std]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from unlearn.report.collect import reference_rows

#: Rows of a table, in this order when present; methods follow in the order given by the caller.
REFERENCE_ORDER: tuple[str, ...] = ("Original", "Retain", "Retrain")


def table_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Method rows plus each world's reference rows once (see `reference_rows`)."""
    return pd.concat([reference_rows(frame), frame[frame["kind"] == "method"]], ignore_index=True)


def aggregate(rows: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Numeric aggregate of per-run rows grouped by `by` (module docstring); metrics absent from `rows` are
    skipped. A missing `world` column (or None worlds) counts as one world."""
    rows = rows.copy()
    if "world" not in rows.columns:
        rows["world"] = None
    rows["_world"] = rows["world"].astype(str)
    present = [m for m in metrics if m in rows.columns]
    groups = rows.groupby(list(by), sort=False, dropna=False)
    out = pd.DataFrame(index=groups.size().index)
    for m in present:
        out[m] = groups[m].mean()
        out[f"{m}_std"] = groups[m].std(ddof=1)
        per_world = rows.groupby([*by, "_world"], sort=False, dropna=False)[m].mean()
        out[f"{m}_world_std"] = per_world.groupby(level=list(range(len(by))), sort=False, dropna=False).std(ddof=1)
    out["runs"] = groups.size()
    out["worlds"] = groups["_world"].nunique()
    return out


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if not np.isfinite(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"


def format_cell(mean: float, std: float, world_std: float) -> str:
    """`mean ± std [world std]`; the parts that do not exist (one run, one world) are left out."""
    cell = _fmt(mean)
    if not math.isnan(std):
        cell += f" ± {_fmt(std)}"
    if not math.isnan(world_std):
        cell += f" [{_fmt(world_std)}]"
    return cell


def format_table(agg: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """String cells for a markdown/CSV table from `aggregate`'s output."""
    out = pd.DataFrame(index=agg.index)
    for m in metrics:
        if m in agg.columns:
            out[m] = [format_cell(a, b, c) for a, b, c in
                      zip(agg[m], agg[f"{m}_std"], agg[f"{m}_world_std"], strict=True)]
    out["runs"] = agg["runs"]
    out["worlds"] = agg["worlds"]
    return out


def order_models(agg: pd.DataFrame, methods: Sequence[str] = (), level: str = "model") -> pd.DataFrame:
    """Reference rows first (Original, Retain), then `methods` in the given order, then any others."""
    order = [*REFERENCE_ORDER, *methods]
    names = list(agg.index.names)
    pos = names.index(level)

    def key(idx: object) -> tuple:
        parts = idx if isinstance(idx, tuple) else (idx,)
        name = parts[pos]
        rank = order.index(name) if name in order else len(order)
        return (*[str(p) for i, p in enumerate(parts) if i != pos], rank, str(name))

    return agg.reindex(sorted(agg.index, key=key))
