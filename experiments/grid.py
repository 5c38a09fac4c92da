"""Run a grid of configs, one run directory each, skipping runs that already finished.

Re-running a grid after an interruption only runs what is missing, and a finished run's results are never
touched. Results are gathered from each run's summary.json / references.json.

`jobs > 1` runs that many runs at once in worker processes, each with `cpu_count // jobs` torch threads: the
embedded models are so small (128-wide matmuls, Python-bound evaluation loops) that one run keeps two cores only
partly busy, so independent single-threaded runs side by side use them better. Before the runs start, every
model the missing runs need is built (one per benchmark x world x split, cached), or else one single-threaded run
would build it while the others wait on its build lock: the base the models share first, in the parent with all
threads, then the per-world models `jobs` at a time (`prepare_models`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir

from unlearn.pipeline import run_experiment

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def compose_cfg(overrides: Sequence[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _run_one(name: str, overrides: Sequence[str], root: str) -> tuple[str, float]:
    """One run into root/name (an interrupted attempt is kept aside, never deleted); (name, seconds)."""
    run_dir = Path(root) / name
    if run_dir.exists():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{int(time.time())}"))
    t0 = time.perf_counter()
    run_experiment(compose_cfg(overrides), run_dir, console_print=False)
    return name, time.perf_counter() - t0


def _model_key(cfg: Any) -> str:
    """What decides a run's benchmark data and models: its benchmark and model sections and its cache."""
    from omegaconf import OmegaConf

    return json.dumps([OmegaConf.to_container(cfg.benchmark, resolve=True),
                       OmegaConf.to_container(cfg.model, resolve=True), cfg.get("cache_dir")], sort_keys=True,
                      default=str)


def _cache_dir(cfg: Any) -> Path:
    return Path(cfg.get("cache_dir") or ".cache/unlearn").expanduser()


def _label(cfg: Any) -> str:
    return (f"{cfg.benchmark.get('name')} world {cfg.benchmark.get('world', {}).get('seed')} "
            f"{cfg.benchmark.get('tag', '')}").rstrip()


def _prepare_one(overrides: Sequence[str]) -> tuple[str, float]:
    """Build (or find cached) one run config's benchmark data and models; (label, seconds)."""
    from unlearn.benchmarks.base import prepare_benchmark

    cfg = compose_cfg(overrides)
    t0 = time.perf_counter()
    prepare_benchmark(cfg.benchmark, cfg.model, _cache_dir(cfg), log=lambda _msg: None)
    return _label(cfg), time.perf_counter() - t0


def _spread_worlds(configs: Iterable[tuple[list[str], Any]]) -> list[list[str]]:
    """The configs' overrides, round-robin over (benchmark, world): configs of one world share its target model
    (TOFU's forget05 and forget10, WMDP's methods' benchmark settings), so two of them side by side would leave one
    worker waiting on the other's build lock; in this order they start at least a whole round apart."""
    groups: dict[tuple[str, str], list[list[str]]] = {}
    for overrides, cfg in configs:
        world = str(cfg.benchmark.get("world", {}).get("seed"))
        groups.setdefault((str(cfg.benchmark.get("name")), world), []).append(overrides)
    waves = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(waves) for g in groups.values() if i < len(g)]


