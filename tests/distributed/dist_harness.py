"""Shared by the distributed tests and their worker processes: a tiny Llama, synthetic batches, one Unlearner,
and the launcher that runs many configurations in one pair of processes without letting one failure take the
others down.

Both sides (the 2-process run and the single-process reference) build everything from these functions, so
the only difference between them is the backend.

Optimizers. Comparisons against the single-process run use SGD with momentum (`optimizer="sgd"`): a linear,
stateful update, so the float32 rounding that differs between two correct reduction orders reaches the weights
as lr times a rounding-sized direction error, and every later step stays comparable at float32 accuracy
(`tolerances.py`). AdamW is not used for those comparisons: its step lr*m/(sqrt(v)+eps) has slope up to lr/eps
(1e6 here) in a coordinate whose gradient cancels to below eps, so rounding differences there become weight
differences of up to 2*lr, and no float32-derived tolerance holds for the weights or any later step. AdamW runs
are compared bit for bit with the same backend (resume against no stop), which needs no tolerance.
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
GAMMA = 1.0
# SGD: large enough that 3 steps change the loss by several percent (so later steps test a moved trajectory),
# small enough to stay stable. AdamW: the setting the equivalence tests used before (now only for exact checks).
OPTIMIZERS = {
    "sgd": lambda params, lr_scale=1.0: torch.optim.SGD(params, lr=0.05 * lr_scale, momentum=0.9),
    "adamw": lambda params, lr_scale=1.0: torch.optim.AdamW(params, lr=1e-2 * lr_scale),
}


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


#: The losses of a run: BLUR-NPO by default; `rmu` steers layer 0 of the 2 (so the truncated forward skips layer 1).
LOSSES = {
    "npo": ({"name": "npo", "beta": 0.1}, {"name": "nll"}),
    "rmu": ({"name": "rmu", "layer": 0, "steering_coeff": 4.0, "seed": 0}, {"name": "rmu", "layer": 0}),
}


def unlearner(backend: Backend, micro_batch_size: int | None, batch: int = BATCH,
              model_dtype: torch.dtype | None = None, optimizer: str = "sgd", lr_scale: float = 1.0,
              trainable: list[str] | None = None, losses: str = "npo") -> Unlearner:
    """BLUR (gamma 1) with `LOSSES[losses]` on the tiny model (cast to `model_dtype`, as if loaded in it), global
    batch `batch`, with `OPTIMIZERS[optimizer]` (its learning rate times `lr_scale`); `trainable` as
    `model.trainable`, applied before the backend wraps the model (as the pipeline does)."""
    from unlearn.models.trainable import apply_trainable

    model = tiny_model() if model_dtype is None else tiny_model().to(model_dtype)
    apply_trainable(model, trainable)
    make = OPTIMIZERS[optimizer]
    forget_cfg, retain_cfg = LOSSES[losses]
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, forget_cfg),
        retain_loss=build_objective(RETAIN_LOSSES, retain_cfg),
        rule=build_direction({"name": "blur", "gamma": GAMMA}),
        backend=backend,
        make_optimizer=lambda p: make(p, lr_scale),
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=batch, micro_batch_size=micro_batch_size, epochs=1),
        ref_model=copy.deepcopy(model).requires_grad_(False),
    )


def run_steps(u: Unlearner) -> list[dict[str, float]]:
    return [u.step(f, r) for f, r in batches(u.cfg.batch_size)]


def single_process_reference(batch: int = BATCH, optimizer: str = "sgd", trainable: list[str] | None = None,
                             losses: str = "npo") -> dict[str, Any]:
    """Parameters and diagnostics of the same STEPS steps in one process (the ground truth), and the initial
    parameters (the comparisons' scale for how far the steps moved the weights)."""
    u = unlearner(Backend(), micro_batch_size=None, batch=batch, optimizer=optimizer, trainable=trainable,
                  losses=losses)
    initial = {n: p.detach().clone() for n, p in u.model.named_parameters()}
    rows = run_steps(u)
    return {"rows": rows, "params": {n: p.detach().clone() for n, p in u.model.named_parameters()},
            "initial": initial}


def precision_skip_reason(precision: str | None, device: str = "cpu") -> str | None:
    """Why this machine cannot run `precision` on `device` (the capability probe's reason), or None if it can."""
    from unlearn.train.capabilities import precision_capability

    cap = precision_capability(precision, device)
    return None if cap is None or cap.available else cap.reason


def skip_marks(reason: str | None) -> list[Any]:
    """`pytest.param(..., marks=skip_marks(reason))`: skipped at collection (before any fixture launches workers)
    with the capability probe's reason, which `-rs` prints."""
    import pytest

    return [] if reason is None else [pytest.mark.skip(reason=reason)]


def deepspeed_skip_reason() -> str | None:
    from unlearn.train.capabilities import deepspeed_installed

    cap = deepspeed_installed()
    return None if cap.available else cap.reason


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun would set for one worker, plus settings that keep 2 processes on 2 cores quiet and offline,
    and this checkout first on the import path."""
    env = dict(os.environ)
    # The workers import `unlearn` from this checkout, as the test process does (an environment shared between
    # checkouts may have another one installed).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo",
        "CUDA_VISIBLE_DEVICES": "",
    })
    return env


def _start(worker: Path, run_list: list[dict[str, Any]], out: Path, world: int, timeout_s: float) -> list[str]:
    """One launch of `world` workers over `run_list`; returns each rank's log (killed at `timeout_s`)."""
    import json
    import subprocess
    import sys
    import time

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
        logs = [p.communicate()[0] + f"\n[harness] killed after {timeout_s} s" for p in procs]
    return logs


def result_path(out: Path, tag: str, rank: int) -> Path:
    return out / f"{tag}_rank{rank}.pt"


def error_path(out: Path, tag: str, rank: int) -> Path:
    return out / f"{tag}_rank{rank}.error.txt"


def failure_path(out: Path, tag: str) -> Path:
    return out / f"{tag}.failed.txt"


def launch(worker: Path, group: str, run_list: list[dict[str, Any]], out: Path, world: int = 2,
           timeout_s: float = 300.0) -> None:
    """Run every configuration in `run_list` on `world` workers (torchrun's environment, fresh port), isolating
    failures: afterwards each run has either its per-rank results or `<tag>.failed.txt` with the workers' error
    text, which `load_run` turns into a failure of that run's test only.

    Workers run the list in order and stop at the first run that raises on any rank (`isolated_run`): a process
    group whose ranks left a collective half-done cannot be trusted with the next run. The launcher then records
    that run as failed and starts fresh workers on the runs after it, so a configuration this machine cannot run
    costs one relaunch, not the whole group.
    """
    pending = list(run_list)
    while pending:
        logs = _start(worker, pending, out, world, timeout_s)
        done = 0
        for run in pending:
            if not all(result_path(out, run["tag"], r).exists() for r in range(world)):
                break
            done += 1
        if done == len(pending):
            return
        failed, pending = pending[done], pending[done + 1:]
        for run in pending:  # anything a surviving rank wrote after the failure is discarded and rerun
            for r in range(world):
                result_path(out, run["tag"], r).unlink(missing_ok=True)
                error_path(out, run["tag"], r).unlink(missing_ok=True)
        errors = [error_path(out, failed["tag"], r) for r in range(world)]
        text = [f"rank {r}: {e.read_text()}" for r, e in enumerate(errors) if e.exists()]
        if not text:  # no worker recorded an error (killed at the timeout, or crashed below Python): log tails
            text = [f"rank {r} log:\n{log[-4000:]}" for r, log in enumerate(logs)]
            if not any(f"run {failed['tag']}" in log for log in logs):
                # The workers died before starting this run (an import error, say): every run would do the
                # same, so all remaining runs fail with this text instead of relaunching once per run.
                for run in [failed, *pending]:
                    failure_path(out, run["tag"]).write_text(
                        f"{group} workers failed before run {failed['tag']} started:\n" + "\n".join(text))
                return
        failure_path(out, failed["tag"]).write_text(f"{group} run {failed['tag']} failed:\n" + "\n".join(text))


def save_run(result: dict[str, Any], out: Path, tag: str, rank: int) -> None:
    """Write one rank's result atomically (a worker killed mid-write leaves no half file that looks complete)."""
    tmp = result_path(out, tag, rank).with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.rename(result_path(out, tag, rank))


def load_run(out: Path, tag: str, world: int = 2) -> list[dict[str, Any]]:
    """The per-rank results of run `tag`, or a test failure carrying the workers' error text."""
    import pytest

    failed = failure_path(out, tag)
    if failed.exists():
        pytest.fail(failed.read_text(), pytrace=False)
    return [torch.load(result_path(out, tag, r)) for r in range(world)]


@contextlib.contextmanager
def isolated_run(tag: str, out: Path) -> Iterator[None]:
    """One run inside a worker: on an exception, record it in `<tag>_rank<r>.error.txt` and leave at once.

    Leaving without teardown (os._exit) closes this rank's sockets, so a peer waiting in a collective gets an
    error instead of hanging; the launcher records the run as failed and reruns the rest in fresh processes.
    """
    import sys
    import traceback

    try:
        yield
    except BaseException:
        rank = int(os.environ.get("RANK", "0"))
        error_path(out, tag, rank).write_text(traceback.format_exc()[-6000:])
        print(f"[worker] run {tag} failed on rank {rank}", flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


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
