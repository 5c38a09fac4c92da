"""When `eval.every` evaluates during unlearning, and the trajectory file's resume behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearn.errors import ConfigError
from unlearn.train.trajectory import Schedule, TrajectoryWriter, read_trajectory


def test_epoch_and_step_schedules() -> None:
    # 5 epochs of 4 steps: every epoch -> steps 4, 8, ..., 20; every 2 epochs -> 8, 16 and the last step 20.
    assert Schedule.from_config(1, "epoch").steps(20, 4) == [4, 8, 12, 16, 20]
    assert Schedule.from_config(2, "epoch").steps(20, 4) == [8, 16, 20]
    assert Schedule.from_config(0.5, "epoch").steps(8, 4) == [2, 4, 6, 8]
    assert Schedule.from_config(3, "step").steps(7, 4) == [3, 6, 7]
    assert Schedule.from_config(None, "epoch").steps(20, 4) == []
    assert Schedule.from_config(0, "step").steps(20, 4) == []
    assert Schedule.from_config(1, "epoch").steps(1, 4) == [1]  # a run shorter than one period: its last step


@pytest.mark.parametrize(("every", "unit", "key"), [(-1, "epoch", "eval.every"), ("x", "epoch", "eval.every"),
                                                     (1, "minute", "eval.every_unit"), (1.5, "step", "eval.every")])
def test_bad_schedules_name_the_key(every: object, unit: object, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Schedule.from_config(every, unit)


def test_writer_refuses_to_overwrite_and_keeps_rows_up_to_a_resumed_step(tmp_path: Path) -> None:
    path = tmp_path / "trajectory.jsonl"
    w = TrajectoryWriter(path)
    for step in (0, 2, 4):
        w.write({"step": step, "x": step / 3})
    w.close()
    with pytest.raises(FileExistsError):
        TrajectoryWriter(path)
    w = TrajectoryWriter(path, resume_after_step=2)
    w.write({"step": 4, "x": 9.0})
    w.close()
    rows = read_trajectory(path)
    assert [r["step"] for r in rows] == [0, 2, 4] and rows[1]["x"] == 2 / 3 and rows[2]["x"] == 9.0
