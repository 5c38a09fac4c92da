"""Capabilities, not assumptions: what the machine lacks is refused before training, with the key, and the tests
that need it skip with the reason.

The fp16 probe is replaced (monkeypatch, or a pytest plugin for a subprocess) so that these checks run the same
on a CPU with oneDNN fp16 and on one without: on either, a run asking for what the probe denies must stop in the
planner with one line, and the fp16 tests must skip rather than fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import micro_cfg
from unlearn.errors import ConfigError
from unlearn.pipeline import plan
from unlearn.train import capabilities
from unlearn.train.backend import BACKENDS
from unlearn.train.capabilities import Capability, check_precision, check_trainer

ROOT = Path(__file__).resolve().parents[2]
NO_FP16 = Capability("cpu fp16", False, "fp16 needs oneDNN fp16 kernels on the CPU (test); this CPU has none")
HAS_FP16 = Capability("cpu fp16", True, "oneDNN reports fp16 support (test)")


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("probe", ["cpu_fp16", "cpu_bf16", "cuda", "cuda_bf16", "cuda_fp16", "deepspeed_installed"])
def test_every_probe_says_why(probe: str) -> None:
    cap = getattr(capabilities, probe)()
    assert isinstance(cap.available, bool) and cap.reason and "\n" not in cap.reason
    if not cap.available and probe != "cuda":
        assert " needs " in cap.reason or "not installed" in cap.reason, cap.reason  # says what is missing


def test_bf16_runs_on_every_cpu() -> None:
    """torch has bf16 kernels for every x86 CPU (oneDNN's native ones only where AVX512-BF16/AMX exist), and
    DeepSpeed's CPU accelerator accepts bf16 unconditionally: never refused on a CPU."""
    assert capabilities.cpu_bf16().available
    check_precision("bf16", "cpu")


def test_cpu_probes_agree_with_deepspeeds_accelerator() -> None:
    """The probes mirror what DeepSpeed enforces in `deepspeed.initialize`; on this machine they must agree."""
    if not capabilities.deepspeed_installed():
        pytest.skip(capabilities.deepspeed_installed().reason)
    if capabilities.cuda():
        pytest.skip("a CUDA device is visible: DeepSpeed would pick its CUDA accelerator, not the CPU one")
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    assert accelerator.device_name() == "cpu"
    assert bool(accelerator.is_fp16_supported()) == capabilities.cpu_fp16().available
    assert bool(accelerator.is_bf16_supported()) == capabilities.cpu_bf16().available


def test_fp16_refused_in_the_planner_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(capabilities, "cpu_fp16", lambda: NO_FP16)
    cfg = micro_cfg(tmp_path, "trainer=zero2", "trainer.mixed_precision=fp16")
    with pytest.raises(ConfigError) as err:
        plan(cfg)
    message = str(err.value)
    assert message == f"trainer.mixed_precision: {NO_FP16.reason}, use bf16", message
    assert "\n" not in message
    assert not (tmp_path / "models").exists() and not (tmp_path / "worlds").exists()  # nothing was built


def test_fp16_accepted_in_the_planner_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(capabilities, "cpu_fp16", lambda: HAS_FP16)
    plan(micro_cfg(tmp_path, "trainer=zero2", "trainer.mixed_precision=fp16"))
    check_precision("fp16", "cpu")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_backend_refuses_fp16_before_joining_a_group(stage: int, monkeypatch: pytest.MonkeyPatch,
                                                     no_launcher: None) -> None:
    """Without a launcher the backend would say how to start one; the machine check comes first, so a script
    that builds the backend directly gets the same line as the planner's, before any process group or engine."""
    monkeypatch.setattr(capabilities, "cpu_fp16", lambda: NO_FP16)
    with pytest.raises(ConfigError, match=r"^trainer\.mixed_precision: fp16 needs .*; this CPU has none, use bf16$"):
        BACKENDS.build("deepspeed", zero_stage=stage, mixed_precision="fp16", device="cpu")


def test_the_suggested_alternative_is_one_the_machine_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "cpu_fp16", lambda: NO_FP16)
    monkeypatch.setattr(capabilities, "cpu_bf16", lambda: Capability("cpu bf16", False, "bf16 needs (test)"))
    with pytest.raises(ConfigError, match=r"use null \(float32\)$"):
        check_precision("fp16", "cpu")


def test_cuda_precision_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "cuda_bf16",
                        lambda: Capability("cuda bf16", False, "bf16 on cuda needs a CUDA device; torch sees none"))
    with pytest.raises(ConfigError, match=r"trainer\.mixed_precision: bf16 on cuda needs a CUDA device"):
        check_trainer("single", {"device": "cuda", "mixed_precision": "bf16"})


def test_precisions_a_backend_does_not_offer_are_left_to_its_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 on the single-process backend is refused by the backend (which lists what it offers), whatever the
    machine: the machine check must not replace that message."""
    monkeypatch.setattr(capabilities, "cpu_fp16", lambda: NO_FP16)
    check_trainer("single", {"device": "cpu", "mixed_precision": "fp16"})  # not the machine's business
    with pytest.raises(ConfigError, match="not supported by this backend"):
        BACKENDS.build("single", mixed_precision="fp16")


def test_missing_deepspeed_is_refused_in_the_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "deepspeed_installed",
                        lambda: Capability("deepspeed", False, "deepspeed is not installed (test)"))
    with pytest.raises(ConfigError, match=r"^trainer\.backend: deepspeed needs the deepspeed package"):
        check_trainer("deepspeed", {"mixed_precision": None})


def test_fp16_tests_skip_with_the_reason_where_the_cpu_lacks_fp16(tmp_path: Path) -> None:
    """On any machine, including one with fp16: with the probe denying fp16 (the pretend_no_fp16 plugin), every
    fp16 test of the distributed suite skips, printing the probe's reason, and none fails or launches workers."""
    from tests.distributed.pretend_no_fp16 import REASON

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.distributed.pretend_no_fp16", "-p", "no:cacheprovider",
         "-q", "-rs", "-k", "fp16", "--basetemp", str(tmp_path / "pytest"),
         "tests/distributed/test_backends.py", "tests/distributed/test_zero_resume.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    # ZeRO-1 and ZeRO-3 against fp32, and ZeRO-1/2/3 resume: 5 fp16 tests, all skipped, none run.
    assert re.search(r"^5 skipped, \d+ deselected", text, re.MULTILINE), text[-3000:]
    assert text.count(REASON) >= 2, text[-3000:]  # -rs prints the reason (grouped per location)
    assert not list((tmp_path / "pytest").rglob("*.pt")), "workers were launched for skipped tests"
