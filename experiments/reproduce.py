"""`make reproduce-tables`: the paper's TOFU table and figures on the embedded benchmark, across worlds.

    python -m experiments.reproduce                 # full: tofu_mini, forget05 + forget10, 1 dev + 3 held-out worlds
    python -m experiments.reproduce --quick         # tofu_micro, forget10, 1 dev + 1 held-out world (minutes)

Protocol (issue 10; the selection rule is `unlearn.report.select`, the same for every method):
1. **Paper settings**: every method at its configured settings (`configs/method/`, the BLUR paper's TOFU
   hyper-parameters) on every held-out world x unlearning seed, with `eval.every=1` (trajectories).
2. **Tuning**: on the development world, every method's declared grid (`GRIDS`: its own hyper-parameter and the
   learning rate, the *same number of points for every method*) with `eval.every=1`; a candidate is a grid point
   at one epoch; `SelectionRule` picks one per method.
3. **Tuned**: the chosen grid point on the held-out worlds x seeds, run for the chosen number of epochs (with the
   constant learning rate the protocol requires, a run stopped after e epochs is the first e epochs of a longer one,
   so this is the model the development world's trajectory was read at; it is evaluated and attacked like any final
   model). The choice is never revisited on held-out worlds.
Plus, on the development world, a BLUR-NPO gamma x beta sweep (the heatmap, Fig. C.7).

Every run is one directory under `<out>/runs/<split>/w<world>/<method>/<grid point>_s<seed>`, named by what it
runs, so a re-run (after an interruption, or with more worlds) runs only what is missing and never redoes or
overwrites a finished run (`experiments.grid.run_grid`). Then `<out>/` gets `REPORT.md` (tables, the paper's
published numbers as a separate block from `experiments/paper/`, figures, example generations, the command and
its wall time), `table_<split>.csv|md`, `selection.csv`, and PNG figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.grid import compose_cfg, missing, prepare_models, run_grid
from unlearn.evals.base import read_items
from unlearn.report import figures
from unlearn.report.aggregate import aggregate, format_table, order_models
from unlearn.report.collect import collect, collect_diagnostics, collect_trajectories, reference_rows
from unlearn.report.select import SelectionRule, add_utility_ratio, select
from unlearn.report.table import to_markdown

PAPER_DIR = Path(__file__).resolve().parent / "paper"
METRICS = ("forget_quality", "forget_truth_ratio", "forget_log_truth_ratio_gap", "model_utility", "forget_rouge",
           "retain_rouge", "forget_prob", "relearn_forget_prob", "relearn_recovery", "relearn_forget_quality")
#: Per-run medians over steps from diagnostics.csv (docs/methods.md#diagnostics), beside every paper-settings row.
DIAGNOSTICS = ("cos_fr", "A_f", "A_r")
#: The relearning attack every run ends with (docs/metrics.md#relearning-attack): the `relearn_*` columns.
RELEARN = ("relearn.steps=10", "relearn.fraction=0.5")
LR_KEY = "optimizer.lr"


@dataclass(frozen=True)
class Protocol:
    """What to run: benchmark overrides, splits, worlds, seeds, methods and each method's grid.

    The cost knobs (README "Reproducing tables"): `eval_every` epochs between trajectory evaluations; `traj_seeds`
    and `traj_splits` the held-out paper-setting runs that record a trajectory for the figures (the others are
    evaluated once, at the end; development-world runs always record one, selection reads them); `tuned_seeds` the
    held-out seeds of the tuned rows; `tune_splits` the splits that are tuned (and get tuned rows); the heatmap runs
    on the last split only."""

    name: str
    overrides: tuple[str, ...]
    splits: tuple[str, ...]
    dev_world: int
    worlds: tuple[int, ...]  # held-out worlds
    seeds: tuple[int, ...]
    dev_seeds: tuple[int, ...]
    grids: Mapping[str, Mapping[str, Sequence[float]]]  # method -> {config key: values}; lr as a multiplier
    heatmap: Mapping[str, Sequence[float]] = field(default_factory=dict)  # blur_npo gamma x beta, dev world
    eval_every: int = 1
    traj_seeds: tuple[int, ...] | None = None  # None: every seed
    traj_splits: tuple[str, ...] | None = None  # None: every split
    tuned_seeds: tuple[int, ...] | None = None  # None: every seed
    tune_splits: tuple[str, ...] | None = None  # None: every split
    tables: tuple[str, ...] = ()  # other benchmarks' tables (TABLES)

    def __post_init__(self) -> None:
        if not set(self.tuned) <= set(self.splits):
            raise ValueError(f"tune_splits {self.tune_splits} must be among splits {self.splits}")
        if self.traj_splits is not None and not set(self.traj_splits) <= set(self.splits):
            raise ValueError(f"traj_splits {self.traj_splits} must be among splits {self.splits}")

    def records_trajectory(self, split: str, world: int, seed: int, paper: bool = True) -> bool:
        """Dev-world runs always do (selection reads them); held-out paper-settings runs for traj_seeds x
        traj_splits (the figures); held-out tuned runs never (their rows are their final models)."""
        return world == self.dev_world or (paper and (
            (self.traj_seeds is None or seed in self.traj_seeds)
            and (self.traj_splits is None or split in self.traj_splits)))

    @property
    def tuned_seed_list(self) -> tuple[int, ...]:
        return self.seeds if self.tuned_seeds is None else self.tuned_seeds

    @property
    def tuned(self) -> tuple[str, ...]:
        return self.splits if self.tune_splits is None else self.tune_splits


@dataclass(frozen=True)
class BenchmarkTable:
    """A paper table on another embedded benchmark (Tables 3 and 4): every method at its configured settings (the
    benchmark's recipes, `configs/recipe/<benchmark>/`) on several worlds x seeds; no tuning (only TOFU is tuned:
    README "Reproducing tables"). Runs go to `<out>/runs/<benchmark>/w<world>/<method>/paper_s<seed>`."""

    title: str
    benchmark: str
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    worlds: tuple[int, ...]
    seeds: tuple[int, ...]
    paper: str  # experiments/paper/<paper>.csv
    paper_split: str

    def runs(self, extra: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
        return [(f"{self.benchmark}/w{w}/{m}/paper_s{s}",
                 [f"benchmark={self.benchmark}", f"method={m}", f"benchmark.world.seed={w}", f"seed={s}", *extra])
                for w in self.worlds for s in self.seeds for m in self.methods]


#: Tables 3 (MUSE) and 4 (WMDP) of the BLUR paper on the embedded worlds, with the methods the paper reports there.
TABLES: dict[str, BenchmarkTable] = {
    "muse_mini": BenchmarkTable("Table 3: MUSE (embedded, muse_mini)", "muse_mini",
                                ("npo", "simnpo", "ngdiff", "blur_npo", "blur_simnpo"),
                                ("verbmem_f", "knowmem_f", "privleak", "knowmem_r"), (0, 1, 2), (0,), "muse", "news"),
    "wmdp_mini": BenchmarkTable("Table 4: WMDP (embedded, wmdp_mini)", "wmdp_mini",
                                ("rmu", "blur_rmu", "npo", "simnpo", "blur_npo"),
                                ("wmdp_mini_bio_acc", "wmdp_mini_cyber_acc", "wmdp_mini_general_acc"), (0, 1, 2),
                                (0,), "wmdp", "all"),
    "muse_micro": BenchmarkTable("Table 3: MUSE (embedded, muse_micro)", "muse_micro", ("npo", "blur_npo"),
                                 ("verbmem_f", "knowmem_f", "privleak", "knowmem_r"), (0,), (0,), "muse", "news"),
    "wmdp_micro": BenchmarkTable("Table 4: WMDP (embedded, wmdp_micro)", "wmdp_micro", ("rmu", "blur_rmu"),
                                 ("wmdp_mini_bio_acc", "wmdp_mini_cyber_acc", "wmdp_mini_general_acc"), (0,), (0,),
                                 "wmdp", "all"),
}


def grid_points(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of a method's grid (keys in the order given)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def check_equal_budget(grids: Mapping[str, Mapping[str, Sequence[float]]]) -> int:
    """Every method must get the same number of grid points (the equal tuning budget); returns it."""
    sizes = {m: len(grid_points(g)) for m, g in grids.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"unequal tuning budget: {sizes}")
    return next(iter(sizes.values()))


#: 4 points per method (the equal tuning budget): the method's own main hyper-parameter at its configured value and
#: one other, x the configured learning rate and twice it; 4 learning rates for a method without one.
LR4 = [0.5, 1.0, 2.0, 4.0]
FULL_GRIDS: dict[str, dict[str, list[float]]] = {
    "ga": {LR_KEY: LR4},
    "graddiff": {"method.direction.lam": [0.5, 1.0], LR_KEY: [1.0, 2.0]},
    "npo": {"method.forget.beta": [0.05, 0.1], LR_KEY: [1.0, 2.0]},
    "simnpo": {"method.forget.beta": [2.5, 3.5], LR_KEY: [1.0, 2.0]},
    "ngdiff": {LR_KEY: LR4},
    "blur_ga": {"method.direction.gamma": [0.5, 1.0], LR_KEY: [1.0, 2.0]},
    "blur_simnpo": {"method.direction.gamma": [0.5, 1.0], LR_KEY: [1.0, 2.0]},
    "blur_npo": {"method.direction.gamma": [0.5, 1.0], LR_KEY: [1.0, 2.0]},
}
QUICK_GRIDS: dict[str, dict[str, list[float]]] = {
    "ga": {LR_KEY: [1.0, 2.0]},
    "graddiff": {"method.direction.lam": [0.5, 1.0]},
    "npo": {"method.forget.beta": [0.1, 0.2]},
    "blur_npo": {"method.direction.gamma": [0.5, 1.0]},
}
PROTOCOLS = {
    # What it costs on 2 CPU cores is measured in README "Reproducing tables": paper-setting rows on 3 held-out
    # worlds x 3 seeds (forget10 seed 0 with trajectories, for the figures), tuning on forget10 of the development
    # world (evaluated every 2 epochs), tuned rows on the 3 held-out worlds x seed 0, run to the chosen epoch.
    "full": Protocol("full", ("benchmark=tofu_mini", *RELEARN), ("forget05", "forget10"), dev_world=0, worlds=(1, 2, 3),
                     seeds=(0, 1, 2), dev_seeds=(0,), grids=FULL_GRIDS,
                     heatmap={"method.direction.gamma": [0.5, 1.0, 2.0], "method.forget.beta": [0.05, 0.1, 0.2]},
                     eval_every=2, traj_seeds=(0,), traj_splits=("forget10",), tuned_seeds=(0,),
                     tune_splits=("forget10",),
                     tables=("muse_mini", "wmdp_mini")),
    "quick": Protocol("quick", ("benchmark=tofu_micro", *RELEARN), ("forget10",), dev_world=0, worlds=(1,), seeds=(0,),
                      dev_seeds=(0,), grids=QUICK_GRIDS,
                      heatmap={"method.direction.gamma": [0.5, 1.0], "method.forget.beta": [0.1, 0.2]},
                      tables=("muse_micro", "wmdp_micro")),
}


def method_defaults(proto: Protocol, extra: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """Per method, the configured value of every key its grids and the heatmap vary (lr as multiplier 1)."""
    from omegaconf import OmegaConf

    keys = {k for g in proto.grids.values() for k in g} | set(proto.heatmap)
    out = {}
    for method in proto.grids:
        cfg = compose_cfg([*proto.overrides, f"method={method}", *extra])
        out[method] = {k: 1.0 if k == LR_KEY else OmegaConf.select(cfg, k, default=None) for k in keys}
    return out


def point_name(point: Mapping[str, float], defaults: Mapping[str, Any]) -> str:
    """A grid point's directory name from the values that differ from the configured ones (`gamma=0.5,lr=x2`);
    `paper` when none does. Two spellings of the same run (a grid point and a heatmap point, or the configured
    settings) get the same name, so they are one run."""
    parts = [f"lr=x{v:g}" if k == LR_KEY else f"{k.split('.')[-1]}={v:g}" for k, v in sorted(point.items())
             if defaults.get(k) is None or float(defaults[k]) != float(v)]
    return ",".join(parts) or "paper"


def point_overrides(point: Mapping[str, float], base_lr: float) -> list[str]:
    return [f"{k}={v * base_lr:g}" if k == LR_KEY else f"{k}={v:g}" for k, v in point.items()]


def stopped_dir(point_dir: str, epochs: float | None) -> str:
    """A grid point's directory name, with `,epochs=e` for a run stopped at epoch e."""
    return point_dir if epochs is None else f"{point_dir},epochs={epochs:g}"


