"""The evaluator registry: `eval.name` -> evaluator factory (tofu now; muse and wmdp later).

Evaluators register themselves in their own module (`@EVALUATORS.register("tofu")`); importing
`unlearn.evals` imports them all, so `EVALUATORS` is complete whenever it is reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unlearn.errors import ConfigError
from unlearn.registry import Registry

EVALUATORS: Registry[Any] = Registry("evaluator", "eval.name")


def build_evaluator(cfg: Mapping[str, Any]) -> Any:
    """Build the evaluator an `eval` config group describes: `name` picks it, every other key is an argument.

    Accepts a plain dict or an OmegaConf DictConfig (anything with `items()`), so callers need not convert.
    Unknown names and bad arguments raise ConfigError naming the key.
    """
    fields = dict(cfg.items())
    name = fields.pop("name", None)
    if not name:
        raise ConfigError(f"eval.name: missing; known: {', '.join(EVALUATORS.names()) or '(none)'}")
    return EVALUATORS.build(str(name), **fields)
