"""Tests of qlib.dorefa: DoReFa-Net's weight and activation quantizers.

Oracles: values worked by hand; a brute-force quantizer that enumerates the 2**b levels in
float64 and picks the nearest; for the gradients, autograd of the tanh normalisation alone
(``tanh(w) / max|tanh(w)|``, no quantization), its derivative written out by hand, and autograd
through ``torch.clamp``.
"""
from __future__ import annotations

import math

import pytest
import torch

from qlib.dorefa import (DoReFaActivationQuantizer, DoReFaWeightQuantizer, dorefa_activation, dorefa_weight,
                         quantize_unit)


def _w(seed, shape=(64, 32), spread=0.3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * spread).to(torch.float32)


# --- forward ---------------------------------------------------------------------------------

def test_weights_by_hand_at_2_bits():
    # u = tanh(w) / tanh(1) = [1, -1, 0, 0.5, 0.9]; r = u/2 + 1/2 = [1, 0, 0.5, 0.75, 0.95];
    # 3r = [3, 0, 1.5, 2.25, 2.85] -> round (half to even) [3, 0, 2, 2, 3];
    # w_q = 2 * level / 3 - 1 = [1, -1, 1/3, 1/3, 1]
    t1 = math.tanh(1.0)
    w = torch.tensor([1.0, -1.0, 0.0, math.atanh(0.5 * t1), math.atanh(0.9 * t1)])
    assert dorefa_weight(w, 2).tolist() == pytest.approx([1.0, -1.0, 1 / 3, 1 / 3, 1.0], abs=1e-7)


