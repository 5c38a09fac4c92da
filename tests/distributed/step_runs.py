"""What `test_steps_backends.py` runs, in a worker of 2 processes and, for the reference, in this one.

Three kinds of run on the tiny Llama of `dist_harness` (global batch 8, SGD with momentum), each a function of the
backend only, so the 2-process run and the single-process reference differ in nothing else:

- `ofmu`: 3 OFMU steps (the shipped GA/NLL losses, finite-difference HVPs, one inner step, rho doubling every
  step, beta > 0 so all three HVPs of a step are taken: 8 gradients per step);
- `adaptive`: 3 NGDiff steps with the adaptive learning rate, refreshed every 2 steps (steps 1 and 3), on
  RMU's forget loss with NLL (see `METHODS`);
- `hvp`: one finite-difference HVP of the forget loss at the initial parameters along v = theta * theta
  (elementwise: the same numbers in every layout, so the perturbed points are the same numbers on every backend,
  see `unlearn.train.steps.hvp`), reported through global inner products, with a check that theta is restored
  bit for bit.

`resume_after` k: k steps, a checkpoint carrying the strategy's state, a fresh backend and unlearner whose
weights are scrambled, the load, the remaining steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from dist_harness import BATCH, OPTIMIZERS, batches, collate, tiny_model
from torch import Tensor

from unlearn.directions import build_direction
from unlearn.objectives import FORGET_LOSSES, RETAIN_LOSSES, build_objective
from unlearn.train.backend import Backend
from unlearn.train.loop import LoopConfig, Unlearner
from unlearn.train.steps import StepContext, build_step

# Large for a finite difference, on purpose: the comparisons' bound on the difference quotient's rounding is
# GRAD_REL * ||g|| / e (`tolerances.fd_hvp_bound`), while its truncation error is the same on every backend.
FD_EPS = 1e-1
OFMU = {"name": "ofmu", "beta": 0.1, "rho0": 0.5, "growth": 2.0, "growth_every": 1, "inner_steps": 1,
        "inner_lr": 0.05, "hvp": "finite_difference", "fd_eps": FD_EPS}
ADAPTIVE = {"name": "adaptive_lr", "every": 2, "smoothing": 0.5}
# method -> (step, rule, forget loss, retain loss). OFMU: the shipped GA/NLL. The adaptive lr: RMU's forget loss
# (MSE of layer-0 activations to a steering vector) with NLL, so that NGDiff's objective is convex along the
# first step and the fit is accepted (clamped to 2x, lr scale 1.5), then rejected at step 3 (concave);
# under GA/NLL every fit on this model is rejected and the scale would never leave 1.
# RMU's forget loss reads layer 0 only: the parameters after it get no forget gradient, which DDP refuses (its
# reducer expects every trainable parameter in every backward), so the adaptive runs train the embedding and
# layer 0 only (`model.trainable`).
RMU_FORGET = {"name": "rmu", "layer": 0, "steering_coeff": 4.0, "seed": 0}
TRAINABLE = {"adaptive": ["model.embed_tokens.weight", "model.layers.0.*"]}
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any], dict[str, Any]]] = {
    "ofmu": (OFMU, None, {"name": "ga"}, {"name": "nll"}),
    "adaptive": (ADAPTIVE, {"name": "ngdiff"}, RMU_FORGET, {"name": "nll"}),
    "hvp": (OFMU, None, {"name": "ga"}, {"name": "nll"}),
}


def step_unlearner(backend: Backend, method: str, micro: int | None) -> Unlearner:
    from unlearn.models.trainable import apply_trainable

    step, rule, forget, retain = METHODS[method]
    model = tiny_model()
    apply_trainable(model, TRAINABLE.get(method))
    return Unlearner(
        model=model,
        forget_loss=build_objective(FORGET_LOSSES, forget),
        retain_loss=build_objective(RETAIN_LOSSES, retain),
        rule=build_direction(rule) if rule else None,
        backend=backend,
        make_optimizer=OPTIMIZERS["sgd"],
        make_scheduler=None,
        collate=collate,
        cfg=LoopConfig(batch_size=BATCH, micro_batch_size=micro, epochs=1),
        step=build_step(step),
    )


def scramble(u: Unlearner) -> None:
    """+1 on this rank's pieces of every parameter, so a checkpoint load that silently did nothing cannot pass."""
    with torch.no_grad():
        for t in u.backend.param_pieces():
            t.add_(1.0)
    u.backend.params_written()


def take_steps(u: Unlearner, make: Any, run: dict[str, Any], out_dir: Path | None) -> tuple[Unlearner, list]:
    """The run's steps, with a stop and a resume after `resume_after` of them (a fresh unlearner from `make()`)."""
    steps = batches()
    k = run.get("resume_after")
    if not k:
        return u, [u.step(f, r) for f, r in steps]
    assert out_dir is not None
    rows = [u.step(f, r) for f, r in steps[:k]]
    root = out_dir / f"{run['tag']}_checkpoints"
    u.backend.save_checkpoint(root, k, {"scheduler": None, "step_state": u.step_strategy.state_dict()})
    fresh = make()
    scramble(fresh)
    state = fresh.backend.load_checkpoint(root / f"step-{k:08d}")
    assert state["step"] == k
    fresh.step_strategy.load_state_dict(state["step_state"])
    return fresh, rows + [fresh.step(f, r) for f, r in steps[k:]]


def hvp_probe(u: Unlearner) -> dict[str, Any]:
    """One FD HVP of the forget loss along v = theta * theta, as global scalars (layout-free)."""
    from unlearn.train.steps.hvp import fd_step

    forget, retain = batches()[0]
    ctx = StepContext(u, u._micro_batches(forget), u._micro_batches(retain))
    _, g = ctx.gradient(ctx.forget_loss, ctx.forget)
    before = ctx.save_params()
    v = [t * t for t in before]
    hv = ctx.hvp(ctx.forget_loss, ctx.forget, v, "finite_difference", FD_EPS)
    after = ctx.save_params()
    restored = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    hh, hvv, hg, vv, gg = ctx.dots([(hv, hv), (hv, v), (hv, g), (v, v), (g, g)])
    return {"norm_hv": hh**0.5, "hv_v": hvv, "hv_g": hg, "norm_v": vv**0.5, "norm_g": gg**0.5,
            "e": fd_step(FD_EPS, vv**0.5), "restored": restored, "local_numel": sum(t.numel() for t in hv)}


def one_run(backend_factory: Any, run: dict[str, Any], out_dir: Path | None,
            gather: Any) -> dict[str, Any]:
    """`run` on the backends `backend_factory()` builds; `gather(backend, model)` -> full parameters by name."""
    def make() -> Unlearner:
        return step_unlearner(backend_factory(), run["method"], run["micro"])

    u = make()
    if run["method"] == "hvp":
        return {"probe": hvp_probe(u)}
    u, rows = take_steps(u, make, run, out_dir)
    params: dict[str, Tensor] = gather(u.backend, u.model)
    return {"rows": rows, "params": params, "step_state": u.step_strategy.state_dict()}


def single_process(method: str) -> dict[str, Any]:
    """The ground truth: the same run in one process (one micro-batch of 8), with the initial parameters."""
    initial = {n: p.detach().clone() for n, p in tiny_model().named_parameters()}
    result = one_run(Backend, {"tag": f"single_{method}", "method": method, "micro": None}, None,
                     lambda b, m: {n: p.detach().clone() for n, p in m.named_parameters()})
    return {**result, "initial": initial}
