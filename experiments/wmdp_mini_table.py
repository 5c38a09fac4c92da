"""The README's wmdp_mini recipes and table (shaped like the BLUR paper's Table 4).

    python -m experiments.wmdp_mini_table grid                 # the declared grid for rmu and blur_rmu, seed 0
    python -m experiments.wmdp_mini_table table                # Original + methods x seeds 0 1 2, mean ± std

`grid` runs every point of `GRID` (the same number of points for every method: the two learning rates `LRS` x three
values of the method's own hyper-parameter) on world 0 with seed 0 into outputs/tables/wmdp_mini_grid/, and picks
one point per method by `RULE` (unlearn/report/select.py, the rule the TOFU selection uses): the lowest mean
bio/cyber accuracy among the points whose general accuracy is at least 0.9 x the target's (if none is, the point
with the highest general accuracy). The chosen points go into configs/recipe/wmdp_mini/<method>.yaml by hand.

`table` runs each method at its configured settings (the recipes) for each seed into outputs/tables/wmdp_mini/
<method>_s<seed>/ and writes outputs/tables/wmdp_mini.md / .csv: accuracies and the per-run medians of the
diagnostics cos(g_f, g_r), A_f, A_r. The seed is the unlearning seed (data order and RMU's v); world and target are
fixed. Finished runs are skipped in both modes, so an interrupted grid resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

from experiments.grid import collect, run_grid
from unlearn.report.select import SelectionRule, select
from unlearn.report.table import mean_std_table, to_markdown

FORGET = ["wmdp_mini_bio_acc", "wmdp_mini_cyber_acc"]
GENERAL = "wmdp_mini_general_acc"
METRICS = [*FORGET, GENERAL]
DIAGNOSTICS = ["cos_fr", "A_f", "A_r"]

#: Learning rates of the grid (the same for every method), declared from the untuned measurements (seed 0, 60 steps
#: of 8): RMU forgot nothing at 1e-3 and collapsed every topic at 1e-2; BLUR-RMU at 1e-3, gamma 0.01 forgot both
#: topics but lost general accuracy (0.42), hence its gammas below 0.01. (5e-3 was declared first and dropped for
#: both methods before any blur_rmu point ran: on the shared, loaded cores one run took 100-330 s.)
LRS = [1.0e-3, 2.0e-3]
#: Per method: (config key, short name, values) of its own hyper-parameter on the grid.
GRID: dict[str, tuple[str, str, list[float]]] = {
    "rmu": ("method.direction.lam", "alpha", [100.0, 1200.0, 10000.0]),
    "blur_rmu": ("method.direction.gamma", "gamma", [0.0003, 0.001, 0.003]),
}
#: Maximise forget_removed = 1 - mean(bio, cyber) subject to general >= 0.9 x the target's general accuracy.
RULE = SelectionRule(metric="forget_removed", utility=GENERAL, utility_floor=0.9)
KEYS = ["lr", "own"]


def grid_runs(methods: list[str], seed: int = 0) -> list[tuple[str, list[str]]]:
    """(run name, overrides) for every grid point of `methods`."""
    runs = []
    for m in methods:
        key, short, values = GRID[m]
        for lr in LRS:
            for v in values:
                runs.append((f"{m}_lr{lr:g}_{short}{v:g}_s{seed}",
                             ["benchmark=wmdp_mini", f"method={m}", f"seed={seed}", f"optimizer.lr={lr}",
                              f"{key}={v}"]))
    return runs


def _lookup(cfg: dict, dotted: str) -> object:
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def grid_points(results: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per unlearned grid run with `lr`, `own` (read from its config.yaml), `forget_removed` and
    `utility_ratio` (its general accuracy / the same run's Original general accuracy)."""
    runs = results[results["model"] == results["method"]].copy()
    original = results[results["model"] == "Original"].set_index("run")[GENERAL]
    return points_from(runs, original, {r: yaml.safe_load((root / r / "config.yaml").read_text())
                                        for r in runs["run"]})


