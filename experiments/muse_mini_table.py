"""The README's muse_mini table (shaped like the BLUR paper's Table 3): methods x seeds, mean ± std, with the
diagnostics that tell BLUR-NPO from NPO (mean cos(g_f, g_r), and the rates A_f, A_r at which the forget and retain
losses are descended).

    python -m experiments.muse_mini_table                       # npo, blur_npo x seeds 0 1 2
    python -m experiments.muse_mini_table --methods npo blur_npo simnpo --seeds 0

Runs go to outputs/tables/muse_mini/<method>_s<seed>/ (finished ones are skipped); the table goes to
outputs/tables/muse_mini.md and .csv. The seed is the unlearning seed (data order); world and models are fixed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from experiments.grid import collect, run_grid
from unlearn.report.table import mean_std_table, to_markdown

METRICS = ["verbmem_f", "knowmem_f", "privleak", "knowmem_r"]
DIAGNOSTICS = ["cos_fr", "A_f", "A_r"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["npo", "blur_npo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--benchmark", default="muse_mini")
    parser.add_argument("--root", type=Path, default=Path("outputs/tables/muse_mini"))
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = parser.parse_args()
    runs = [(f"{m}_s{seed}", [f"benchmark={args.benchmark}", f"method={m}", f"seed={seed}", *args.override])
            for seed in args.seeds for m in args.methods]
    run_grid(runs, args.root)
    results = collect(args.root)
    results = results[results["method"].isin(args.methods) & results["seed"].isin(args.seeds)]
    refs = results[results["model"].isin(["Original", "Retrain"])].drop_duplicates(["seed", "model"])
    runs_only = results[~results["model"].isin(["Original", "Retrain"])].copy()
    for col in DIAGNOSTICS:  # per run: the mean over its steps
        runs_only[col] = [pd.read_csv(args.root / r / "diagnostics.csv")[col].mean() for r in runs_only["run"]]
    table = mean_std_table(pd.concat([refs, runs_only]), by=["model"], metrics=METRICS + DIAGNOSTICS)
    order = ["Original", "Retrain", *args.methods]
    table = table.reindex([m for m in order if m in table.index])
    out = args.root.parent
    table.to_csv(out / f"{args.root.name}.csv")
    md = to_markdown(table)
    (out / f"{args.root.name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
