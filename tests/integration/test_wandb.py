"""logger=wandb, offline: the run's W&B directory holds the config, per-step losses and diagnostics, the trajectory,
the summary (relearning attack included) and the per-item tables; a failing run still finishes its W&B run."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import micro_cfg
from unlearn.pipeline import run_experiment

wandb = pytest.importorskip("wandb")
BLOCK = 32768  # W&B's transaction log: LevelDB-style 32 KiB blocks after a 7-byte header


def read_records(path: Path) -> list[Any]:
    """The protobuf records of an offline run's `run-*.wandb` file (the SDK no longer ships a reader).

    Layout: `:W&B` + magic 0xBEE1 + version 0, then records of (crc32 u32, length u16, type u8, data) that never
    cross a block boundary; types 1 full, 2 first, 3 middle, 4 last (a record split over blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    records = []
    for chunk in out:
        record = pb.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def finished_records(run: Path, timeout: float = 120.0) -> list[Any]:
    """The records of an offline run once the W&B service has written its `exit` record (it writes the file
    asynchronously, after `finish()` returns)."""
    wandb.teardown()  # stops the service, which flushes what it holds
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(next(run.glob("run-*.wandb")))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(1.0)


def logged_keys(records: list[Any], kind: str) -> set[str]:
    keys = set()
    for r in records:
        if r.WhichOneof("record_type") == kind:
            for item in getattr(r, kind).item if kind == "history" else r.summary.update:
                keys.add(item.key or "/".join(item.nested_key))
    return keys


@pytest.mark.slow
def test_wandb_offline_run_holds_the_logged_keys(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = micro_cfg(micro_cache_dir, "logger=wandb", "method=npo", "trainer.max_steps=2", "eval.every=1",
                    "eval.every_unit=step", "relearn.steps=3", "relearn.lr=1e-3")
    summary = run_experiment(cfg, tmp_path / "run", console_print=False)
    assert "relearn_forget_prob" in summary and "relearn_forget_quality" in summary
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = finished_records(runs[0])
    history, final = logged_keys(records, "history"), logged_keys(records, "summary")
    for key in ("train/loss_f", "train/loss_r", "train/cos_fr", "train/A_f", "eval/forget_quality",
                "eval/model_utility", "eval/forget_log_truth_ratio_gap", "items/tofu/_type", "results/_type"):
        assert key in history, key
    for key in ("forget_quality", "forget_log_truth_ratio_gap", "model_utility", "relearn_forget_prob"):
        assert key in final, key
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: item.value_json for item in run.config.update}
    assert '"npo"' in config["method"] and "relearn" in config
    assert list((runs[0] / "files" / "media" / "table").rglob("*.table.json"))  # the per-item table itself
    assert wandb.run is None  # finished


@pytest.mark.slow
def test_wandb_run_is_finished_when_the_run_fails(micro_prepared: Any, micro_cache_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("unlearn.pipeline.Unlearner.run", boom)
    cfg = micro_cfg(micro_cache_dir, "logger=wandb", "method=npo", "trainer.max_steps=1")
    with pytest.raises(RuntimeError, match="boom"):
        run_experiment(cfg, tmp_path / "run", console_print=False)
    assert wandb.run is None
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_report_logs_its_figures_to_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_report import refs_for, write_run
    from unlearn.loggers import WandbLogger
    from unlearn.report.__main__ import build_report

    monkeypatch.setenv("WANDB_SILENT", "true")
    for seed in (0, 1):
        write_run(tmp_path / "runs" / f"s{seed}", seed=seed, summary={"forget_quality": 0.1 * (seed + 1),
                  "model_utility": 0.7}, refs=refs_for(0))
    build_report(tmp_path / "runs", tmp_path / "report", metrics=["forget_quality", "model_utility"],
                 logger=WandbLogger(mode="offline"))
    run = next((tmp_path / "report" / "wandb").glob("offline-run-*"))
    history = logged_keys(finished_records(run), "history")
    assert {"report/table/_type", "report/tradeoff/_type", "report/diagnostics/_type"} <= history
    assert list((run / "files" / "media" / "images").rglob("*.png"))
