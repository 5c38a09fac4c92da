"""The README's tofu_mini table: every method x forget05/forget10 x 3 seeds, mean ± std.

    python -m experiments.tofu_mini_table            # or: make table
    python -m experiments.tofu_mini_table --seeds 0 --splits forget10 --methods blur_npo npo

Runs go to outputs/tables/tofu_mini/<method>_<split>_s<seed>/ (finished ones are skipped, so an interrupted
grid resumes); the table goes to outputs/tables/tofu_mini.md and .csv. The seed is the unlearning seed (data
order); the world, target and retain models are fixed (world seed 0), as in TOFU where the targets are given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.grid import collect, run_grid
from unlearn.report.table import mean_std_table, to_markdown

METHODS = ["ga", "graddiff", "npo", "simnpo", "ngdiff", "blur_ga", "blur_simnpo", "blur_npo"]
METRICS = ["forget_quality", "forget_truth_ratio", "model_utility", "forget_rouge", "retain_rouge"]
ORDER = ["Original", "Retain", *METHODS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--splits", nargs="+", default=["forget05", "forget10"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("outputs/tables/tofu_mini"))
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = parser.parse_args()

    runs = [
        (f"{m}_{s}_s{seed}", [f"method={m}", f"benchmark.forget_split={s}", f"seed={seed}", *args.override])
        for s in args.splits
        for seed in args.seeds
        for m in args.methods
    ]
    run_grid(runs, args.root)
    results = collect(args.root)
    results = results[results["method"].isin(args.methods) & results["split"].isin(args.splits)]
    # Reference rows repeat once per run; keep one per (split, seed) so their std reflects nothing spurious.
    refs = results[results["model"].isin(["Original", "Retain"])].drop_duplicates(["split", "seed", "model"])
    results = results[~results["model"].isin(["Original", "Retain"])]
    import pandas as pd

    table = mean_std_table(pd.concat([refs, results]), by=["split", "model"], metrics=METRICS)
    table = table.reindex(sorted(table.index, key=lambda k: (k[0], ORDER.index(k[1]) if k[1] in ORDER else 99)))
    out = args.root.parent
    table.to_csv(out / "tofu_mini.csv")
    md = to_markdown(table)
    (out / "tofu_mini.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
