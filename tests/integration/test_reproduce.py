"""experiments.reproduce: the declared protocol (equal budget, one run per distinct config) and, slow, the quick
protocol end to end on the micro world (tables, figures, report; a re-run runs nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments import reproduce as R


def test_every_protocol_gives_every_method_the_same_budget() -> None:
    assert R.check_equal_budget(R.FULL_GRIDS) == 4
    assert R.check_equal_budget(R.QUICK_GRIDS) == 2
    with pytest.raises(ValueError, match="unequal tuning budget"):
        R.check_equal_budget({"a": {"x": [1, 2]}, "b": {"y": [1]}})


def test_runs_are_named_by_what_they_run() -> None:
    proto = R.PROTOCOLS["quick"]
    defaults = R.method_defaults(proto)
    assert defaults["blur_npo"]["method.direction.gamma"] == 1.0 and defaults["npo"]["method.forget.beta"] == 0.1
    # The configured settings are "paper" however they are spelled; a heatmap point equal to a grid point is it.
    assert R.point_name({"method.direction.gamma": 1.0}, defaults["blur_npo"]) == "paper"
    assert R.point_name({"method.direction.gamma": 0.5, "method.forget.beta": 0.1}, defaults["blur_npo"]) == \
        R.point_name({"method.direction.gamma": 0.5}, defaults["blur_npo"]) == "gamma=0.5"
    assert R.point_name({R.LR_KEY: 2.0}, defaults["ga"]) == "lr=x2"
    runs = dict(R.plan_runs(proto, 1e-3, defaults, []))
    assert "forget10/w0/blur_npo/gamma=0.5,beta=0.2_s0" in runs and "forget10/w1/npo/paper_s0" in runs
    # 4 methods x (dev + 1 held-out paper runs) + one non-paper grid point each + 2 new heatmap points
    assert len(runs) == 4 * 2 + 4 + 2
    lr = runs["forget10/w0/ga/lr=x2_s0"]
    assert "optimizer.lr=0.002" in lr and "benchmark.world.seed=0" in lr and "eval.every=1" in lr
    assert all("relearn.steps=10" in o for o in runs.values())


def test_full_protocol_records_trajectories_where_selection_reads_them() -> None:
    proto = R.PROTOCOLS["full"]
    defaults = R.method_defaults(proto)
    runs = dict(R.plan_runs(proto, 1e-4, defaults, []))
    every = {name: next(o for o in ov if o.startswith("eval.every=")) for name, ov in runs.items()}
    # Tuning (forget10 only) and the heatmap run on the development world, always with trajectories.
    assert all(e == "eval.every=2" for n, e in every.items() if "/w0/" in n)
    assert not any(n.startswith("forget05/w0/") for n in runs)
    assert "forget10/w0/npo/beta=0.05,lr=x2_s0" in runs and "forget10/w0/blur_npo/gamma=2,beta=0.2_s0" in runs
    # Held-out paper runs: forget10 seed 0 records a trajectory (the figures); the others are evaluated at the end.
    assert every["forget10/w3/npo/paper_s0"] == "eval.every=2" and every["forget10/w3/npo/paper_s2"] == "eval.every=0"
    assert every["forget05/w3/npo/paper_s0"] == "eval.every=0"
    held = [n for n in runs if "/w0/" not in n]
    assert len(held) == 8 * 2 * 3 * 3 and all("/paper_s" in n for n in held)
    # 8 methods x 4 grid points + the heatmap's 7 points not already on blur_npo's grid
    assert len(runs) - len(held) == 8 * 4 + 7
    # Tuned rows: the chosen point run to the chosen epoch on every held-out world (seed 0), no trajectory; at the
    # last epoch the full run, and at the configured point that is the paper-settings run itself.
    chosen = pd.DataFrame([
        {"split": "forget10", "method": "npo", "point": '{"method.forget.beta": 0.05}', "epoch": 4.0},
        {"split": "forget10", "method": "ga", "point": '{"optimizer.lr": 2.0}', "epoch": 10.0},
        {"split": "forget10", "method": "simnpo", "point": '{"optimizer.lr": 1.0}', "epoch": 10.0}])
    tuned = dict(R.tuned_runs(proto, chosen, 1e-4, defaults, [], full_epochs=10))
    assert sorted(tuned) == sorted([f"forget10/w{w}/npo/beta=0.05,epochs=4_s0" for w in (1, 2, 3)]
                                   + [f"forget10/w{w}/ga/lr=x2_s0" for w in (1, 2, 3)]
                                   + [f"forget10/w{w}/simnpo/paper_s0" for w in (1, 2, 3)])
    stopped = tuned["forget10/w1/npo/beta=0.05,epochs=4_s0"]
    assert "trainer.epochs=4" in stopped and "eval.every=0" in stopped and "method.forget.beta=0.05" in stopped
    assert "eval.every=0" in tuned["forget10/w1/ga/lr=x2_s0"] and not any("trainer.epochs" in o for o in
                                                                           tuned["forget10/w1/ga/lr=x2_s0"])
    # The configured point at the last epoch is the paper-settings run (the same directory, its trajectory kept).
    paper = "forget10/w2/simnpo/paper_s0"
    assert [o for o in tuned[paper] if o.startswith("eval.")] == [o for o in runs[paper] if o.startswith("eval.")] \
        == ["eval.every=2"]
    with pytest.raises(ValueError, match="traj_splits"):
        R.Protocol("x", (), ("forget10",), 0, (1,), (0, 1), (0,), {}, traj_splits=("forget05",))


def test_tuned_runs_need_a_schedule_whose_prefix_is_a_shorter_run() -> None:
    cfg = R.compose_cfg(["benchmark=tofu_micro"])
    assert R.check_prefix_schedule(cfg) == int(cfg.trainer.epochs)
    for override, key in (("optimizer.scheduler=cosine", "scheduler"), ("optimizer.warmup_ratio=0.1", "warmup"),
                          ("trainer.max_steps=5", "max_steps"), ("trainer.epochs=2.5", "whole number")):
        with pytest.raises(ValueError, match=key):
            R.check_prefix_schedule(R.compose_cfg(["benchmark=tofu_micro", override]))


def test_relearn_recovery_by_hand() -> None:
    rows = pd.DataFrame([
        {"model": "Original", "kind": "reference", "world": 1, "forget_prob": 0.9, "relearn_forget_prob": None},
        {"model": "Original", "kind": "reference", "world": 2, "forget_prob": 0.5, "relearn_forget_prob": None},
        # world 1: unlearning took 0.9 -> 0.1, the attack brings it to 0.5: (0.5 - 0.1) / (0.9 - 0.1) = 0.5
        {"model": "npo", "kind": "method", "world": 1, "forget_prob": 0.1, "relearn_forget_prob": 0.5},
        # world 2: 0.5 -> 0.1, attack to 0.2: 0.1 / 0.4 = 0.25 (each run against its own world's target)
        {"model": "npo", "kind": "method", "world": 2, "forget_prob": 0.1, "relearn_forget_prob": 0.2},
        {"model": "npo (tuned)", "kind": "method", "world": 2, "forget_prob": 0.1, "relearn_forget_prob": None},
    ])
    got = R.relearn_recovery(rows)
    assert got.iloc[:2].isna().all() and pd.isna(got.iloc[4])
    assert got.iloc[2] == pytest.approx(0.5, rel=1e-12) and got.iloc[3] == pytest.approx(0.25, rel=1e-12)


def test_prepare_only_builds_every_world_and_runs_nothing(micro_cache_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`make worlds` (`--prepare-only`): afterwards every run's benchmark loads from the cache, building nothing."""
    from unlearn.benchmarks.base import prepare_benchmark

    monkeypatch.setenv("UNLEARN_CACHE", str(micro_cache_dir))
    out = tmp_path / "report"
    assert R.main(["--quick", "--prepare-only", "--out", str(out)]) == 0
    assert not out.exists()  # no run, no report
    proto = R.PROTOCOLS["quick"]
    cfg = R.compose_cfg(list(proto.overrides))
    runs = [*R.plan_runs(proto, float(cfg["optimizer"]["lr"]), R.method_defaults(proto), []),
            *(r for t in proto.tables for r in R.TABLES[t].runs())]
    messages: list[str] = []
    for _, overrides in runs:
        run_cfg = R.compose_cfg(overrides)
        prepare_benchmark(run_cfg.benchmark, run_cfg.model, micro_cache_dir, log=messages.append)
    assert messages and not [m for m in messages if "[cache] built" in m], messages


