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
    """Split an optimizer state dict into flat tensors and a JSON-able remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


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
