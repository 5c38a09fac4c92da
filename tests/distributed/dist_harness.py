"""Shared by the distributed tests and their worker processes: a tiny Llama, synthetic batches, one Unlearner.

Both sides (the 2-process run and the single-process reference) build everything from these functions, so
the only difference between them is the backend.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unlearn.directions import build_direction
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner

STEPS = 3
BATCH = 8
DIAGNOSTICS = ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr", "A_f", "A_r", "norm_u")


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer float32 Llama (about 5k parameters); deterministic in `seed` on every rank."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def examples(n: int, seed: int) -> list[dict[str, list[int]]]:
    """Fixed-length examples (prompt of 3 tokens, answer of 3-5 tokens, right-padded to 8)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        n_ans = int(torch.randint(3, 6, (1,), generator=g))
        ids = torch.randint(1, 32, (3 + n_ans,), generator=g).tolist()
        pad = 8 - len(ids)
        out.append({
            "input_ids": ids + [0] * pad,
            "labels": [-100] * 3 + ids[3:] + [-100] * pad,
            "attention_mask": [1] * len(ids) + [0] * pad,
        })
    return out


def collate(batch: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([ex[k] for ex in batch]) for k in batch[0]}


def batches(batch: int = BATCH) -> list[tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]]:
    """The (forget, retain) global batches of the STEPS steps."""
    return [(examples(batch, 100 + s), examples(batch, 200 + s)) for s in range(STEPS)]


def unlearner(backend: Backend, micro_batch_size: int | None, batch: int = BATCH,
              model_dtype: torch.dtype | None = None) -> Unlearner:
    """BLUR-NPO (gamma 1, beta 0.1) with AdamW on the tiny model (cast to `model_dtype`, as if loaded in it),
    global batch `batch`."""
    model = tiny_model() if model_dtype is None else tiny_model().to(model_dtype)
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, {"name": "npo", "beta": 0.1}),
        retain_loss=build_objective(RETAIN_LOSSES, {"name": "nll"}),
        rule=build_direction({"name": "blur", "gamma": 1.0}),
        backend=backend,
        make_optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=batch, micro_batch_size=micro_batch_size, epochs=1),
        ref_model=copy.deepcopy(model).requires_grad_(False),
    )


def run_steps(u: Unlearner) -> list[dict[str, float]]:
    return [u.step(f, r) for f, r in batches(u.cfg.batch_size)]


def single_process_reference(batch: int = BATCH) -> dict[str, Any]:
    """Parameters and diagnostics of the same STEPS steps in one process (the ground truth)."""
    u = unlearner(Backend(), micro_batch_size=None, batch=batch)
    rows = run_steps(u)
    return {"rows": rows, "params": {n: p.detach().clone() for n, p in u.model.named_parameters()}}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun would set for one worker, plus settings that keep 2 processes on 2 cores quiet and offline."""
    env = dict(os.environ)
    env.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo",
        "CUDA_VISIBLE_DEVICES": "",
    })
    return env


def launch(worker: Path, group: str, run_list: list[dict[str, Any]], out: Path, world: int = 2,
           timeout_s: float = 300.0) -> None:
    """Start `world` workers with torchrun's environment on a fresh port; fail (not hang) if any misbehaves."""
    import json
    import subprocess
    import sys
    import time

    import pytest

    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, str(worker), json.dumps(run_list), str(out)],
                         env=worker_env(rank, world, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for rank in range(world)
    ]
    deadline = time.monotonic() + timeout_s
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        pytest.fail(f"{group} workers did not finish within {timeout_s} s")
    failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0]
    if failed:
        started = ["\n".join(line for line in log.splitlines() if line.startswith("[")) for log in logs]
        results = sorted(p.name for p in out.glob("*.pt"))
        pytest.fail(f"{group} workers failed {failed}; results written: {results}\n"
                    + "\n".join(f"rank {r} started:\n{s}" for r, s in enumerate(started))
                    + "\n" + "\n".join(log[-4000:] for log in logs))


@contextlib.contextmanager
def worker_session() -> Iterator[None]:
    """The body of a worker's main(): on an exception, leave the process group and re-raise (a non-zero exit the
    launcher reports); once the body has saved every result, `finish_worker()`."""
    import torch.distributed as dist

    try:
        yield
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    finish_worker()


def finish_worker() -> None:
    """End a worker that has saved every result: destroy the process group, flush, and exit at once.

    Skipping interpreter teardown matters: DeepSpeed engines and gloo process groups still referenced from Python
    objects are otherwise destroyed during shutdown, and a gloo thread destroyed while joinable aborts the process
    ("terminate called without an active exception", exit -6) after the work is done. Only called on success, so
    any failure still surfaces through the exception and a non-zero exit.
    """
    import sys

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
