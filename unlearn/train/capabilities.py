"""What this machine can run, probed rather than assumed: half precision on the CPU and on CUDA, and DeepSpeed.

Why a module for it: machines of the same size differ. On a CPU without oneDNN fp16 kernels (no AVX512-FP16 or
AMX-FP16, e.g. most AMD EPYC parts) DeepSpeed's CPU accelerator refuses any engine with fp16 enabled, deep
inside `deepspeed.initialize`, after the models are loaded. A run that asks for something the machine lacks must
instead stop before anything is loaded, with one line naming the config key and saying what to use instead.
The config planner calls `check_trainer` (every backend constructor runs its precision check too), and tests use
the same probes to skip, with the probe's reason, what this machine cannot run.

The probes mirror the checks the libraries enforce (DeepSpeed 0.19.8's CPU and CUDA accelerators:
`is_fp16_supported` / `is_bf16_supported`) without importing DeepSpeed, which takes seconds;
`tests/unit/test_capabilities.py` checks that they agree with DeepSpeed's accelerator on the machine at hand.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from unlearn.errors import ConfigError

NO_PRECISION = (None, "no", "fp32", "float32")


@dataclass(frozen=True)
class Capability:
    """One feature of this machine: whether it is there, and in words why (or why not)."""

    name: str
    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def cpu_fp16() -> Capability:
    """fp16 compute on the CPU through oneDNN (what DeepSpeed's CPU accelerator requires for an fp16 engine)."""
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        ok = False
    if ok:
        return Capability("cpu fp16", True, "oneDNN reports fp16 support on this CPU")
    return Capability("cpu fp16", False,
                      "fp16 needs oneDNN fp16 kernels on the CPU (AVX512-FP16 or AMX-FP16; DeepSpeed's CPU "
                      "accelerator refuses fp16 without them); this CPU has none")


def cpu_bf16() -> Capability:
    """bf16 on the CPU: torch has generic bf16 kernels for every x86 CPU, and oneDNN's native ones where
    AVX512-BF16/AMX exist; DeepSpeed's CPU accelerator accepts bf16 unconditionally. Probed with a tiny matmul
    all the same (microseconds), so a torch build without bf16 CPU kernels would be reported, not assumed away."""
    try:
        x = torch.ones(2, 2, dtype=torch.bfloat16)
        works = bool(((x @ x) == 2).all())
    except RuntimeError as err:
        return Capability("cpu bf16", False, f"bf16 needs bf16 CPU kernels in torch; this build has none ({err})")
    if not works:
        return Capability("cpu bf16", False, "bf16 needs correct bf16 CPU kernels; a test matmul came out wrong")
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    how = "native oneDNN bf16 kernels" if native else "torch's generic bf16 kernels (no native oneDNN bf16: slower)"
    return Capability("cpu bf16", True, f"bf16 on this CPU runs with {how}")


def cuda() -> Capability:
    if torch.cuda.is_available():
        return Capability("cuda", True, f"{torch.cuda.device_count()} CUDA device(s): {torch.cuda.get_device_name(0)}")
    return Capability("cuda", False, "no CUDA device is visible to torch")


def cuda_bf16() -> Capability:
    """bf16 on the current CUDA device (torch's own check, which DeepSpeed's CUDA accelerator also uses)."""
    if not torch.cuda.is_available():
        return Capability("cuda bf16", False, "bf16 on cuda needs a CUDA device; torch sees none")
    if torch.cuda.is_bf16_supported():
        return Capability("cuda bf16", True, f"{torch.cuda.get_device_name()} supports bf16")
    return Capability("cuda bf16", False,
                      f"bf16 needs a GPU with bf16 support; this GPU ({torch.cuda.get_device_name()}) has none")


def cuda_fp16() -> Capability:
    """fp16 on the current CUDA device: DeepSpeed accepts compute capability >= 7 (6.x is deprecated there)."""
    if not torch.cuda.is_available():
        return Capability("cuda fp16", False, "fp16 on cuda needs a CUDA device; torch sees none")
    major, minor = torch.cuda.get_device_capability()
    if major >= 7:
        return Capability("cuda fp16", True, f"compute capability {major}.{minor}")
    return Capability("cuda fp16", False,
                      f"fp16 needs CUDA compute capability >= 7.0 (DeepSpeed's requirement); this GPU has "
                      f"{major}.{minor}")


def deepspeed_installed() -> Capability:
    if importlib.util.find_spec("deepspeed") is not None:
        return Capability("deepspeed", True, "deepspeed is installed")
    return Capability("deepspeed", False, "deepspeed is not installed (pip install -e '.[dist]')")


def device_type(device: str | torch.device) -> str:
    """`auto` resolves as the distributed backends resolve it: CUDA when present, else the CPU."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except RuntimeError:  # not a device torch knows: no probe applies, the backend reports it
        return str(device)


# (device type, precision) -> name of the probe in this module (by name, so a monkeypatched probe is the one used)
_PRECISION_PROBES = {("cpu", "bf16"): "cpu_bf16", ("cpu", "fp16"): "cpu_fp16",
                     ("cuda", "bf16"): "cuda_bf16", ("cuda", "fp16"): "cuda_fp16"}


def precision_capability(precision: str | None, device: str | torch.device = "cpu") -> Capability | None:
    """The capability `trainer.mixed_precision=precision` needs on `device` (None: nothing needed).

    Looked up at call time (not bound at import), so tests can replace a probe with `monkeypatch.setattr`.
    """
    if precision in NO_PRECISION:
        return None
    probe = _PRECISION_PROBES.get((device_type(device), str(precision)))
    return None if probe is None else globals()[probe]()


def _alternative(precision: str, device: str | torch.device, supported: tuple[str, ...]) -> str:
    """What to suggest instead of an unavailable precision: another one the backend honours and the machine runs,
    else plain float32."""
    for other in supported:
        if other != precision:
            cap = precision_capability(other, device)
            if cap is None or cap.available:
                return f"use {other}"
    return "use null (float32)"


def check_precision(precision: str | None, device: str | torch.device = "cpu",
                    supported: tuple[str, ...] = ("bf16", "fp16")) -> None:
    """Raise ConfigError naming `trainer.mixed_precision` when this machine cannot run `precision` on `device`.

    Precisions the backend does not offer at all are left to the backend's own error (which lists what it does
    offer); this check is about the machine.
    """
    if precision not in supported:
        return
    cap = precision_capability(precision, device)
    if cap is not None and not cap.available:
        raise ConfigError(f"trainer.mixed_precision: {cap.reason}, {_alternative(str(precision), device, supported)}")


def check_trainer(backend_name: str, trainer: Mapping[str, Any]) -> None:
    """Everything the trainer config asks of the machine, checked before any model is loaded.

    `backend_name` is `trainer.backend`; `trainer` the rest of the trainer section (only `mixed_precision` and
    `device` are read). Raises ConfigError naming the key.
    """
    from unlearn.train.backend import BACKENDS

    if backend_name == "deepspeed":
        ds = deepspeed_installed()
        if not ds.available:
            raise ConfigError(f"trainer.backend: deepspeed needs the deepspeed package; {ds.reason}")
    backend = BACKENDS.get(backend_name)
    supported = tuple(getattr(backend, "supported_precisions", ()))
    default_device = "cpu" if backend_name == "single" else "auto"
    check_precision(trainer.get("mixed_precision"), trainer.get("device", default_device), supported)
