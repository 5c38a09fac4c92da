"""One rank of a distributed test: `python worker.py RUNS_JSON OUT_DIR` (launched with torchrun's environment).

RUNS_JSON is a list of runs, each `{"tag": str, "backend": str, "micro": int | null, "batch": int,
"kwargs": {...}}` plus optional `"optimizer"` ("sgd", the default, or "adamw"), `"lr_scale"` (multiplies the
learning rate), `"perturb_rank"` (that rank changes one answer token of every forget example: a real divergence
the comparisons must catch), `"fail_rank"` (that rank raises before the second step, while the other is already
in its collectives: what the launcher's isolation must survive), `"model_dtype"` and `"resume_after"`.
Each run builds a fresh backend (the process group is joined once and reused, which spares every run the seconds
of importing torch, transformers and DeepSpeed), takes the STEPS BLUR-NPO steps, and saves its diagnostics and
full parameters to OUT_DIR/<tag>_rank<r>.pt. A run that raises is recorded in OUT_DIR/<tag>_rank<r>.error.txt
and ends the worker (`isolated_run`); the launcher reruns the remaining runs. Gathering the full parameters
happens here, for the comparison only; the backends never gather full gradients or parameters for their inner
products.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from dist_harness import batches, isolated_run, save_run, unlearner, worker_session
from torch import Tensor, nn

from unlearn.train.backend import BACKENDS, Backend
from unlearn.train.grad_buffers import FlatGradBuffers, local


def full_parameters(backend: Backend, model: nn.Module) -> dict[str, Tensor]:
    """Every parameter in full and in float32, by name (test-only: gathers shards)."""
    module = getattr(model, "module", model)  # DDP and DeepSpeed engines wrap the model
    engine = getattr(backend, "engine", None)
    if engine is not None and engine.zero_optimization_partition_weights():
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            return {n: p.detach().float().clone() for n, p in module.named_parameters()}
    out = {}
    for n, p in module.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[n] = t.detach().float().clone()
    return out


def record_gram_inputs(backend: Backend) -> list[int]:
    """Wrap this backend's GradSpace so that every Gram call records how many gradient entries it was handed on
    this rank (a DTensor counts its local shard): the proof that no rank gathers a full gradient for it."""
    seen: list[int] = []
    gram = backend.space.gram

    def recording(g_f, g_r):
        seen.append(sum(t.numel() for t in local(g_f)))
        return gram(g_f, g_r)

    backend.space.gram = recording  # type: ignore[method-assign]
    return seen


def reference_local_numel(u) -> int:
    """Entries of the frozen reference model held on this rank (ZeRO-3 partitions, FSDP2 local shards)."""
    module = getattr(u.ref_model, "module", u.ref_model)
    total = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            total += p.ds_tensor.numel()
        elif hasattr(p, "to_local"):
            total += p.to_local().numel()
        else:
            total += p.numel()
    return total


def master_dtypes(backend: Backend) -> list[str]:
    """dtypes of the weights the optimizer updates: DeepSpeed's master partitions, else the trained parameters."""
    engine = getattr(backend, "engine", None)
    if engine is not None and getattr(backend, "zero_stage", 0) >= 1:
        from unlearn.train.backends.zero_partitions import master_state

        tensors = master_state(engine).masters()
    else:
        tensors = local(list(backend._params))
    return sorted({str(t.dtype) for t in tensors})


def perturbed(steps: list, rank: int, run: dict) -> list:
    """On `run["perturb_rank"]` only: the last answer token of every forget example moved to the next id."""
    if run.get("perturb_rank") != rank:
        return steps
    out = []
    for forget, retain in steps:
        changed = []
        for ex in forget:
            ex = {k: list(v) for k, v in ex.items()}
            last = max(i for i, lab in enumerate(ex["labels"]) if lab != -100)
            ex["input_ids"][last] = ex["labels"][last] = ex["input_ids"][last] % 31 + 1
            changed.append(ex)
        out.append((changed, retain))
    return out


def resume_run(u, run: dict, out_dir: Path) -> list[dict]:
    """Take `resume_after` steps, checkpoint, then continue in a *fresh* backend and unlearner from the files."""
    k = run["resume_after"]
    all_batches = batches(u.cfg.batch_size)
    rows = [u.step(f, r) for f, r in all_batches[:k]]
    root = out_dir / f"{run['tag']}_checkpoints"
    u.backend.save_checkpoint(root, k, {"scheduler": None})
    fresh = unlearner(BACKENDS.build(run["backend"], **run["kwargs"]), micro_batch_size=run["micro"],
                      batch=run["batch"], optimizer=run.get("optimizer", "sgd"))
    # same seed, so a fresh init equals the first run's; all state must come from disk
    with torch.no_grad():  # scramble the weights so a load that silently did nothing cannot pass
        for p in fresh.model.parameters():
            p.add_(1.0)
    state = fresh.backend.load_checkpoint(root / f"step-{k:08d}")
    assert state["step"] == k
    u.backend, u.model = fresh.backend, fresh.model
    return rows + [fresh.step(f, r) for f, r in all_batches[k:]]


def main() -> None:
    runs, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    with worker_session():  # on success: finish_worker(), no interpreter teardown (see its docstring)
        for run in runs:
            print(f"[worker] run {run['tag']}", flush=True)
            with isolated_run(run["tag"], out_dir):
                one_run(run, out_dir)


def one_run(run: dict, out_dir: Path) -> None:
    backend = BACKENDS.build(run["backend"], **run["kwargs"])
    dtype = getattr(torch, run["model_dtype"]) if run.get("model_dtype") else None
    u = unlearner(backend, micro_batch_size=run["micro"], batch=run["batch"], model_dtype=dtype,
                  optimizer=run.get("optimizer", "sgd"), lr_scale=run.get("lr_scale", 1.0),
                  trainable=run.get("trainable"), losses=run.get("losses", "npo"))
    gram_numel = record_gram_inputs(backend)
    ref_numel = reference_local_numel(u)
    if run.get("resume_after"):
        rows = resume_run(u, run, out_dir)
        backend = u.backend
    else:
        rows = []
        for step, (f, r) in enumerate(perturbed(batches(run["batch"]), backend.rank, run)):
            if step == 1 and run.get("fail_rank") == backend.rank:
                raise RuntimeError(f"injected failure on rank {backend.rank} before step {step}")
            rows.append(u.step(f, r))
    params = full_parameters(backend, u.model)
    buffers = getattr(backend, "_buffers", None)
    views = buffers.views_intact() if isinstance(buffers, FlatGradBuffers) else None
    save_run({"rows": rows, "params": params, "flat_grad_views_intact": views, "gram_numel": gram_numel,
              "ref_local_numel": ref_numel, "master_dtypes": master_dtypes(backend)},
             out_dir, run["tag"], backend.rank)


if __name__ == "__main__":
    main()
