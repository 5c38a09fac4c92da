"""Compose real configs (the same files `python -m unlearn.run` uses) for the micro preset."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
MICRO = ["benchmark=tofu_micro", "model=tiny_llama_micro"]


def micro_cfg(cache_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*MICRO, f"cache_dir={cache_dir}", *overrides])
