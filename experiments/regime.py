"""The regime check (`make regime`): do the embedded worlds behave like the real benchmarks?

    python -m experiments.regime                       # 3 worlds x (npo, blur_npo, graddiff, ga), forget10
    python -m experiments.regime --worlds 0 --methods npo

For each world (`benchmark.world.seed`, with its own target and retain models fine-tuned from the shared base) and
each method at its configured settings, one run with `eval.every=1` records utility and forget quality after every
epoch (`trajectory.jsonl`, step 0 = the target). This script reads the trajectories and checks the properties the
BLUR paper's TOFU runs show (Llama-3.2-1B; docs/methods.md#published-results): NPO and BLUR-NPO never lose more than
a fifth of the target's utility, GradDiff keeps at least half of it, GA collapses, NPO's forget quality rises. A
world where forgetting only comes with collapse (the from-scratch recipe, issue 12) fails these.

Writes `outputs/regime/regime.json` (`{"worlds": {seed: {method: {min_utility_ratio, final_utility_ratio,
final_forget_quality, ...}}}, "checks": [...]}`) and `outputs/regime/regime.png`. Runs go to
`outputs/regime/runs/w<seed>_<method>/`; finished ones are reused, never redone or overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.grid import run_grid

METHODS = ("npo", "blur_npo", "graddiff", "ga")
WORLDS = (0, 1, 2)


@dataclass(frozen=True)
class Check:
    """One required property: `test(stats)` over a method's per-world statistics."""

    method: str
    what: str
    test: Callable[[dict[str, float]], bool]


#: The properties required of the default world recipe (issue 12), per method.
CHECKS: tuple[Check, ...] = (
    Check("npo", "utility never below 0.8 of the target's", lambda s: s["min_utility_ratio"] >= 0.8),
    Check("blur_npo", "utility never below 0.8 of the target's", lambda s: s["min_utility_ratio"] >= 0.8),
    Check("graddiff", "keeps at least half the target's utility", lambda s: s["final_utility_ratio"] >= 0.5),
    Check("ga", "collapses (final utility below 0.1 of the target's)", lambda s: s["final_utility_ratio"] < 0.1),
    Check("npo", "forget quality rises over the run", lambda s: s["final_forget_quality"] > s["start_forget_quality"]),
)


def read_trajectory(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "trajectory.jsonl"
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def trajectory_stats(rows: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Utility as a fraction of the target's (the step-0 row) and forget quality, over the evaluated points."""
    if not rows or rows[0].get("step") != 0:
        raise ValueError("a trajectory must start with the target model (step 0)")
    target = rows[0]["model_utility"]
    ratio = [r["model_utility"] / target if target > 0 else math.nan for r in rows]
    fq = [r.get("forget_quality", math.nan) for r in rows]
    return {
        "min_utility_ratio": min(ratio),
        "final_utility_ratio": ratio[-1],
        "final_forget_quality": fq[-1],
        "start_forget_quality": fq[0],
        "max_forget_quality": max(fq),
        "target_utility": target,
        "epochs": [r.get("epoch", math.nan) for r in rows],
        "utility_ratio": ratio,
        "forget_quality": fq,
    }


def evaluate_checks(worlds: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every check on every world that ran its method: one row each, `passed` true/false."""
    out = []
    for seed, per_method in worlds.items():
        for check in CHECKS:
            if check.method in per_method:
                out.append({"world": seed, "method": check.method, "check": check.what,
                            "passed": bool(check.test(per_method[check.method]))})
    return out


def plot(worlds: dict[str, dict[str, dict[str, Any]]], methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(methods), figsize=(3.2 * len(methods), 5.6), squeeze=False, sharex=True)
    for j, method in enumerate(methods):
        top, bottom = axes[0][j], axes[1][j]
        for seed, per_method in worlds.items():
            stats = per_method.get(method)
            if stats is None:
                continue
            top.plot(stats["epochs"], stats["utility_ratio"], marker=".", label=f"world {seed}")
            bottom.semilogy(stats["epochs"], [max(f, 1e-30) for f in stats["forget_quality"]], marker=".")
        top.axhline(0.8, color="grey", lw=0.8, ls="--")
        top.axhline(0.5, color="grey", lw=0.8, ls=":")
        top.set_title(method)
        top.set_ylim(-0.05, 1.15)
        bottom.set_xlabel("epoch")
        if j == 0:
            top.set_ylabel("utility / target's")
            bottom.set_ylabel("forget quality")
            top.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", type=int, default=list(WORLDS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--root", type=Path, default=Path("outputs/regime"))
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (experiments/grid.py)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    runs = [(f"w{w}_{m}", [f"method={m}", f"benchmark.world.seed={w}", f"benchmark.forget_split={args.split}",
                           "eval.every=1", *args.override])
            for w in args.worlds for m in args.methods]
    run_grid(runs, args.root / "runs", jobs=args.jobs)
    worlds: dict[str, dict[str, dict[str, Any]]] = {}
    for w in args.worlds:
        worlds[str(w)] = {m: trajectory_stats(read_trajectory(args.root / "runs" / f"w{w}_{m}")) for m in args.methods}
    checks = evaluate_checks(worlds)
    report = {"split": args.split, "overrides": args.override, "worlds": worlds, "checks": checks,
              "all_passed": all(c["passed"] for c in checks), "wall_seconds": round(time.perf_counter() - start, 1)}
    args.root.mkdir(parents=True, exist_ok=True)
    (args.root / "regime.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(worlds, args.methods, args.root / "regime.png")
    print(f"{'world':>5} {'method':>9} {'min u/u0':>9} {'final u/u0':>10} {'final FQ':>9}")
    for seed, per_method in worlds.items():
        for m, s in per_method.items():
            print(f"{seed:>5} {m:>9} {s['min_utility_ratio']:9.3f} {s['final_utility_ratio']:10.3f} "
                  f"{s['final_forget_quality']:9.3g}")
    for c in checks:
        print(f"[{'pass' if c['passed'] else 'FAIL'}] world {c['world']}: {c['method']} {c['check']}")
    print(f"regime -> {args.root / 'regime.json'}, {args.root / 'regime.png'}")
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
