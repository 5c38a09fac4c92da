"""Optimizer and learning-rate schedule from config.

The direction rule's output is handed to the optimizer *as the gradient*: AdamW (default) or SGD then take the
step, exactly as in the BLUR paper's experiments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

from unlearn.errors import ConfigError

_OPTIMIZERS = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer_factory(cfg: Mapping[str, Any]):
    """Return `params -> Optimizer` for `cfg = {name, lr, ...}`; validates before any model is touched."""
    name = cfg.get("name")
    if name not in _OPTIMIZERS:
        raise ConfigError(f"optimizer.name: unknown optimizer {name!r}; known: {', '.join(sorted(_OPTIMIZERS))}")
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "scheduler", "warmup_ratio")}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    lr = kwargs.get("lr")
    if not isinstance(lr, int | float) or lr <= 0:
        raise ConfigError(f"optimizer.lr: must be a positive number, got {lr!r}")
    cls = _OPTIMIZERS[name]

    def factory(params: list[nn.Parameter]) -> torch.optim.Optimizer:
        try:
            return cls(params, **kwargs)
        except TypeError as err:
            raise ConfigError(f"optimizer: bad arguments for {name}: {err}") from err

    return factory


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int):
    """Linear/cosine/constant schedule with warmup (transformers' implementations)."""
    name = cfg.get("scheduler", "constant")
    warmup = round(float(cfg.get("warmup_ratio", 0.0)) * total_steps)
    kind = "constant_with_warmup" if name == "constant" else name
    try:
        return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    except ValueError as err:
        raise ConfigError(f"optimizer.scheduler: {err}") from err
