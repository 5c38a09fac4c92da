"""One rank of `test_zero_resume.py`: `python zero_resume_worker.py RUNS_JSON OUT_DIR` (torchrun's environment).

RUNS_JSON is a list of `{"tag": str, "kwargs": {...}, "loss_scale": float | null, "refuse_tag": str | null}`
(DeepSpeedBackend kwargs; `loss_scale` overrides fp16's initial dynamic loss scale, so that the first steps
overflow and the scaler has state worth saving; the resumed backend keeps DeepSpeed's default). For each run,
with AdamW (its moments and step count are the optimizer state a checkpoint must carry): 3 steps without a
stop, then 2 BLUR-NPO steps, a checkpoint, a *fresh* backend and unlearner whose weights are scrambled (+1.0 on
every parameter, so a load that does nothing cannot pass), the load, step 3. Saves the steps' diagnostics, the
full parameters of both, the fp16 loss scaler's state and skipped-step count, and whether a mismatched load (run
`refuse_tag`'s checkpoint, another ZeRO stage) was refused, to OUT_DIR/<tag>_rank<r>.pt. A run that raises is
recorded in OUT_DIR/<tag>_rank<r>.error.txt and ends the worker (`dist_harness.isolated_run`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from dist_harness import BATCH, batches, isolated_run, save_run, unlearner, worker_session
from torch import Tensor, nn

from unlearn.errors import ConfigError
from unlearn.train.backend import BACKENDS
from unlearn.train.backends.zero import DeepSpeedBackend
from unlearn.train.backends.zero_partitions import loss_scaler_state

RESUME_AFTER = 2
MICRO = 2
OPTIMIZER = "adamw"


def full_parameters(backend: DeepSpeedBackend, model: nn.Module) -> dict[str, Tensor]:
    module = model.module
    if backend.engine.zero_optimization_partition_weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return {n: p.detach().float().clone() for n, p in module.named_parameters()}
    return {n: p.detach().float().clone() for n, p in module.named_parameters()}


def scramble(backend: DeepSpeedBackend, model: nn.Module) -> None:
    """+1.0 on every working parameter (ZeRO-3: on the partitions, through a gather with rank 0 as modifier)."""
    params = list(model.module.parameters())
    with torch.no_grad():
        if backend.engine.zero_optimization_partition_weights():
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                for p in params:
                    p.add_(1.0)
        else:
            for p in params:
                p.add_(1.0)


def set_loss_scale(u, scale: float | None) -> None:
    if scale is not None:
        u.backend.engine.optimizer.loss_scaler.cur_scale = float(scale)


def scaler_state(u) -> dict | None:
    """The fp16 loss scaler's evolving state and the engine's skipped-step count (None without fp16)."""
    if u.backend.mixed_precision != "fp16":
        return None
    return {**loss_scaler_state(u.backend.engine.optimizer), "skipped_steps": int(u.backend.engine.skipped_steps)}


def main() -> None:
    runs, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    with worker_session():  # on success: finish_worker(), no interpreter teardown (see its docstring)
        for run in runs:
            print(f"[zero_resume_worker] run {run['tag']}", flush=True)
            with isolated_run(run["tag"], out_dir):
                one_run(run, out_dir)


def fresh_unlearner(run: dict):
    return unlearner(BACKENDS.build("deepspeed", **run["kwargs"]), micro_batch_size=MICRO, batch=BATCH,
                     optimizer=OPTIMIZER)


def one_run(run: dict, out_dir: Path) -> None:
    w = fresh_unlearner(run)
    set_loss_scale(w, run.get("loss_scale"))
    straight_rows = [w.step(f, r) for f, r in batches(BATCH)]
    straight, straight_scaler = full_parameters(w.backend, w.model), scaler_state(w)
    u = fresh_unlearner(run)
    set_loss_scale(u, run.get("loss_scale"))
    all_batches = batches(BATCH)
    rows = [u.step(f, r) for f, r in all_batches[:RESUME_AFTER]]
    root = out_dir / f"{run['tag']}_checkpoints"
    saved = u.backend.save_checkpoint(root, RESUME_AFTER, {"scheduler": None})
    fresh = fresh_unlearner(run)
    scramble(fresh.backend, fresh.model)
    refused = None
    if run.get("refuse_tag"):  # another stage's checkpoint must be refused, naming `resume`
        other = out_dir / f"{run['refuse_tag']}_checkpoints" / saved.name
        if not other.is_dir():
            refused = f"(no checkpoint of run {run['refuse_tag']} to try: that run failed)"
        else:
            try:
                fresh.backend.load_checkpoint(other)
            except ConfigError as err:
                refused = str(err)
    state = fresh.backend.load_checkpoint(saved)
    assert state["step"] == RESUME_AFTER and state["scheduler"] is None, state
    rows += [fresh.step(f, r) for f, r in all_batches[RESUME_AFTER:]]
    params = full_parameters(fresh.backend, fresh.model)
    files = sorted(p.name for p in saved.iterdir())
    save_run({"rows": rows, "params": params, "refused": refused, "files": files, "uninterrupted": straight,
              "uninterrupted_rows": straight_rows, "scaler": scaler_state(fresh),
              "uninterrupted_scaler": straight_scaler}, out_dir, run["tag"], fresh.backend.rank)


if __name__ == "__main__":
    main()
