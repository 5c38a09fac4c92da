"""Slow check (`make test-slow`): the default tofu_mini models build within budget and memorise their data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.helpers import CONFIG_DIR
from unlearn.benchmarks.base import prepare_benchmark
from unlearn.config import to_container


@pytest.mark.slow
def test_default_tofu_mini_builds_in_budget(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = to_container(compose("config"))
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    prepared = prepare_benchmark(cfg["benchmark"], cfg["model"], tmp_path, log=lambda _m: None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    # The budget is 6 minutes on 2 idle cores. Wall time also counts whatever else shares the machine (CI runners,
    # other jobs), so the check is on this process's CPU time against 6 minutes of every thread it trains with.
    threads = torch.get_num_threads()
    budget = 360 * threads
    assert cpu < budget, f"build: {cpu:.0f} CPU-s ({seconds:.0f} s wall); budget {budget} ({threads} threads)"
    target = json.loads((Path(prepared.models["target"]) / "build_info.json").read_text())
    retain = json.loads((Path(prepared.models.get("retain")) / "build_info.json").read_text())
    assert target["exact_match"] >= 0.95 and retain["exact_match"] >= 0.95, (target, retain)
    assert len(prepared.eval_data["tofu"].forget) == 100  # forget10 of 100 authors x 10 QA
