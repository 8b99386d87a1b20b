"""Tests of qlib.pact: a learned clipping value for activations.

Oracles: PyTorch's ``fake_quantize_per_tensor_affine`` for the forward pass (bit for bit);
for the gradients, which PyTorch has no operator for, central finite differences of the
function the straight-through estimator differentiates, ``clip(x, 0, alpha)``, in float64
and away from its kinks at 0 and alpha, and autograd through ``torch.clamp``/``torch.minimum``;
plus the values at the kinks worked by hand.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib.pact import PACTQuantizer, pact_fake_quantize, pact_penalty


def _x(seed, n=3000, alpha=2.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen) * alpha).to(torch.float32)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("alpha", [0.37, 1.0, 2.0, 6.5])
def test_forward_equals_torch_fake_quant_of_the_clipped_value(bits, alpha):
    x = _x(bits, alpha=alpha)
    qmax = 2**bits - 1
    a = torch.tensor(alpha, dtype=torch.float32)
    scale = (a / qmax).reshape(1)
    expected = torch.fake_quantize_per_tensor_affine(torch.minimum(torch.clamp(x, min=0.0), a), scale,
                                                     torch.zeros(1, dtype=torch.int32), 0, qmax)
    got = pact_fake_quantize(x, a, bits)
    assert torch.equal(got, expected)
    assert len(torch.unique(got)) <= qmax + 1 and float(got.max()) == pytest.approx(alpha)


def _clip64(x, alpha):
    return torch.clamp(x, min=0.0, max=alpha)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gradients_equal_finite_differences_of_the_clip(bits):
    alpha = 1.5
    x = _x(10 + bits, alpha=alpha).to(torch.float64)
    h = 1e-5
    away = ((x.abs() > 10 * h) & ((x - alpha).abs() > 10 * h))
    x = x[away]
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    t = x.to(torch.float32).requires_grad_()
    a = torch.tensor(alpha, requires_grad=True)
    gx, ga = torch.autograd.grad(pact_fake_quantize(t, a, bits), (t, a), upstream.to(torch.float32))
    # d/dx: elementwise central differences
    fd_x = (_clip64(x + h, alpha) - _clip64(x - h, alpha)) / (2 * h)
    assert torch.allclose(fd_x, fd_x.round(), atol=1e-6)  # 0 or 1 up to rounding
    assert torch.equal(gx, upstream.to(torch.float32) * fd_x.round().to(torch.float32))
    # d/d alpha of sum(upstream * clip(x, 0, alpha))
    loss = lambda al: float((upstream * _clip64(x, al)).sum())  # noqa: E731
    fd_a = (loss(alpha + h) - loss(alpha - h)) / (2 * h)
    assert ga.item() == pytest.approx(fd_a, rel=1e-5, abs=1e-6)
    assert abs(fd_a) > 1  # the test can fail: clipped values exist


def test_gradients_equal_autograd_through_clamp():
    x = _x(3, alpha=1.0)
    x = x[(x.abs() > 1e-6) & ((x - 1.0).abs() > 1e-6)]
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    t1, a1 = x.clone().requires_grad_(), torch.tensor(1.0, requires_grad=True)
    t2, a2 = x.clone().requires_grad_(), torch.tensor(1.0, requires_grad=True)
    ours = torch.autograd.grad(pact_fake_quantize(t1, a1, 4), (t1, a1), upstream)
    theirs = torch.autograd.grad(torch.minimum(torch.clamp(t2, min=0.0), a2), (t2, a2), upstream)
    assert torch.equal(ours[0], theirs[0])
    assert ours[1].item() == pytest.approx(theirs[1].item(), rel=1e-6)


def test_kinks_by_hand():
    # at x = 0 the input gradient is 1; at x = alpha it goes to alpha, not to x
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0, 3.0], requires_grad=True)
    a = torch.tensor(2.0, requires_grad=True)
    y = pact_fake_quantize(x, a, 2)  # scale 2/3: levels 0, 0.667, 1.333, 2
    assert y.tolist() == pytest.approx([0.0, 0.0, 2 / 3, 2.0, 2.0])
    gx, ga = torch.autograd.grad(y.sum(), (x, a))
    assert gx.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert ga.item() == 2.0


def test_quantizer_starts_at_the_first_batch_maximum_and_learns_alpha():
    q = PACTQuantizer(4)
    x = torch.tensor([[0.0, 0.5, 3.0], [1.0, 2.0, 0.1]])
    y = q(x)
    assert q.alpha.item() == 3.0 and y.max().item() == 3.0
    y2 = q(torch.tensor([4.0, 5.0]))
    (ga,) = torch.autograd.grad(y2.sum(), q.alpha)
    assert ga.item() == 2.0
    assert PACTQuantizer(4, init_alpha=10.0)(x).max().item() == pytest.approx(3.0, abs=10 / 15 / 2)


def test_penalty_is_the_l2_term():
    model = nn.Sequential(PACTQuantizer(4, init_alpha=2.0), PACTQuantizer(4, init_alpha=3.0))
    model(torch.ones(2))
    assert pact_penalty(model, 0.1).item() == pytest.approx(0.1 * (4 + 9))
    assert pact_penalty(nn.Linear(2, 2), 0.1).item() == 0.0


@pytest.mark.parametrize("alpha, bits, error, words", [
    (0.0, 4, ValueError, "positive"),
    (-1.0, 4, ValueError, "positive"),
    (float("inf"), 4, ValueError, "positive"),
    (torch.tensor([1.0, 2.0]), 4, ValueError, "one value"),
    (torch.tensor(1.0, dtype=torch.float64), 4, TypeError, "float32"),
    (1.0, 0, ValueError, "bits"),
    (1.0, 25, ValueError, "at most 24"),
])
def test_bad_arguments_are_refused(alpha, bits, error, words):
    with pytest.raises(error, match=words):
        pact_fake_quantize(torch.ones(3), alpha, bits)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        pact_fake_quantize(torch.tensor([float("nan")]), 1.0, 4)
    with pytest.raises(ValueError, match="no positive value"):
        PACTQuantizer(4)(torch.tensor([-1.0, 0.0]))
