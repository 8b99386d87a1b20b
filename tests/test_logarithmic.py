"""Power-of-two quantization against brute force over the enumerated levels, in exact arithmetic.

The oracle never calls qlib.logarithmic: it lists the 2^b - 1 levels itself (0 and +-S 2^-k,
k = 0 .. qmax - 1, as exact fractions of the float32 scale), picks the level with the smallest
|x - level| in rational arithmetic, and breaks a tie towards the larger magnitude, the rule the
module documents.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qlib.logarithmic import (
    POW2_MAX_BITS,
    POW2_MIN_BITS,
    pow2_channel_scales,
    pow2_dequantize,
    pow2_fake_quantize,
    pow2_fake_quantize_weight,
    pow2_fake_quantize_weights,
    pow2_levels,
    pow2_qmax,
    pow2_quantize,
)

BITS = range(POW2_MIN_BITS, POW2_MAX_BITS + 1)


def oracle_levels(scale: float, bits: int) -> list[Fraction]:
    """0 and +-scale * 2^-k for k = 0 .. 2^(bits-1) - 2, exact."""
    s = Fraction(scale)
    n = 2 ** (bits - 1) - 1
    magnitudes = [s / 2 ** k for k in range(n)]
    return [Fraction(0)] + magnitudes + [-m for m in magnitudes]


# Every float32/float64 number and every level is a dyadic rational: times 2^1200 it is an exact
# Python integer, so the brute force compares integers (exact, and faster than Fractions).
ONE = 2 ** 1200


def exact_int(v: Fraction | float) -> int:
    n, d = Fraction(v).as_integer_ratio()
    assert ONE % d == 0
    return n * (ONE // d)


def oracle_nearest(x: float, levels: list[int]) -> int:
    """The level nearest to x by |x - level|; on a tie the larger magnitude."""
    xi = exact_int(x)
    return min(levels, key=lambda level: (abs(xi - level), -abs(level)))


def oracle_fake_quantize(x: torch.Tensor, scale: float, bits: int) -> list[float]:
    levels = [exact_int(v) for v in oracle_levels(scale, bits)]
    return [float(Fraction(oracle_nearest(v, levels), ONE)) for v in x.double().tolist()]


def float32(v: float) -> float:
    return float(np.float32(v))


def boundary_cases(scale: float, bits: int) -> torch.Tensor:
    """Every decision boundary of the grid (midpoints between levels, L/2), and its float32 neighbours."""
    levels = sorted(oracle_levels(scale, bits))
    mids = [(a + b) / 2 for a, b in zip(levels, levels[1:])]
    values = []
    for m in mids + levels + [levels[-1] * 2, levels[0] * 2]:
        f = np.float32(float(m))
        values += [f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))]
    return torch.tensor(np.array(values, dtype=np.float32))


# --- hand-worked values ----------------------------------------------------------------------------

def test_three_bit_grid_by_hand():
    # 3 bits, S = 1: levels 0, 1/4, 1/2, 1. Boundaries: 1/8 (0 | 1/4), 3/8, 3/4; ties go up.
    assert pow2_levels(3).tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    x = torch.tensor([0.0, 0.1, 0.125, 0.3, 0.375, 0.74, 0.75, 0.9, 1.0, 5.0, -0.6, -0.125, -0.12])
    assert pow2_quantize(x, 1.0, 3).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, -2, -1, 0]
    assert pow2_fake_quantize(x, 1.0, 3).tolist() == [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0,
                                                      -0.5, -0.25, 0.0]


def test_linear_domain_is_not_round_log2():
    # 0.72 S lies between the geometric mean 2^-0.5 S = 0.707 S and the midpoint 0.75 S of S/2 and S:
    # round(log2 0.72) = 0 would give S, but S/2 is nearer (|0.72 - 0.5| = 0.22 < 0.28).
    assert round(math.log2(0.72)) == 0
    assert pow2_fake_quantize(torch.tensor([0.72]), 1.0, 4).tolist() == [0.5]


def test_two_bits_is_ternary_with_threshold_half_scale():
    x = torch.tensor([-0.9, -0.5, -0.49, 0.0, 0.49, 0.5, 3.0])
    assert pow2_quantize(x, 1.0, 2).tolist() == [-1, -1, 0, 0, 0, 1, 1]


def test_qmax_is_the_narrow_signed_range():
    from qlib.linear import integer_range
    for bits in BITS:
        assert pow2_qmax(bits) == integer_range(bits, narrow=True)[1] == 2 ** (bits - 1) - 1


# --- brute force over the enumerated levels ---------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scale", [1.0, 0.3, 0.0173, 3.7e-5, 12.5])
def test_matches_brute_force_on_random_and_boundary_values(bits, scale):
    scale = float32(scale)
    gen = torch.Generator().manual_seed(bits * 1000 + int(scale * 1e4) % 997)
    # Log-uniform magnitudes over the whole grid and past both ends, random signs.
    exponents = torch.rand(400, generator=gen) * (2 ** (bits - 1) + 2) - (2 ** (bits - 1))
    signs = torch.randint(0, 2, (400,), generator=gen) * 2 - 1
    x = torch.cat([signs * scale * torch.exp2(exponents), boundary_cases(scale, bits), torch.zeros(1)])
    got = pow2_fake_quantize(x, scale, bits)
    assert got.dtype == torch.float32
    assert got.tolist() == oracle_fake_quantize(x, scale, bits)


def test_float64_inputs_within_one_ulp_of_a_boundary():
    # A float64 x a hair below the boundary 0.75 * S must go down; on it, up; a hair above, up.
    scale = float32(0.3)
    boundary = 0.75 * scale
    x = torch.tensor([np.nextafter(boundary, 0.0), boundary, np.nextafter(boundary, 1.0)], dtype=torch.float64)
    assert pow2_fake_quantize(x, scale, 4).tolist() == oracle_fake_quantize(x, scale, 4)
    assert pow2_fake_quantize(x, scale, 4).tolist() == [float32(scale / 2), scale, scale]


def test_per_channel_scales_broadcast():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 50, generator=gen)
    scales = torch.tensor([[0.5], [1.7], [0.02]])
    got = pow2_fake_quantize(x, scales, 5)
    for c in range(3):
        assert got[c].tolist() == oracle_fake_quantize(x[c], float(scales[c]), 5)


# --- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
def test_round_trips(bits):
    qmax = 2 ** (bits - 1) - 1
    codes = torch.arange(-qmax, qmax + 1)
    scale = float32(0.0421)
    levels = pow2_dequantize(codes, scale, bits)
    assert levels.tolist() == sorted(float(v) for v in oracle_levels(scale, bits))
    assert pow2_quantize(levels, scale, bits).tolist() == codes.tolist()      # every level maps to itself
    again = pow2_fake_quantize(pow2_fake_quantize(torch.randn(200), scale, bits), scale, bits)
    assert torch.equal(again, pow2_fake_quantize(again, scale, bits))          # idempotent


# --- weights of a model ----------------------------------------------------------------------------

def test_weight_top_level_is_each_channels_largest_magnitude():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(4, 3, 3, 3, generator=gen) * torch.tensor([1.0, 0.01, 3.0, 0.2]).view(4, 1, 1, 1)
    w[1, 0, 0, 0] = -0.05                          # a negative largest magnitude
    w_hat = pow2_fake_quantize_weight(w, 4)
    for c in range(4):
        absmax = float(w[c].abs().max())
        assert float(w_hat[c].abs().max()) == absmax
        assert w_hat[c].flatten().tolist() == oracle_fake_quantize(w[c].flatten(), absmax, 4)


def test_weight_axis_and_zero_channel():
    w = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.4, 0.26]])
    assert pow2_channel_scales(w).flatten().tolist() == [1.0, float32(0.4)]
    assert pow2_fake_quantize_weight(w, 3)[0].tolist() == [0.0, 0.0, 0.0]
    by_column = pow2_fake_quantize_weight(w, 3, axis=1)
    for j in range(3):
        absmax = float(w[:, j].abs().max()) or 1.0
        assert by_column[:, j].tolist() == oracle_fake_quantize(w[:, j], absmax, 3)


def test_model_copy_changes_only_layer_weights():
    from qlib.models import load_pretrained
    model = load_pretrained("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = pow2_fake_quantize_weights(model, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"the original model changed: {k}"
    for k, v in quantized.state_dict().items():
        if k.endswith("weight") and v.ndim >= 2:
            assert not torch.equal(v, before[k])
            assert torch.equal(v, pow2_fake_quantize_weight(before[k], 3))
            assert len(torch.unique(v.abs())) <= 2 ** 2 * v.shape[0]      # <= qmax + 1 magnitudes per channel
        else:
            assert torch.equal(v, before[k]), f"{k} should stay float32 as it was"


# --- multiplication by shifts ----------------------------------------------------------------------

def test_dot_product_by_shifts_is_exact():
    gen = torch.Generator().manual_seed(11)
    bits, scale = 4, float32(0.37)
    qmax = 2 ** (bits - 1) - 1
    x = torch.randint(-128, 128, (256,), generator=gen)
    q = pow2_quantize(torch.randn(256, generator=gen) * 0.2, scale, bits)
    shifted = torch.where(q != 0, torch.sign(q) * (x << (q.abs() - 1).clamp(min=0)), 0)
    by_shifts = Fraction(scale) * Fraction(1, 2 ** (qmax - 1)) * int(shifted.sum())
    exact = sum(Fraction(float(w)) * int(v) for w, v in zip(pow2_dequantize(q, scale, bits), x))
    assert by_shifts == exact


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, error", [(1, ValueError), (8, ValueError), (0, ValueError),
                                         (True, TypeError), (3.0, TypeError), ("4", TypeError)])
def test_bits_out_of_range(bits, error):
    with pytest.raises(error, match="bits"):
        pow2_quantize(torch.ones(3), 1.0, bits)


@pytest.mark.parametrize("x, match", [(torch.tensor([1.0, float("nan")]), "NaN"),
                                      (torch.tensor([float("inf")]), "infinite"),
                                      (torch.tensor([]), "empty"),
                                      ("abc", "numbers")])
def test_bad_x(x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pow2_quantize(x, 1.0, 4)


@pytest.mark.parametrize("scale, match", [(0.0, "positive"), (-1.0, "positive"), (float("nan"), "NaN"),
                                          (1e-30, "too small"), (torch.tensor([1.0, 0.0]), "positive")])
def test_bad_scale(scale, match):
    with pytest.raises(ValueError, match=match):
        pow2_quantize(torch.ones(2), scale, 7)


def test_scale_that_does_not_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        pow2_quantize(torch.ones(3, 4), torch.ones(2, 1), 4)
    with pytest.raises(ValueError, match="does not broadcast"):
        pow2_dequantize(torch.ones(3, 4, dtype=torch.int64), torch.ones(5), 4)
    with pytest.raises(ValueError, match="one scale"):
        pow2_levels(4, torch.tensor([1.0, 2.0]))


def test_bad_codes():
    with pytest.raises(ValueError, match=r"\[-3, 3\]"):
        pow2_dequantize(torch.tensor([4]), 1.0, 3)
    with pytest.raises(TypeError, match="integer"):
        pow2_dequantize(torch.tensor([1.0]), 1.0, 3)


def test_scale_too_small_for_the_smallest_level_is_refused_at_7_bits_only():
    scale = 2.0 ** -80                   # 7 bits: smallest level 2^-80 * 2^-62 = 2^-142, subnormal
    pow2_quantize(torch.tensor([scale]), scale, 6)          # 6 bits: 2^-80 * 2^-30, fine
    with pytest.raises(ValueError, match="too small"):
        pow2_quantize(torch.tensor([scale]), scale, 7)
