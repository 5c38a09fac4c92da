"""Inner products between gradients: the one place where distributed reductions live.

Every direction rule needs the Gram matrix of (g_f, g_r). Under data parallelism or sharding each rank holds a
piece of every gradient, so the inner products must be *global*: each rank takes the dot products of its own
pieces and one all-reduce sums them. This module does that once per step, for every rule, in float64 (the
cross term `<g_f, g_r>` cancels partly and float32 accumulation over ~1e9 entries loses digits), with a
single host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def _local(t: Tensor) -> Tensor:
    """The part of `t` this rank owns: a DTensor's local shard, or the tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


# Entries upcast to float64 at a time. ZeRO hands over a rank's whole gradient partition as one flat tensor
# (~1e9 entries at 7B scale); upcasting it at once would need a transient float64 copy of 8 GB.
_CHUNK = 1 << 24


def _dot64(x: Tensor, y: Tensor) -> Tensor:
    """`<x, y>` accumulated in float64, upcasting at most _CHUNK entries at a time; stays on the device."""
    x, y = _local(x).reshape(-1), _local(y).reshape(-1)
    if x.numel() <= _CHUNK:
        return torch.dot(x.double(), y.double())
    parts = [torch.dot(x[i : i + _CHUNK].double(), y[i : i + _CHUNK].double()) for i in range(0, x.numel(), _CHUNK)]
    return torch.stack(parts).sum()


def _gram64(x: Tensor, y: Tensor) -> Tensor:
    """`[<x,x>, <x,y>, <y,y>]` in float64, casting each chunk of x and y once (not once per product)."""
    x, y = _local(x).reshape(-1), _local(y).reshape(-1)
    parts = []
    for i in range(0, x.numel(), _CHUNK):
        xd, yd = x[i : i + _CHUNK].double(), y[i : i + _CHUNK].double()
        parts.append(torch.stack([torch.dot(xd, xd), torch.dot(xd, yd), torch.dot(yd, yd)]))
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
            terms = [_dot64(x, y) for x, y in zip(xs, ys, strict=True) if _local(x).numel() > 0]
            if terms:
                partials.append(torch.stack(terms).sum())
            else:  # this rank owns no entries (tiny tensors, many ranks); NCCL still needs a device tensor
                device = _local(xs[0]).device if len(xs) else torch.device("cpu")
                partials.append(torch.zeros((), dtype=torch.float64, device=device))
        vec = torch.stack([p.to(partials[0].device) for p in partials])
        if self.all_reduce is not None:
            self.all_reduce(vec)
        return [float(v) for v in vec.tolist()]

    def gram(self, g_f: Sequence[Tensor], g_r: Sequence[Tensor]) -> Gram:
        """The three inner products every direction rule needs, fused: one float64 cast per gradient entry."""
        if len(g_f) != len(g_r):
            raise ValueError(f"gradient lists differ in length: {len(g_f)} vs {len(g_r)}")
        terms = [_gram64(f, r) for f, r in zip(g_f, g_r, strict=True) if _local(f).numel() > 0]
        if terms:
            vec = torch.stack(terms).sum(dim=0)
        else:  # this rank owns no entries; NCCL still needs a device tensor
            device = _local(g_f[0]).device if len(g_f) else torch.device("cpu")
            vec = torch.zeros(3, dtype=torch.float64, device=device)
        if self.all_reduce is not None:
            self.all_reduce(vec)
        ff, fr, rr = (float(v) for v in vec.tolist())
        return Gram(ff=ff, fr=fr, rr=rr)
