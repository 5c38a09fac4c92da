"""The relearning attack (docs/metrics.md#relearning-attack): how much of the forgotten knowledge a little
fine-tuning brings back.

Unlearning that only hides knowledge (suppresses the answer while the weights still encode it) is undone by a few
steps of fine-tuning on a part of the forget set, which a model that never learned it cannot exploit as fast (Hu et
al., 2024; Łucki et al., 2024). After the final evaluation, `relearn` fine-tunes a *copy* of the unlearned model
with the plain answer NLL on the first `fraction` of the forget examples for `steps` AdamW steps, and the pipeline
evaluates that copy with every configured evaluator; its summary keys get the prefix `relearn_`. The unlearned
model itself (saved, reported) is untouched. `scope: forget` (the default) evaluates the copy only on what the
forget-side numbers need (`Evaluator.evaluate_forget`: TOFU's forget split, not the three utility splits), since
the attack measures what comes back of the forgotten knowledge; `scope: all` evaluates everything.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.errors import ConfigError

PREFIX = "relearn_"
KEYS = ("steps", "lr", "fraction", "batch_size", "seed", "scope")
#: forget: only the forget-side items and numbers (Evaluator.evaluate_forget / summarise_forget); all: every one.
SCOPES = ("forget", "all")


@dataclass(frozen=True)
class RelearnConfig:
    """`relearn:` in the config; `steps: 0` turns the attack off."""

    steps: int = 0
    lr: float = 1e-4
    fraction: float = 0.5
    batch_size: int = 8
    seed: int = 0
    scope: str = "forget"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> RelearnConfig:
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"relearn: expected a mapping (steps, lr, fraction, batch_size), got {cfg!r}")
        unknown = sorted(set(cfg) - set(KEYS))
        if unknown:
            raise ConfigError(f"relearn.{unknown[0]}: unknown key (known: {', '.join(KEYS)})")
        out = cls(**dict(cfg))
        for key in ("steps", "batch_size", "seed"):
            value = getattr(out, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "batch_size" else 0):
                raise ConfigError(f"relearn.{key}: expected a {'positive' if key == 'batch_size' else 'non-negative'}"
                                  f" integer, got {value!r}")
        if isinstance(out.lr, bool) or not isinstance(out.lr, int | float) or not out.lr > 0:
            raise ConfigError(f"relearn.lr: expected a positive number, got {out.lr!r}")
        if isinstance(out.fraction, bool) or not isinstance(out.fraction, int | float) or not 0 < out.fraction <= 1:
            raise ConfigError(f"relearn.fraction: expected a number in (0, 1], got {out.fraction!r}")
        if out.scope not in SCOPES:
            raise ConfigError(f"relearn.scope: expected one of {', '.join(SCOPES)}, got {out.scope!r}")
        return out

    @property
    def enabled(self) -> bool:
        return self.steps > 0


def relearn(model: torch.nn.Module, examples: Sequence[Any], collate: Callable[[list[Any]], Mapping[str, Any]],
            cfg: RelearnConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A copy of `model` fine-tuned for `cfg.steps` steps on the first `cfg.fraction` of `examples` (answer NLL).

    Batches cycle through a seeded permutation of the subset, so the attack is the same for every method.
    """
    subset = list(examples)[: max(1, math.ceil(cfg.fraction * len(examples)))]
    attacked = copy.deepcopy(model).to(device).train()
    attacked.requires_grad_(True)
    optimizer = torch.optim.AdamW(attacked.parameters(), lr=cfg.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    with torch.random.fork_rng(devices=[]):  # dropout etc. never shift the RNG of what follows
        for _ in range(cfg.steps):
            batch_idx = []
            while len(batch_idx) < min(cfg.batch_size, len(subset)):
                if not order:
                    order = torch.randperm(len(subset), generator=generator).tolist()
                batch_idx.append(order.pop())
            batch = {k: v.to(device) for k, v in collate([subset[i] for i in batch_idx]).items()}
            loss = attacked(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return attacked.eval()


def prefixed(summary: Mapping[str, float]) -> dict[str, float]:
    return {f"{PREFIX}{k}": v for k, v in summary.items()}