def _run(proto: Protocol, split: str, world: int, method: str, point: Mapping[str, float], seed: int,
         base_lr: float, defaults: Mapping[str, Mapping[str, Any]], extra: Sequence[str],
         epochs: float | None = None) -> tuple[str, list[str]]:
    """One run's name and overrides; `epochs` (a tuned run stopped at the chosen epoch) is in both, and such a run
    records no trajectory."""
    point_dir = stopped_dir(point_name(point, defaults[method]), epochs)
    stop = [] if epochs is None else [f"trainer.epochs={epochs:g}"]
    paper = point_dir == "paper"
    every = proto.eval_every if epochs is None and proto.records_trajectory(split, world, seed, paper) else 0
    return f"{split}/w{world}/{method}/{point_dir}_s{seed}", [
        *proto.overrides, f"method={method}", f"benchmark.forget_split={split}", f"benchmark.world.seed={world}",
        f"seed={seed}", f"eval.every={every}", *point_overrides(point, base_lr), *extra, *stop]


def plan_runs(proto: Protocol, base_lr: float, defaults: Mapping[str, Mapping[str, Any]], extra: Sequence[str]
              ) -> list[tuple[str, list[str]]]:
    """(run name, overrides) of every run the protocol needs before selection (paper rows, tuning, heatmap),
    each once."""
    runs: dict[str, list[str]] = {}

    def add(split: str, world: int, method: str, point: Mapping[str, float], seed: int) -> None:
        name, overrides = _run(proto, split, world, method, point, seed, base_lr, defaults, extra)
        runs.setdefault(name, overrides)

    for split in proto.splits:
        for method in proto.grids:
            dev = (proto.dev_world,) if split in proto.tuned else ()  # the dev world only serves tuning
            for world in (*dev, *proto.worlds):
                for seed in proto.seeds if world != proto.dev_world else proto.dev_seeds:
                    add(split, world, method, {}, seed)
            if split in proto.tuned:
                for point in grid_points(proto.grids[method]):
                    for seed in proto.dev_seeds:
                        add(split, proto.dev_world, method, point, seed)
        if "blur_npo" in proto.grids and split == proto.splits[-1]:
            for point in grid_points(proto.heatmap):
                for seed in proto.dev_seeds:
                    add(split, proto.dev_world, "blur_npo", point, seed)
    return list(runs.items())


