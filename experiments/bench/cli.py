"""The command line: `python -m experiments.bench [options]` (`make bench`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.bench.config import BASELINE, CONFIG_DIR, METHODS, VARIANTS
from experiments.bench.models import LLAMA_1B, SIZES
from experiments.bench.report import device_detail, render_markdown, write_outputs
from experiments.bench.sections import bench_large, bench_methods, targets, time_tofu_mini_eval


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.bench",
                                 description="make bench: what the unlearning loop costs, method by method "
                                             "(see the experiments.bench module docstring)",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per method (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per method and round")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the timed steps are split over")
    ap.add_argument("--model-size", choices=sorted(SIZES), default="5m")
    ap.add_argument("--batch-size", type=int, default=None, help="override the size's forget/retain batch")
    ap.add_argument("--seq-len", type=int, default=None, help="override the size's sequence length")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; must include graddiff")
    ap.add_argument("--out", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--skip-eval", action="store_true", help="do not time the tofu_mini evaluation")
    ap.add_argument("--cache-dir", default=None, help="tofu_mini cache (default: config cache_dir, i.e. "
                    "$UNLEARN_CACHE or .cache/unlearn)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--large", choices=("auto", "on", "off"), default="auto",
                    help="Llama-3.2-1B-shaped section: auto = only on CUDA")
    ap.add_argument("--large-steps", type=int, default=5)
    ap.add_argument("--large-batch", type=int, default=LLAMA_1B.batch_size)
    ap.add_argument("--large-seq", type=int, default=LLAMA_1B.seq_len)
    ap.add_argument("--large-micro-batch", type=int, default=LLAMA_1B.micro_batch_size)
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="peak dense bf16 TFLOP/s for MFU (H100 SXM: 989)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--steps must be >= 1, --warmup >= 0, --rounds >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in VARIANTS and not (CONFIG_DIR / "method" / f"{m}.yaml").is_file()]
    if unknown:
        ap.error(f"--methods: no configs/method/<name>.yaml (nor a variant: {', '.join(VARIANTS)}) for {unknown}")
    if BASELINE not in methods:
        ap.error(f"--methods: must include {BASELINE} (every ratio is relative to it)")
    args.methods = methods
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    spec = SIZES[args.model_size]
    spec = dataclasses.replace(spec, batch_size=args.batch_size or spec.batch_size,
                               seq_len=args.seq_len or spec.seq_len)

    result: dict[str, Any] = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(["python -m experiments.bench", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.device(device).type,
        "device_detail": device_detail(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
        "peak_mem_method": ("torch.cuda.max_memory_allocated() above the allocation before the method was built"
                            if torch.device(device).type == "cuda" else
                            "running sum of torch CPU allocator alloc/free events (torch.profiler, "
                            "profile_memory=True) from before the method's model copy is built through 2 steps"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    result.update(bench_methods(spec, args.methods, device, args.steps, args.warmup, args.rounds))
    result["targets"] = targets(result)

    result["tofu_mini_eval_seconds"] = None
    if not args.skip_eval:
        result["tofu_mini_eval"] = time_tofu_mini_eval(device, args.cache_dir)
        result["tofu_mini_eval_seconds"] = result["tofu_mini_eval"]["seconds"]

    run_large = args.large == "on" or (args.large == "auto" and torch.device(device).type == "cuda")
    result["large"] = None
    if run_large:
        large_spec = dataclasses.replace(LLAMA_1B, batch_size=args.large_batch, seq_len=args.large_seq,
                                         micro_batch_size=args.large_micro_batch)
        on_cuda = torch.device(device).type == "cuda"
        dtype = torch.bfloat16 if on_cuda else torch.float32
        result["large"] = bench_large(large_spec, device, dtype, args.large_steps, args.warmup, args.peak_tflops,
                                      mixed_precision="bf16" if on_cuda else None)

    run_dir = write_outputs(result, args.out)
    print(render_markdown(result))
    print(f"[bench] wrote {run_dir}/bench.json (latest copy: {args.out / 'bench.json'})")
    return result


