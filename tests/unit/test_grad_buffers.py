"""Gradient buffers: autograd accumulates into the installed set, `take` hands it over intact, replaced grads
are re-adopted, and the flat layout really is flat (every `.grad` a view into one tensor per dtype)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearn.train.grad_buffers import FlatGradBuffers, GradBuffers, ParamGradBuffers


class Mixed(nn.Module):
    """Two float32 parameters and one float64 parameter, so the flat layout needs two groups."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 4, generator=g))
        self.b = nn.Parameter(torch.randn(4, generator=g))
        self.v = nn.Parameter(torch.randn(4, dtype=torch.float64, generator=g))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.w + self.b)
        return (h.double() * self.v).sum() ** 2


def _x(seed: int) -> torch.Tensor:
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(seed))


def _reference_grads(seeds: list[int]) -> list[torch.Tensor]:
    """Gradients summed over the losses at `seeds`, by plain autograd on a fresh model."""
    m = Mixed()
    for s in seeds:
        m.loss(_x(s)).backward()
    return [p.grad.clone() for p in m.parameters()]


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in ts])


@pytest.mark.parametrize("kind", [FlatGradBuffers, ParamGradBuffers])
def test_forget_pass_is_handed_over_and_retain_pass_starts_from_zero(kind: type[GradBuffers]) -> None:
    m = Mixed()
    bufs = kind(list(m.parameters()))
    bufs.zero()
    for s in (0, 1):  # two micro-batches of the forget pass accumulate
        m.loss(_x(s)).backward()
    g_f = bufs.take()
    g_f_values = _flat(g_f).clone()
    m.loss(_x(2)).backward()
    g_r = bufs.current()

    torch.testing.assert_close(g_f_values, _flat(_reference_grads([0, 1])), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(_flat(g_r), _flat(_reference_grads([2])), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(_flat(g_f), g_f_values)  # the retain pass did not touch the taken set

    # Next step: zero, forget pass, take -> the spare set (the old g_f) is zeroed before reuse.
    bufs.zero()
    m.loss(_x(3)).backward()
    g_f2 = bufs.take()
    torch.testing.assert_close(_flat(g_f2), _flat(_reference_grads([3])), rtol=1e-6, atol=1e-9)
    assert float(_flat(bufs.current()).abs().sum()) == 0.0


def test_flat_layout_is_one_tensor_per_dtype_and_grads_are_views() -> None:
    m = Mixed()
    bufs = FlatGradBuffers(list(m.parameters()))
    flats = bufs.current()
    assert {(f.dtype, f.numel()) for f in flats} == {(torch.float32, 16), (torch.float64, 4)} and len(flats) == 2
    m.loss(_x(0)).backward()
    m.loss(_x(1)).backward()
    storages = {f.untyped_storage().data_ptr() for f in flats}
    for p in m.parameters():  # autograd accumulated in place: still views into the flat tensors
        assert p.grad.untyped_storage().data_ptr() in storages
    # Writing the flat tensor writes every parameter's gradient (how the loop installs u).
    for f in bufs.current():
        f.mul_(2.0)
    torch.testing.assert_close(_flat([p.grad for p in m.parameters()]), 2 * _flat(_reference_grads([0, 1])))


@pytest.mark.parametrize("kind", [FlatGradBuffers, ParamGradBuffers])
def test_replaced_or_cleared_grads_are_re_adopted(kind: type[GradBuffers]) -> None:
    m = Mixed()
    bufs = kind(list(m.parameters()))
    m.loss(_x(0)).backward()
    m.w.grad = None  # e.g. an optimizer's zero_grad(set_to_none=True)
    m.b.grad = torch.full_like(m.b, 7.0)  # e.g. a library that assigns a fresh tensor
    if isinstance(bufs, FlatGradBuffers):
        assert not bufs.views_intact()
    current = bufs.current()
    if isinstance(bufs, FlatGradBuffers):
        assert bufs.views_intact()
    expected = _reference_grads([0])
    torch.testing.assert_close(_flat(current), _flat([torch.zeros_like(expected[0]), torch.full((4,), 7.0),
                                                      expected[2]]))
    m.loss(_x(1)).backward()  # and later backwards accumulate into the adopted buffers again
    torch.testing.assert_close(_flat(bufs.current()),
                               _flat([expected_1 + base for expected_1, base in
                                      zip(_reference_grads([1]), [torch.zeros(3, 4), torch.full((4,), 7.0),
                                                                  expected[2]], strict=True)]),
                               rtol=1e-6, atol=1e-9)
