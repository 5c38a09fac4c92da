"""Checkpoints in safetensors (tensors) + JSON (everything else); never pickle.

A checkpoint directory `step-00000012/` holds `model.safetensors`, `optimizer.safetensors` and
`trainer_state.json` (step, optimizer hyperparameters, scheduler state, RNG state). It is written to a temporary
directory and renamed into place, so a crash mid-write never leaves a half checkpoint that resume would load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

STATE_FILE = "trainer_state.json"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (temporary directories are ignored)."""
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists())
    return done[-1] if done else None


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into flat CPU tensors and a JSON-able remainder."""
    tensors, meta = optimizer_to_tensors_shallow(optimizer)
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, meta


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: Mapping[str, Any],
    keep: int = 0,
) -> Path:
    """Write checkpoint `step` under `root` atomically; keep only the newest `keep` (0 keeps all)."""
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = torch.get_rng_state()
    state = {"step": step, "optimizer": opt_meta, "torch_rng": rng.tolist(), **extra}
    (tmp / STATE_FILE).write_text(json.dumps(state))
    if final.exists():  # the same step saved by an earlier attempt: replace it with this identical state
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    return final


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place; return the JSON state (step, scheduler, sampler...)."""
    state = json.loads((directory / STATE_FILE).read_text())
    missing, unexpected = load_model(model, str(directory / "model.safetensors"), strict=False)
    if unexpected or [m for m in missing if m in dict(model.named_parameters())]:
        raise ValueError(f"{directory}/model.safetensors does not match the model: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer_from_tensors(optimizer, load_file(str(directory / "optimizer.safetensors")), state["optimizer"])
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    return state


# ------------------------------------------------------------------------------------------- sharded checkpoints
def _local_tensor(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)
    return (to_local() if callable(to_local) else t).detach().contiguous().cpu()


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank:05d}.safetensors"


def save_sharded_checkpoint(
    root: Path, step: int, rank: int, world_size: int, model: nn.Module, optimizer: torch.optim.Optimizer,
    extra: Mapping[str, Any], barrier: Any, keep: int = 0,
) -> Path:
    """Every rank writes its own parameter and optimizer shards (`rankNNNNN.safetensors`); rank 0 the JSON.

    Collective: every rank must call it. The directory is assembled under a temporary name and renamed into
    place by rank 0 once all ranks have written, so an interrupted save never looks complete.
    """
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    tensors = {f"model.{n}": _local_tensor(p) for n, p in model.named_parameters()}
    opt_tensors, opt_meta = optimizer_to_tensors_local(optimizer)
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    save_file(tensors, str(rank_file(tmp, rank)))
    (tmp / f"rank{rank:05d}.json").write_text(json.dumps({"torch_rng": torch.get_rng_state().tolist()}))
    barrier()
    if rank == 0:
        state = {"step": step, "world_size": world_size, "sharded": True, "optimizer": opt_meta, **extra}
        (tmp / STATE_FILE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        if keep > 0:
            for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
                shutil.rmtree(old)
    barrier()
    return final


def optimizer_to_tensors_local(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Like `optimizer_to_tensors`, keeping only this rank's shard of DTensor state."""
    tensors, meta = optimizer_to_tensors_shallow(optimizer)
    return {k: _local_tensor(v) for k, v in tensors.items()}, meta


def optimizer_to_tensors_shallow(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_sharded_checkpoint(
    directory: Path, rank: int, world_size: int, model: nn.Module, optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Restore this rank's shards in place; the world size must be the one the checkpoint was written with."""
    from unlearn.errors import ConfigError

    state = json.loads((directory / STATE_FILE).read_text())
    if state.get("world_size") != world_size:
        raise ConfigError(f"resume: {directory} was written by {state.get('world_size')} ranks; this run has "
                          f"{world_size} (sharded checkpoints resume on the same number of ranks)")
    tensors = load_file(str(rank_file(directory, rank)))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            key = f"model.{name}"
            if key not in tensors:
                raise ValueError(f"{rank_file(directory, rank)} lacks {key}")
            target = p.to_local() if hasattr(p, "to_local") else p
            target.copy_(tensors[key])
    # Optimizer state: wrap each saved local shard back into a DTensor laid out like its parameter.
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim.state."):
            continue
        pid_s, name = key[len("optim.state."):].split(".", 1)
        pid = int(pid_s)
        param = ordered[pid]
        if hasattr(param, "device_mesh") and value.dim() > 0:
            from torch.distributed.tensor import DTensor

            value = DTensor.from_local(value.to(param.to_local().device), device_mesh=param.device_mesh,
                                       placements=param.placements, shape=param.shape, stride=param.stride(),
                                       run_check=False)
        opt_state.setdefault(pid, {})[name] = value
    for pid, extra in state["optimizer"].get("scalars", {}).items():
        opt_state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    rng = json.loads((directory / f"rank{rank:05d}.json").read_text())["torch_rng"]
    torch.set_rng_state(torch.tensor(rng, dtype=torch.uint8))
    return state
