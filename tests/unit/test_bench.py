"""`experiments.bench` runs end to end on a micro model and writes the documented schema (not timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import bench

METHOD_KEYS = {"step_time_s", "step_time_ratio", "peak_mem_bytes", "peak_mem_ratio"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    bench.main(["--model-size", "micro", "--steps", "2", "--warmup", "1", "--skip-eval", "--device", "cpu",
                "--out", str(out)])
    return out, json.loads((out / "bench.json").read_text())


def test_json_schema(run: tuple[Path, dict]) -> None:
    _, data = run
    assert data["device"] == "cpu"
    assert {"params", "grad_bytes"} <= set(data["model"])
    assert data["model"]["params"] > 0 and data["model"]["grad_bytes"] == 4 * data["model"]["params"]
    assert set(data["methods"]) == set(bench.METHODS)
    for name, row in data["methods"].items():
        assert set(row) >= METHOD_KEYS, name
        assert row["step_time_s"] > 0 and row["peak_mem_bytes"] > 0, name
        assert len(row["step_times_s"]) == 2, name
    assert data["methods"]["graddiff"]["step_time_ratio"] == pytest.approx(1.0)
    assert data["methods"]["graddiff"]["peak_mem_ratio"] == pytest.approx(1.0)
    assert data["loop_throughput_fraction"] > 0 and data["bare_step_time_s"] > 0
    assert data["loop_overhead_s"]["gram"] > 0
    assert data["tofu_mini_eval_seconds"] is None  # --skip-eval
    assert data["large"] is None  # CUDA-only section
    for name, t in data["targets"].items():
        assert {"value", "target", "met"} <= set(t), name
        assert isinstance(t["met"], bool)
    assert "loop_throughput_fraction" in data["targets"]
    assert "blur_ga/graddiff.step_time_ratio" in data["targets"]
    # Rows come from configs/method/ (OFMU and adaptive NGDiff included) plus the reference-copy variants.
    assert {"ofmu", "ngdiff_adaptive", "npo_copy", "blur_npo_copy"} <= set(data["methods"])
    for name in ("npo", "blur_npo"):
        assert f"{name}.peak_mem_minus_graddiff_in_grad_sizes" in data["targets"]
        assert f"{name}/graddiff.step_time_ratio" in data["targets"]
    # The frozen copy costs about one set of float32 weights (= one gradient size) that the precomputed
    # reference does not (the micro model's other allocations are the same for both rows).
    extra = data["methods"]["npo_copy"]["peak_mem_bytes"] - data["methods"]["npo"]["peak_mem_bytes"]
    assert extra > 0.5 * data["model"]["grad_bytes"]


def test_outputs_are_archived_and_never_silently_overwritten(run: tuple[Path, dict]) -> None:
    out, data = run
    run_dir = Path(data["run_dir"])
    assert (run_dir / "bench.json").read_bytes() == (out / "bench.json").read_bytes()
    assert "| graddiff |" in (out / "bench.md").read_text()

    # A later run gets its own archive and refreshes the latest copy; the first run's archive is untouched.
    second = {**data, "timestamp": "2001-01-01T00:00:00"}
    second_dir = bench.write_outputs(second, out)
    assert second_dir != run_dir and (run_dir / "bench.json").is_file()
    assert json.loads((out / "bench.json").read_text())["run_dir"] == str(second_dir)

    # A latest copy that is not an archived run's copy (edited by hand) is kept aside, not overwritten.
    (out / "bench.json").write_text('{"hand": "edited"}\n')
    bench.write_outputs({**data, "timestamp": "2001-01-01T00:00:01"}, out)
    kept = list(out.glob("bench.json.kept-*"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == {"hand": "edited"}


def test_cpu_peak_memory_sees_a_known_allocation() -> None:
    mib = 1 << 20
    with bench.CpuPeakMemory() as mem:
        a = torch.empty(mib, dtype=torch.float32)  # 4 MiB
        b = torch.empty(mib // 4, dtype=torch.float32)  # 1 MiB
        del a
        c = torch.empty(mib // 2, dtype=torch.float32)  # 2 MiB: live 3 MiB, below the 5 MiB peak
        del b, c
    assert mem.peak_bytes == 5 * mib
    assert mem.net_bytes == 0


def test_large_section_runs_on_a_micro_shape() -> None:
    """The CUDA-only section cannot run here; its code path is exercised with a micro shape on CPU."""
    spec = bench.SIZES["micro"]
    res = bench.bench_large(spec, "cpu", torch.bfloat16, steps=1, warmup=0, peak_tflops=1.0, log=lambda _: None,
                            mixed_precision="bf16")  # as on CUDA: a bf16 model trained with float32 masters
    assert set(res["methods"]) == {"graddiff", "blur_npo"}
    assert res["model"]["dtype"] == "bfloat16" and res["model"]["mixed_precision"] == "bf16"
    for row in res["methods"].values():
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
