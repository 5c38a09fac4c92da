"""Inner products between gradients: the one place where distributed reductions live.

Every direction rule needs the Gram matrix of (g_f, g_r). Under data parallelism or sharding each rank holds a
piece of every gradient, so the inner products must be *global*: each rank takes the dot products of its own
pieces and one all-reduce sums them. This module does that once per step, for every rule, with a single host
synchronisation. Accumulation is blocked: float32 partial sums over 2048 entries, float64 across blocks and
ranks (the cross term `<g_f, g_r>` cancels partly, and one float32 accumulator over ~1e9 entries loses digits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

AllReduce = Callable[[Tensor], None]


@dataclass(frozen=True)
class Gram:
    """Global inner products `<g_f, g_f>`, `<g_f, g_r>`, `<g_r, g_r>`."""

    ff: float
    fr: float
    rr: float

    @property
    def norm_f(self) -> float:
        return math.sqrt(max(self.ff, 0.0))

    @property
    def norm_r(self) -> float:
        return math.sqrt(max(self.rr, 0.0))

    @property
    def cos_fr(self) -> float:
        denom = self.norm_f * self.norm_r
        return self.fr / denom if denom > 0 else float("nan")


def local_shard(t: Tensor) -> Tensor:
    """The part of `t` this rank owns: a DTensor's local shard (writes to it write the DTensor), or `t` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


# Entries handled at a time. ZeRO hands over a rank's whole gradient partition as one flat tensor (~1e9 entries
# at 7B scale); the elementwise products of a whole partition at once would need a transient copy of 4 GB.
_CHUNK = 1 << 24
# Entries per float32 partial sum. Products are summed in float32 within a block and the block sums in float64:
# the float32 part never accumulates more than _BLOCK terms, so the error does not grow with the model size
# (a single float32 accumulator over ~1e9 entries would lose digits of the partly cancelling `<g_f, g_r>`),
# while the pass stays at float32 bandwidth (half the memory traffic of upcasting every entry to float64). The
# error is float32 rounding, relative to each product's scale (||f||^2, ||f|| ||r||, ||r||^2): below 1e-7 in
# tests/unit/test_gradspace.py. `make bench` reports the Gram's time on its model (`loop_overhead_s.gram`).
_BLOCK = 2048


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 gradients stay float64; float32 and half-precision ones are multiplied in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _dot_blocks(x: Tensor, y: Tensor) -> Tensor:
    """`<x, y>` of two equal-length 1-D tensors: block partial sums in their dtype, the total in float64."""
    n = x.numel()
    body = n - n % _BLOCK
    parts = []
    if body:
        rows = torch.linalg.vecdot(x[:body].view(-1, _BLOCK), y[:body].view(-1, _BLOCK))
        parts.append(rows.sum(dtype=torch.float64))
    if body < n:
        parts.append(torch.dot(x[body:].double(), y[body:].double()))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _chunks(x: Tensor, y: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's entries of x and y, flattened, cast to the compute dtype, _CHUNK at a time (lazily: a bf16
    partition is upcast one chunk at a time, never whole)."""
    x, y = local_shard(x).reshape(-1), local_shard(y).reshape(-1)
    if x.numel() != y.numel():
        raise ValueError(f"gradient pieces differ in size: {x.numel()} vs {y.numel()}")
    dtype = _compute_dtype(x)
    for i in range(0, x.numel(), _CHUNK):
        yield x[i : i + _CHUNK].to(dtype), y[i : i + _CHUNK].to(dtype)


def _dot(x: Tensor, y: Tensor) -> Tensor:
    """`<x, y>` over this rank's entries, as a float64 scalar on the device."""
    return torch.stack([_dot_blocks(a, b) for a, b in _chunks(x, y)]).sum()


def _gram3(x: Tensor, y: Tensor) -> Tensor:
    """`[<x,x>, <x,y>, <y,y>]` over this rank's entries, float64 on the device (each chunk cast once)."""
    parts = [torch.stack([_dot_blocks(a, a), _dot_blocks(a, b), _dot_blocks(b, b)]) for a, b in _chunks(x, y)]
    return torch.stack(parts).sum(dim=0)


class GradSpace:
    """Computes global inner products over lists of (possibly sharded) gradient tensors.

    Args:
        all_reduce: sums a small float64 tensor across ranks in place. None for a single process, and for
            data parallelism whose gradients are already replicated (DDP after its own all-reduce).
    """

    def __init__(self, all_reduce: AllReduce | None = None) -> None:
        self.all_reduce = all_reduce

    def dots(self, pairs: Sequence[tuple[Sequence[Tensor], Sequence[Tensor]]]) -> list[float]:
        """Global inner products for each pair of gradient lists, in one pass and one all-reduce."""
        if not pairs:
            return []
        partials: list[Tensor] = []
        for xs, ys in pairs:
            if len(xs) != len(ys):
                raise ValueError(f"gradient lists differ in length: {len(xs)} vs {len(ys)}")
            terms = [_dot(x, y) for x, y in zip(xs, ys, strict=True) if local_shard(x).numel() > 0]
            if terms:
                partials.append(torch.stack(terms).sum())
            else:  # this rank owns no entries (tiny tensors, many ranks); NCCL still needs a device tensor
                device = local_shard(xs[0]).device if len(xs) else torch.device("cpu")
                partials.append(torch.zeros((), dtype=torch.float64, device=device))
        vec = torch.stack([p.to(partials[0].device) for p in partials])
        if self.all_reduce is not None:
            self.all_reduce(vec)
        return [float(v) for v in vec.tolist()]

    def gram(self, g_f: Sequence[Tensor], g_r: Sequence[Tensor]) -> Gram:
        """The three inner products every direction rule needs, fused into one call and one all-reduce."""
        if len(g_f) != len(g_r):
            raise ValueError(f"gradient lists differ in length: {len(g_f)} vs {len(g_r)}")
        terms = [_gram3(f, r) for f, r in zip(g_f, g_r, strict=True) if local_shard(f).numel() > 0]
        if terms:
            vec = torch.stack(terms).sum(dim=0)
        else:  # this rank owns no entries; NCCL still needs a device tensor
            device = local_shard(g_f[0]).device if len(g_f) else torch.device("cpu")
            vec = torch.zeros(3, dtype=torch.float64, device=device)
        if self.all_reduce is not None:
            self.all_reduce(vec)
        ff, fr, rr = (float(v) for v in vec.tolist())
        return Gram(ff=ff, fr=fr, rr=rr)
