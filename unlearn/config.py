"""Config handling: resolvers, resolution to plain containers, and errors that name the key.

Everything a run needs is resolved and validated here (and by the unit builders) before any model is loaded,
so a typo costs seconds, not a training run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from unlearn.errors import ConfigError

REQUIRED = {
    "model": ("name", "source"),
    "benchmark": ("name",),
    "method": ("name", "forget", "retain"),  # `direction` too, unless the step strategy uses none (plan checks)
    "optimizer": ("name", "lr"),
    "trainer": ("backend", "batch_size"),
    "logger": ("name",),
}


def _retain_split(forget_split: str) -> str:
    """`${retain_split:forget10}` -> retain90 (TOFU's naming of the complement split)."""
    if not (isinstance(forget_split, str) and forget_split.startswith("forget") and forget_split[6:].isdigit()):
        raise ConfigError(f"benchmark.forget_split: expected forgetNN, got {forget_split!r}")
    return f"retain{100 - int(forget_split[6:]):02d}"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("retain_split"):
        OmegaConf.register_new_resolver("retain_split", _retain_split)


register_resolvers()


def to_container(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Resolve every interpolation; a missing value or broken interpolation becomes a ConfigError naming it."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except ConfigError:
        raise
    except (MissingMandatoryValue, InterpolationResolutionError, OmegaConfBaseException) as err:
        key = getattr(err, "full_key", None) or "?"
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from err
        raise ConfigError(f"{key}: {err.msg if hasattr(err, 'msg') else err}") from err
    assert isinstance(out, dict)
    return out


def validate_required(cfg: Mapping[str, Any]) -> None:
    """Every group is present and has its required keys."""
    for group, keys in REQUIRED.items():
        section = cfg.get(group)
        if not isinstance(section, Mapping):
            raise ConfigError(f"{group}: missing config group (choose one with `{group}=<name>`)")
        for key in keys:
            if section.get(key) is None:
                raise ConfigError(f"{group}.{key}: missing required key")
    if not isinstance(cfg.get("eval"), Mapping):
        raise ConfigError("eval: missing config group (choose evaluators with `eval=<name>` or `eval=[a,b]`)")
    for part in ("forget", "retain", "direction"):
        if part == "direction" and cfg["method"].get(part) is None:
            continue  # checked by the planner against the step strategy
        if not isinstance(cfg["method"][part], Mapping) or "name" not in cfg["method"][part]:
            raise ConfigError(f"method.{part}.name: missing required key")
