"""`model.trainable` under every backend (2 gloo processes): RMU losses with BLUR, one selected matrix trained.

One launch runs the same 3 steps under ddp, fsdp2 and ZeRO 0-3 (RMU steering layer 0 of the tiny 2-layer Llama, so
the truncated forward skips layer 1; only `model.layers.0.mlp.down_proj.weight` trains, selected before the backend
wraps the model, as the pipeline does). Each must match the single-process run within the float32 bounds of
`tolerances.py`, leave every frozen parameter bit-identical, and hand the Gram at most the selected entries.
At step 1 the retain gradient is exactly zero (the model equals its frozen copy), so cos(g_f, g_r) and A_r are NaN
there on every backend: that step is compared on the forget-side diagnostics only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_harness import BATCH, DIAGNOSTICS, GAMMA, STEPS, launch, load_run, single_process_reference
from test_backends import BACKENDS, TIMEOUT_S, WORKER, WORLD, skip_reason
from tolerances import GRAD_REL, assert_diagnostics_close, assert_weights_close

pytestmark = pytest.mark.distributed

TRAINABLE = ["model.layers.0.mlp.down_proj.weight"]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return single_process_reference(BATCH, trainable=TRAINABLE, losses="rmu")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trainable")
    runs = [{"tag": f"{b}_trainable", "backend": name, "micro": 2, "batch": BATCH, "kwargs": kwargs,
             "trainable": TRAINABLE, "losses": "rmu"}
            for b, (name, kwargs, _) in BACKENDS.items() if skip_reason(b) is None]
    launch(WORKER, "trainable", runs, out, WORLD, TIMEOUT_S)
    return out


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_trainable_selection_under_every_backend(backend: str, results: Path, reference: dict[str, Any]) -> None:
    if (reason := skip_reason(backend)) is not None:
        pytest.skip(reason)
    ranks = load_run(results, f"{backend}_trainable", WORLD)
    what = f"{backend}/trainable"
    for step in range(STEPS):
        for key in DIAGNOSTICS:
            values = [rk["rows"][step][key] for rk in ranks]
            assert all(_same(v, values[0]) for v in values), f"{what} step {step}: {key} differs by rank: {values}"
    assert math.isnan(reference["rows"][0]["cos_fr"])  # g_r = 0 at the first step, as explained above
    got, want = ranks[0]["rows"][0], reference["rows"][0]
    for key in ("loss_f", "norm_f"):  # tolerances.diagnostic_bounds divides by ||g_r||: its eps bound, directly
        assert abs(got[key] - want[key]) <= GRAD_REL * abs(want[key]), f"{what} step 0 {key}: {got[key]} vs {want[key]}"
    assert got["A_f"] == pytest.approx(GAMMA, rel=1e-12, abs=0)
    assert_diagnostics_close(ranks[0]["rows"][1:], reference["rows"][1:], DIAGNOSTICS, what, GAMMA)
    selected = reference["params"][TRAINABLE[0]].numel()
    for r, rk in enumerate(ranks):
        assert_weights_close(rk["params"], reference["params"], reference["initial"], STEPS, f"{what} rank {r}")
        for name, p in rk["params"].items():
            if name not in TRAINABLE:
                assert torch.equal(p, reference["initial"][name]), f"{what} rank {r}: frozen {name} changed"
        assert not torch.equal(rk["params"][TRAINABLE[0]], reference["initial"][TRAINABLE[0]])
        assert len(rk["gram_numel"]) == STEPS and max(rk["gram_numel"]) <= selected, \
            f"{what} rank {r}: the Gram saw {rk['gram_numel']} entries, more than the {selected} selected"
