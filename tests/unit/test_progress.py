"""Progress bars follow one switch: on for an interactive console, off in logs, multirun jobs and tests."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tqdm.auto import tqdm

import unlearn.progress as progress
from unlearn.evals.scoring import _length_batches
from unlearn.models.builder import resolve_train, train_stage
from unlearn.progress import bar, bars_on, progress_bars


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Recorder:
    """Stands in for tqdm: keeps every bar made, with its final count and whether it was made disabled (tqdm
    marks every bar disabled once closed)."""

    def __init__(self) -> None:
        self.bars: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        made = tqdm(file=io.StringIO(), **kwargs)
        made.made_disabled, made.made_desc = kwargs["disable"], kwargs.get("desc", "")
        self.bars.append(made)
        return made

    def by_desc(self, prefix: str) -> list[Any]:
        return [b for b in self.bars if b.made_desc.startswith(prefix)]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(progress, "tqdm", rec)
    return rec


def test_default_follows_whether_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not bars_on()
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert bars_on()


def test_switch_nests_and_restores_even_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Tty())
    with progress_bars(False):
        assert not bars_on()
        with progress_bars(True):
            assert bars_on()
        assert not bars_on()
        with pytest.raises(RuntimeError), progress_bars(None):
            assert bars_on()  # None: back to the terminal test
            raise RuntimeError
        assert not bars_on()
    assert bars_on()


def test_bar_is_disabled_exactly_when_the_switch_is_off(recorder: Recorder) -> None:
    with progress_bars(True):
        assert not bar(total=3).made_disabled
    with progress_bars(False):
        assert bar(total=3).made_disabled
    assert all(b.leave is False for b in recorder.bars)  # bars clear themselves; logs keep only results


class _Quadratic(torch.nn.Module):
    """forward(**batch).loss like a causal LM, so `train_stage` can run on it in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=((self.w - x) ** 2).mean())


def test_model_building_counts_its_steps_and_stops_short_on_target(recorder: Recorder) -> None:
    examples = [{"x": [float(i)]} for i in range(10)]
    collate = lambda rows: {"x": torch.tensor([r["x"] for r in rows])}  # noqa: E731
    train = resolve_train({"batch_size": 4, "max_epochs": 5, "min_epochs": 2, "check_every": 1,
                           "target_exact_match": 0.5, "warmup_steps": 0})
    scores = iter([0.1, 0.7])  # reaches the target at epoch 3
    with progress_bars(True):
        info = train_stage(_Quadratic(), examples, collate, train, until=lambda _m: next(scores),
                           log=lambda _msg: None, stage="target")
    (built,) = recorder.by_desc("build target")
    assert info["epochs"] == 3
    assert not built.made_disabled
    assert built.total == 5 * 3 and built.n == 3 * 3  # 3 steps per epoch; stopped after 3 of 5 epochs


def test_evaluation_batches_count_every_item(recorder: Recorder) -> None:
    with progress_bars(True):
        batches = list(_length_batches([3, 1, 2, 5, 4], batch_size=2))
    (evaluated,) = recorder.by_desc("evaluate")
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert evaluated.n == evaluated.total == 5


@pytest.mark.parametrize("wanted", [True, False])
def test_a_run_sets_the_switch_for_unlearning_and_evaluation(
    wanted: bool, recorder: Recorder, micro_cache_dir: Path, tmp_path: Path
) -> None:
    """`run_experiment(progress=...)` is what multirun jobs use to silence every bar of the run, not one loop's."""
    from tests.integration.helpers import micro_cfg
    from unlearn.pipeline import run_experiment

    cfg = micro_cfg(micro_cache_dir, "method=ga", "trainer.max_steps=2", "relearn.steps=0")
    run_experiment(cfg, tmp_path / "run", progress=wanted)
    unlearn_bars, eval_bars = recorder.by_desc("unlearn ga"), recorder.by_desc("evaluate")
    assert len(unlearn_bars) == 1 and eval_bars
    assert {b.made_disabled for b in unlearn_bars + eval_bars} == {not wanted}
    if wanted:  # a disabled bar counts nothing
        assert unlearn_bars[0].n == 2 and all(b.n == b.total > 0 for b in eval_bars)
