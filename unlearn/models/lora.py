"""LoRA adapters (peft) for parameter-efficient unlearning.

Why LoRA here: unlearning a 1B-8B model with full AdamW keeps four full-size copies next to the weights (two
gradient buffers, because the loop holds g_f and g_r at once, plus Adam's two moments). With adapters only the
adapter parameters are trainable, so all of those shrink to the adapter size; the direction rules do not care,
because they only ever see the backend's list of trainable gradients. BLUR's guarantee
`<g_f, u> = gamma * ||g_f||^2` then holds in adapter space (the gradients it projects are adapter gradients).

Config (`model.lora`, all keys optional):

    lora:
      enabled: true          # false (or no `lora` section at all) leaves the model untouched
      r: 8                   # adapter rank
      alpha: 16              # peft `lora_alpha`; the update is scaled by alpha / r
      dropout: 0.0           # peft `lora_dropout`
      target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]   # or "all-linear"

The reference model: NPO and the KL retain loss need the model *before* unlearning. With adapters that model
is exactly the base with the adapters switched off, so no second copy of the weights is kept:
`unlearn.train.reference.AdapterDisabledReference` runs the trained model under `disable_adapter()` and no_grad
where an objective needs the reference's forward (`method.reference=auto` picks it under LoRA; NPO alone still
uses the precomputed log-probs, which cost no forward at all). docs/methods.md#npo-reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from unlearn.errors import ConfigError

KEY = "model.lora"
DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "r": 8,
    "alpha": 16,
    "dropout": 0.0,
    # Every linear projection of a Llama block: attention and MLP (the LoRA paper's best setting for QA).
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve_lora(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate a `model.lora` section and fill in defaults; None when LoRA is off.

    Separate from `apply_lora` so a config can be checked before any model is loaded (bad input fails in
    seconds, not after a multi-GB download). Every error names the offending key as `model.lora.<key>`.
    """
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{KEY}: expected a mapping (or null), got {type(cfg).__name__}")
    unknown = sorted(str(k) for k in cfg if k not in DEFAULTS)
    if unknown:
        raise ConfigError(f"{KEY}.{unknown[0]}: unknown key; known: {', '.join(sorted(DEFAULTS))}")
    out = {**DEFAULTS, **dict(cfg)}
    if not isinstance(out["enabled"], bool):
        raise ConfigError(f"{KEY}.enabled: expected true/false, got {out['enabled']!r}")
    if not out["enabled"]:
        return None
    r = out["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"{KEY}.r: must be a positive integer, got {r!r}")
    if not _is_number(out["alpha"]) or out["alpha"] <= 0:
        raise ConfigError(f"{KEY}.alpha: must be a positive number, got {out['alpha']!r}")
    if not _is_number(out["dropout"]) or not 0.0 <= out["dropout"] < 1.0:
        raise ConfigError(f"{KEY}.dropout: must be a number in [0, 1), got {out['dropout']!r}")
    targets = out["target_modules"]
    if isinstance(targets, str):
        if not targets:
            raise ConfigError(f"{KEY}.target_modules: empty string")
    elif isinstance(targets, Sequence) and targets and all(isinstance(t, str) and t for t in targets):
        targets = list(targets)  # also turns an OmegaConf ListConfig into a plain list for peft
    else:
        raise ConfigError(
            f"{KEY}.target_modules: expected a non-empty list of module names or a string, got {targets!r}"
        )
    out["target_modules"] = targets
    return out


def apply_lora(model: nn.Module, cfg: Mapping[str, Any] | None) -> nn.Module:
    """Wrap `model` with LoRA adapters as `cfg` says; return it unchanged when LoRA is off.

    Afterwards only the adapter parameters require grad (peft freezes the base), so the backend builds the
    optimizer and the gradient buffers over the adapters alone. The returned peft model is called like the
    original (`model(input_ids=..., attention_mask=...).logits`), so objectives and evaluators are unchanged.
    """
    resolved = resolve_lora(cfg)
    if resolved is None:
        return model
    from peft import LoraConfig, get_peft_model  # lazy: peft is an optional extra (`dist`)

    lora_cfg = LoraConfig(
        r=resolved["r"],
        lora_alpha=resolved["alpha"],
        lora_dropout=float(resolved["dropout"]),
        target_modules=resolved["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora_cfg)  # type: ignore[arg-type]
    except ValueError as err:  # e.g. no module matches target_modules
        raise ConfigError(f"{KEY}.target_modules: {err}") from err


__all__ = ["DEFAULTS", "apply_lora", "resolve_lora"]
