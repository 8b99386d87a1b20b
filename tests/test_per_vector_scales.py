"""Tests of qlib.per_vector_scales: integer per-vector scales under a float per-channel scale (VS-Quant).

Oracles: a matrix worked by hand (ties, clamps, a zero vector, a zero channel); brute-force
enumeration of every integer scale and every integer weight (the nearest one must be chosen);
qlib.granularity's per-channel and per-group quantizers (tested elsewhere against PyTorch and by
hand), which the two-level scheme must equal at b_S = 1 and approach as b_S grows; bit counts by hand.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from qlib.granularity import fake_quantize_tensor, quantize_per_group
from qlib.per_vector_scales import (
    MIN_CHANNEL_SCALE,
    per_vector_bits_per_weight,
    per_vector_dequantize,
    per_vector_fake_quantize,
    per_vector_quantize,
    per_vector_storage_bits,
)


def random_weight(rows=12, cols=96, seed=0):
    """Weights with rows and vectors of different ranges, as trained layers have."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    w *= torch.exp2(torch.randint(-3, 2, (rows, 1), generator=gen).float())
    w *= torch.exp2(torch.randint(-2, 1, (rows, cols // 8), generator=gen).float()).repeat_interleave(8, dim=1)
    return w


# --- a hand-worked example -----------------------------------------------------------------------
# b = 3 bits (qmax = 3), b_S = 2 bits (integer scales 1..3), vectors of V = 2.
#   vector          S_v = max|w| / 3    S_v / S_c    q_s              step S_c q_s   q
#   [2.25, -1.0]    0.75 (the widest)   3            3                0.75           [3, round(-1.33) = -1]
#   [0.75, 0.3]     0.25                1            1                0.25           [3, round(1.2) = 1]
#   [1.875, -0.5]   0.625               2.5          2 (tie to even)  0.5            [round(3.75) = 4 -> 3, -1]
#   [0.0, 0.05]     0.01667             0.067        0 -> clamp to 1  0.25           [0, round(0.2) = 0]
#   [1.0, 0.125]    0.3333              1.333        1                0.25           [4 -> 3, 0.5 -> 0 (tie to even)]
# S_c = 0.75 / (2^2 - 1) = 0.25. The second row is all zero: S_c = 2^-126, q_s = 1, q = 0.
HAND_W = torch.tensor([[2.25, -1.0, 0.75, 0.3, 1.875, -0.5, 0.0, 0.05, 1.0, 0.125],
                       [0.0] * 10])
HAND_Q = torch.tensor([[3, -1, 3, 1, 3, -1, 0, 0, 3, 0], [0] * 10])
HAND_QS = torch.tensor([[3, 1, 2, 1, 1], [1] * 5])
HAND_W_HAT = torch.tensor([[2.25, -0.75, 0.75, 0.25, 1.5, -0.5, 0.0, 0.0, 0.75, 0.0], [0.0] * 10])


def test_hand_worked_example():
    q, qs, sc = per_vector_quantize(HAND_W, bits=3, vector_size=2, scale_bits=2)
    assert q.dtype == qs.dtype == torch.int64 and sc.dtype == torch.float32
    assert torch.equal(q, HAND_Q)
    assert torch.equal(qs, HAND_QS)
    assert sc.tolist() == [0.25, MIN_CHANNEL_SCALE]
    assert MIN_CHANNEL_SCALE == 2.0 ** -126
    assert torch.equal(per_vector_dequantize(q, qs, sc, 2), HAND_W_HAT)
    assert torch.equal(per_vector_fake_quantize(HAND_W, 3, 2, 2), HAND_W_HAT)


def test_last_vector_may_be_shorter_and_weights_keep_their_shape():
    # K = 9 (a 3x3 convolution with one input channel), V = 4: vectors of 4, 4 and 1.
    # b = 3, b_S = 2. S_v = [0.25, 0.5, 0.75], S_c = 0.75 / 3 = 0.25, q_s = [1, 2, 3],
    # steps [0.25, 0.5, 0.75]: q = [3, -2, 1, 0 | 3, 2, round(-1.5) = -2, round(0.4) = 0 | -3]
    w = torch.tensor([[[[0.75, -0.5, 0.25], [0.0, 1.5, 1.0], [-0.75, 0.2, -2.25]]]])
    q, qs, sc = per_vector_quantize(w, bits=3, vector_size=4, scale_bits=2)
    assert q.shape == w.shape and qs.shape == (1, 3) and sc.shape == (1,)
    assert qs.tolist() == [[1, 2, 3]]
    assert sc.tolist() == [0.25]
    assert q.flatten().tolist() == [3, -2, 1, 0, 3, 2, -2, 0, -3]
    w_hat = per_vector_dequantize(q, qs, sc, 4)
    assert w_hat.flatten().tolist() == [0.75, -0.5, 0.25, 0.0, 1.5, 1.0, -1.0, 0.0, -2.25]


# --- brute force: the nearest integer scale, then the nearest integer weight -------------------

@pytest.mark.parametrize("bits, vector_size, scale_bits", [(2, 8, 1), (3, 16, 4), (4, 16, 4), (4, 32, 6), (6, 8, 3)])
def test_every_choice_is_the_nearest_by_enumeration(bits, vector_size, scale_bits):
    w = random_weight(seed=bits + scale_bits)
    q, qs, sc = per_vector_quantize(w, bits, vector_size, scale_bits)
    qmax, smax = 2 ** (bits - 1) - 1, 2 ** scale_bits - 1
    candidates_s = torch.arange(1, smax + 1, dtype=torch.float64)
    candidates_q = torch.arange(-qmax, qmax + 1, dtype=torch.float64)
    for c in range(w.shape[0]):
        row = w[c].double()
        vectors = row.reshape(-1, vector_size)
        s_v = vectors.abs().amax(dim=1) / qmax
        # the channel scale: the widest vector's scale over 2^M - 1, stored as float32
        assert sc[c].item() == torch.tensor(s_v.max().item() / smax, dtype=torch.float32).item()
        ratio = s_v / sc[c].double()
        dist = (ratio[:, None] - candidates_s[None, :]).abs()
        best = dist.min(dim=1).values
        # qs is a nearest candidate (ties: either neighbour is nearest; random data has none)
        assert torch.equal(dist.gather(1, (qs[c] - 1)[:, None]).squeeze(1), best)
        step = (sc[c].double() * qs[c].double()).repeat_interleave(vector_size)
        err = (row[:, None] - step[:, None] * candidates_q[None, :]).abs()
        chosen = err.gather(1, (q[c] + qmax).view(-1, 1)).squeeze(1)
        assert torch.equal(chosen, err.min(dim=1).values)


def test_effective_scale_is_an_integer_multiple_of_the_channel_scale():
    w = random_weight(seed=3)
    bits, vector_size, scale_bits = 4, 16, 4
    q, qs, sc = per_vector_quantize(w, bits, vector_size, scale_bits)
    assert int(qs.min()) >= 1 and int(qs.max()) <= 2 ** scale_bits - 1
    assert (qs.amax(dim=1) == 2 ** scale_bits - 1).all()      # the widest vector gets the largest integer
    w_hat = per_vector_dequantize(q, qs, sc, vector_size).double()
    # every dequantized weight, over its channel scale, is (to float32 precision) an integer ...
    units = w_hat / sc.double()[:, None]
    assert torch.allclose(units, units.round(), rtol=2 ** -23, atol=0)
    # ... and a multiple of its vector's integer scale
    per_vector = units.round().reshape(w.shape[0], -1, vector_size)
    assert (per_vector.remainder(qs.double()[:, :, None]) == 0).all()
    # several vectors of a channel use different multiples: the scales really are per vector
    assert (qs.amin(dim=1) < qs.amax(dim=1)).all()


# --- the limits: b_S = 1 is per-channel; large b_S approaches per-group with float scales ------

def test_one_bit_scales_are_per_channel_quantization():
    w = random_weight(seed=5)
    for bits in (2, 4, 8):
        two_level = per_vector_fake_quantize(w, bits, vector_size=16, scale_bits=1)
        per_channel = fake_quantize_tensor(w, bits, "channel", axis=0)
        step = w.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        differ = two_level != per_channel
        # per-channel rounds w * (1/S) in float32, this module w / S in float64: they may part
        # only at an exact half step, by one step
        assert differ.float().mean() < 1e-3
        assert ((two_level - per_channel).abs() <= step * (1 + 1e-6)).all()


def test_large_m_approaches_per_group_with_float_scales():
    w = random_weight(rows=16, cols=128, seed=7)
    group = fake_quantize_tensor(w, 4, "group", axis=1, group_size=16)
    energy = (w ** 2).sum()
    group_error = ((w - group) ** 2).sum() / energy
    gaps = []
    for m in (1, 2, 4, 8, 12):
        two_level = per_vector_fake_quantize(w, 4, vector_size=16, scale_bits=m)
        error = ((w - two_level) ** 2).sum() / energy
        gaps.append(abs(error - group_error).item() / group_error.item())
        if m == 12:
            q, _, _ = per_vector_quantize(w, 4, vector_size=16, scale_bits=m)
            q_group, _, _ = quantize_per_group(w, 1, 16, -7, 7, symmetric=True)
            assert (q == q_group).float().mean() > 0.99           # the same integers almost everywhere
    assert gaps[0] > 0.2                                     # per-channel is far worse than per-group
    assert gaps[-1] < 0.01                                   # 12-bit integer scales: within 1%
    assert all(a >= b for a, b in zip(gaps[1:], gaps[2:]))   # and the gap shrinks as b_S grows


# --- storage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, bits, vector_size, scale_bits, expected", [
    # fc1 of the digits CNN: 64 rows of 512 = 32 vectors of 16 -> 4 + 4*32/512 + 32/512
    ((64, 512), 4, 16, 4, Fraction(4) + Fraction(4 * 32 + 32, 512)),
    ((64, 512), 2, 32, 6, Fraction(2) + Fraction(6 * 16 + 32, 512)),
    # conv2: K = 16*3*3 = 144, 9 vectors of 16 per row
    ((32, 16, 3, 3), 4, 16, 6, Fraction(4) + Fraction(9 * 6 + 32, 144)),
    # conv1: K = 9 < V, so one (short) vector per row: 4 + (4 + 32) / 9 = 8
    ((16, 1, 3, 3), 4, 16, 4, Fraction(8)),
    # K = 10, V = 4: vectors of 4, 4, 2 -> 3 integer scales per row
    ((3, 10), 3, 4, 2, Fraction(3) + Fraction(3 * 2 + 32, 10)),
])
def test_bits_per_weight_by_hand(shape, bits, vector_size, scale_bits, expected):
    n = 1
    for d in shape:
        n *= d
    assert per_vector_storage_bits(shape, bits, vector_size, scale_bits) == expected * n
    assert per_vector_bits_per_weight(shape, bits, vector_size, scale_bits) == pytest.approx(float(expected), abs=1e-12)


def test_module_docstring_example():
    assert per_vector_bits_per_weight((64, 512), 4, 16, 4) == 4.3125


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    ({"w": torch.ones(8)}, ValueError, "output-channel axis"),
    ({"bits": 1}, ValueError, "bits must be between 2"),
    ({"bits": 17}, ValueError, "bits must be between 2"),
    ({"bits": 4.0}, TypeError, "bits must be an integer"),
    ({"scale_bits": 0}, ValueError, "bits must be between 1 and 32"),
    ({"scale_bits": 13}, ValueError, "scale_bits must be between 1 and 12"),
    ({"vector_size": 0}, ValueError, "vector_size must be at least 1"),
    ({"vector_size": 2.5}, TypeError, "vector_size must be an integer"),
    ({"w": torch.tensor([[1.0, float("nan")]])}, ValueError, "NaN"),
    ({"w": torch.zeros(2, 0)}, ValueError, "empty"),
    ({"w": [["a"]]}, TypeError, "w must be"),
])
def test_quantize_rejects_bad_input(kwargs, error, words):
    args = {"w": torch.ones(2, 8), "bits": 4, "vector_size": 4, "scale_bits": 4} | kwargs
    with pytest.raises(error, match=words):
        per_vector_quantize(**args)


