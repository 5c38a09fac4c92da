"""`python -m unlearn.report <sweep or runs dir>`: a table and figures from any set of finished run directories.

    python -m unlearn.report outputs/multirun/2026-12-02/01-00-00
    python -m unlearn.report outputs/sweeps/blur_npo --heatmap method.direction.gamma method.forget.beta forget_quality

Collects every finished run under the directory (any benchmark, any layout: a Hydra sweep, a table driver's runs),
groups them by benchmark, split, model and every hyper-parameter that varies between runs, and writes into
`--out` (default `<dir>/report`, refused if it already holds a report unless `--force`):
`runs.csv` (one row per run and model), `table.csv` (numbers: mean, std over runs, std of per-world means),
`table.md` (`mean ± std [std across worlds]`), `tradeoff.png`, `trajectories.png` (runs with `eval.every`),
`heatmap.png` (with `--heatmap X Y METRIC`), `diagnostics.png` and `REPORT.md` showing all of it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from unlearn.loggers import Logger, WandbLogger
from unlearn.report import figures
from unlearn.report.aggregate import aggregate, format_table, order_models, table_rows
from unlearn.report.collect import collect, collect_diagnostics, collect_trajectories, finished_runs, param_columns
from unlearn.report.table import to_markdown

TRAJECTORY_METRICS = ("forget_quality", "model_utility", "forget_log_truth_ratio_gap")
DIAGNOSTIC_COLUMNS = ("A_f", "A_r", "cos_fr")


def headline_metrics(root: Path) -> list[str]:
    """The headline summary keys of the evaluators the first finished run used (benchmark-agnostic default)."""
    from unlearn.evals.base import build_evaluators

    for run_dir in finished_runs(root):
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        return [m for ev in build_evaluators(cfg["eval"]) for m in ev.headline]
    return []


def build_report(root: str | Path, out: str | Path, metrics: Sequence[str] | None = None,
                 heatmap: Sequence[str] | None = None, force: bool = False, logger: Logger | None = None
                 ) -> dict[str, Path]:
    """Write the report files (module docstring) and return them by name; with a `logger` (e.g. W&B), also log
    the table and every figure to it."""
    root, out = Path(root), Path(out)
    if (out / "REPORT.md").exists() and not force:
        raise FileExistsError(f"{out} already holds a report; choose another --out (or --force to replace it)")
    frame = collect(root)
    if frame.empty:
        raise FileNotFoundError(f"no finished run (summary.json + config.yaml) under {root}")
    metrics = list(metrics or headline_metrics(root))
    metrics += [f"relearn_{m}" for m in list(metrics) if m.startswith("forget") and f"relearn_{m}" in frame.columns
                and f"relearn_{m}" not in metrics]
    params = param_columns(frame)
    rows = table_rows(frame)
    rows[params] = rows[params].astype(object)
    rows.loc[rows["kind"] == "reference", params] = "—"  # a reference model has no method hyper-parameters
    by = ["benchmark", "split", *params, "model"]
    agg = order_models(aggregate(rows, by, metrics), methods=list(dict.fromkeys(frame["method"])))
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    frame.to_csv(files.setdefault("runs", out / "runs.csv"), index=False)
    agg.to_csv(files.setdefault("table_csv", out / "table.csv"))
    table_md = to_markdown(format_table(agg, metrics))
    (files.setdefault("table_md", out / "table.md")).write_text(table_md + "\n")

    method_agg = aggregate(rows[rows["kind"] == "method"].assign(model=lambda f: _label(f, params)),
                           ["model"], metrics)
    ref_agg = aggregate(rows[rows["kind"] == "reference"], ["model"], metrics)
    if {"model_utility", "forget_quality"} <= set(metrics):
        files["tradeoff"] = figures.tradeoff(pd.concat([ref_agg, method_agg]), out / "tradeoff.png")
    traj = collect_trajectories(root)
    if not traj.empty:
        traj = traj.assign(method=_label(traj, params))
        files["trajectories"] = figures.trajectories(traj, out / "trajectories.png", TRAJECTORY_METRICS)
    diag = collect_diagnostics(root)
    if not diag.empty and set(DIAGNOSTIC_COLUMNS) & set(diag.columns):
        files["diagnostics"] = figures.diagnostics(diag, out / "diagnostics.png", DIAGNOSTIC_COLUMNS)
    if heatmap:
        x, y, metric = heatmap
        files["heatmap"] = figures.heatmap(frame[frame["kind"] == "method"], out / "heatmap.png", x, y, metric)

    lines = [f"# Report: {root}", "", f"{len(frame[frame['kind'] == 'method'])} finished runs; cells are "
             "`mean ± std over runs [std of the per-world means]`.", "", table_md, ""]
    for name in ("tradeoff", "trajectories", "diagnostics", "heatmap"):
        if name in files:
            lines += [f"![{name}]({files[name].name})", ""]
    (files.setdefault("report", out / "REPORT.md")).write_text("\n".join(lines))
    if logger is not None:
        logger.start({"report": str(root), "metrics": metrics, "heatmap": list(heatmap or [])}, out)
        try:
            logger.table("report/table", format_table(agg, metrics))
            for name in ("tradeoff", "trajectories", "diagnostics", "heatmap"):
                if name in files:
                    logger.image(f"report/{name}", files[name])
        finally:
            logger.finish()
    return files


def _label(frame: pd.DataFrame, params: Sequence[str]) -> pd.Series:
    """`method` plus the swept values (`blur_npo gamma=0.5`), so grid points are told apart in figures."""
    if not params:
        return frame["method"].astype(str)
    parts = frame[list(params)].astype(str)
    suffix = parts.apply(lambda r: " ".join(f"{k.split('.')[-1]}={v}" for k, v in r.items()), axis=1)
    return frame["method"].astype(str) + " " + suffix


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearn.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="a sweep directory or any directory holding run directories")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <runs>/report)")
    parser.add_argument("--metrics", nargs="+", default=None, help="summary keys (default: evaluators' headline)")
    parser.add_argument("--heatmap", nargs=3, metavar=("X", "Y", "METRIC"), default=None,
                        help="a heatmap of METRIC over two swept config keys, e.g. method.direction.gamma")
    parser.add_argument("--force", action="store_true", help="replace an existing report in --out")
    parser.add_argument("--wandb", metavar="PROJECT", default=None,
                        help="also log the table and figures to W&B (offline unless WANDB_MODE=online)")
    args = parser.parse_args(argv)
    logger = None
    if args.wandb:
        logger = WandbLogger(project=args.wandb, mode=os.environ.get("WANDB_MODE", "offline"))
    try:
        files = build_report(args.runs, args.out or args.runs / "report", args.metrics, args.heatmap, args.force,
                             logger)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(files["table_md"].read_text())
    print(f"[report] {len(files)} files in {files['report'].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
