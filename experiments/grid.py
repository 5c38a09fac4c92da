"""Run a grid of configs, one run directory each, skipping runs that already finished.

Re-running a grid after an interruption only runs what is missing, and a finished run's results are never
touched. Results are gathered from each run's summary.json / references.json.

`jobs > 1` runs that many runs at once in worker processes, each with `cpu_count // jobs` torch threads: the
embedded models are so small (128-wide matmuls, Python-bound evaluation loops) that one run keeps two cores only
partly busy, so independent single-threaded runs side by side use them better. Before the workers start, the
parent builds every model the missing runs need (one per benchmark x world x split, cached), with all threads:
otherwise one single-threaded worker would build it while the others wait on its build lock.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

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


def prepare_models(runs: Iterable[tuple[str, Sequence[str]]], log=print) -> int:
    """Build (or find cached) every benchmark's data and models the runs need, once per distinct benchmark and
    model config, in this process; the number of distinct configs. Runs then only load them."""
    from omegaconf import OmegaConf

    from unlearn.benchmarks.base import prepare_benchmark

    seen: set[str] = set()
    for _, overrides in runs:
        cfg = compose_cfg(overrides)
        key = json.dumps([OmegaConf.to_container(cfg.benchmark, resolve=True),
                          OmegaConf.to_container(cfg.model, resolve=True), cfg.get("cache_dir")], sort_keys=True,
                         default=str)
        if key in seen:
            continue
        seen.add(key)
        t0 = time.perf_counter()
        prepare_benchmark(cfg.benchmark, cfg.model, Path(cfg.get("cache_dir") or ".cache/unlearn").expanduser(),
                          log=lambda _msg: None)
        seconds = time.perf_counter() - t0
        if seconds > 1.0:
            log(f"[grid] prepared {cfg.benchmark.get('name')} world {cfg.benchmark.get('world', {}).get('seed')} "
                f"{cfg.benchmark.get('tag', '')}: {seconds:.0f}s")
    return len(seen)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_grid(runs: Iterable[tuple[str, Sequence[str]]], root: Path, log=print, jobs: int = 1) -> list[str]:
    """Run each (name, overrides) into root/name unless root/name/summary.json exists; the names it ran.

    A name may contain `/` (nested run directories). `jobs > 1`: that many worker processes (module docstring);
    a failed run raises after the runs already started have finished."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    runs = list(runs)
    todo = []
    for i, (name, overrides) in enumerate(runs, 1):
        if (root / name / "summary.json").exists():
            log(f"[grid] {i}/{len(runs)} {name}: done, skipping")
        else:
            todo.append((name, list(overrides)))
    ran = []
    if jobs == 1 or len(todo) <= 1:
        for k, (name, overrides) in enumerate(todo, 1):
            _, seconds = _run_one(name, overrides, str(root))
            ran.append(name)
            log(f"[grid] {k}/{len(todo)} {name}: {seconds:.0f}s")
        return ran
    prepare_models(todo, log)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
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
