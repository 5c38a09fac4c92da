"""Hessian-vector products `H v` of an objective summed over a step's micro-batches (docs/methods.md#hvp).

Two implementations, each labelled as what it is (`method.step.hvp`):

* `exact`: double backward, `H v = grad_theta <grad_theta L, v>` with `torch.autograd.grad(create_graph=True)`,
  per micro-batch and summed (H is linear in the loss, so the sum over weighted micro-batches is the step's H v
  exactly). Exact up to rounding; needs a backend whose gradients come from plain autograd on the local model:
  one process. Attention runs on SDPA's math kernel inside it: the fused kernels (flash, memory-efficient, the
  CPU flash kernel) have no double backward. DDP's reducer, FSDP2's sharded parameters and DeepSpeed's
  gradient hooks do not take part in a second-order `autograd.grad`, so they are refused before anything is
  loaded.
* `finite_difference`: the central difference `(grad L(theta + e v) - grad L(theta - e v)) / 2e`, with
  `e = eps / ||v||` rounded to the nearest power of two, so that the perturbation has norm within a factor
  sqrt(2) of `eps` whatever v's scale, and `e * v` is exact in floating point: the perturbed parameters are
  `theta + e v` rounded once, the same numbers however `||v||` was summed (one process, or per-rank pieces).
  It uses ordinary backward passes (two gradients) and so runs on every backend: each rank perturbs its own
  pieces of the parameters (the replicated parameters under DDP and ZeRO-0, the local shards under FSDP2, the
  fp32 master partitions under ZeRO-1/2/3, from which the working copy is refreshed) by its own pieces of v
  (`StepContext.load_params`), and gets back its pieces of the gradient. Its error is O(e^2 ||v||^3 * third
  derivative) plus float rounding of order `unit roundoff * ||g|| / e`; on a quadratic it is exact up to
  rounding. The parameters are restored from a copy (not by subtracting the perturbation back), so theta is
  bit-for-bit what it was.
"""

from __future__ import annotations

import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from unlearn.objectives.base import Objective
from unlearn.train.steps.base import MicroBatches, StepContext, Vector


def exact_hvp(ctx: StepContext, objective: Objective, micro: MicroBatches, v: Vector) -> Vector:
    """Double backward, summed over micro-batches (one process)."""
    params = ctx.params
    out = [torch.zeros_like(p) for p in params]
    for batch, weight in micro:
        if weight == 0.0:  # a padding repeat (see Unlearner._micro_batches): contributes exactly nothing
            continue
        with sdpa_kernel([SDPBackend.MATH]):
            with ctx.backend.autocast():
                loss = objective(ctx.model, batch, ctx.u.reference) * weight
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = sum((g * x).sum() for g, x in zip(grads, v, strict=True) if g is not None)
            if not torch.is_tensor(dot) or not dot.requires_grad:
                continue  # the loss is linear in the parameters on this batch: H = 0
            hv = torch.autograd.grad(dot, params, allow_unused=True)
        torch._foreach_add_(out, [h if h is not None else torch.zeros_like(p) for h, p in zip(hv, params,
                                                                                          strict=True)])
    return [h.detach() for h in out]


def finite_difference_hvp(ctx: StepContext, objective: Objective, micro: MicroBatches, v: Vector,
                          eps: float) -> Vector:
    """Central difference of two gradients at theta +- e v, e = eps / ||v|| rounded to a power of two (every
    backend: v, theta and the gradients are this rank's pieces, in the same layout)."""
    (vv,) = ctx.dots([(v, v)])
    norm = math.sqrt(max(vv, 0.0))
    if norm == 0.0 or not math.isfinite(norm):
        return [torch.zeros_like(x) for x in v]
    e = fd_step(eps, norm)
    saved = ctx.save_params()
    try:
        ctx.load_params(saved, v, e)
        _, g_plus = ctx.gradient(objective, micro)
        ctx.load_params(saved, v, -e)
        _, g_minus = ctx.gradient(objective, micro)
    finally:
        ctx.load_params(saved)
    torch._foreach_sub_(g_plus, g_minus)
    torch._foreach_mul_(g_plus, 1.0 / (2.0 * e))
    return g_plus


def fd_step(eps: float, norm: float) -> float:
    """`eps / norm` rounded to the nearest power of two (in log scale): multiplying by it is exact."""
    return 2.0 ** round(math.log2(eps / norm))
