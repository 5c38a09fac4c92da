"""Bad input fails before training, with a message naming the offending key or file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import micro_cfg
from unlearn.benchmarks.tofu.data import load_tofu
from unlearn.errors import ConfigError, DataError
from unlearn.pipeline import plan, run_experiment

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "UNLEARN_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "unlearn.run", *args, f"hydra.run.dir={cwd}/run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_unknown_method_group_names_the_group(tmp_path: Path) -> None:
    out = _cli("method=blur_nop", cwd=tmp_path)
    assert out.returncode != 0
    assert "method/blur_nop" in out.stderr and "blur_npo" in out.stderr  # Hydra lists the available options


def test_unknown_benchmark_group_names_the_group(tmp_path: Path) -> None:
    out = _cli("benchmark=tofu_maxi", cwd=tmp_path)
    assert out.returncode != 0 and "benchmark/tofu_maxi" in out.stderr


def test_cli_bad_value_exits_with_the_key_and_trains_nothing(tmp_path: Path) -> None:
    out = _cli("method.direction.gamma=-1", cwd=tmp_path)
    assert out.returncode == 2
    assert "method.direction.gamma" in out.stderr
    assert not (tmp_path / "cache").exists()  # failed before any world or model was built


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.forget.name=npoo", "method.forget.name"),
        ("method.direction.name=pcgrad", "method.direction.name"),
        ("optimizer.name=lion", "optimizer.name"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("trainer.backend=tpu", "trainer.backend"),
        ("+eval.nope={}", "eval: unknown evaluator 'nope'"),
        ("eval.tofu.batch_size=0", "eval.tofu.batch_size"),
        ("logger.name=mlflow", "logger.name"),
        ("benchmark.name=tofu_maxi", "benchmark.name"),
        ("~method.retain", "method.retain"),
        ("~optimizer.lr", "optimizer.lr"),
        ("method.forget.beta=-0.1", "method.forget.beta"),
    ],
)
def test_plan_rejects_bad_config_naming_the_key(override: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        plan(micro_cfg(tmp_path, override))


def test_bad_benchmark_values_fail_before_building(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"benchmark.forget_split"):
        run_experiment(micro_cfg(tmp_path / "c", "benchmark.forget_split=forget07"), tmp_path / "run",
                       console_print=False)
    with pytest.raises(ConfigError, match=r"benchmark.world.n_authors"):
        run_experiment(micro_cfg(tmp_path / "c", "benchmark.world.n_authors=1"), tmp_path / "run2",
                       console_print=False)
    assert not (tmp_path / "c").exists()


def test_existing_results_are_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"forget_quality": 0.5}))
    with pytest.raises(ConfigError, match=r"refusing to overwrite"):
        run_experiment(micro_cfg(tmp_path / "c"), run_dir, console_print=False)
    assert json.loads((run_dir / "summary.json").read_text()) == {"forget_quality": 0.5}


def test_malformed_data_file_is_named(tmp_path: Path) -> None:
    fixture = ROOT / "tests" / "fixtures" / "tofu"
    bad = tmp_path / "tofu"
    bad.mkdir()
    for f in fixture.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    target = next(bad.glob("forget10_perturbed.json*"))
    target.write_text('{"question": "q", "answer": "a"\n')  # truncated JSON
    with pytest.raises(DataError, match=target.name):
        load_tofu(bad, "forget10")
