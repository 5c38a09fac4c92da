"""Which methods `make bench` measures and how each is composed: `configs/method/*.yaml`, as a run composes it.

Every method config is benchmarked (the list is read from `configs/method/`), plus variants that differ only in
an override: `npo_copy` / `blur_npo_copy` keep the frozen reference model in memory (`method.reference=copy`),
the earlier implementation, so the precomputed reference's memory saving is measured rather than asserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearn.pipeline import Plan, plan

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
VARIANTS: dict[str, list[str]] = {
    "npo_copy": ["method=npo", "method.reference=copy"],
    "blur_npo_copy": ["method=blur_npo", "method.reference=copy"],
}
# Settings a method needs to fit the bench's model: RMU steers a decoder layer, which must exist (the bench
# models have 2 or 4 layers; the configs' layer 7 is Zephyr's).
FIT_TO_MODEL: dict[str, list[str]] = {"rmu": ["method.forget.layer=1"], "blur_rmu": ["method.forget.layer=1"]}
METHODS = (*sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")), *VARIANTS)
BASELINE = "graddiff"
BARE = "bare"
# The direction rule is the only difference within each pair (same forget and retain losses).
RULE_PAIRS = {"blur_ga": "graddiff", "blur_npo": "npo", "blur_simnpo": "simnpo"}
# NPO without a second model: its peak memory and step time against GradDiff's (the targets).
REFERENCE_FREE = ("npo", "blur_npo")
STEP_TIME_TARGET = 1.05
MEM_TARGET_GRAD_SIZES = 1.1
REF_MEM_TARGET_GRAD_SIZES = 0.05
THROUGHPUT_TARGET = 0.95
N_BATCHES = 4  # distinct (forget, retain) batch pairs, cycled; the same sequence for every method


def overrides(name: str) -> list[str]:
    """The Hydra overrides that compose benchmark row `name`."""
    return VARIANTS.get(name, [f"method={name}", *FIT_TO_MODEL.get(name, [])])


def compose_plans(names: Sequence[str]) -> dict[str, Plan]:
    """Compose `config.yaml` + the row's overrides exactly as a run does, and build it with `pipeline.plan`."""
    from hydra import compose, initialize_config_dir

    plans = {}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in names:
            plans[name] = plan(compose("config", overrides=overrides(name)))
    return plans


def compose_default() -> dict[str, Any]:
    """The default run config (tiny_llama, tofu_mini, tofu eval), resolved to plain containers."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return plan(compose("config")).cfg
