"""logger=wandb, offline: the run's W&B directory holds the config, per-step losses and diagnostics, the trajectory,
the summary (relearning attack included) and the per-item tables; a failing run still finishes its W&B run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers import micro_cfg
from unlearn.pipeline import run_experiment

wandb = pytest.importorskip("wandb")


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_keys(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = micro_cfg(micro_cache_dir, "logger=wandb", "method=npo", "trainer.max_steps=2", "eval.every=1",
                    "eval.every_unit=step", "relearn.steps=3", "relearn.lr=1e-3")
    summary = run_experiment(cfg, tmp_path / "run", console_print=False)
    assert "relearn_forget_prob" in summary and "relearn_forget_quality" in summary
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = runs[0] / "files"
    logged = json.loads((files / "wandb-summary.json").read_text())
    for key in ("train/loss_f", "train/cos_fr", "train/A_f", "eval/forget_quality", "eval/model_utility",
                "forget_quality", "forget_log_truth_ratio_gap", "relearn_forget_prob"):
        assert key in logged, key
    assert logged["forget_quality"] == pytest.approx(summary["forget_quality"])
    assert logged["items/tofu"]["_type"] == "table-file" and logged["results"]["_type"] == "table-file"
    config = yaml.safe_load((files / "config.yaml").read_text())
    assert config["method"]["value"]["name"] == "npo"
    assert wandb.run is None  # finished


@pytest.mark.slow
def test_wandb_run_is_finished_when_the_run_fails(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("unlearn.pipeline.Unlearner.run", boom)
    cfg = micro_cfg(micro_cache_dir, "logger=wandb", "method=npo", "trainer.max_steps=1")
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(cfg, tmp_path / "run", console_print=False)
    assert wandb.run is None
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
