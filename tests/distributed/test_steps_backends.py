"""Two processes (gloo, CPU) against one: OFMU (finite-difference HVPs), NGDiff's adaptive lr and the
finite-difference HVP itself on every backend (DDP, FSDP2, DeepSpeed ZeRO-0/1/2/3, float32).

Two launches of 2 workers (`steps_worker.py`; `step_runs.py` says what each run does) run, per backend:
- `hvp`: one finite-difference HVP at the initial parameters, along v = theta * theta, reported as global scalars
  (||Hv||, <Hv, v>, <Hv, g>): it must equal the single-process one within `tolerances.fd_hvp_bound`, leave the
  parameters bit for bit as they were, and on sharded backends be computed from this rank's part only;
- `ofmu` / `adaptive`: 3 steps, whose diagnostics and final parameters must equal the single-process run's within
  bounds propagated from float32 rounding (`tolerances.ofmu_step_bounds`, `adaptive_fit_bounds`);
- `ofmu_resume` / `adaptive_resume`: the same with a stop after 2 steps and a fresh backend that loads the
  checkpoint (weights scrambled first): bit for bit the run without a stop (same backend, same reduction order).

A run that fails in the workers fails only its own tests (`dist_harness.launch`); without DeepSpeed its tests skip.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_harness import STEPS, batches, launch, load_run, tiny_model
from step_runs import ADAPTIVE, FD_EPS, OFMU, single_process, step_unlearner
from test_backends import BACKENDS, skip_reason
from tolerances import (
    GRAD_REL,
    U32,
    adaptive_fit_bounds,
    assert_weights_close,
    diagnostic_bounds,
    fd_hvp_bound,
    ofmu_step_bounds,
    sgd_travel_bound,
    travel_bound,
)

from unlearn.train.backend import Backend
from unlearn.train.steps import StepContext

pytestmark = pytest.mark.distributed

WORLD = 2
WORKER = Path(__file__).with_name("steps_worker.py")
TIMEOUT_S = 600
MICRO = 2  # 2 micro-batches of 2 per rank: accumulation inside every gradient the steps take
GROUPS = {"torch": ("ddp", "fsdp2"), "deepspeed": ("zero0", "zero1", "zero2", "zero3")}
METHODS = ("hvp", "ofmu", "adaptive")
RESUMED = ("ofmu", "adaptive")
# Resume runs on the replicated, the FSDP2-sharded and the ZeRO-3-partitioned layouts (ZeRO-1/2 checkpoints are
# test_zero_resume.py's; the strategy state travels in trainer_state.json the same way on every backend).
RESUMABLE = ("ddp", "fsdp2", "zero3")
SHARDED = {"fsdp2", "zero1", "zero2", "zero3"}
MOMENTUM = 0.9  # dist_harness.OPTIMIZERS["sgd"]
LOSS_KEYS = ("loss_f", "loss_r", "norm_f", "norm_r", "cos_fr")


def runs(backend: str) -> list[dict[str, Any]]:
    name, kwargs, _ = BACKENDS[backend]
    out = [{"tag": f"{backend}_{m}", "backend": name, "kwargs": kwargs, "method": m, "micro": MICRO}
           for m in METHODS]
    out += [{"tag": f"{backend}_{m}_resume", "backend": name, "kwargs": kwargs, "method": m, "micro": MICRO,
             "resume_after": 2} for m in RESUMED if backend in RESUMABLE]
    return out


@pytest.fixture(scope="module")
def references() -> dict[str, Any]:
    """Single-process ground truth per method, and the Hessians' operator norm at the initial parameters."""
    return {**{m: single_process(m) for m in METHODS}, "h_norm": hessian_norm()}


def hessian_norm(iterations: int = 30) -> float:
    """max(||H_f||, ||H_r||) at the initial parameters on step 1's batches: power iteration with exact HVPs (one
    process). It converges from below; the bounds use twice it, also to cover the two later steps' points."""
    u = step_unlearner(Backend(), "hvp", None)
    forget, retain = batches()[0]
    ctx = StepContext(u, u._micro_batches(forget), u._micro_batches(retain))
    g = torch.Generator().manual_seed(0)
    top = 0.0
    for objective, micro in ((ctx.forget_loss, ctx.forget), (ctx.retain_loss, ctx.retain)):
        v = [torch.randn(p.shape, generator=g) for p in ctx.params]
        lam = 0.0
        for _ in range(iterations):
            norm = math.sqrt(sum(float((x * x).sum()) for x in v))
            v = [x / norm for x in v]
            hv = ctx.hvp(objective, micro, v, "exact")
            lam = math.sqrt(sum(float((x * x).sum()) for x in hv))
            v = hv
        top = max(top, lam)
    return top


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], list[dict[str, Any]]]:
    launched: dict[str, Path] = {}

    def get(backend: str, tag: str) -> list[dict[str, Any]]:
        group = next(g for g, members in GROUPS.items() if backend in members)
        if (reason := skip_reason(backend)) is not None:
            pytest.skip(reason)
        if group not in launched:
            out = tmp_path_factory.mktemp(f"steps_{group}")
            launch(WORKER, group, [run for member in GROUPS[group] for run in runs(member)], out, WORLD, TIMEOUT_S)
            launched[group] = out
        return load_run(launched[group], f"{backend}_{tag}", WORLD)

    return get


