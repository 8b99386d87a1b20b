"""Tests of qlib.sat: SAT's weight scale adjustment and gradient-calibrated PACT.

Oracles: the variance computed in float64 with numpy-style sums; the backward pass of a
random linear layer (the variance of ``W^T g`` measured on many samples); autograd of the tanh
normalisation times an independently computed constant; for CG-PACT, autograd of PACT written
as ``alpha * quantize(x / alpha)`` with a detach-trick straight-through rounding, LSQ's step
gradient (:mod:`qlib.lsq`, divided by ``2**b - 1``), PyTorch's fake quantization for the forward
pass, and values worked by hand.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from qlib.dorefa import dorefa_weight
from qlib.lsq import lsq_fake_quantize
from qlib.models import DigitsCNN
from qlib.pact import PACTQuantizer, pact_fake_quantize
from qlib.sat import (CGPACTQuantizer, SATWeightQuantizer, cg_pact_fake_quantize, fan_out, prepare_sat,
                      sat_weight, scale_adjust)


def _w(seed, shape, spread=0.2):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * spread).to(torch.float32)


# --- weight scale adjustment -----------------------------------------------------------------

def test_fan_out():
    assert fan_out(nn.Linear(512, 64).weight) == 64
    assert fan_out(nn.Conv2d(16, 32, 3).weight) == 32 * 3 * 3
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fan_out(torch.ones(5))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(64, 512), (10, 64), (32, 16, 3, 3)])
def test_scaled_weights_have_variance_one_over_n_out(bits, shape):
    w = _w(bits, shape)
    got = sat_weight(w, bits)
    n_out = shape[0] * math.prod(shape[2:])
    values = got.double().reshape(-1)
    mean = values.sum() / values.numel()
    variance = ((values - mean) ** 2).sum() / values.numel()
    assert (n_out * variance).item() == pytest.approx(1.0, rel=1e-5)
    # a constant multiple of DoReFa's weights
    ratio = got / dorefa_weight(w, bits)
    assert torch.allclose(ratio, ratio[(0,) * ratio.ndim].expand_as(ratio), rtol=1e-6)


def test_scaled_weights_keep_the_variance_of_the_gradient_flowing_back():
    # y = W x with W [n_out, n_in]; dL/dx = W^T dL/dy. With unit-variance upstream gradients,
    # the variance of dL/dx is sum_i W_ij^2, about n_out VAR[W] (zero-mean weights)
    n_out, n_in = 256, 128
    w = _w(7, (n_out, n_in), spread=0.5)
    upstream = torch.randn(4000, n_out, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for weights, expected in ((sat_weight(w, 2), 1.0),
                              (dorefa_weight(w, 2), n_out * dorefa_weight(w, 2).double().var().item())):
        back = upstream @ weights.double()
        assert back.var().item() == pytest.approx(expected, rel=0.05)
    assert n_out * dorefa_weight(w, 2).double().var().item() > 50  # the test can fail: DoReFa alone is far off


def test_gradient_is_the_normalisation_gradient_times_a_constant():
    w = _w(11, (64, 100), spread=0.6)
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(12))
    w1 = w.clone().requires_grad_()
    (ours,) = torch.autograd.grad(sat_weight(w1, 3), w1, upstream)
    w2 = w.clone().requires_grad_()
    t = torch.tanh(w2)
    (normalisation,) = torch.autograd.grad(t / t.abs().max(), w2, upstream)
    w_q = dorefa_weight(w, 3).double()
    constant = 1 / math.sqrt(64 * ((w_q - w_q.mean()) ** 2).mean().item())
    assert torch.allclose(ours.double(), normalisation.double() * constant, rtol=1e-5, atol=1e-8)


def test_scale_adjust_errors():
    with pytest.raises(ValueError, match="n_out"):
        scale_adjust(torch.tensor([1.0, -1.0]), 0)
    with pytest.raises(ValueError, match="n_out"):
        scale_adjust(torch.tensor([1.0, -1.0]), 2.5)
    with pytest.raises(ValueError, match="variance 0"):
        scale_adjust(torch.ones(4, 4), 4)
    with pytest.raises(ValueError, match="bits"):
        sat_weight(_w(0, (4, 4)), 0)


# --- CG-PACT ---------------------------------------------------------------------------------

def _ste_round(t):
    return t + (torch.round(t) - t).detach()


def _pact_by_composition(x, alpha, bits):
    """alpha * round(clip(x, 0, alpha) / alpha * n) / n with autograd everywhere but the rounding."""
    n = 2**bits - 1
    clipped = torch.minimum(torch.relu(x), alpha)
    return alpha * _ste_round(clipped / alpha * n) / n


def test_by_hand():
    # alpha = 1, 2 bits: S = 1/3. x = 0.5 -> 1.5 steps, tie -> 2 -> y_q = 2/3; d/d alpha = (2/3 - 0.5) / 1
    x = torch.tensor([-1.0, 0.0, 0.5, 0.9, 1.0, 2.0], requires_grad=True)
    a = torch.tensor(1.0, requires_grad=True)
    y = cg_pact_fake_quantize(x, a, 2)
    assert y.tolist() == pytest.approx([0, 0, 2 / 3, 1, 1, 1], abs=1e-7)
    for i, expected in enumerate([0.0, 0.0, 1 / 6, 0.1, 1.0, 1.0]):
        (ga,) = torch.autograd.grad(cg_pact_fake_quantize(x[i:i + 1], a, 2).sum(), a)
        assert ga.item() == pytest.approx(expected, abs=1e-6)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_forward_equals_pact_and_torch(bits):
    x = _w(bits, (5000,), spread=2.0) + 0.5
    a = torch.tensor(1.7)
    ours = cg_pact_fake_quantize(x, a, bits)
    assert torch.equal(ours, pact_fake_quantize(x, a, bits))
    n = 2**bits - 1
    clipped = torch.minimum(torch.clamp(x, min=0.0), a)
    theirs = torch.fake_quantize_per_tensor_affine(clipped, (a / n).reshape(1), torch.zeros(1, dtype=torch.int32),
                                                   0, n)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gradients_equal_autograd_of_the_composition(bits):
    x = _w(20 + bits, (4000,), spread=1.5) + 0.6
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(bits))
    x1, a1 = x.clone().requires_grad_(), torch.tensor(1.3, requires_grad=True)
    gx, ga = torch.autograd.grad(cg_pact_fake_quantize(x1, a1, bits), (x1, a1), upstream)
    x2, a2 = x.clone().requires_grad_(), torch.tensor(1.3, requires_grad=True)
    gx_ref, ga_ref = torch.autograd.grad(_pact_by_composition(x2, a2, bits), (x2, a2), upstream)
    # the composition's x-gradient is alpha * (n / alpha) / n, 1 up to float32 rounding, where
    # 0 < x < alpha (relu's subgradient at 0 is 0; no random value lands on 0)
    assert torch.allclose(gx, gx_ref, rtol=1e-6, atol=0)
    assert torch.equal(gx != 0, gx_ref != 0)
    assert ga.item() == pytest.approx(ga_ref.item(), rel=1e-4)
    # PACT's alpha-gradient is different: only the clipped values count
    x3, a3 = x.clone().requires_grad_(), torch.tensor(1.3, requires_grad=True)
    _, ga_pact = torch.autograd.grad(pact_fake_quantize(x3, a3, bits), (x3, a3), upstream)
    assert abs(ga_pact.item() - ga.item()) > 1e-3


@pytest.mark.parametrize("bits", [2, 4])
def test_alpha_gradient_is_lsq_step_gradient_over_the_levels(bits):
    # inside [0, alpha) and beyond alpha + S/2, CG-PACT's d/d alpha = LSQ's d/dS / (2**b - 1), g = 1
    n, alpha = 2**bits - 1, 2.0
    x = torch.rand(3000, generator=torch.Generator().manual_seed(bits)) * 3.0
    x = x[(x < alpha) | (x >= alpha + alpha / n / 2 + 1e-4)]
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    a = torch.tensor(alpha, requires_grad=True)
    (ga,) = torch.autograd.grad(cg_pact_fake_quantize(x, a, bits), a, upstream)
    step = torch.tensor(alpha / n, requires_grad=True)
    (gs,) = torch.autograd.grad(lsq_fake_quantize(x, step, 0, n, 1.0), step, upstream)
    assert ga.item() == pytest.approx(gs.item() / n, rel=1e-4)


def test_quantizer_module_and_errors():
    q = CGPACTQuantizer(2)
    assert isinstance(q, PACTQuantizer)
    x = torch.tensor([0.0, 0.4, 2.5])
    assert torch.equal(q(x), cg_pact_fake_quantize(x, torch.tensor(2.5), 2))  # alpha from the first batch
    with pytest.raises(ValueError, match="positive"):
        cg_pact_fake_quantize(x, torch.tensor(-1.0), 2)
    with pytest.raises(TypeError, match="float32"):
        cg_pact_fake_quantize(x, torch.tensor(1.0, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="one value"):
        cg_pact_fake_quantize(x, torch.ones(2), 2)
    with pytest.raises(ValueError, match="no positive value"):
        CGPACTQuantizer(2)(torch.zeros(3))


# --- a model ---------------------------------------------------------------------------------

def test_prepare_sat_places_the_quantizers():
    torch.manual_seed(0)
    model = DigitsCNN()
    before = copy.deepcopy(model.state_dict())
    sat = prepare_sat(model, 2, 4, "sat")
    adjusted = {name: m.weight_quantizer.adjust_scale for name, m in sat.named_modules()
                if isinstance(getattr(m, "weight_quantizer", None), SATWeightQuantizer)}
    assert adjusted == {"conv1": False, "conv2": False, "fc1": True, "fc2": True}
    assert isinstance(sat.bn1, nn.BatchNorm2d)  # kept, not folded
    assert isinstance(sat.fc1.input_quantizer, CGPACTQuantizer)
    out = sat(torch.rand(8, 1, 8, 8))
    assert out.shape == (8, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    dorefa = prepare_sat(model, 2, None, "dorefa")
    assert not dorefa.fc1.weight_quantizer.adjust_scale and isinstance(dorefa.fc1.input_quantizer, nn.Identity)
    with pytest.raises(ValueError, match="method"):
        prepare_sat(model, 2, 2, "lsq")
