"""A pytest plugin (`-p tests.distributed.pretend_no_fp16`) that makes this machine's CPU report no fp16 support,
as a CPU without oneDNN fp16 kernels does (AVX512-FP16 / AMX-FP16 absent, e.g. most AMD EPYC parts).

Used by `tests/unit/test_capabilities.py` to prove, on a machine that has fp16, that the fp16 tests skip with the
probe's reason instead of failing. It replaces the probe at plugin load, before any test module is collected, so
the skip marks computed at collection see it.
"""

from __future__ import annotations

import unlearn.train.capabilities as capabilities

REASON = "fp16 needs oneDNN fp16 kernels on the CPU (pretend_no_fp16 plugin); this CPU has none"


def _no_fp16() -> capabilities.Capability:
    return capabilities.Capability("cpu fp16", False, REASON)


capabilities.cpu_fp16 = _no_fp16
