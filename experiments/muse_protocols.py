"""MUSE's scalability and sustainability protocols (Shi et al., 2024, Sec. 5), one command each.

    python -m experiments.muse_protocols scal                   # forget sets of 1, 2 and 4 folds
    python -m experiments.muse_protocols sust                   # 4 requests in sequence
    python -m experiments.muse_protocols sust --benchmark muse_micro --method npo --override trainer.max_steps=2

- **Scalability**: one unlearning run per forget-set size, from the target each time, on `scal_k` (the first k folds of
  the forget set; `--folds`, default 1 2 4).
- **Sustainability**: requests `sust_1` .. `sust_4` (disjoint folds) in sequence, request k starting from request
  k-1's unlearned model (`benchmark.start_from`, the run's saved `model/`), as MUSE's sequential unlearning does.

Every model is evaluated on the benchmark's full MUSE evaluation sets (VerbMem_f, KnowMem_f, PrivLeak, KnowMem_r), with
the Original and Retrain rows for reference, as MUSE plots utility against forget-set size and request count. Runs go
to `<root>/<protocol>/<method>_<split>/`; finished runs are reused, so an interrupted protocol resumes. The table is
printed and written to `<root>/<protocol>_<method>.md` and `.csv`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir

from unlearn.report.table import print_table, to_markdown

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")
COLUMNS = ["verbmem_f", "knowmem_f", "privleak", "knowmem_r"]


def _compose(benchmark: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[f"benchmark={benchmark}", *overrides])


def _run(benchmark: str, overrides: list[str], run_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """One run (reused when `run_dir` already holds a finished one): its summary and its reference rows."""
    from unlearn.pipeline import run_experiment

    if not (run_dir / "summary.json").exists():
        run_experiment(_compose(benchmark, overrides), run_dir, console_print=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, json.loads((run_dir / "references.json").read_text())


def run_protocol(protocol: str, benchmark: str, method: str, root: Path, folds: list[int], extra: list[str]
                 ) -> pd.DataFrame:
    """Run `scal` or `sust`; returns the table (rows: Original, Retrain, then one per forget set or request)."""
    if protocol not in ("scal", "sust"):
        raise ValueError(f"protocol: {protocol!r} not one of scal, sust")
    rows: dict[str, dict[str, float]] = {}
    previous: Path | None = None
    steps = folds if protocol == "scal" else [1, 2, 3, 4]
    for k in steps:
        split = f"{protocol}_{k}"
        run_dir = root / protocol / f"{method}_{split}"
        overrides = [f"method={method}", f"benchmark.forget_split={split}", *extra]
        if protocol == "sust":
            overrides.append("save_model=true")
            if previous is not None:
                overrides.append(f"benchmark.start_from={previous / 'model'}")
        summary, refs = _run(benchmark, overrides, run_dir)
        if not rows:
            rows.update({name: {c: row.get(c, float("nan")) for c in COLUMNS} for name, row in refs.items()})
        label = f"{method} {k} fold{'s' if k > 1 else ''}" if protocol == "scal" else f"{method} request {k}"
        rows[label] = {c: summary.get(c, float("nan")) for c in COLUMNS}
        previous = run_dir
    return pd.DataFrame.from_dict(rows, orient="index")[COLUMNS]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", choices=["scal", "sust"])
    parser.add_argument("--benchmark", default="muse_mini")
    parser.add_argument("--method", default="blur_npo")
    parser.add_argument("--folds", nargs="+", type=int, default=[1, 2, 4], help="scal: forget-set sizes in folds")
    parser.add_argument("--root", type=Path, default=Path("outputs/muse_protocols"))
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    args = parser.parse_args(argv)
    table = run_protocol(args.protocol, args.benchmark, args.method, args.root / args.benchmark, args.folds,
                         args.override)
    title = {"scal": "scalability (forget-set size)", "sust": "sustainability (sequential requests)"}[args.protocol]
    print_table(table, title=f"MUSE {title}: {args.method} on {args.benchmark}")
    out = args.root / f"{args.benchmark}_{args.protocol}_{args.method}"
    table.to_csv(out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(to_markdown(table.map(lambda v: f"{v:.1f}")) + "\n")
    return table


if __name__ == "__main__":
    main()
