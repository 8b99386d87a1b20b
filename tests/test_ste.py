"""Tests of qlib.ste: fake quantization with the straight-through estimator.

Oracles: PyTorch's ``fake_quantize_per_tensor_affine`` and ``fake_quantize_per_channel_affine``
(C++ kernels with their own autograd formulas), compared bit for bit in the forward pass and
in the gradient: the gradient is a 0/1 mask times the incoming gradient, so it is exact too.
Plus hand-worked values at the edges of the mask.
"""
from __future__ import annotations

import pytest
import torch

from qlib.linear import fake_quantize, integer_range
from qlib.ste import FakeQuantizeSTE, fake_quantize_ste, ste_mask

RANGES = [integer_range(b, signed=s) for b in (2, 3, 4, 8, 16) for s in (True, False)] + [(-1, 0), (0, 1)]


def torch_fake_quant(x, scale, zero_point, qmin, qmax):
    """PyTorch's per-tensor fake quantization (the oracle), float32 scale and int32 zero point."""
    return torch.fake_quantize_per_tensor_affine(
        x, torch.tensor([scale], dtype=torch.float32), torch.tensor([zero_point], dtype=torch.int32), qmin, qmax)


def _case(seed, qmin, qmax, n=2000):
    """x around, inside and far outside the range; exact ties when the scale is a power of two."""
    gen = torch.Generator().manual_seed(seed)
    if seed % 2:
        scale = 2.0 ** int(torch.randint(-8, 3, (1,), generator=gen))
    else:
        scale = float(torch.tensor(10 ** (-3 + 4 * torch.rand(1, generator=gen).item()), dtype=torch.float32))
    zero_point = int(torch.randint(qmin, qmax + 1, (1,), generator=gen))
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    width = hi - lo
    x = torch.cat([
        lo - width + 3 * width * torch.rand(n, generator=gen),                        # in and around the range
        (torch.randint(qmin - 3, qmax + 4, (n // 4,), generator=gen) - zero_point + 0.5) * scale,  # ties
        torch.tensor([lo, hi, lo - 0.5 * scale, hi + 0.5 * scale, 0.0]),               # edges of the mask
    ]).to(torch.float32)
    return x, scale, zero_point


@pytest.mark.parametrize("qmin, qmax", RANGES)
@pytest.mark.parametrize("seed", range(4))
def test_forward_and_gradient_equal_torch_per_tensor(qmin, qmax, seed):
    x, scale, zero_point = _case(seed * 31 + qmax, qmin, qmax)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    ours_x = x.clone().requires_grad_()
    theirs_x = x.clone().requires_grad_()
    ours = fake_quantize_ste(ours_x, scale, zero_point, qmin, qmax)
    theirs = torch_fake_quant(theirs_x, scale, zero_point, qmin, qmax)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, ours_x, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, theirs_x, upstream)
    assert torch.equal(g_ours, g_theirs)
    # the test can fail: both gradients pass and stop somewhere
    assert 0 < int((g_ours == 0).sum()) < x.numel()


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("qmin, qmax", [(-128, 127), (0, 255), (-8, 7), (-2, 1), (0, 3)])
def test_forward_and_gradient_equal_torch_per_channel(axis, qmin, qmax):
    gen = torch.Generator().manual_seed(qmax - axis)
    x = (torch.randn(6, 5, 4, generator=gen) * torch.rand(6, 5, 4, generator=gen) * 4).to(torch.float32)
    n = x.shape[axis]
    scale = (0.01 + torch.rand(n, generator=gen)).to(torch.float32) * 8 / (qmax - qmin)
    zero_point = torch.randint(qmin, qmax + 1, (n,), generator=gen, dtype=torch.int32)
    shape = [1] * x.ndim
    shape[axis] = n
    upstream = torch.randn(x.shape, generator=gen)
    ours_x, theirs_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = fake_quantize_ste(ours_x, scale.reshape(shape), zero_point.reshape(shape), qmin, qmax)
    theirs = torch.fake_quantize_per_channel_affine(theirs_x, scale, zero_point, axis % x.ndim, qmin, qmax)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, ours_x, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, theirs_x, upstream)
    assert torch.equal(g_ours, g_theirs)


def test_forward_equals_qlib_fake_quantize():
    x, scale, zero_point = _case(7, -8, 7)
    assert torch.equal(fake_quantize_ste(x, scale, zero_point, -8, 7), fake_quantize(x, scale, zero_point, -8, 7))


@pytest.mark.parametrize("x, qmin, qmax, zero_point, grad", [
    (127.4, -128, 127, 0, 1.0),    # rounds to 127: inside
    (127.5, -128, 127, 0, 0.0),    # tie, rounds to 128 (even): clamped, no gradient
    (126.5, -128, 127, 0, 1.0),    # tie, rounds to 126: inside
    (-128.5, -128, 127, 0, 1.0),   # tie, rounds to -128 (even): still inside
    (-128.6, -128, 127, 0, 0.0),   # rounds to -129: clamped
    (3.5, 0, 4, 1, 0.0),           # round(3.5) + 1 = 5 > 4: the zero point is added after rounding
    (2.5, 0, 4, 1, 1.0),           # round(2.5) + 1 = 3
    (-1.5, 0, 4, 1, 0.0),          # round(-1.5) + 1 = -1 < 0
    (-0.5, 0, 4, 1, 1.0),          # round(-0.5) + 1 = 1
])
def test_mask_at_the_edges_by_hand(x, qmin, qmax, zero_point, grad):
    t = torch.tensor([x], requires_grad=True)
    (g,) = torch.autograd.grad(fake_quantize_ste(t, 1.0, zero_point, qmin, qmax).sum(), t)
    assert g.item() == grad
    assert bool(ste_mask(torch.tensor([x]), 1.0, zero_point, qmin, qmax)) == bool(grad)


def test_ste_mask_matches_torch_gradient():
    x, scale, zero_point = _case(3, -8, 7)
    t = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(torch_fake_quant(t, scale, zero_point, -8, 7).sum(), t)
    assert torch.equal(ste_mask(x, scale, zero_point, -8, 7), g == 1)


def test_scale_and_zero_point_get_no_gradient():
    x = torch.randn(10, requires_grad=True)
    scale = torch.tensor(0.1, requires_grad=True)
    y = fake_quantize_ste(x, scale, 0, -8, 7)
    gx, gs = torch.autograd.grad(y.sum(), (x, scale), allow_unused=True)
    assert gs is None and gx is not None


def test_float64_input_gets_a_float64_gradient():
    x = torch.linspace(-2, 2, 9, dtype=torch.float64, requires_grad=True)
    y = fake_quantize_ste(x, 0.25, 0, -4, 3)
    assert y.dtype == torch.float32
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.dtype == torch.float64
    assert g.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0]   # x/scale = -8..8 step 2; [-4, 3] keeps -4..2