def same_rows(a: list[dict[str, float]], b: list[dict[str, float]]) -> bool:
    """Equal rows, NaN equal to NaN (rejected fits, OFMU's absent coefficients)."""
    def same(x: float, y: float) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(r.keys() == s.keys() and all(same(r[k], s[k]) for k in r)
                                    for r, s in zip(a, b, strict=True))


def close(got: float, want: float, bound: float, what: str) -> None:
    err = abs(got - want)
    assert err <= bound, f"{what}: {got!r} vs {want!r}, off by {err:.3e} > bound {bound:.3e} ({err / bound:.1f}x)"


ALL = list(BACKENDS)


@pytest.mark.parametrize("backend", ALL)
def test_finite_difference_hvp_matches_one_process(backend: str, results, references) -> None:
    ranks = [rk["probe"] for rk in results(backend, "hvp")]
    want = references["hvp"]["probe"]
    full = sum(p.numel() for p in tiny_model().parameters())
    for r, got in enumerate(ranks):
        what = f"{backend} rank {r}"
        assert got["restored"], f"{what}: theta not restored bit for bit"
        assert {k: v for k, v in got.items() if k != "local_numel"} == \
            {k: v for k, v in ranks[0].items() if k != "local_numel"}, f"{what}: ranks disagree"
        if backend in SHARDED:  # this rank's part only (padding aside), never the full vector
            assert 0 < got["local_numel"] <= 0.6 * full, f"{what}: {got['local_numel']} of {full} entries"
        else:
            assert got["local_numel"] == full, what
        assert got["e"] == want["e"], f"{what}: step {got['e']} vs {want['e']}"  # same perturbed points
        # v = theta*theta is the same numbers everywhere: only its dot product's rounding differs.
        close(got["norm_v"], want["norm_v"], GRAD_REL * want["norm_v"], f"{what} ||v||")
        close(got["norm_g"], want["norm_g"], 2 * GRAD_REL * want["norm_g"], f"{what} ||g||")
        B = fd_hvp_bound(want["norm_g"], want["norm_hv"], want["e"])
        nv, ng, nh = want["norm_v"], want["norm_g"], want["norm_hv"]
        close(got["norm_hv"], nh, B + GRAD_REL * nh, f"{what} ||Hv||")
        close(got["hv_v"], want["hv_v"], B * nv + GRAD_REL * nh * nv, f"{what} <Hv, v>")
        close(got["hv_g"], want["hv_g"], B * ng + 2 * GRAD_REL * nh * ng, f"{what} <Hv, g>")


def weight_norm(params: dict[str, torch.Tensor]) -> float:
    return float(torch.cat([t.double().reshape(-1) for t in params.values()]).norm())


@pytest.mark.parametrize("backend", ALL)
def test_ofmu_steps_match_one_process(backend: str, results, references) -> None:
    ref = references["ofmu"]
    h_norm, theta = 2 * references["h_norm"], weight_norm(ref["initial"])
    bounds = [ofmu_step_bounds(row, OFMU["beta"], FD_EPS, h_norm, theta) for row in ref["rows"]]
    # The relative error every later step inherits (dist_harness: under SGD a step's error is lr times its
    # direction's): the worst of w's and u's over the steps, and never below one gradient's.
    eps = max([GRAD_REL] + [b["u"] / row["norm_u"] for b, row in zip(bounds, ref["rows"], strict=True)]
              + [b["w"] / math.sqrt(row["penalty"]) for b, row in zip(bounds, ref["rows"], strict=True)])
    ranks = results(backend, "ofmu")
    for r, rk in enumerate(ranks):
        what = f"{backend} rank {r}"
        assert same_rows(rk["rows"], ranks[0]["rows"]), f"{what}: ranks disagree"
        for k, (got, want, b) in enumerate(zip(rk["rows"], ref["rows"], bounds, strict=True)):
            assert got["rho"] == want["rho"], f"{what} step {k}: rho"
            diag = diagnostic_bounds(want, eps=GRAD_REL if k == 0 else eps)  # step 1 starts at the same theta
            for key in LOSS_KEYS:
                close(got[key], want[key], diag[key], f"{what} step {k} {key}")
            close(got["norm_u"], want["norm_u"], b["u"] + eps * want["norm_u"] * (k > 0), f"{what} step {k} ||u||")
            close(got["penalty"], want["penalty"], b["penalty"] + 2 * eps * want["penalty"] * (k > 0),
                  f"{what} step {k} ||grad Psi||^2")
        # Travel: the optimizer's steps (momentum) plus the inner steps, each of which rounds the weights once.
        travel = sgd_travel_bound(ref["rows"], MOMENTUM) + sum(
            OFMU["inner_steps"] * OFMU["inner_lr"] * math.sqrt(row["penalty"]) for row in ref["rows"])
        bound = travel_bound(travel, weight_norm(ref["params"]), STEPS * (1 + OFMU["inner_steps"]), eps)
        names = sorted(ref["params"])
        got_w, want_w = (torch.cat([d[n].double().reshape(-1) for n in names]) for d in (rk["params"], ref["params"]))
        close(float((got_w - want_w).norm()), 0.0, bound, f"{what} weights (whole model)")


