"""How far two correct runs of the same BLUR steps may differ, derived from float32 arithmetic.

The runs compared (one process vs several ranks, one launcher vs another) compute the same sums in a different
association: micro-batches are split differently, partial gradients are summed on different ranks and then
all-reduced, kernels block their reductions by shape. A sum of n float32 terms computed in two orders differs by
at most (n-1)*u*sum|terms| (u = 2^-24, the float32 unit roundoff); the gradient entries here are sums over the
step's tokens (a global batch of 8 sequences of 8 positions: n = 64) of per-token products, so

    GRAD_REL = 64 * u = 2^-18 (about 3.8e-6)

bounds the relative error of a gradient set, norm-wise, between two correct runs (for entries whose terms do not
cancel heavily; the typical error of a sum grows like sqrt(n)*u, which leaves a factor of 8 for cancellation).
Later steps start from weights that differ by this rounding passed through the optimizer; with SGD (linear in
the direction) that is lr times a GRAD_REL-sized direction error, of the same order, so the same bound is used
at every step. Under AdamW it is not (see `dist_harness`'s docstring): those runs are compared exactly.

Everything the diagnostics contain follows from the Gram entries ff = ||g_f||^2, rr = ||g_r||^2, fr = <g_f, g_r>,
so their bounds below propagate GRAD_REL through the formulas (first order), evaluated at the reference row's
own values: the bound accounts for each quantity's conditioning. Measured on 2-core x86 CPUs: at most about 1e-6
relative on any of them; a real divergence (a 1e-3 change of the learning rate, one token changed per example on
one rank) exceeds its bound many times over (`test_backends.py::test_a_real_divergence_fails_the_comparison`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff: the Gram's cross-block sums and the coefficient algebra
GRAD_REL = 64 * U32
# Mixed precision against float32: bf16 autocast rounds the operands of every matmul to 8 significant bits
# (unit roundoff U_BF16 = 2^-8; accumulation stays float32). A gradient entry of the 2-layer test model passes
# about 16 such roundings (attention and MLP products, forward and backward), each a relative perturbation
# <= U_BF16; independent first-order errors add in quadrature: sqrt(16) * U_BF16 = 4 * U_BF16 (about 1.6e-2) per
# gradient set. fp16 has 3 more significant bits (and loss scaling keeps its gradients in range), so the bf16
# bound covers it. Measured on bf16: at most 1.7 * U_BF16 direction-wise (the weights), 0.3 * U_BF16 on cos.
U_BF16 = 2.0**-8
HALF_REL = 4 * U_BF16


def diagnostic_bounds(row: Mapping[str, float], gamma: float = 1.0, eps: float = GRAD_REL) -> dict[str, float]:
    """Absolute tolerance of each per-step diagnostic of one BLUR step, at the reference row's values.

    With nf = ||g_f||, nr = ||g_r||, c = cos(g_f, g_r) and each gradient set off by at most eps relative:
    - norms: |d nf| <= eps*nf, |d nr| <= eps*nr;
    - |d fr| <= |<dg_f, g_r>| + |<g_f, dg_r>| <= 2*eps*nf*nr (Cauchy-Schwarz);
    - c = <g_f, g_r>/(nf nr) has gradient (r^ - c f^)/nf in g_f (and symmetrically in g_r), of norm
      sqrt(1 - c^2)/nf, so |d c| <= 2*eps*sqrt(1 - c^2);
    - BLUR's coefficient a = gamma - fr/ff: |d a| <= 2*eps*(nr/nf)*(1 + |c|), and
      A_r = <g_r, u>/rr = a*fr/rr + 1 (b = 1), with |d(fr/rr)| <= 2*eps*(nf/nr)*(1 + |c|), so
      |d A_r| <= 2*eps*(1 + |c|)*(|c| + |a|*nf/nr). This is where the conditioning shows: when nf >> nr
      (A_r about -21.5 with nf/nr about 70 on the micro world) the bound is about 8*eps relative, not eps;
    - ||u||^2 = gamma^2*ff + rr*(1 - c^2) (u = gamma*g_f + the part of g_r orthogonal to g_f), so
      |d ||u||| <= eps*||u|| + 2*eps*rr*|c|*(1 + |c|)/||u||;
    - A_f = a + fr/ff = gamma by algebra; only float64 rounding of the coefficient arithmetic remains:
      16*U64*(|a| + |fr|/ff);
    - the losses are means of per-token float32 terms (NPO's a smooth function of such means, with slope <= 2
      in the log-ratio): eps relative.
    """
    nf, nr, c = row["norm_f"], row["norm_r"], row["cos_fr"]
    ratio = c * nr / nf  # fr / ff
    a = gamma - ratio
    norm_u = row["norm_u"]
    rr = nr * nr
    return {
        "loss_f": eps * abs(row["loss_f"]),
        "loss_r": eps * abs(row["loss_r"]),
        "norm_f": eps * nf,
        "norm_r": eps * nr,
        "cos_fr": 2 * eps * math.sqrt(max(0.0, 1 - c * c)),
        "A_f": 16 * U64 * (abs(a) + abs(ratio)),
        "A_r": 2 * eps * (1 + abs(c)) * (abs(c) + abs(a) * nf / nr),
        "norm_u": eps * norm_u + 2 * eps * rr * abs(c) * (1 + abs(c)) / norm_u,
    }


def diagnostic_violations(got: Sequence[Mapping[str, float]], want: Sequence[Mapping[str, float]],
                          keys: Sequence[str], gamma: float = 1.0, eps: float = GRAD_REL) -> list[str]:
    """Every (step, key) where `got` is farther from `want` than its bound, described; empty when all agree."""
    out = []
    assert len(got) == len(want), f"{len(got)} steps vs {len(want)}"
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        bounds = diagnostic_bounds(w, gamma, eps)
        for key in keys:
            err = abs(float(g[key]) - float(w[key]))
            if not err <= bounds[key]:  # also catches NaN
                out.append(f"step {step} {key}: {g[key]!r} vs {w[key]!r}, off by {err:.3e} > bound "
                           f"{bounds[key]:.3e} ({err / bounds[key]:.1f}x)")
    return out


def assert_diagnostics_close(got: Sequence[Mapping[str, float]], want: Sequence[Mapping[str, float]],
                             keys: Sequence[str], what: str, gamma: float = 1.0, eps: float = GRAD_REL) -> None:
    bad = diagnostic_violations(got, want, keys, gamma, eps)
    assert not bad, f"{what}:\n" + "\n".join(bad)


def weight_bound(want: torch.Tensor, initial: torch.Tensor, steps: int, eps: float = GRAD_REL,
                 stored_unit: float = 0.0) -> float:
    """How far (2-norm) a correct run's weights may be from `want` after `steps` SGD steps from `initial`
    (`travel_bound` with the distance travelled measured)."""
    want, initial = want.double(), initial.double()
    return travel_bound(float((want - initial).norm()), float(want.norm()), steps, eps, stored_unit)


def travel_bound(travel: float, weight_norm: float, steps: int, eps: float = GRAD_REL,
                 stored_unit: float = 0.0) -> float:
    """How far (2-norm) a correct run's weights may be from the reference's, whose weights have norm
    `weight_norm` after travelling (at most) `travel` in `steps` SGD steps.

    The update w - w0 = -lr * (sum of momentum-combined directions) is linear in the directions, which are
    off by at most eps relative: eps*travel. Each step also rounds the stored float32 weights, by at most U32*|w|
    per entry in each of the two runs: 2*steps*U32*||w||. Weights read back in a coarser format (DeepSpeed's bf16
    working copy of float32 masters) add one rounding of unit `stored_unit`: stored_unit*||w||.
    """
    return eps * travel + (2 * steps * U32 + stored_unit) * weight_norm


def sgd_travel_bound(rows: Sequence[Mapping[str, float]], momentum: float) -> float:
    """An upper bound on ||w_final - w_0|| for SGD with `momentum` from per-step diagnostics (`lr`, `norm_u`):
    the step is lr_k * v_k with v_k = momentum*v_(k-1) + u_k, so ||v_k|| <= momentum*||v_(k-1)|| + ||u_k||."""
    total, v = 0.0, 0.0
    for row in rows:
        v = momentum * v + float(row["norm_u"])
        total += float(row["lr"]) * v
    return total


def weight_violations(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor],
                      initial: Mapping[str, torch.Tensor], steps: int, eps: float = GRAD_REL,
                      stored_unit: float = 0.0, per_parameter: bool = True) -> list[str]:
    """Each parameter (unless `per_parameter` is False), and the whole model, against `weight_bound`; empty when
    all agree."""
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    out = []
    names = sorted(want)
    flat = {k: torch.cat([d[n].double().reshape(-1) for n in names]) for k, d in
            (("got", got), ("want", want), ("initial", initial))}
    items = [(n, got[n], want[n], initial[n]) for n in names] if per_parameter else []
    items.append(("whole model", flat["got"], flat["want"], flat["initial"]))
    for name, g, w, w0 in items:
        err = float((g.double() - w.double()).norm())
        bound = weight_bound(w, w0, steps, eps, stored_unit)
        if not err <= bound or not math.isfinite(err):
            out.append(f"{name}: off by {err:.3e} > bound {bound:.3e} ({err / bound:.1f}x)")
    return out


def assert_weights_close(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor],
                         initial: Mapping[str, torch.Tensor], steps: int, what: str, eps: float = GRAD_REL,
                         stored_unit: float = 0.0, per_parameter: bool = True) -> None:
    bad = weight_violations(got, want, initial, steps, eps, stored_unit, per_parameter)
    assert not bad, f"{what}:\n" + "\n".join(bad)


# -- step strategies: finite-difference HVPs, OFMU, NGDiff's adaptive lr (tests/distributed/test_steps_backends.py) --
#
# The same float32 premise (each gradient set off by at most GRAD_REL relative between two correct runs), pushed
# through what these steps compute. One more ingredient: a finite-difference HVP divides the difference of two
# gradients by 2e, so their rounding reaches H v amplified by 1/e. `fd_hvp_bound` is that term; a vector v that
# itself differs between the runs moves H v by at most ||H|| ||dv|| and the perturbed points by e ||dv|| plus one
# float32 rounding of each entry (<= U32 ||theta||), which needs an upper bound on the Hessian's operator norm
# (`h_norm`, measured by power iteration with exact HVPs in one process; the tests double it).


def fd_hvp_bound(norm_g: float, norm_hv: float, e: float, eps: float = GRAD_REL) -> float:
    """||d(H v)|| between two correct finite-difference HVPs along the same v at the same theta.

    The perturbed points theta +- e v are the same numbers in both runs (e is a power of two, so e v is exact, and
    v is the same numbers), so only the two gradients differ: each by eps * ||g(theta +- e v)||, which is at most
    eps * (||g|| + e ||H v||) to first order. Their difference quotient: eps * (||g|| / e + ||H v||)."""
    return eps * (norm_g / e + norm_hv)


def fd_hvp_moved_bound(norm_g: float, norm_a: float, da: float, fd_eps: float, h_norm: float, theta_norm: float,
                       eps: float = GRAD_REL) -> float:
    """||d(H a)|| when a itself is off by `da` (norm) between the runs: `fd_hvp_bound` with 1/e <= sqrt(2)
    ||a|| / fd_eps (e is fd_eps / ||a|| rounded to a power of two) and ||H a|| <= h_norm ||a||, plus H da, plus the
    perturbed points' own rounding, at most one float32 ulp per entry: h_norm * U32 * ||theta|| / e."""
    inv_e = math.sqrt(2.0) * norm_a / fd_eps
    return eps * (norm_g * inv_e + h_norm * norm_a) + h_norm * da + h_norm * U32 * theta_norm * inv_e


