"""unlearn.report on hand-made run directories: known numbers in, known table, heatmap, selection and files out."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from unlearn.report import figures
from unlearn.report.__main__ import build_report, main
from unlearn.report.aggregate import aggregate, format_cell, table_rows
from unlearn.report.collect import collect, collect_trajectories, param_columns
from unlearn.report.select import SelectionRule, add_utility_ratio, apply_selection, select

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, *, method: str = "blur_npo", gamma: float = 1.0, beta: float = 0.1, world: int = 0,
              seed: int = 0, summary: dict[str, float], refs: dict[str, dict[str, float]] | None = None,
              trajectory: list[dict[str, float]] | None = None) -> Path:
    """A finished run directory as the pipeline writes it (only the files the report reads)."""
    run_dir.mkdir(parents=True)
    cfg: dict[str, Any] = {
        "method": {"name": method, "forget": {"name": "npo", "beta": beta}, "direction": {"name": "blur",
                                                                                        "gamma": gamma}},
        "optimizer": {"name": "adamw", "lr": 1e-4},
        "trainer": {"backend": "single", "epochs": 5},
        "benchmark": {"name": "tofu_mini", "tag": "forget10", "world": {"seed": world}},
        "eval": {"tofu": {"batch_size": 8}},
        "seed": seed,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "references.json").write_text(json.dumps(refs or {}))
    if trajectory is not None:
        (run_dir / "trajectory.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trajectory))
    pd.DataFrame({"step": [1, 2], "A_f": [1.0, 0.5], "A_r": [0.0, 0.2], "cos_fr": [-0.1, 0.3]}).to_csv(
        run_dir / "diagnostics.csv", index=False)
    return run_dir


def refs_for(world: int) -> dict[str, dict[str, float]]:
    return {"Original": {"forget_quality": 0.01, "model_utility": 0.8 + world / 100},
            "Retain": {"forget_quality": 1.0, "model_utility": 0.9}}


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """blur_npo on a gamma x beta grid, 2 worlds x 2 seeds each; forget_quality = gamma * beta + world / 10
    + seed / 100, model_utility = 1 - gamma / 10."""
    root = tmp_path / "sweep"
    for gamma in (0.5, 1.0):
        for beta in (0.1, 0.2):
            for world in (0, 1):
                for seed in (0, 1):
                    fq = gamma * beta + world / 10 + seed / 100
                    write_run(root / f"g{gamma}_b{beta}_w{world}_s{seed}", gamma=gamma, beta=beta, world=world,
                              seed=seed, summary={"forget_quality": fq, "model_utility": 1 - gamma / 10},
                              refs=refs_for(world))
    return root


def test_collect_and_aggregate_known_sweep(sweep: Path) -> None:
    frame = collect(sweep)
    assert len(frame[frame["kind"] == "method"]) == 16
    assert len(frame[frame["kind"] == "reference"]) == 32  # every run repeats its world's two references
    assert sorted(param_columns(frame)) == ["method.direction.gamma", "method.forget.beta"]
    rows = table_rows(frame)
    assert len(rows[rows["kind"] == "reference"]) == 4  # ... which the table counts once per world
    methods = rows[rows["kind"] == "method"]
    agg = aggregate(methods, ["method.direction.gamma", "method.forget.beta"], ["forget_quality"])
    cell = agg.loc[(0.5, 0.1)]
    # runs: 0.05 + {0, 0.1} + {0, 0.01} = 0.05, 0.06, 0.15, 0.16 -> mean 0.105;
    # deviations +-0.055, +-0.045 -> var = 2 (0.055^2 + 0.045^2) / 3 = 0.010100 / 3; std = 0.0580230
    assert cell["forget_quality"] == pytest.approx(0.105, rel=1e-12)
    assert cell["forget_quality_std"] == pytest.approx(math.sqrt(0.0101 / 3), rel=1e-9)
    # per-world means 0.055 and 0.155 -> std (ddof 1) = 0.1 / sqrt(2)
    assert cell["forget_quality_world_std"] == pytest.approx(0.1 / math.sqrt(2), rel=1e-9)
    assert cell["runs"] == 4 and cell["worlds"] == 2
    refs = aggregate(rows[rows["kind"] == "reference"], ["model"], ["model_utility"])
    # Original utility 0.80 (world 0), 0.81 (world 1): mean 0.805, std over the two worlds 0.01 / sqrt(2)
    assert refs.loc["Original", "model_utility"] == pytest.approx(0.805, rel=1e-12)
    assert refs.loc["Original", "model_utility_std"] == pytest.approx(0.01 / math.sqrt(2), rel=1e-9)


def test_format_cell() -> None:
    assert format_cell(0.5, 0.25, 0.125) == "0.500 ± 0.250 [0.125]"
    assert format_cell(0.5, math.nan, math.nan) == "0.500"  # one run: no std to show
    assert format_cell(2e-5, 1e-5, math.nan) == "2.00e-05 ± 1.00e-05"


def test_heatmap_of_known_sweep(sweep: Path, tmp_path: Path) -> None:
    methods = collect(sweep).query("kind == 'method'")
    grid = figures.heatmap_frame(methods, "method.direction.gamma", "method.forget.beta", "forget_quality")
    # mean over worlds x seeds = gamma * beta + mean(world / 10) + mean(seed / 100) = gamma * beta + 0.055
    for gamma in (0.5, 1.0):
        for beta in (0.1, 0.2):
            assert grid.loc[beta, gamma] == pytest.approx(gamma * beta + 0.055, rel=1e-12)
    path = figures.heatmap(methods, tmp_path / "h.png", "method.direction.gamma", "method.forget.beta",
                           "forget_quality")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="no column"):
        figures.heatmap_frame(methods, "method.direction.lam", "method.forget.beta", "forget_quality")


def trajectory(fq: list[float], mu: list[float]) -> list[dict[str, float]]:
    return [{"step": 2 * i, "epoch": float(i), "forget_quality": f, "model_utility": m}
            for i, (f, m) in enumerate(zip(fq, mu, strict=True))]


def test_selection_rule_on_known_trajectories(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    # gamma 0.5: FQ peaks at epoch 3 (0.9) but utility is then 0.70 / 0.80 = 0.875 < 0.9 -> not eligible;
    #            epoch 2 (FQ 0.6, ratio 0.9) is the best eligible point of this setting.
    write_run(root / "a", gamma=0.5, summary={}, trajectory=trajectory([0.01, 0.3, 0.6, 0.9], [0.8, 0.78, 0.72,
                                                                                             0.70]))
    # gamma 1.0: FQ 0.7 at epoch 1 with ratio 0.95: the best eligible candidate overall.
    write_run(root / "b", gamma=1.0, summary={}, trajectory=trajectory([0.01, 0.7, 0.95, 0.99], [0.8, 0.76, 0.5,
                                                                                              0.4]))
    # ga: never keeps 0.9 of its utility -> the highest-utility point (epoch 1), flagged not eligible.
    write_run(root / "c", method="ga", summary={}, trajectory=trajectory([0.01, 0.5, 0.9], [0.8, 0.6, 0.1]))
    points = add_utility_ratio(collect_trajectories(root))
    chosen = select(points, ["method.direction.gamma", "epoch"], SelectionRule()).set_index("method")
    assert chosen.loc["blur_npo", "method.direction.gamma"] == 1.0
    assert chosen.loc["blur_npo", "epoch"] == 1.0
    assert chosen.loc["blur_npo", "forget_quality"] == pytest.approx(0.7)
    assert bool(chosen.loc["blur_npo", "eligible"])
    assert chosen.loc["ga", "epoch"] == 1.0 and not bool(chosen.loc["ga", "eligible"])
    # A stricter floor moves blur_npo to gamma 0.5 at epoch 1 (ratio 0.975, the only point above 0.96).
    strict = select(points, ["method.direction.gamma", "epoch"], SelectionRule(utility_floor=0.96))
    row = strict.set_index("method").loc["blur_npo"]
    assert (row["method.direction.gamma"], row["epoch"]) == (0.5, 1.0)
    # Applied to (here: the same) runs, the choice reads exactly those points, one per run.
    picked = apply_selection(points, chosen.reset_index(), ["method.direction.gamma", "epoch"])
    assert sorted(zip(picked["method"], picked["epoch"], strict=True)) == [("blur_npo", 1.0), ("ga", 1.0)]
    assert picked.set_index("method").loc["blur_npo", "run"] == "b"


def test_build_report_writes_figures_and_refuses_to_overwrite(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    files = build_report(sweep, out, metrics=["forget_quality", "model_utility"],
                         heatmap=["method.direction.gamma", "method.forget.beta", "forget_quality"])
    for name in ("tradeoff", "diagnostics", "heatmap"):
        assert files[name].read_bytes()[:8] == PNG and files[name].stat().st_size > 1000, name
    report = files["report"].read_text()
    assert "![heatmap](heatmap.png)" in report and "| — | — | Original |" in report  # refs: no grid params
    table = pd.read_csv(files["table_csv"])
    blur = table[(table["model"] == "blur_npo") & (table["method.direction.gamma"] == "0.5")
                 & (table["method.forget.beta"] == "0.1")]
    assert blur["forget_quality"].item() == pytest.approx(0.105, rel=1e-12)
    with pytest.raises(FileExistsError, match="already holds a report"):
        build_report(sweep, out)
    assert main([str(sweep), "--out", str(out)]) == 2
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
