"""What a run directory holds is exact: per-item files re-aggregate to summary.json bit for bit (a collapsed model
included), and evaluating during unlearning (`eval.every`) records a trajectory without changing a single step."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.integration.helpers import micro_cfg
from unlearn.evals.base import read_items
from unlearn.pipeline import run_experiment
from unlearn.report.resummarise import resummarise
from unlearn.train.trajectory import read_trajectory

NOT_METRICS = ("steps", "prepare_seconds", "reference_eval_seconds", "unlearn_seconds", "eval_seconds")


def metrics(summary: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in summary.items() if k not in NOT_METRICS}


def test_items_reaggregate_to_the_summary_exactly(micro_cache_dir: Path, tmp_path: Path) -> None:
    summary = run_experiment(micro_cfg(micro_cache_dir, "method=npo", "trainer.max_steps=3"), tmp_path / "run",
                             console_print=False)
    assert resummarise(tmp_path / "run") == metrics(summary)  # ==, not approx: every float round-trips


def test_a_collapsed_models_items_reaggregate_exactly(micro_cache_dir: Path, tmp_path: Path) -> None:
    """Gradient ascent at a huge learning rate destroys the model: answer probabilities underflow far below 1e-10
    (which 10-digit JSON would write as 0) — the per-item file must keep them."""
    summary = run_experiment(micro_cfg(micro_cache_dir, "method=ga", "optimizer.lr=0.5", "trainer.max_steps=6"),
                             tmp_path / "run", console_print=False)
    items = read_items(tmp_path / "run" / "items" / "tofu.jsonl")
    probs = items["prob"].to_numpy(dtype=float)
    assert (probs < 5e-11).any(), "the run did not collapse; the test would not exercise tiny values"
    assert resummarise(tmp_path / "run") == metrics(summary)
    # The file is exact: pandas' default JSON (10 digits) would have lost these values' last digits.
    lossy = pd.read_json(io.StringIO(pd.Series(probs).to_json()), typ="series").to_numpy()
    assert not np.array_equal(lossy, probs)


def test_trajectory_is_recorded_without_changing_the_run(micro_cache_dir: Path, tmp_path: Path) -> None:
    common = ["method=blur_npo", "trainer.max_steps=4", "trainer.batch_size=4"]
    plain = run_experiment(micro_cfg(micro_cache_dir, *common), tmp_path / "plain", console_print=False)
    traced = run_experiment(micro_cfg(micro_cache_dir, *common, "eval.every=1", "eval.every_unit=step"),
                            tmp_path / "traced", console_print=False)
    assert metrics(traced) == metrics(plain)
    a = pd.read_csv(tmp_path / "plain" / "diagnostics.csv").drop(columns="step_time")
    b = pd.read_csv(tmp_path / "traced" / "diagnostics.csv").drop(columns="step_time")
    pd.testing.assert_frame_equal(a, b)
    rows = read_trajectory(tmp_path / "traced" / "trajectory.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    original = json.loads((tmp_path / "traced" / "references.json").read_text())["Original"]
    assert {k: rows[0][k] for k in original} == original  # step 0 is the target model
    assert {k: rows[-1][k] for k in metrics(plain)} == metrics(plain)  # the last step is the final evaluation
    assert rows[1]["forget_prob"] != rows[0]["forget_prob"]
    assert not (tmp_path / "plain" / "trajectory.jsonl").exists()


@pytest.mark.parametrize("bad", ["eval.every=-2", "eval.every_unit=hour"])
def test_bad_schedule_fails_before_anything_runs(micro_cache_dir: Path, tmp_path: Path, bad: str) -> None:
    from unlearn.errors import ConfigError

    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        run_experiment(micro_cfg(micro_cache_dir, bad), tmp_path / "run", console_print=False)
    assert not (tmp_path / "run").exists()


def test_a_shorter_run_is_a_prefix_of_a_longer_one(micro_cache_dir: Path, tmp_path: Path) -> None:
    """With a constant learning rate, a run stopped after e epochs is the longer run's model at epoch e: the
    reproduce protocol runs a tuned row to its chosen epoch instead of reading it off a trajectory
    (experiments/reproduce.py, `check_prefix_schedule`)."""
    common = ["method=blur_npo", "trainer.batch_size=4"]
    short = run_experiment(micro_cfg(micro_cache_dir, *common, "trainer.epochs=1"), tmp_path / "short",
                           console_print=False)
    run_experiment(micro_cfg(micro_cache_dir, *common, "trainer.epochs=2", "eval.every=1"), tmp_path / "long",
                   console_print=False)
    rows = {r["epoch"]: r for r in read_trajectory(tmp_path / "long" / "trajectory.jsonl")}
    assert set(rows) == {0, 1, 2}
    keys = [k for k in metrics(short) if k in rows[1] and not k.startswith("relearn_")]
    assert "forget_quality" in keys and "model_utility" in keys
    assert {k: rows[1][k] for k in keys} == {k: short[k] for k in keys}
    assert rows[2]["forget_prob"] != rows[1]["forget_prob"]  # the second epoch did change the model


def test_relearning_on_the_forget_split_alone_gives_the_full_evaluations_forget_numbers(
        micro_cache_dir: Path, tmp_path: Path) -> None:
    """`relearn.scope=forget` (the default) re-evaluates the attacked copy on the forget split only: the same
    `relearn_forget_*` numbers as evaluating every split (`scope=all`), no utility keys."""
    common = ["method=npo", "trainer.max_steps=3", "relearn.steps=3", "relearn.lr=1e-3"]
    part = run_experiment(micro_cfg(micro_cache_dir, *common), tmp_path / "forget", console_print=False)
    whole = run_experiment(micro_cfg(micro_cache_dir, *common, "relearn.scope=all"), tmp_path / "all",
                           console_print=False)
    relearned = {k: v for k, v in part.items() if k.startswith("relearn_") and k != "relearn_seconds"}
    assert relearned and all(k.startswith("relearn_forget_") for k in relearned), sorted(relearned)
    assert {k: whole[k] for k in relearned} == relearned
    assert "relearn_model_utility" in whole and "relearn_model_utility" not in part
    assert relearned["relearn_forget_prob"] != part["forget_prob"]  # the attack moved the model
    assert metrics({k: v for k, v in whole.items() if not k.startswith("relearn_")}) == metrics(
        {k: v for k, v in part.items() if not k.startswith("relearn_")})
