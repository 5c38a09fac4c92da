"""The wmdp_mini grid and its selection rule (experiments/wmdp_mini_table.py), on hand-made runs."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.wmdp_mini_table import GRID, KEYS, LRS, RULE, grid_runs, points_from
from unlearn.report.select import select


def _cfg(lr: float, key: str, value: float) -> dict:
    cfg: dict = {"optimizer": {"lr": lr}}
    node = cfg
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def test_every_method_gets_a_grid_of_the_same_size() -> None:
    sizes = {m: len(grid_runs([m])) for m in GRID}
    assert set(sizes.values()) == {len(LRS) * 3}, sizes
    names = [name for name, _ in grid_runs(list(GRID))]
    assert len(set(names)) == len(names)
    name, overrides = grid_runs(["rmu"])[0]
    assert name == "rmu_lr0.001_alpha100_s0"
    assert overrides == ["benchmark=wmdp_mini", "method=rmu", "seed=0", "optimizer.lr=0.001",
                         "method.direction.lam=100.0"]


def test_rule_picks_the_lowest_forget_accuracy_that_keeps_90_percent_of_general() -> None:
    # general of the target 1.00: floor 0.90. Accuracies by hand.
    rows = [  # run, method, lr, own, bio, cyber, general
        ("a", "rmu", 1e-3, 100.0, 0.95, 0.97, 0.99),    # keeps everything, forgets nothing
        ("b", "rmu", 2e-3, 100.0, 0.40, 0.30, 0.90),    # eligible (exactly 0.9), mean forget 0.35
        ("c", "rmu", 5e-3, 100.0, 0.25, 0.26, 0.60),    # forgets most but general 0.6: not eligible
        ("d", "rmu", 2e-3, 1200.0, 0.45, 0.35, 0.95),   # eligible, mean forget 0.40
        ("e", "blur_rmu", 1e-3, 0.01, 0.30, 0.30, 0.50),  # none of blur_rmu's points is eligible:
        ("f", "blur_rmu", 5e-4, 0.001, 0.80, 0.85, 0.85),  # the highest general accuracy wins
    ]
    runs = pd.DataFrame(rows, columns=["run", "method", "lr", "own", "wmdp_mini_bio_acc", "wmdp_mini_cyber_acc",
                                       "wmdp_mini_general_acc"])
    configs = {r: _cfg(lr, GRID[m][0], v) for r, m, lr, v, *_ in rows}
    points = points_from(runs.drop(columns=["lr", "own"]), pd.Series(1.0, index=runs["run"]), configs)
    assert points.set_index("run")["forget_removed"]["b"] == pytest.approx(0.65)
    chosen = select(points, KEYS, RULE).set_index("method")
    assert chosen.loc["rmu", "lr"] == 2e-3 and chosen.loc["rmu", "own"] == 100.0 and chosen.loc["rmu", "eligible"]
    assert chosen.loc["blur_rmu", "own"] == 0.001 and not chosen.loc["blur_rmu", "eligible"]


def test_utility_ratio_is_relative_to_each_runs_own_target() -> None:
    runs = pd.DataFrame({"run": ["x"], "method": ["rmu"], "wmdp_mini_bio_acc": [0.5], "wmdp_mini_cyber_acc": [0.3],
                         "wmdp_mini_general_acc": [0.72]})
    points = points_from(runs, pd.Series({"x": 0.8}), {"x": _cfg(1e-3, GRID["rmu"][0], 1200.0)})
    assert points["utility_ratio"].iloc[0] == pytest.approx(0.9)
    assert points["forget_removed"].iloc[0] == pytest.approx(0.6)