def prepare_models(runs: Iterable[tuple[str, Sequence[str]]], log=print, jobs: int = 1) -> int:
    """Build (or find cached) every benchmark's data and models the runs need, once per distinct benchmark and
    model config; the number of distinct configs. Runs then only load them.

    `jobs > 1`: what the configs share (the embedded base, `Benchmark.prepare_shared`) is built first in this
    process with every thread, then the per-world models `jobs` at a time in worker processes with
    `cpu_count // jobs` threads each, for the reason in the module docstring: measured on a 2-vCPU AMD EPYC, four
    TOFU world models built two at a time took 542 s wall against 631 s of training one after the other on two
    threads, and were bit-identical to them (docs/worlds.md). Each model's `build_info.json` records its thread
    count; a CPU whose kernels round differently at another thread count builds other (equally valid) models, and
    `jobs=1` builds exactly as a single run does.
    """
    from unlearn.benchmarks.base import build_benchmark

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    distinct: dict[str, tuple[list[str], Any]] = {}
    for _, overrides in runs:
        cfg = compose_cfg(overrides)
        distinct.setdefault(_model_key(cfg), (list(overrides), cfg))

    def report(label: str, seconds: float, how: str = "") -> None:
        if seconds > 1.0:
            log(f"[grid] prepared {label}: {seconds:.0f}s{how}")

    if jobs == 1 or len(distinct) <= 1:
        for overrides, _ in distinct.values():
            report(*_prepare_one(overrides))
        return len(distinct)
    for _, cfg in distinct.values():
        t0 = time.perf_counter()
        build_benchmark(cfg.benchmark, cfg.model).prepare_shared(_cache_dir(cfg), log=lambda _msg: None)
        report(f"{cfg.benchmark.get('name')}'s shared base", time.perf_counter() - t0)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with _pool(jobs, threads) as pool:
        futures = [pool.submit(_prepare_one, overrides) for overrides in _spread_worlds(distinct.values())]
        for fut in as_completed(futures):
            report(*fut.result(), f" ({jobs} at once, {threads} thread(s) each)")
    return len(distinct)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pool(jobs: int, threads: int) -> ProcessPoolExecutor:
    """`jobs` spawned worker processes with `threads` torch threads each (spawn: no forked torch state)."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads,))


def missing(runs: Iterable[tuple[str, Sequence[str]]], root: Path) -> list[tuple[str, list[str]]]:
    """The runs without a finished run directory (root/name/summary.json)."""
    return [(name, list(overrides)) for name, overrides in runs if not (root / name / "summary.json").exists()]


def run_grid(runs: Iterable[tuple[str, Sequence[str]]], root: Path, log=print, jobs: int = 1,
             prepare: bool = True) -> list[str]:
    """Run each (name, overrides) into root/name unless root/name/summary.json exists; the names it ran.

    A name may contain `/` (nested run directories). `jobs > 1`: that many worker processes (module docstring);
    a failed run raises after the runs already started have finished. `prepare=False` skips building the models
    first (`prepare_models`), for a caller that has built them for several grids at once."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    runs = list(runs)
    todo = missing(runs, root)
    for i, (name, _) in enumerate(runs, 1):
        if (root / name / "summary.json").exists():
            log(f"[grid] {i}/{len(runs)} {name}: done, skipping")
    ran = []
    if jobs == 1 or len(todo) <= 1:
        for k, (name, overrides) in enumerate(todo, 1):
            _, seconds = _run_one(name, overrides, str(root))
            ran.append(name)
            log(f"[grid] {k}/{len(todo)} {name}: {seconds:.0f}s")
        return ran
    if prepare:
        prepare_models(todo, log, jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with _pool(jobs, threads) as pool:
        futures = [pool.submit(_run_one, name, overrides, str(root)) for name, overrides in todo]
        for k, fut in enumerate(as_completed(futures), 1):
            name, seconds = fut.result()
            ran.append(name)
            log(f"[grid] {k}/{len(todo)} {name}: {seconds:.0f}s ({jobs} jobs)")
    return ran


def collect(root: Path) -> pd.DataFrame:
    """One row per finished run: its config choices, its summary, and the reference models' summaries."""
    rows = []
    for summary_file in sorted(root.glob("*/summary.json")):
        run_dir = summary_file.parent
        cfg = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
        base = {"run": run_dir.name, "method": cfg["method"]["name"], "split": cfg["benchmark"].get("tag"),
                "seed": cfg["seed"]}
        rows.append({**base, "model": cfg["method"]["name"], **json.loads(summary_file.read_text())})
        refs = json.loads((run_dir / "references.json").read_text())
        for ref_name, ref in refs.items():
            rows.append({**base, "model": ref_name, **ref})
    return pd.DataFrame(rows)
