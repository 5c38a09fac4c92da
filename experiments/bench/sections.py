"""The bench's sections: every method against GradDiff and the bare loop; the issue's targets; the tofu_mini
evaluation time; the CUDA-only large-model throughput."""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.bench.config import (
    BARE,
    BASELINE,
    MEM_TARGET_GRAD_SIZES,
    REF_MEM_TARGET_GRAD_SIZES,
    REFERENCE_FREE,
    RULE_PAIRS,
    STEP_TIME_TARGET,
    THROUGHPUT_TARGET,
    compose_default,
    compose_plans,
)
from experiments.bench.measure import loop_overhead, peak_memory, rounds_plan, synchronize, time_interleaved
from experiments.bench.models import Batches, ModelSpec, build_model, count_params, grad_bytes
from experiments.bench.runners import StepFn, bare_step_fn, unlearner_step_fn
from unlearn.pipeline import Plan


def bench_methods(spec: ModelSpec, names: Sequence[str], device: str, steps: int, warmup: int, rounds: int,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Step time and peak memory of every method and of the bare loop on one model and one batch sequence."""
    plans = compose_plans(names)
    # Everything alive now (modules, configs) is permanent; moving it out of the collector's generations makes
    # the `gc.collect()` before each measurement cost milliseconds instead of ~0.3 s. Undone on the way out.
    gc.freeze()
    try:
        return _bench_methods(plans, spec, names, device, steps, warmup, rounds, log)
    finally:
        gc.unfreeze()


def _bench_methods(plans: Mapping[str, Plan], spec: ModelSpec, names: Sequence[str], device: str, steps: int,
                   warmup: int, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    template = build_model(spec, seed=0)
    init_state = {k: v.detach().clone() for k, v in template.state_dict().items()}
    n_params = count_params(template)
    g_bytes = grad_bytes(template)
    del template
    batches = Batches.make(spec, seed=1)

    def fresh_model() -> nn.Module:
        model = build_model(spec, seed=0)
        model.load_state_dict(init_state)  # identical starting weights for every method and round
        return model.to(device)

    def make_step(name: str) -> StepFn:
        if name == BARE:
            return bare_step_fn(plans[BASELINE], fresh_model(), spec, batches, device)
        return unlearner_step_fn(plans[name], fresh_model(), spec, batches, device)

    runners = [*names, BARE]
    log(f"[bench] model: {n_params / 1e6:.2f}M params, batches {spec.batch_size}+{spec.batch_size} x "
        f"{spec.seq_len} tokens, device {device}, {torch.get_num_threads()} threads")
    log(f"[bench] peak memory ({'cuda allocator' if device.startswith('cuda') else 'CPU allocator events'})")
    mem = {name: peak_memory(lambda n=name: make_step(n), device) for name in runners}
    log(f"[bench] timing {steps} steps per method in {len(rounds_plan(steps, rounds))} interleaved rounds "
        f"(+{warmup} warmup each)")
    times = time_interleaved(runners, make_step, steps, warmup, rounds, device, log)

    tokens = 2 * spec.batch_size * spec.seq_len
    base_t, base_m = statistics.median(times[BASELINE]), mem[BASELINE]
    methods = {}
    for name in names:
        t = statistics.median(times[name])
        methods[name] = {
            "step_time_s": t,
            "step_time_ratio": t / base_t,
            "peak_mem_bytes": mem[name],
            "peak_mem_ratio": mem[name] / base_m if base_m else math.nan,
            "tokens_per_s": tokens / t,
            "step_times_s": times[name],
            "config": f"configs/method/{name}.yaml",
        }
    bare_t = statistics.median(times[BARE])
    return {
        "model": {"params": n_params, "grad_bytes": g_bytes, **dataclasses.asdict(spec), "tokens_per_step": tokens},
        "methods": methods,
        "bare": {"step_time_s": bare_t, "peak_mem_bytes": mem[BARE], "tokens_per_s": tokens / bare_t,
                 "step_times_s": times[BARE]},
        "bare_step_time_s": bare_t,
        "loop_throughput_fraction": bare_t / base_t,
        "loop_overhead_s": loop_overhead(fresh_model(), spec, batches, device),
    }



def targets(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets, each with its value, threshold and whether it is met."""
    methods, g = result["methods"], result["model"]["grad_bytes"]
    out: dict[str, dict[str, Any]] = {}
    for blur, base in RULE_PAIRS.items():
        if blur in methods and base in methods:
            v = methods[blur]["step_time_s"] / methods[base]["step_time_s"]
            out[f"{blur}/{base}.step_time_ratio"] = {"value": v, "target": STEP_TIME_TARGET, "cmp": "<=",
                                                     "met": v <= STEP_TIME_TARGET}
    for blur in RULE_PAIRS:
        if blur in methods:
            v = (methods[blur]["peak_mem_bytes"] - methods[BASELINE]["peak_mem_bytes"]) / g
            out[f"{blur}.peak_mem_minus_graddiff_in_grad_sizes"] = {
                "value": v, "target": MEM_TARGET_GRAD_SIZES, "cmp": "<=", "met": v <= MEM_TARGET_GRAD_SIZES}
    for name in REFERENCE_FREE:  # NPO without a second model: GradDiff's memory and step time
        if name in methods:
            v = (methods[name]["peak_mem_bytes"] - methods[BASELINE]["peak_mem_bytes"]) / g
            out[f"{name}.peak_mem_minus_graddiff_in_grad_sizes"] = {
                "value": v, "target": REF_MEM_TARGET_GRAD_SIZES, "cmp": "<=", "met": v <= REF_MEM_TARGET_GRAD_SIZES}
            v = methods[name]["step_time_s"] / methods[BASELINE]["step_time_s"]
            out[f"{name}/{BASELINE}.step_time_ratio"] = {"value": v, "target": STEP_TIME_TARGET, "cmp": "<=",
                                                          "met": v <= STEP_TIME_TARGET}
    v = result["loop_throughput_fraction"]
    out["loop_throughput_fraction"] = {"value": v, "target": THROUGHPUT_TARGET, "cmp": ">=",
                                       "met": v >= THROUGHPUT_TARGET}
    return out


def time_tofu_mini_eval(device: str, cache_dir: str | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Wall time of one full TofuEvaluator run (configs/eval/tofu.yaml) on the default tofu_mini target."""
    from unlearn.benchmarks.base import prepare_benchmark
    from unlearn.evals import build_evaluators
    from unlearn.models.build import load_model

    cfg = compose_default()
    cache = Path(cache_dir or cfg.get("cache_dir") or ".cache/unlearn").expanduser()
    log(f"[bench] tofu_mini: preparing (cache {cache}; builds the models on first use)")
    t0 = time.perf_counter()
    prepared = prepare_benchmark(cfg["benchmark"], cfg["model"], cache, log=log)
    prepare_s = time.perf_counter() - t0
    model = load_model(prepared.models["target"], dtype=cfg["model"].get("dtype", "float32")).to(device).eval()
    (evaluator,) = build_evaluators(cfg["eval"])
    synchronize(device)
    t0 = time.perf_counter()
    items = evaluator.evaluate(model, prepared)
    synchronize(device)
    seconds = time.perf_counter() - t0
    summary = evaluator.summarise(items, {})
    counts = items["split"].value_counts().to_dict()
    log(f"[bench] tofu_mini eval: {seconds:.1f}s for {sum(counts.values())} items {counts}")
    return {"seconds": seconds, "prepare_seconds": prepare_s, "items": {k: int(v) for k, v in counts.items()},
            "forget_split": cfg["benchmark"]["forget_split"], "cache_dir": str(cache),
            "eval": cfg["eval"], "model_utility": float(summary["model_utility"])}


def bench_large(spec: ModelSpec, device: str, dtype: torch.dtype, steps: int, warmup: int, peak_tflops: float,
                names: Sequence[str] = (BASELINE, "blur_npo"), log: Callable[[str], None] = print,
                mixed_precision: str | None = None) -> dict[str, Any]:
    """CUDA section: tokens/s and MFU of a few steps of each method on a large model (one method at a time).

    Kept apart from `bench_methods`: no interleaving or bare loop, just throughput at a realistic size. The
    model is built in `dtype` (as a hub checkpoint would be loaded) and trained with `mixed_precision`, as a
    run with `trainer.mixed_precision=bf16` does: float32 master weights, bf16 autocast forwards.
    """
    plans = compose_plans(names)
    batches = Batches.make(spec, seed=1)
    tokens = 2 * spec.batch_size * spec.seq_len
    out: dict[str, Any] = {"model": {**dataclasses.asdict(spec), "dtype": str(dtype).removeprefix("torch."),
                                     "mixed_precision": mixed_precision},
                           "peak_tflops": peak_tflops, "methods": {}}
    for name in names:
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        model = build_model(spec, seed=0, device=device, dtype=dtype)
        n = count_params(model)
        out["model"]["params"] = n
        step = unlearner_step_fn(plans[name], model, spec, batches, device, mixed_precision=mixed_precision)
        for k in range(warmup):
            step(k)
        synchronize(device)
        times = []
        for k in range(warmup, warmup + steps):
            t0 = time.perf_counter()
            step(k)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        tps = tokens / t
        row = {"step_time_s": t, "tokens_per_s": tps, "mfu": 6 * n * tps / (peak_tflops * 1e12),
               "step_times_s": times}
        if torch.device(device).type == "cuda":
            row["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())
        out["methods"][name] = row
        log(f"[bench] large {name}: {t:.3f}s/step, {tps:,.0f} tokens/s, MFU {row['mfu']:.1%}")
        del step, model
    return out


