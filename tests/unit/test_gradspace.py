"""GradSpace's blocked inner products: float32 partial sums over blocks, float64 across blocks and chunks.

The reference is an exact float64 pass over the same values; the bound, 1e-7 relative to each product's scale, is
about two float32 roundings, whatever the number of entries. Gradients where g_r is half anti-parallel to g_f
make `<g_f, g_r>` partly cancel, which is the case the float64 accumulation is there for.
"""

from __future__ import annotations

import pytest
import torch

import unlearn.directions.gradspace as gs


def _pair(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, generator=g) * 1e-3
    r = -0.5 * f + 0.8e-3 * torch.randn(n, generator=g)
    return f.to(dtype), r.to(dtype)


def _exact(f: torch.Tensor, r: torch.Tensor) -> tuple[float, float, float]:
    fd, rd = f.double(), r.double()
    return float(fd @ fd), float(fd @ rd), float(rd @ rd)


def _rel(got: gs.Gram, want: tuple[float, float, float]) -> float:
    """Error relative to the scale of each product (||f||^2, ||f|| ||r||, ||r||^2)."""
    ff, _, rr = want
    scale = (ff, (ff * rr) ** 0.5, rr)
    return max(abs(a - b) / s for a, b, s in zip((got.ff, got.fr, got.rr), want, scale, strict=True))


def test_blocked_gram_matches_float64_on_a_million_float32_entries() -> None:
    f, r = _pair(1_000_003)  # not a multiple of the block: the float64 tail path runs too
    got = gs.GradSpace().gram([f], [r])
    assert _rel(got, _exact(f, r)) < 1e-7
    assert got.cos_fr == pytest.approx(-0.53, abs=0.02)  # the cancellation is there


def test_chunks_blocks_and_tails_all_combine_to_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small chunks, each with full blocks and a ragged tail, give the single-chunk answer."""
    f, r = _pair(10_007, seed=1)
    want = _exact(f, r)
    whole = gs.GradSpace().gram([f], [r])
    monkeypatch.setattr(gs, "_CHUNK", 1000)
    monkeypatch.setattr(gs, "_BLOCK", 64)
    chunked = gs.GradSpace().gram([f], [r])
    assert _rel(whole, want) < 1e-7 and _rel(chunked, want) < 1e-7
    assert gs.GradSpace().dots([([f], [r])])[0] == pytest.approx(want[1], rel=1e-7)


def test_half_precision_pieces_are_upcast_before_multiplying() -> None:
    """bf16 products would keep 8 bits; the Gram must equal the float64 one of the same bf16 values."""
    f, r = _pair(50_000, dtype=torch.bfloat16, seed=2)
    got = gs.GradSpace().gram([f], [r])
    assert _rel(got, _exact(f, r)) < 1e-7


def test_float64_pieces_stay_float64() -> None:
    f, r = _pair(20_000, dtype=torch.float64, seed=3)
    got = gs.GradSpace().gram([f], [r])
    assert _rel(got, _exact(f, r)) < 1e-13


def test_lists_of_pieces_sum_and_mismatched_sizes_raise() -> None:
    f, r = _pair(6_000, seed=4)
    split = gs.GradSpace().gram([f[:2500], f[2500:]], [r[:2500], r[2500:]])
    assert _rel(split, _exact(f, r)) < 1e-7
    with pytest.raises(ValueError, match="differ"):
        gs.GradSpace().gram([f], [r[:10]])
    with pytest.raises(ValueError, match="differ"):
        gs.GradSpace().gram([f], [r, r])
