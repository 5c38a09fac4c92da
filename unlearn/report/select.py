"""The selection rule: one declared rule, the same for every method, applied on a development world.

The BLUR paper grid-searches its hyper-parameters and "selects the optimal model" after unlearning; a comparison is
only fair when every method gets the same treatment. Here a *candidate* is one hyper-parameter setting of a method
(its grid point, learning rate included) at one evaluated epoch of its trajectory (`eval.every`), so the epoch count
is tuned like any other hyper-parameter. On the development world(s) every candidate's metrics are averaged over
seeds, and `SelectionRule` picks per method:

1. keep the candidates whose utility is at least `utility_floor` x the target model's (same world, step 0 of the
   trajectory, i.e. the Original row);
2. among them the highest `metric` (default forget quality); ties go to the higher utility, then the earlier epoch;
3. if none keeps enough utility, the candidate with the highest utility (reported as `eligible = False`).

The chosen (setting, epoch) is then read off the held-out worlds' runs, never re-chosen there (`apply_selection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SelectionRule:
    """Maximise `metric` subject to `utility >= utility_floor * target utility` (module docstring)."""

    metric: str = "forget_quality"
    utility: str = "model_utility"
    utility_floor: float = 0.9

    def describe(self) -> str:
        return (f"per method, the grid point and epoch with the highest mean {self.metric} on the development "
                f"world(s) among those keeping {self.utility} >= {self.utility_floor:g} x the target model's; "
                f"if none does, the one with the highest {self.utility}")


def add_utility_ratio(points: pd.DataFrame, utility: str = "model_utility") -> pd.DataFrame:
    """Trajectory points with `utility_ratio` = utility / the same run's step-0 (target model) utility."""
    points = points.copy()
    start = points[points["step"] == 0].set_index("run")[utility]
    if start.index.has_duplicates:
        raise ValueError("a run has several step-0 rows in its trajectory")
    missing = sorted(set(points["run"]) - set(start.index))
    if missing:
        raise ValueError(f"trajectories without a step-0 (target model) row: {', '.join(missing[:3])}")
    points["utility_ratio"] = points[utility] / points["run"].map(start)
    return points


def candidates(points: pd.DataFrame, keys: Sequence[str], rule: SelectionRule) -> pd.DataFrame:
    """Per (method, *keys): mean `rule.metric`, `rule.utility` and utility ratio over the given points (seeds),
    with `eligible` (the utility floor holds). The step-0 row (the target itself) is never a candidate."""
    pts = points[points["step"] > 0] if "step" in points.columns else points
    group = ["method", *keys]
    agg = pts.groupby(group, dropna=False, sort=True).agg(
        **{rule.metric: (rule.metric, "mean"), rule.utility: (rule.utility, "mean"),
           "utility_ratio": ("utility_ratio", "mean"), "runs": ("run", "nunique")}).reset_index()
    agg["eligible"] = agg["utility_ratio"] >= rule.utility_floor
    return agg


def select(points: pd.DataFrame, keys: Sequence[str], rule: SelectionRule) -> pd.DataFrame:
    """One row per method: the candidate the rule picks (columns of `candidates`)."""
    table = candidates(points, keys, rule)
    chosen = []
    for _, group in table.groupby("method", sort=False):
        ok = group[group["eligible"]]
        if len(ok):
            ranked = ok.assign(_m=ok[rule.metric].fillna(-np.inf), _u=ok["utility_ratio"].fillna(-np.inf))
            by, asc = ["_m", "_u"], [False, False]
        else:
            ranked = group.assign(_u=group["utility_ratio"].fillna(-np.inf))
            by, asc = ["_u"], [False]
        if "epoch" in ranked.columns:
            by, asc = [*by, "epoch"], [*asc, True]
        best = ranked.sort_values(by, ascending=asc, kind="stable").iloc[0]
        chosen.append(best.drop(labels=[c for c in ("_m", "_u") if c in best.index]))
    return pd.DataFrame(chosen).reset_index(drop=True)


def apply_selection(points: pd.DataFrame, chosen: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The points of `points` (e.g. held-out worlds) at each method's chosen (keys) — one row per run."""
    cols = ["method", *keys]
    pick = chosen[cols].drop_duplicates()
    left = points.copy()
    for c in cols:  # compare as strings: a swept value read back from YAML and from a frame may differ in type
        left[f"_k_{c}"] = left[c].astype(str)
        pick = pick.assign(**{f"_k_{c}": pick[c].astype(str)})
    merged = left.merge(pick[[f"_k_{c}" for c in cols]], on=[f"_k_{c}" for c in cols], how="inner")
    return merged.drop(columns=[f"_k_{c}" for c in cols])
