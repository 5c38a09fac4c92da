"""`model.trainable`: which parameters unlearning updates, as a list of parameter-name glob patterns.

RMU trains three matrices of a 7B model (`mlp.down_proj.weight` of layers 5, 6, 7; docs/methods.md#rmu-reference).
Freezing is applied to the plain model before any backend wraps it, by clearing `requires_grad`: every backend
(single, DDP, FSDP2, ZeRO) builds its optimizer and gradient buffers over the parameters that require a gradient
only, so frozen parameters take no gradient or optimizer memory and the Gram matrix (BLUR's inner products) runs over
the trained parameters alone.

Patterns are `fnmatch` globs against names from `model.named_parameters()` (`model.layers.[5-7].mlp.down_proj.weight`,
`*.down_proj.weight`); null trains everything the model marks trainable (LoRA adapters under `model.lora`). A pattern
that matches no parameter is a ConfigError naming the key, so a typo never silently trains nothing or everything.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from unlearn.errors import ConfigError


def resolve_trainable(value: Any) -> list[str] | None:
    """Validate `model.trainable` (null, or a non-empty list of non-empty strings)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value or not all(isinstance(p, str) and p for p in value):
        raise ConfigError(f"model.trainable: expected null or a list of parameter-name patterns, got {value!r}")
    return list(value)


def apply_trainable(model: nn.Module, patterns: Any) -> list[str]:
    """Freeze every parameter whose name matches none of `patterns`; return the names left trainable.

    Only parameters that were trainable before can stay trainable (under LoRA, patterns select among the adapters).
    """
    patterns = resolve_trainable(patterns)
    named = list(model.named_parameters())
    if patterns is None:
        return [n for n, p in named if p.requires_grad]
    unmatched = [pat for pat in patterns if not any(fnmatch.fnmatchcase(n, pat) for n, _ in named)]
    if unmatched:
        sample = ", ".join(n for n, _ in named[:4])
        raise ConfigError(f"model.trainable: pattern(s) {unmatched} match no parameter of "
                          f"{type(model).__name__} (names look like: {sample}, ...)")
    kept = []
    for name, param in named:
        keep = param.requires_grad and any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        param.requires_grad_(keep)
        if keep:
            kept.append(name)
    if not kept:
        raise ConfigError(f"model.trainable: {patterns} leave no trainable parameter")
    return kept


__all__ = ["apply_trainable", "resolve_trainable"]