def test_dequantize_rejects_bad_input():
    q, qs, sc = per_vector_quantize(HAND_W, 3, 2, 2)
    with pytest.raises(TypeError, match="q must hold integers"):
        per_vector_dequantize(q.float(), qs, sc, 2)
    with pytest.raises(TypeError, match="vector_scales must hold integers"):
        per_vector_dequantize(q, qs.float(), sc, 2)
    with pytest.raises(ValueError, match=r"vector_scales has shape \(2, 5\).*needs \(2, 4\)"):
        per_vector_dequantize(q, qs, sc, 3)
    with pytest.raises(ValueError, match="channel_scales has shape"):
        per_vector_dequantize(q, qs, sc[:1], 2)
    with pytest.raises(ValueError, match="at least 1"):
        per_vector_dequantize(q, qs - 1, sc, 2)
    with pytest.raises(ValueError, match="positive"):
        per_vector_dequantize(q, qs, -sc, 2)
    with pytest.raises(ValueError, match="output-channel axis"):
        per_vector_dequantize(q[0], qs, sc, 2)


def test_storage_rejects_bad_input():
    with pytest.raises(ValueError, match="output-channel axis"):
        per_vector_bits_per_weight((512,), 4)
    with pytest.raises(ValueError, match="positive integer"):
        per_vector_storage_bits((64, 0), 4)
    with pytest.raises(ValueError, match="scale_bits must be between 1 and 12"):
        per_vector_storage_bits((64, 512), 4, 16, 16)