def ofmu_step_bounds(row: Mapping[str, float], beta: float, fd_eps: float, h_norm: float, theta_norm: float,
                     eps: float = GRAD_REL) -> dict[str, float]:
    """Bounds on ||dw|| (w = grad Psi), ||du|| (u = g_r + 2 rho H_f w) and |d penalty| of one OFMU step.

    With nf, nr, c = cos from the row: a_f = g_r/(nf nr) - c g_f/nf^2 has norm sqrt(1 - c^2)/nf and is off by at
    most (5 + 3|c|) eps / nf (its first term by 3 eps/nf: g_r, nf, nr; its second by |dc|/nf + 3|c| eps/nf, with
    |dc| <= 2 eps); a_r likewise with nr. Then dw <= eps nf + beta (d(H_f a_f) + d(H_r a_r)) and
    du <= eps nr + 2 rho d(H_f w), each HVP bounded by `fd_hvp_moved_bound`; the penalty ||w||^2 by
    2 ||w|| dw + eps ||w||^2 (its dot product's own rounding)."""
    nf, nr, c, rho = row["norm_f"], row["norm_r"], row["cos_fr"], row["rho"]
    s = math.sqrt(max(0.0, 1.0 - c * c))
    dw = eps * nf
    if beta > 0:
        dw += beta * (fd_hvp_moved_bound(nf, s / nf, (5 + 3 * abs(c)) * eps / nf, fd_eps, h_norm, theta_norm, eps)
                      + fd_hvp_moved_bound(nr, s / nr, (5 + 3 * abs(c)) * eps / nr, fd_eps, h_norm, theta_norm,
                                           eps))
    norm_w = math.sqrt(row["penalty"])
    du = eps * nr + 2 * rho * fd_hvp_moved_bound(nf, norm_w, dw, fd_eps, h_norm, theta_norm, eps)
    return {"w": dw, "u": du, "penalty": 2 * norm_w * dw + eps * row["penalty"]}


def adaptive_fit_bounds(row: Mapping[str, float], eps: float) -> dict[str, float]:
    """Bounds on the parabola fit's a and b (NGDiff's objective L = f/||g_f|| + r/||g_r|| at -1, 0, +1 times the
    step) when every loss and norm is off by eps relative and the step itself by eps relative.

    Each L is off by 2 eps S, S = |f|/nf + |r|/nr (the losses and their normalisers), and L(+-1) also by its slope
    along the step, at most |b| + 2|a|, times eps; then |da| <= (|dL+| + |dL-| + 2|dL0|)/2 and |db| <= (|dL+| +
    |dL-|)/2."""
    S = abs(row["loss_f"]) / row["norm_f"] + abs(row["loss_r"]) / row["norm_r"]
    a, b = row["fit_a"], row["fit_b"]
    d0 = 2 * eps * S
    d1 = d0 + eps * (abs(b) + 2 * abs(a))
    return {"a": d1 + d0, "b": d1}
