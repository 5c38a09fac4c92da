"""Every shipped config composes and plans; the micro preset matches the one the test fixtures build."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.integration.helpers import CONFIG_DIR, micro_cfg
from unlearn.benchmarks.tofu.embedded import micro_configs
from unlearn.pipeline import plan

METHODS = sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_config_plans(method: str, tmp_path: Path) -> None:
    p = plan(micro_cfg(tmp_path, f"method={method}"))
    assert p.cfg["method"]["name"] == method


def test_micro_preset_matches_fixture_preset(tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(micro_cfg(tmp_path), resolve=True)
    bench, model = micro_configs("forget10")
    assert {k: cfg["benchmark"]["world"][k] for k in bench["world"]} == bench["world"]
    assert {k: cfg["model"]["arch"][k] for k in model["arch"]} == model["arch"]
    for stage in ("pretrain", "finetune"):
        assert {k: cfg["model"][stage][k] for k in model[stage]} == model[stage], stage
    assert cfg["model"]["corpus"] == model["corpus"] and cfg["model"]["recipe"] == model["recipe"]


def test_real_tofu_config_composes_with_hub_model(tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(
        micro_cfg(tmp_path, "benchmark=tofu", "model=llama32_1b_tofu", "benchmark.forget_split=forget05"),
        resolve=True)
    assert cfg["model"]["retain_path"] == "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain95"
    assert cfg["optimizer"]["lr"] == 1e-5 and cfg["eval"]["tofu"]["max_new_tokens"] == 200
