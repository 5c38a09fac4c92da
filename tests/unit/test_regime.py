"""The regime check's statistics and required properties (experiments/regime.py), on hand-made trajectories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.regime import evaluate_checks, read_trajectory, trajectory_stats


def _rows(utility: list[float], fq: list[float]) -> list[dict[str, float]]:
    return [{"step": 10 * i, "epoch": float(i), "model_utility": u, "forget_quality": f}
            for i, (u, f) in enumerate(zip(utility, fq, strict=True))]


def test_stats_are_fractions_of_the_step_zero_target() -> None:
    s = trajectory_stats(_rows([0.5, 0.45, 0.4, 0.48], [1e-6, 0.1, 0.3, 0.2]))
    assert s["target_utility"] == 0.5
    assert s["utility_ratio"] == pytest.approx([1.0, 0.9, 0.8, 0.96])
    assert s["min_utility_ratio"] == pytest.approx(0.8)
    assert s["final_utility_ratio"] == pytest.approx(0.96)
    assert (s["start_forget_quality"], s["final_forget_quality"], s["max_forget_quality"]) == (1e-6, 0.2, 0.3)


def test_a_trajectory_must_start_at_the_target() -> None:
    with pytest.raises(ValueError, match="step 0"):
        trajectory_stats(_rows([0.5, 0.4], [0.1, 0.2])[1:])
    assert math.isnan(trajectory_stats(_rows([0.0, 0.1], [0.1, 0.2]))["min_utility_ratio"])


def test_checks_pass_and_fail_on_the_paper_properties() -> None:
    good = {
        "npo": trajectory_stats(_rows([0.5, 0.42, 0.45], [1e-9, 1e-3, 0.5])),        # min 0.84, FQ rises
        "blur_npo": trajectory_stats(_rows([0.5, 0.40, 0.44], [1e-9, 1e-2, 0.2])),   # min exactly 0.8
        "graddiff": trajectory_stats(_rows([0.5, 0.2, 0.26], [1e-9, 0.1, 0.1])),     # final 0.52
        "ga": trajectory_stats(_rows([0.5, 0.1, 0.0], [1e-9, 0.1, 0.1])),            # collapses
    }
    assert all(c["passed"] for c in evaluate_checks({"0": good}))
    bad = {
        "npo": trajectory_stats(_rows([0.5, 0.3, 0.45], [0.5, 0.2, 0.1])),           # dips to 0.6, FQ falls
        "graddiff": trajectory_stats(_rows([0.5, 0.2, 0.2], [1e-9, 0.1, 0.1])),      # final 0.4
        "ga": trajectory_stats(_rows([0.5, 0.4, 0.45], [1e-9, 0.1, 0.1])),           # no collapse
    }
    rows = evaluate_checks({"1": bad})
    assert [r["method"] for r in rows] == ["npo", "graddiff", "ga", "npo"]            # blur_npo did not run
    assert not any(r["passed"] for r in rows)
    assert {r["world"] for r in rows} == {"1"}


def test_read_trajectory_skips_blank_lines(tmp_path: Path) -> None:
    rows = _rows([0.5, 0.4], [0.1, 0.2])
    (tmp_path / "trajectory.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_trajectory(tmp_path) == rows
