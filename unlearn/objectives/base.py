"""The objective interface, its registries, and shared log-probability helpers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.errors import ConfigError
from unlearn.registry import Registry


class Objective:
    """A loss on one batch. Subclasses set `needs_ref` when they compare against the frozen reference model, and
    `ref_kind` to say what they need of it: `"model"` (its forward, e.g. full next-token distributions) or
    `"sequence_logp"` (only `reference_logp` of the batch, which can be precomputed once before unlearning)."""

    needs_ref: bool = False
    ref_kind: str = "model"

    def setup(self, model: nn.Module, seed: int = 0) -> None:
        """Called once with the model before training (before any backend wraps it): draw fixed random state
        here (RMU's control vector), deterministic in `seed`."""

    def state_dict(self) -> dict[str, Any]:
        """State saved with every checkpoint, JSON-serialisable (most objectives have none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved (on resume)."""

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], ref_model: nn.Module | None) -> Tensor:
        raise NotImplementedError

    def _require_ref(self, ref_model: nn.Module | None) -> nn.Module:
        if ref_model is None:
            raise RuntimeError(f"{type(self).__name__} needs a reference model but none was built")
        return ref_model


FORGET_LOSSES: Registry[Objective] = Registry("forget loss", "method.forget.name")
RETAIN_LOSSES: Registry[Objective] = Registry("retain loss", "method.retain.name")


def build_objective(registry: Registry[Objective], cfg: Mapping[str, Any]) -> Objective:
    """Build an objective from `{name: ..., **hyperparameters}`."""
    if "name" not in cfg:
        raise ConfigError(f"{registry.key}: missing (a {registry.kind} needs a name)")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return registry.build(cfg["name"], **kwargs)


def _forward_logits(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits


def answer_token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of the labels and the mask of answer tokens, both shaped [B, T-1].

    Logits at position t predict token t+1; labels are -100 outside the answer. Computed in float32 so that
    bf16 models do not lose the small differences NPO's log-ratio depends on.
    """
    shift_logits = upcast(logits[:, :-1, :])
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    safe = shift_labels.masked_fill(~mask, 0)
    # Vocabulary as the last, contiguous dim: cross_entropy over `transpose(1, 2)` (class dim 1, strided) took
    # about 3x as long forward+backward on CPU at `make bench`'s shape (32 x 63 x 2048 logits).
    vocab = shift_logits.shape[-1]
    token_nll = F.cross_entropy(shift_logits.reshape(-1, vocab), safe.reshape(-1), reduction="none")
    return -token_nll.view_as(safe) * mask, mask


def upcast(t: Tensor) -> Tensor:
    """At least float32: half-precision log-softmax loses the digits the losses depend on; float64 stays."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def sequence_logp(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Return (sum of answer-token log-probs, number of answer tokens), each of shape [B]."""
    logps, mask = answer_token_logps(_forward_logits(model, batch), batch["labels"])
    return logps.sum(dim=1), mask.sum(dim=1).clamp(min=1)


@torch.no_grad()
def reference_logp(ref_model: Any, batch: Mapping[str, Tensor]) -> Tensor:
    """Sum of answer-token log-probs under the frozen reference model (no graph is kept); a precomputed
    reference (`unlearn.train.reference.PrecomputedReference`) answers from its table instead."""
    lookup = getattr(ref_model, "sequence_logp", None)
    if callable(lookup):
        return lookup(batch)
    return sequence_logp(ref_model, batch)[0]