def points_from(runs: pd.DataFrame, original_general: pd.Series, configs: dict[str, dict]) -> pd.DataFrame:
    """The selection inputs of `grid_points`, from runs' summaries, their Original general accuracy (by run) and
    their configs (by run); pure, so it is tested on hand-made frames."""
    runs = runs.copy()
    runs["lr"] = [float(_lookup(configs[r], "optimizer.lr")) for r in runs["run"]]
    runs["own"] = [float(_lookup(configs[r], GRID[m][0])) for r, m in zip(runs["run"], runs["method"], strict=True)]
    runs["forget_removed"] = 1.0 - runs[FORGET].mean(axis=1)
    runs["utility_ratio"] = runs[GENERAL] / runs["run"].map(original_general)
    return runs


def run_grid_mode(args: argparse.Namespace) -> None:
    root = args.root / "wmdp_mini_grid"
    run_grid(grid_runs(args.methods), root)
    results = collect(root)
    results = results[results["method"].isin(args.methods)]
    points = grid_points(results, root)
    cols = ["method", "lr", "own", *METRICS, "utility_ratio"]
    grid = points[cols].sort_values(["method", "lr", "own"])
    chosen = select(points, KEYS, RULE)
    md = to_markdown(grid.set_index("method"))
    text = (f"{md}\n\nRule: {RULE.describe()}.\n\nChosen:\n\n"
            f"{to_markdown(chosen[['method', *KEYS, 'forget_removed', GENERAL, 'utility_ratio', 'eligible']])}\n")
    (args.root / "wmdp_mini_grid.md").write_text(text)
    grid.to_csv(args.root / "wmdp_mini_grid.csv", index=False)
    print(text)


def run_table_mode(args: argparse.Namespace) -> None:
    root = args.root / "wmdp_mini"
    runs = [(f"{m}_s{seed}", ["benchmark=wmdp_mini", f"method={m}", f"seed={seed}", *args.override])
            for seed in args.seeds for m in args.methods]
    run_grid(runs, root)
    results = collect(root)
    results = results[results["method"].isin(args.methods) & results["seed"].isin(args.seeds)]
    refs = results[results["model"] == "Original"].drop_duplicates(["seed", "model"])
    runs_only = results[results["model"] == results["method"]].copy()
    # Per run, read once: the median over steps (a near-zero gradient blows A_f, A_r up) and the share of steps
    # on which the update raised the forget loss.
    diags = {r: pd.read_csv(root / r / "diagnostics.csv") for r in runs_only["run"]}
    for col in DIAGNOSTICS:
        runs_only[col] = [diags[r][col].median() for r in runs_only["run"]]
    runs_only["A_f<0"] = [(diags[r]["A_f"] < 0).mean() for r in runs_only["run"]]
    table = mean_std_table(pd.concat([refs, runs_only]), by=["model"], metrics=[*METRICS, *DIAGNOSTICS, "A_f<0"])
    table = table.reindex([m for m in ["Original", *args.methods] if m in table.index])
    table.to_csv(args.root / "wmdp_mini.csv")
    md = to_markdown(table)
    (args.root / "wmdp_mini.md").write_text(md + "\n")
    print(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["grid", "table"])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="grid: rmu blur_rmu (default); table: rmu blur_rmu npo blur_npo (default)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("outputs/tables"))
    parser.add_argument("--override", nargs="*", default=[], help="table: extra Hydra overrides for every run")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.mode == "grid":
        args.methods = args.methods or list(GRID)
        unknown = sorted(set(args.methods) - set(GRID))
        if unknown:
            parser.error(f"--methods: no grid declared for {', '.join(unknown)} (GRID has {', '.join(GRID)})")
        run_grid_mode(args)
    else:
        args.methods = args.methods or ["rmu", "blur_rmu", "npo", "blur_npo"]
        run_table_mode(args)


if __name__ == "__main__":
    main()