def test_weights_by_hand_at_3_bits():
    # 7 steps: u = [1, -0.6, 0.1, -0.3]; r = [1, 0.2, 0.55, 0.35]; 7r = [7, 1.4, 3.85, 2.45]
    # -> [7, 1, 4, 2]; w_q = 2 level / 7 - 1 = [1, -5/7, 1/7, -3/7]
    t = math.tanh(0.8)
    w = torch.tensor([0.8, math.atanh(-0.6 * t), math.atanh(0.1 * t), math.atanh(-0.3 * t)])
    assert dorefa_weight(w, 3).tolist() == pytest.approx([1.0, -5 / 7, 1 / 7, -3 / 7], abs=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_a_zero_weight_is_a_tie_that_half_to_even_decides(bits):
    # r = 1/2 and (2**b - 1)/2 is a half-integer: round half to even gives 2**(b-1) for b >= 2
    # (w_q = +1/(2**b - 1)) and 0 at b = 1 (w_q = -1)
    w = torch.tensor([0.7, -0.2, 0.0, 0.0])
    expected = -1.0 if bits == 1 else 1 / (2**bits - 1)
    got = dorefa_weight(w, bits)
    assert got[2].item() == pytest.approx(expected, abs=1e-7) and got[3].item() == got[2].item()
    assert 0.0 not in dorefa_weight(_w(bits), bits).tolist()  # no level is 0


def _brute_force_weights(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest of the 2**b levels 2i/(2**b - 1) - 1 to tanh(w)/max|tanh(w)|, all in float64."""
    u = torch.tanh(w.double())
    u = u / u.abs().max()
    n = 2**bits - 1
    levels = torch.tensor([2 * i / n - 1 for i in range(n + 1)], dtype=torch.float64)
    return levels[(u.reshape(-1, 1) - levels).abs().argmin(dim=1)].reshape(w.shape)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("spread", [0.05, 0.5, 3.0])
def test_weights_equal_brute_force_nearest_level(bits, spread):
    w = _w(bits, spread=spread)
    got = dorefa_weight(w, bits)
    expected = _brute_force_weights(w, bits)
    assert torch.allclose(got.double(), expected, atol=1e-6, rtol=0)
    assert len(torch.unique(got)) <= 2**bits
    assert got.abs().max().item() == 1.0  # the largest |w| lands on the level +1 or -1
    assert got.dtype == torch.float32


def test_activations_by_hand_at_2_bits():
    # clip to [0, 1], levels 0, 1/3, 2/3, 1: 0.5 -> 1.5 steps, a tie, half to even -> 2/3
    a = torch.tensor([-0.5, 0.0, 0.1, 0.2, 0.5, 0.9, 1.0, 1.7])
    assert dorefa_activation(a, 2).tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 1], abs=1e-7)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_activations_equal_brute_force(bits):
    a = _w(20 + bits, shape=(4000,), spread=0.8) + 0.4
    n = 2**bits - 1
    levels = torch.arange(n + 1, dtype=torch.float64) / n
    clipped = a.double().clamp(0, 1)
    expected = levels[(clipped.reshape(-1, 1) - levels).abs().argmin(dim=1)]
    assert torch.allclose(dorefa_activation(a, bits).double(), expected, atol=1e-7, rtol=0)


def test_quantize_unit_levels_and_ties():
    r = torch.tensor([0.0, 1 / 6, 0.5, 5 / 6, 1.0])
    # 3r = [0, 0.5, 1.5, 2.5, 3]: the ties go to the even neighbours 0, 2, 2
    assert quantize_unit(r, 2).tolist() == pytest.approx([0, 0, 2 / 3, 2 / 3, 1], abs=1e-7)


# --- backward --------------------------------------------------------------------------------

def _normalised(w):
    t = torch.tanh(w)
    return t / t.abs().max()


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_weight_gradient_is_the_gradient_of_the_tanh_normalisation(bits):
    w = _w(30 + bits, shape=(40, 25), spread=0.7)
    upstream = torch.randn(w.shape, generator=torch.Generator().manual_seed(bits))
    w1 = w.clone().requires_grad_()
    (grad_ours,) = torch.autograd.grad(dorefa_weight(w1, bits), w1, upstream)
    w2 = w.clone().requires_grad_()
    (grad_autograd,) = torch.autograd.grad(_normalised(w2), w2, upstream)
    assert torch.allclose(grad_ours, grad_autograd, rtol=1e-5, atol=1e-7)
    # and the same derivative written out: u_i = t_i / m, m = |t_k| (k the largest):
    # dL/dw_i = (1 - t_i^2) * (g_i / m - [i = k] sign(t_k) sum_j g_j t_j / m^2)
    t = torch.tanh(w.double())
    k = int(t.abs().argmax())
    m = t.abs().reshape(-1)[k]
    g = upstream.double()
    by_hand = (1 - t**2) * g / m
    by_hand.reshape(-1)[k] -= (1 - t.reshape(-1)[k] ** 2) * torch.sign(t.reshape(-1)[k]) * (g * t).sum() / m**2
    assert torch.allclose(grad_ours.double(), by_hand, rtol=1e-4, atol=1e-6)
    assert grad_ours.abs().max() > 0  # the test can fail: gradients are not all zero


def test_activation_gradient_is_the_gradient_of_the_clip():
    a = torch.cat([torch.tensor([0.0, 1.0, -0.3, 1.2]), _w(40, shape=(3000,), spread=1.0) + 0.5])
    upstream = torch.randn(a.shape, generator=torch.Generator().manual_seed(1))
    a1 = a.clone().requires_grad_()
    (ours,) = torch.autograd.grad(dorefa_activation(a1, 3), a1, upstream)
    a2 = a.clone().requires_grad_()
    (clamp_grad,) = torch.autograd.grad(torch.clamp(a2, 0.0, 1.0), a2, upstream)
    assert torch.equal(ours, clamp_grad)
    assert ours[:4].tolist() == pytest.approx([upstream[0].item(), upstream[1].item(), 0.0, 0.0])


def test_modules_call_the_functions():
    w = _w(50, shape=(8, 4, 3, 3))
    assert torch.equal(DoReFaWeightQuantizer(3)(w), dorefa_weight(w, 3))
    assert torch.equal(DoReFaActivationQuantizer(2)(w + 0.5), dorefa_activation(w + 0.5, 2))
    assert "bits=3" in repr(DoReFaWeightQuantizer(3))


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, error", [(0, ValueError), (25, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_bits(bits, error):
    with pytest.raises(error, match="bits"):
        dorefa_weight(_w(0), bits)
    with pytest.raises(error, match="bits"):
        dorefa_activation(_w(0), bits)


def test_bad_tensors():
    with pytest.raises(ValueError, match="every weight is 0"):
        dorefa_weight(torch.zeros(3, 3), 2)
    with pytest.raises(ValueError, match="NaN"):
        dorefa_weight(torch.tensor([0.1, float("nan")]), 2)
    with pytest.raises(ValueError, match="empty"):
        dorefa_activation(torch.tensor([]), 2)
    with pytest.raises(TypeError, match="must be a tensor"):
        dorefa_weight("weights", 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_unit(torch.tensor([0.2, 1.5]), 2)