@pytest.mark.slow
def test_quick_protocol_end_to_end(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLEARN_CACHE", str(micro_cache_dir))
    out = tmp_path / "report"
    args = ["--quick", "--methods", "npo", "blur_npo", "--out", str(out), "--override", "trainer.epochs=2"]
    assert R.main(args) == 0
    report = (out / "REPORT.md").read_text()
    for name in ("tradeoff", "trajectories", "A_f_A_r", "cos_fr", "heatmap"):
        path = out / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000, name
        assert f"]({name}.png)" in report
    table = pd.read_csv(out / "table_forget10.csv", index_col=0)
    assert {"Original", "Retain", "npo", "blur_npo", "npo (tuned)", "blur_npo (tuned)"} <= set(table.index)
    assert (table.loc["Original", "forget_quality"] < table.loc["Retain", "forget_quality"])
    assert "relearn_forget_prob" in table.columns and "Published (BLUR paper" in report
    assert table.loc["npo", "relearn_recovery"] == table.loc["npo", "relearn_recovery"]  # computed (not NaN)
    # Tables 3 and 4 on the micro MUSE and WMDP worlds, with the paper's numbers as their own block.
    muse = pd.read_csv(out / "table_muse_micro.csv", index_col=0)
    assert list(muse.index) == ["Original", "Retrain", "npo", "blur_npo"]
    assert muse.loc["npo", "verbmem_f"] < muse.loc["Original", "verbmem_f"]
    assert muse.loc["blur_npo", "A_f"] == pytest.approx(1.0, rel=1e-3)  # BLUR: A_f = gamma at every step
    wmdp = pd.read_csv(out / "table_wmdp_micro.csv", index_col=0)
    assert list(wmdp.index) == ["Original", "rmu", "blur_rmu"] and "wmdp_mini_bio_acc" in wmdp.columns
    assert "## Table 3: MUSE" in report and "## Table 4: WMDP" in report and "Published (BLUR paper, WMDP)" in report
    chosen = pd.read_csv(out / "selection.csv")
    assert set(chosen["method"]) == {"npo", "blur_npo"} and (chosen["epoch"] > 0).all()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
    assert R.main(args) == 0  # everything finished: nothing runs again, nothing is rewritten
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")} == stamps
    log = [json.loads(line) for line in (out / "wall_seconds.jsonl").read_text().splitlines()]
    assert log[-1]["ran"] == 0 and log[0]["ran"] == log[0]["runs"]
