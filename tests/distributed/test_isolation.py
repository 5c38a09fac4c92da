"""One failing configuration in a multi-configuration launch fails only its own test.

The distributed tests run many configurations in one pair of worker processes (importing torch, transformers and
DeepSpeed once). Here the middle one of three DDP runs fails on rank 1 only, before its second step, while
rank 0 is already waiting in that step's all-reduce: the hardest case, since the ranks disagree. The launcher
must record that run's failure with the worker's error text, and the runs before and after it must still
produce their results (the one after it in a fresh launch).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_harness import BATCH, failure_path, launch, load_run

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("worker.py")


def test_a_failing_run_fails_only_itself(tmp_path: Path) -> None:
    run = {"backend": "ddp", "micro": 2, "batch": BATCH, "kwargs": {}}
    runs = [{**run, "tag": "before"}, {**run, "tag": "broken", "fail_rank": 1}, {**run, "tag": "after"}]
    launch(WORKER, "isolation", runs, tmp_path, world=2, timeout_s=240)
    before, after = load_run(tmp_path, "before"), load_run(tmp_path, "after")
    # The run after the failure ran in fresh processes and is the same computation as the one before it.
    for r in range(2):
        assert after[r]["rows"] == before[r]["rows"]
        for n, p in before[r]["params"].items():
            torch.testing.assert_close(after[r]["params"][n], p, rtol=0, atol=0)
    text = failure_path(tmp_path, "broken").read_text()
    assert "injected failure on rank 1 before step 1" in text, text
    with pytest.raises(pytest.fail.Exception, match="injected failure on rank 1"):
        load_run(tmp_path, "broken")