@pytest.mark.parametrize("backend", ALL)
def test_adaptive_lr_steps_match_one_process(backend: str, results, references) -> None:
    ref = references["adaptive"]
    # NGDiff's u = g_f/||g_f|| + g_r/||g_r||: each unit vector off by 2 eps (the gradient and its norm).
    eps = GRAD_REL * (1 + 4 / min(row["norm_u"] for row in ref["rows"]))
    ranks = results(backend, "adaptive")
    for r, rk in enumerate(ranks):
        what = f"{backend} rank {r}"
        assert same_rows(rk["rows"], ranks[0]["rows"]), f"{what}: ranks disagree"
        for k, (got, want) in enumerate(zip(rk["rows"], ref["rows"], strict=True)):
            e_k = GRAD_REL if k == 0 else eps
            diag = diagnostic_bounds(want, eps=e_k)
            for key in LOSS_KEYS:
                close(got[key], want[key], diag[key], f"{what} step {k} {key}")
            close(got["norm_u"], want["norm_u"], 4 * GRAD_REL + e_k * want["norm_u"], f"{what} step {k} ||u||")
            assert got["lr"] == want["lr"], f"{what} step {k}: lr"
            if "fit_a" in want:
                fb = adaptive_fit_bounds(want, eps)
                close(got["fit_a"], want["fit_a"], fb["a"], f"{what} step {k} fit a")
                close(got["fit_b"], want["fit_b"], fb["b"], f"{what} step {k} fit b")
                # Decided with a margin (accepted and clamped to 2x, or rejected): the scale is the same number.
                a, b, x = want["fit_a"], want["fit_b"], want["fit_x"]
                rejected = a + fb["a"] < 0 or b - fb["b"] > 0
                clamped = a - fb["a"] > 0 and b + fb["b"] < 0 and -(b + fb["b"]) / (2 * (a + fb["a"])) > 2
                assert rejected or clamped, f"{what} step {k}: the reference fit (a={a}, b={b}, x={x}) is not " \
                    "decided beyond its bounds; the test needs a propagated bound on the scale"
            assert got["lr_scale"] == want["lr_scale"], f"{what} step {k}: lr scale"
        assert_weights_close(rk["params"], ref["params"], ref["initial"], STEPS, what, eps=eps)
    assert [row["lr_scale"] for row in ref["rows"]] == [1.5, 1.5, 1.5]  # the fit really moved the lr (once)
    assert math.isnan(ref["rows"][2]["fit_x"]) and ADAPTIVE["every"] == 2


@pytest.mark.parametrize("method", RESUMED)
@pytest.mark.parametrize("backend", RESUMABLE)
def test_resume_equals_no_stop(backend: str, method: str, results) -> None:
    """Stop after 2 steps, a fresh backend (weights scrambled) loads the checkpoint and the strategy's state
    (OFMU's step count, hence rho; the lr scale): step 3 is bit for bit the uninterrupted run's."""
    straight, resumed = results(backend, method), results(backend, f"{method}_resume")
    for r, (s, rk) in enumerate(zip(straight, resumed, strict=True)):
        what = f"{backend}/{method} rank {r}"
        assert rk["step_state"] == s["step_state"], what
        assert same_rows(rk["rows"], s["rows"]), f"{what}: diagnostics differ from the run without a stop"
        for n, want in s["params"].items():
            torch.testing.assert_close(rk["params"][n], want, rtol=0, atol=0, msg=f"{what}: {n}")


def test_bounds_are_not_vacuous(references) -> None:
    """The propagated bounds stay far below the quantities they bound, so a layout error (a shard perturbed by
    another rank's entries, a partition missed) cannot hide in them."""
    probe = references["hvp"]["probe"]
    assert fd_hvp_bound(probe["norm_g"], probe["norm_hv"], probe["e"]) < 1e-2 * probe["norm_hv"]
    theta = weight_norm(references["ofmu"]["initial"])
    for row in references["ofmu"]["rows"]:
        b = ofmu_step_bounds(row, OFMU["beta"], FD_EPS, 2 * references["h_norm"], theta)
        assert b["u"] < 1e-2 * row["norm_u"], (b, row)
    assert U32 < GRAD_REL
