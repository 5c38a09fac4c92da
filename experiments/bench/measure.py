"""Measurement: peak memory (CUDA allocator, or CPU allocator events), interleaved step timing, loop overhead.

See `experiments.bench` for why each is measured the way it is.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from experiments.bench.models import Batches, ModelSpec, collate
from experiments.bench.runners import StepFn
from unlearn.train.backend import Backend


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class CpuPeakMemory:
    """Peak live bytes allocated through torch's CPU allocator inside the `with` block (see module doc).

    torch keeps no CPU allocator peak, but with `profile_memory=True` the allocator reports each allocation
    and each free (of blocks allocated while profiling) to the profiler; the running sum of those deltas in
    time order is the live-byte curve, and its maximum is the peak.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.net_bytes = 0
        self._prof: Any = None

    def __enter__(self) -> CpuPeakMemory:
        from torch.profiler import ProfilerActivity, profile

        # The profiler's tracing library (kineto) logs every start/stop; we start it once per method. Read when
        # the profiler is first used in the process, so it only quiets runs that have not set it themselves.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._prof.__exit__(*exc)
        events = [e for e in self._prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
        events.sort(key=lambda e: e.start_ns())  # stable: same-ns events keep the allocator's order
        live = peak = 0
        for e in events:
            live += int(e.nbytes())
            peak = max(peak, live)
        self.peak_bytes, self.net_bytes = peak, live
        self._prof = None


def peak_memory(make_step: Callable[[], StepFn], device: str, steps: int = 2) -> int:
    """Peak bytes allocated while building a method's runner (model copy, reference, optimizer) and stepping.

    Two steps: the first allocates the gradient buffers and optimizer state, the second is the steady state.
    """
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step = make_step()
        for k in range(steps):
            step(k)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
        del step
        return int(peak)
    with CpuPeakMemory() as mem:
        step = make_step()
        for k in range(steps):
            step(k)
        del step
    return mem.peak_bytes


def rounds_plan(steps: int, rounds: int) -> list[int]:
    """Timed steps per round, summing to `steps` (earlier rounds take the remainder)."""
    rounds = max(1, min(rounds, steps))
    return [steps // rounds + (1 if i < steps % rounds else 0) for i in range(rounds)]


def time_interleaved(names: Sequence[str], make_step: Callable[[str], StepFn], steps: int, warmup: int,
                     rounds: int, device: str, log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Per-step wall times of each runner, interleaved: every round builds each runner afresh (same initial
    weights), runs `warmup` untimed steps and its share of the timed steps; the order rotates every round."""
    times: dict[str, list[float]] = {n: [] for n in names}
    for r, count in enumerate(rounds_plan(steps, rounds)):
        order = list(names[r % len(names):]) + list(names[: r % len(names)])
        for name in order:
            gc.collect()
            step = make_step(name)
            for k in range(warmup):
                step(k)
            synchronize(device)
            for k in range(warmup, warmup + count):
                t0 = time.perf_counter()
                step(k)
                synchronize(device)
                times[name].append(time.perf_counter() - t0)
            del step
        log(f"[bench] round {r + 1}: " + ", ".join(f"{n} {statistics.median(times[n]):.3f}s" for n in names))
    return times



def loop_overhead(model: nn.Module, spec: ModelSpec, batches: Batches, device: str, reps: int = 7
                  ) -> dict[str, float]:
    """Median seconds of the loop's own per-step work, each piece timed alone on this model's gradient shapes.

    Explains `loop_throughput_fraction`: what GradDiff's step does beyond the bare loop's forward/backward and
    optimizer step is collating two batches, zeroing and swapping gradient buffers, the Gram matrix (3 inner
    products over all gradients, blocked float32/float64 accumulation) and writing `u` into the buffers.
    """
    from unlearn.directions import GradSpace, build_direction
    from unlearn.directions.base import apply_direction

    backend = Backend(device)
    backend.setup(model, lambda ps: torch.optim.SGD(ps, lr=0.0))
    # The gradients as the loop sees them: the backend's own buffers (contiguous), filled with noise.
    for g in backend.grads():
        g.normal_()
    g_f = backend.take_grads()
    for g in backend.grads():
        g.normal_()
    g_r = backend.grads()
    space, rule = GradSpace(), build_direction({"name": "weighted", "lam": 1.0})
    direction = rule.direction(g_f, g_r, space)
    forget, retain = batches.pair(0)

    def timed(fn: Callable[[], object]) -> float:
        out = []
        for _ in range(reps):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    out = {
        "collate_both_batches": timed(lambda: [{k: v.to(device) for k, v in collate(b).items()}
                                               for b in (forget, retain)]),
        "gram": timed(lambda: space.gram(g_f, g_r)),
        "apply_direction": timed(lambda: apply_direction(direction, g_f, g_r)),
    }
    out["zero_and_take_grads"] = timed(lambda: (backend.zero_grads(), backend.take_grads()))  # zeroes g_f, g_r
    return out