def test_autograd_function_direct_call_matches_wrapper():
    x = torch.randn(50)
    s, z = torch.tensor(0.05), torch.tensor(3.0)
    assert torch.equal(FakeQuantizeSTE.apply(x, s, z, 0, 15), fake_quantize_ste(x, 0.05, 3, 0, 15))


@pytest.mark.parametrize("x, scale, zero_point, qmin, qmax, error, words", [
    (torch.tensor([1.0, float("nan")]), 0.1, 0, -8, 7, ValueError, "NaN"),
    (torch.tensor([1.0, float("inf")]), 0.1, 0, -8, 7, ValueError, "infinite"),
    (torch.tensor([]), 0.1, 0, -8, 7, ValueError, "empty"),
    (torch.ones(3), 0.0, 0, -8, 7, ValueError, "positive"),
    (torch.ones(3), -0.1, 0, -8, 7, ValueError, "positive"),
    (torch.ones(3), 1e-45, 0, -8, 7, ValueError, "too small"),
    (torch.ones(3), 0.1, 9, -8, 7, ValueError, "zero_point"),
    (torch.ones(3), 0.1, 0.5, -8, 7, ValueError, "integers"),
    (torch.ones(3), 0.1, 0, 7, -8, ValueError, "qmin < qmax"),
    (torch.ones(3), 0.1, 0, 0, 2**25, ValueError, "2\\*\\*24"),
    (torch.ones(3, 4), torch.ones(3) * 0.1, 0, -8, 7, ValueError, "broadcast"),
    (torch.ones(3, dtype=torch.bool), 0.1, 0, -8, 7, TypeError, "real numbers"),
])
def test_bad_input_is_refused_with_a_clear_message(x, scale, zero_point, qmin, qmax, error, words):
    with pytest.raises(error, match=words):
        fake_quantize_ste(x, scale, zero_point, qmin, qmax)
