"""A run interrupted mid-training and resumed with `resume=<run dir>` ends where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.integration.helpers import micro_cfg
from unlearn.errors import ConfigError
from unlearn.pipeline import run_experiment
from unlearn.train.loop import Unlearner

RUN = ["method=blur_npo", "trainer.max_steps=4", "trainer.checkpoint_every=2", "eval_reference_models=false"]


def test_resume_continues_exactly(micro_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = run_experiment(micro_cfg(micro_cache_dir, *RUN), tmp_path / "straight", console_print=False)

    real_step = Unlearner.step
    calls = {"n": 0}

    def crashing_step(self, forget, retain):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated stop during step 3")
        return real_step(self, forget, retain)

    monkeypatch.setattr(Unlearner, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(micro_cfg(micro_cache_dir, *RUN), tmp_path / "stopped", console_print=False)
    monkeypatch.setattr(Unlearner, "step", real_step)
    assert not (tmp_path / "stopped" / "summary.json").exists()

    resumed = run_experiment(micro_cfg(micro_cache_dir, f"resume={tmp_path / 'stopped'}"), tmp_path / "unused",
                             console_print=False)
    a = pd.read_csv(tmp_path / "straight" / "diagnostics.csv")
    b = pd.read_csv(tmp_path / "stopped" / "diagnostics.csv")
    assert b["step"].tolist() == [1, 2, 3, 4]
    for col in ("loss_f", "loss_r", "norm_f", "cos_fr", "A_r"):
        assert b[col].tolist() == pytest.approx(a[col].tolist(), rel=1e-9), col
    for key in ("forget_prob", "retain_prob", "forget_truth_ratio", "model_utility"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-9), key

    with pytest.raises(ConfigError, match="already finished"):
        run_experiment(micro_cfg(micro_cache_dir, f"resume={tmp_path / 'stopped'}"), tmp_path / "x",
                       console_print=False)
