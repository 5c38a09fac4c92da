"""Output: the Markdown table, and archiving that never overwrites a file silently."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from experiments.bench.config import BASELINE


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def render_markdown(result: Mapping[str, Any]) -> str:
    """The human-readable table written to bench.md and printed."""
    m = result["model"]
    lines = [
        f"# unlearn bench ({result['timestamp']})",
        "",
        f"Device: {result['device']} ({result['device_detail']}); torch {result['torch']}, "
        f"{result['threads']} threads. Command: `{result['command']}`",
        f"Model: Llama {m['params'] / 1e6:.2f}M params (hidden {m['hidden_size']}, {m['num_layers']} layers, "
        f"vocab {m['vocab_size']}); forget + retain batches {m['batch_size']} + {m['batch_size']} x "
        f"{m['seq_len']} tokens; gradient size {_mib(m['grad_bytes'])} MiB. Medians of "
        f"{result['args']['steps']} steps per method, ratios to GradDiff in the same process.",
        "",
        "| method | step time (s) | / GradDiff | tokens/s | peak mem (MiB) | / GradDiff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {r['step_time_s']:.4f} | {r['step_time_ratio']:.3f} | {r['tokens_per_s']:,.0f} "
                     f"| {_mib(r['peak_mem_bytes'])} | {r['peak_mem_ratio']:.3f} |")
    b, base = result["bare"], result["methods"][BASELINE]
    lines += [
        f"| bare fwd+bwd loop | {b['step_time_s']:.4f} | {b['step_time_s'] / base['step_time_s']:.3f} "
        f"| {b['tokens_per_s']:,.0f} | {_mib(b['peak_mem_bytes'])} | "
        f"{b['peak_mem_bytes'] / base['peak_mem_bytes']:.3f} |",
        "",
        f"Loop throughput (GradDiff tokens/s / bare tokens/s): **{result['loop_throughput_fraction']:.3f}**. "
        "Loop work per step, timed alone (ms): "
        + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in result["loop_overhead_s"].items()) + ".",
    ]
    ev = result.get("tofu_mini_eval_seconds")
    lines.append(f"Full tofu_mini evaluation ({result['tofu_mini_eval']['forget_split']}, "
                 f"{sum(result['tofu_mini_eval']['items'].values())} items): **{ev:.1f} s**"
                 if ev is not None else "Full tofu_mini evaluation: skipped (--skip-eval)")
    lines += [f"Peak memory: {result['peak_mem_method']}.", "",
              "Targets: step time compares methods that differ only in the direction rule; memory is "
              "`(peak(BLUR) - peak(GradDiff)) / gradient size` (BLUR-NPO's frozen reference model alone is 1.0).",
              "", "| target | value | threshold | met |", "|---|---:|---:|:---:|"]
    for name, t in result["targets"].items():
        lines.append(f"| {name} | {t['value']:.3f} | {t['cmp']} {t['target']} | {'yes' if t['met'] else 'NO'} |")
    large = result.get("large")
    if large:
        lines += ["", f"Llama-3.2-1B-shaped ({large['model']['params'] / 1e9:.2f}B params, {large['model']['dtype']}, "
                      f"batches {large['model']['batch_size']} + {large['model']['batch_size']} x "
                      f"{large['model']['seq_len']}; MFU vs {large['peak_tflops']} TFLOP/s):", "",
                  "| method | step time (s) | tokens/s | MFU |", "|---|---:|---:|---:|"]
        for name, r in large["methods"].items():
            lines.append(f"| {name} | {r['step_time_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], out: Path) -> Path:
    """Archive the run under `out/runs/<timestamp>/` and refresh the latest copies; returns the run dir.

    A latest copy is replaced only if it equals the archived copy of the run it came from; anything else at
    that path is renamed aside (`<name>.kept-<timestamp>`) and reported, never lost.
    """
    stamp = result["timestamp"].replace(":", "").replace("-", "").replace("T", "-")
    run_dir = out / "runs" / stamp
    i = 1
    while run_dir.exists():
        run_dir = out / "runs" / f"{stamp}_{i}"
        i += 1
    run_dir.mkdir(parents=True)
    result["run_dir"] = str(run_dir)
    payload = json.dumps(result, indent=2, default=float) + "\n"
    md = render_markdown(result)
    (run_dir / "bench.json").write_text(payload)
    (run_dir / "bench.md").write_text(md)

    previous_run: Path | None = None
    latest_json = out / "bench.json"
    if latest_json.exists():
        try:
            previous_run = Path(json.loads(latest_json.read_text()).get("run_dir", ""))
        except (json.JSONDecodeError, AttributeError):
            previous_run = None
    for fname, text in (("bench.json", payload), ("bench.md", md)):
        latest = out / fname
        if latest.exists():
            archived = previous_run / fname if previous_run else None
            if archived is None or not archived.is_file() or archived.read_bytes() != latest.read_bytes():
                kept = latest.with_name(f"{fname}.kept-{stamp}")
                latest.rename(kept)
                print(f"[bench] {latest} was not an archived run's copy; kept it as {kept}", file=sys.stderr)
        tmp = latest.with_name(f".{fname}.tmp")
        tmp.write_text(text)
        os.replace(tmp, latest)
    return run_dir


def device_detail(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