def check_prefix_schedule(cfg: Mapping[str, Any]) -> int:
    """The configured number of unlearning epochs, after checking that a run stopped early is a prefix of a longer
    one: a constant learning rate without warmup (a warmup or a decay is spread over the total steps) and no
    `trainer.max_steps`. A tuned run stopped at the chosen epoch relies on it."""
    opt, trainer = cfg["optimizer"], cfg["trainer"]
    if opt.get("scheduler", "constant") != "constant" or float(opt.get("warmup_ratio") or 0.0) != 0.0:
        raise ValueError("optimizer.scheduler/warmup_ratio: the protocol stops tuned runs at the chosen epoch, which "
                         "is the chosen checkpoint only with a constant learning rate and no warmup; got "
                         f"scheduler={opt.get('scheduler')!r}, warmup_ratio={opt.get('warmup_ratio')!r}")
    if trainer.get("max_steps"):
        raise ValueError("trainer.max_steps: the protocol counts unlearning in epochs; leave max_steps unset")
    epochs = float(trainer["epochs"])
    if not epochs.is_integer():
        raise ValueError(f"trainer.epochs: the protocol needs a whole number of epochs, got {epochs}")
    return int(epochs)


def tuned_epochs(epoch: float, full: int) -> float | None:
    """The `epochs` of a tuned run read at `epoch`: None (the full run) at the last epoch."""
    return None if float(epoch) >= full else float(epoch)


def tuned_runs(proto: Protocol, chosen: pd.DataFrame, base_lr: float, defaults: Mapping[str, Mapping[str, Any]],
               extra: Sequence[str], full_epochs: int) -> list[tuple[str, list[str]]]:
    """The chosen grid point of every method on every held-out world x tuned seed, stopped at the chosen epoch (at
    the last epoch and the configured point, that is the paper-settings run itself)."""
    out = []
    for row in chosen.itertuples(index=False):
        stop = tuned_epochs(row.epoch, full_epochs)
        for world in proto.worlds:
            for seed in proto.tuned_seed_list:
                out.append(_run(proto, row.split, world, row.method, json.loads(row.point), seed, base_lr,
                                defaults, extra, epochs=stop))
    return out


def _point_of(run: str) -> str:
    return run.split("/")[-1].rsplit("_s", 1)[0]


def selection(proto: Protocol, traj: pd.DataFrame, rule: SelectionRule,
              defaults: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per split and method, the rule's choice among the dev world's grid points x epochs (`point`: the grid point
    as JSON, `point_name`: its run-directory name)."""
    names = {m: {point_name(p, defaults[m]): p for p in grid_points(g)} for m, g in proto.grids.items()}
    dev = traj[(traj["world"] == proto.dev_world) & traj["split"].isin(proto.tuned)].copy()
    dev["point_name"] = dev["run"].map(_point_of)
    dev = dev[[m in names and p in names[m] for m, p in zip(dev["method"], dev["point_name"], strict=True)]]
    chosen = []
    for split, part in dev.groupby("split"):
        pick = select(add_utility_ratio(part), ["point_name", "epoch"], rule)
        pick.insert(0, "split", split)
        chosen.append(pick)
    if not chosen:
        raise ValueError(f"no finished tuning run on the development world {proto.dev_world}")
    out = pd.concat(chosen, ignore_index=True)
    out["point"] = [json.dumps(names[m][p]) for m, p in zip(out["method"], out["point_name"], strict=True)]
    return out


def run_diagnostics(diag: pd.DataFrame, runs: pd.Series) -> pd.DataFrame:
    """Per run, the median over its steps of cos(g_f, g_r), A_f and A_r (A_f, A_r are ratios to ||g_f||^2 and
    ||g_r||^2, which a few near-zero steps would dominate in a mean)."""
    if diag.empty:
        return pd.DataFrame(index=pd.Index([], name="run"))
    return diag[diag["run"].isin(runs)].groupby("run")[[c for c in DIAGNOSTICS if c in diag]].median()


def tuned_point_dir(row: Any, full_epochs: int) -> str:
    """The run-directory point name of a chosen (point, epoch) on the held-out worlds (`tuned_runs` names)."""
    return stopped_dir(row.point_name, tuned_epochs(row.epoch, full_epochs))


def split_table(frame: pd.DataFrame, chosen: pd.DataFrame, proto: Protocol, split: str, metrics: Sequence[str],
                full_epochs: int, diag: pd.DataFrame | None = None) -> pd.DataFrame:
    """Original/Retain, every method at paper settings (final epoch, with its run's median diagnostics), every
    method tuned (its runs stopped at the chosen epoch, tuned seeds), held-out worlds only."""
    held = frame[(frame["split"] == split) & frame["world"].isin(proto.worlds)].copy()
    held["point_name"] = held["run"].map(_point_of)
    refs = reference_rows(held).assign(row=lambda f: f["model"])
    paper = held[(held["kind"] == "method") & (held["point_name"] == "paper")].assign(row=lambda f: f["method"])
    if diag is not None and len(paper):
        paper = paper.join(run_diagnostics(diag, paper["run"]), on="run")
    parts = [refs, paper]
    for row in chosen[chosen["split"] == split].itertuples(index=False):
        tuned = held[(held["kind"] == "method") & (held["method"] == row.method)
                     & held["seed"].isin(proto.tuned_seed_list)
                     & (held["point_name"] == tuned_point_dir(row, full_epochs))]
        parts.append(tuned.assign(row=f"{row.method} (tuned)"))
    rows = pd.concat(parts, ignore_index=True)
    if "relearn_forget_prob" in rows.columns:
        rows["relearn_recovery"] = relearn_recovery(rows)
    order = [*proto.grids, *(f"{m} (tuned)" for m in proto.grids)]
    agg = aggregate(rows, ["row"], metrics)
    agg.index.name = "model"
    return order_models(agg, methods=order)


def relearn_recovery(rows: pd.DataFrame, metric: str = "forget_prob") -> pd.Series:
    """The share of what unlearning removed that the relearning attack brings back, per run:
    `(relearn_m - m) / (m_Original - m)` with the Original (target) of the same world; 0 = nothing comes back,
    1 = back to the target. NaN for reference rows and for runs without the attack."""
    original = rows[rows["model"] == "Original"].drop_duplicates("world").set_index("world")[metric]
    out = (rows[f"relearn_{metric}"] - rows[metric]) / (rows["world"].map(original) - rows[metric])
    return out.where(rows["kind"] == "method")


def paper_block(split: str, benchmark: str = "tofu") -> pd.DataFrame:
    """The paper's published numbers for `split` (wide: model x metric); empty when the file has none. Values
    stay the file's text, so they read as the paper printed them (not re-rounded to our tables' digits)."""
    path = PAPER_DIR / f"{benchmark}.csv"
    if not path.exists():
        return pd.DataFrame()
    data = pd.read_csv(path, dtype={"value": str})
    data = data[data["split"] == split]
    return data.pivot_table(index="model", columns="metric", values="value", aggfunc="first")


def generations(frame: pd.DataFrame, root: Path, proto: Protocol, split: str, per_split: int = 2) -> pd.DataFrame:
    """Example generations (the paper's Table 8): one held-out world, seed 0, paper settings; the first
    `per_split` forget and retain questions, for Original, Retain and every method."""
    runs = frame[(frame["kind"] == "method") & (frame["split"] == split) & (frame["world"] == proto.worlds[0])
                 & (frame["seed"] == proto.seeds[0]) & frame["run"].str.contains("/paper_s")]
    rows = []
    for i, run in enumerate(runs.itertuples(index=False)):
        sources = [(run.method, root / run.run / "items" / "tofu.jsonl")]
        if i == 0:
            sources = [("Original", root / run.run / "items" / "target" / "tofu.jsonl"),
                       ("Retain", root / run.run / "items" / "retain" / "tofu.jsonl"), *sources]
        for model, path in sources:
            if not path.exists():
                continue
            items = read_items(path)
            for part in ("forget", "retain"):
                for _, item in items[items["split"] == part].sort_values("idx").head(per_split).iterrows():
                    rows.append({"model": model, "split": part, "question": item["question"],
                                 "answer": item["answer"], "generation": item["generation"]})
    return pd.DataFrame(rows)


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def benchmark_table(frame: pd.DataFrame, diag: pd.DataFrame, table: BenchmarkTable) -> pd.DataFrame:
    """Reference rows and every method of `table` over its worlds x seeds, with each run's mean diagnostics over its
    steps (cos(g_f, g_r), A_f, A_r, the median over steps: why a direction rule behaves as it does)."""
    rows = frame[frame["run"].str.startswith(f"{table.benchmark}/") & frame["world"].isin(table.worlds)]
    refs = reference_rows(rows)
    mine = rows[(rows["kind"] == "method") & rows["method"].isin(table.methods) & rows["seed"].isin(table.seeds)]
    mine = mine.assign(row=mine["method"])
    if len(mine):
        mine = mine.join(run_diagnostics(diag, mine["run"]), on="run")
    agg = aggregate(pd.concat([refs.assign(row=refs["model"]), mine], ignore_index=True), ["row"],
                    [*table.metrics, *DIAGNOSTICS])
    agg.index.name = "model"
    return order_models(agg, methods=table.methods)


def write_report(root: Path, out: Path, proto: Protocol, rule: SelectionRule, defaults: Mapping[str, Any],
                 command: str, timing: str, budget: int, full_epochs: int,
                 tables: Sequence[BenchmarkTable] = ()) -> Path:
    everything = collect(root)
    # Runs are told apart by their directory (`<split>/...` TOFU, `<benchmark>/...` the other tables): a micro
    # benchmark records the name of the benchmark it shrinks (`benchmark.name: tofu_mini`).
    frame = everything[everything["run"].str.split("/").str[0].isin(proto.splits)]
    traj = collect_trajectories(root)
    diag_all = collect_diagnostics(root)
    chosen = selection(proto, traj, rule, defaults)
    chosen.to_csv(out / "selection.csv", index=False)
    metrics = list(METRICS)
    lines = [f"# Reproduced tables ({proto.name})", "",
             f"Command: `{command}` — {timing}.", "",
             f"Held-out worlds {list(proto.worlds)} x seeds {list(proto.seeds)}; tuning on world {proto.dev_world} "
             f"(seeds {list(proto.dev_seeds)}), {budget} grid points per method x every epoch. Cells: "
             "`mean ± std over runs [std of the per-world means]`. `forget_log_truth_ratio_gap` > 0 means "
             "over-forgetting, < 0 under-forgetting (docs/metrics.md#signed-log-truth-ratio).", "",
             f"Selection rule: {rule.describe()}.", ""]
    for split in proto.splits:
        agg = split_table(frame, chosen, proto, split, [*metrics, *DIAGNOSTICS], full_epochs, diag_all)
        agg.to_csv(out / f"table_{split}.csv")
        md = to_markdown(format_table(agg, [*metrics, *DIAGNOSTICS]))
        (out / f"table_{split}.md").write_text(md + "\n")
        lines += [f"## TOFU (embedded, {proto.overrides[0].split('=')[1]}) {split}", "", md, "",
                  "`relearn_*`: after 10 steps of fine-tuning on half the forget set (the relearning attack, on "
                  "every final model; a tuned row's runs stop at the chosen epoch); `relearn_recovery`: the share of "
                  "the forget-set probability removed by unlearning that the attack brings back (0: none, 1: all). "
                  "`cos_fr`, `A_f`, `A_r` (paper-settings rows): each run's median over its steps of cos(g_f, g_r) "
                  "and of the rates <g_f, u>/||g_f||^2 and <g_r, u>/||g_r||^2 at which the update descends the "
                  "forget and retain losses (BLUR: A_f = gamma).",
                  ""]
        if split in proto.tuned:
            pick = chosen[chosen["split"] == split]
            lines += ["Chosen on the development world:", "", to_markdown(pick.set_index("method")[
                ["point_name", "epoch", rule.metric, "utility_ratio", "eligible"]]), ""]
        else:
            lines += [f"{split} is not tuned (paper-settings rows only; tuning covers {', '.join(proto.tuned)}).", ""]
        paper = paper_block(split)
        if not paper.empty:
            lines += ["Published (BLUR paper, Llama-3.2-1B-Instruct, real TOFU) — for reference, not comparable "
                      "numbers:", "", to_markdown(paper), ""]
    for table in tables:
        agg = benchmark_table(everything, diag_all, table)
        if agg.empty:
            continue
        cols = [*table.metrics, *DIAGNOSTICS]
        agg.to_csv(out / f"table_{table.benchmark}.csv")
        md = to_markdown(format_table(agg, cols))
        (out / f"table_{table.benchmark}.md").write_text(md + "\n")
        lines += [f"## {table.title}", "",
                  f"Every method at its configured settings (`configs/method/`, `configs/recipe/{table.benchmark}/`), "
                  f"worlds {list(table.worlds)} x seeds {list(table.seeds)}, not tuned. `cos_fr`, `A_f`, `A_r`: each "
                  "run's median over its steps of cos(g_f, g_r) and of the rates at which the update descends the "
                  "forget and retain losses (docs/methods.md#diagnostics).", "", md, ""]
        paper = paper_block(table.paper_split, table.paper)
        if not paper.empty:
            lines += [f"Published (BLUR paper, {table.paper.upper()}) — for reference, not comparable numbers:", "",
                      to_markdown(paper), ""]
    # -- figures (the last split; held-out paper-settings runs unless noted) --------------------------------
    split = proto.splits[-1]
    held = frame[(frame["split"] == split) & frame["world"].isin(proto.worlds)]
    figs: dict[str, Path] = {}
    dev = frame[(frame["split"] == split) & (frame["world"] == proto.dev_world) & (frame["kind"] == "method")].copy()
    dev["point_name"] = dev["run"].map(_point_of)
    dev["label"] = dev["method"] + " " + dev["point_name"]
    trade = pd.concat([aggregate(reference_rows(held), ["model"], metrics),
                       aggregate(dev.assign(model=dev["label"]), ["model"], metrics)])
    figs["tradeoff"] = figures.tradeoff(trade, out / "tradeoff.png",
                                        title=f"{split}: every grid point on the development world")
    paper_traj = traj[(traj["split"] == split) & traj["world"].isin(proto.worlds)
                      & traj["run"].str.contains("/paper_s")]
    if not paper_traj.empty:
        figs["trajectories"] = figures.trajectories(paper_traj, out / "trajectories.png",
                                                    ["forget_quality", "model_utility", "forget_log_truth_ratio_gap"])
    diag = diag_all
    if not diag.empty:
        diag = diag[(diag["split"] == split) & diag["world"].isin(proto.worlds) & diag["run"].str.contains("/paper_s")
                    & diag["method"].isin(["npo", "blur_npo"])]
        if not diag.empty:
            figs["A_f_A_r"] = figures.diagnostics(diag, out / "A_f_A_r.png", ["A_f", "A_r"])
            figs["cos_fr"] = figures.diagnostics(diag, out / "cos_fr.png", ["cos_fr"])
    heat_names = {point_name(p, defaults["blur_npo"]) for p in grid_points(proto.heatmap)} if proto.heatmap else set()
    heat = dev[(dev["method"] == "blur_npo") & dev["point_name"].isin(heat_names)].copy()
    for key in proto.heatmap:  # the configured value where the run did not override it
        heat[key] = heat[key].astype(float)
    if len(heat) and proto.heatmap:
        x, y = list(proto.heatmap)
        figs["heatmap"] = figures.heatmap(heat, out / "heatmap.png", x, y, "forget_quality",
                                          title=f"BLUR-NPO forget quality, {split}, development world")
    captions = {"tradeoff": "Forget quality vs model utility (Fig. 1)", "A_f_A_r": "A_f and A_r over steps (Fig. 2)",
                "cos_fr": "cos(g_f, g_r) over steps (Fig. 3)", "trajectories": "Trajectories (Fig. C.1)",
                "heatmap": "gamma x beta sweep (Fig. C.7)"}
    lines += [f"## Figures ({split})", ""]
    for name, path in figs.items():
        lines += [f"**{captions[name]}**", "", f"![{name}]({path.name})", ""]
    gens = generations(frame, root, proto, split)
    if not gens.empty:
        gens.to_csv(out / "generations.csv", index=False)
        lines += [f"## Example generations ({split}, world {proto.worlds[0]}, seed {proto.seeds[0]}; Table 8)", "",
                  "| model | split | question | answer | generation |", "|---|---|---|---|---|"]
        lines += [f"| {r.model} | {r.split} | {_md_escape(r.question)} | {_md_escape(r.answer)} | "
                  f"{_md_escape(r.generation)} |" for r in gens.itertuples(index=False)]
        lines.append("")
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick protocol (tofu_micro, minutes)")
    parser.add_argument("--out", type=Path, default=None, help="default outputs/report (quick: outputs/report-quick)")
    parser.add_argument("--worlds", nargs="+", type=int, default=None, help="held-out worlds (override)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="unlearning seeds (override)")
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the protocol's methods")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run")
    parser.add_argument("--utility-floor", type=float, default=SelectionRule.utility_floor)
    parser.add_argument("--benchmarks", nargs="*", default=None,
                        help="other benchmarks' tables to run (default: the protocol's; `--benchmarks` alone: none)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build (or find cached) every world model the protocol's runs need, then stop "
                             "(`make worlds`); the runs then only load them")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (worker processes sharing the cores; experiments/grid.py)")
    args = parser.parse_args(argv)
    proto = PROTOCOLS["quick" if args.quick else "full"]
    if args.worlds or args.seeds or args.methods:
        grids = {m: g for m, g in proto.grids.items() if not args.methods or m in args.methods}
        seeds = tuple(args.seeds or proto.seeds)

        def keep(sub: tuple[int, ...] | None) -> tuple[int, ...] | None:  # the protocol's choice where it applies
            return sub if sub is None or set(sub) <= set(seeds) else seeds[:1]

        proto = dataclasses.replace(proto, worlds=tuple(args.worlds or proto.worlds), seeds=seeds, grids=grids,
                                    traj_seeds=keep(proto.traj_seeds), tuned_seeds=keep(proto.tuned_seeds))
    budget = check_equal_budget(proto.grids)
    out = args.out or Path("outputs/report-quick" if args.quick else "outputs/report")
    root = out / "runs"
    rule = SelectionRule(utility_floor=args.utility_floor)
    start = time.perf_counter()
    cpu0 = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))
    base_cfg = compose_cfg([*proto.overrides, *args.override])
    base_lr = float(base_cfg["optimizer"]["lr"])
    full_epochs = check_prefix_schedule(base_cfg)
    defaults = method_defaults(proto, args.override)
    runs = plan_runs(proto, base_lr, defaults, args.override)
    print(f"[reproduce] {proto.name}: {len(runs)} runs before selection (finished ones are skipped) -> {root}")
    names = args.benchmarks if args.benchmarks is not None else list(proto.tables)
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        raise SystemExit(f"--benchmarks: unknown {', '.join(unknown)} (known: {', '.join(TABLES)})")
    tables = [TABLES[n] for n in names]
    others = [r for t in tables for r in t.runs(args.override)]
    if args.prepare_only:  # tuned runs use the held-out worlds' models the paper runs need
        n = prepare_models([*runs, *others], jobs=args.jobs)
        print(f"[reproduce] prepared the models of {n} benchmark configs in {(time.perf_counter() - start) / 60:.1f} "
              "min")
        return 0
    # Every model the paper-setting and other benchmarks' runs still need, `jobs` at a time, before any run: one
    # pool for all builds packs the cores better than one per grid (the tuned runs use the same worlds' models).
    prepare_models([*missing(runs, root), *missing(others, root)], jobs=args.jobs)
    ran = run_grid(runs, root, jobs=args.jobs, prepare=False)
    chosen = selection(proto, collect_trajectories(root), rule, defaults)
    tuned = tuned_runs(proto, chosen, base_lr, defaults, args.override, full_epochs)
    print(f"[reproduce] tuned rows: {len(tuned)} runs on held-out worlds (some may be paper-setting runs)")
    ran += run_grid(tuned, root, jobs=args.jobs)
    ran += run_grid(others, root, jobs=args.jobs, prepare=False)
    wall = time.perf_counter() - start
    # CPU time of this process and of its finished workers (`--jobs`): a figure that other load on the machine
    # does not inflate, unlike the wall time.
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime")) - cpu0
    total = len({name for name, _ in [*runs, *tuned, *others]})
    timing = (f"this invocation: {wall / 60:.1f} min wall and {cpu / 60:.1f} CPU-min on this machine "
              f"({args.jobs} job(s) at once), {len(ran)} of {total} runs run now")
    command = "python -m experiments.reproduce " + " ".join(sys.argv[1:] if argv is None else argv)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "wall_seconds.jsonl", "a", encoding="utf-8") as fh:  # every invocation, never rewritten
        fh.write(json.dumps({"command": command.strip(), "wall_seconds": round(wall, 1),
                             "cpu_seconds": round(cpu, 1), "jobs": args.jobs, "ran": len(ran), "runs": total}) + "\n")
    log = [json.loads(line) for line in (out / "wall_seconds.jsonl").read_text().splitlines() if line.strip()]
    if len(log) > 1:  # a resumed protocol: what all invocations into this directory took together
        timing += (f"; all {len(log)} invocations into {out}: {sum(e['wall_seconds'] for e in log) / 60:.1f} min wall, "
                   f"{sum(e.get('cpu_seconds', 0.0) for e in log) / 60:.1f} CPU-min, {sum(e['ran'] for e in log)} runs")
    report = write_report(root, out, proto, rule, defaults, command.strip(), timing, budget, full_epochs, tables)
    print(report.read_text())
    print(f"[reproduce] {report} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
