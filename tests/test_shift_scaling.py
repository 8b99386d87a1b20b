"""Tests of qlib.shift_scaling: N2D2's fixed-point, single-shift and double-shift scale approximations.

Oracles: values worked by hand (N2D2's documentation example, alpha = 0.0119),
exhaustive searches over every parameter in float64 numpy, and exact rational
arithmetic (``fractions.Fraction``) for the rounding of the rescaled integers.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qlib.requantize import dequantize_multiplier, quantize_multiplier
from qlib.shift_scaling import (
    MODES,
    approximate_scale,
    double_shift_rescale,
    double_shift_scaling,
    fixed_point_rescale,
    fixed_point_scaling,
    single_shift_rescale,
    single_shift_scaling,
)


def test_worked_example_of_the_n2d2_documentation():
    alpha = 0.0119
    single = approximate_scale(alpha, "single_shift")
    double = approximate_scale(alpha, "double_shift")
    fixed = approximate_scale(alpha, "fixed_point", bits=16)
    assert single.params == (6,) and single.value == Fraction(1, 64)
    assert double.params == (1, 7) and double.value == Fraction(1, 128) + Fraction(1, 256)
    assert fixed.params == (24956, 21)  # 0.0119 * 2^21 = 24955.9; 2^22 would need 49912 > 32767
    assert round(double.relative_error, 4) == -0.0152  # N2D2 writes the ratio as a "precision" of 0.9848
    assert round(single.relative_error, 3) == 0.313
    assert abs(fixed.relative_error) < 5e-6
    # 1231 * 0.0119 = 14.6489: the approximations give 19.23 -> 19, 14.43 -> 14, 14.6489 -> 15
    x = torch.tensor([1231, -1231])
    assert single.apply(x).tolist() == [19, -19]
    assert double.apply(x).tolist() == [14, -14]
    assert fixed.apply(x).tolist() == [15, -15]


def test_the_double_shift_is_a_sum_of_two_powers_of_two():
    """The lecture writes alpha -> 2^n + 2^m; N2D2 computes (x + x >> a) >> b: the same set of values."""
    for alpha in (0.9, 0.3, 0.0119, 1e-5):
        a, b = double_shift_scaling(alpha)
        value = approximate_scale(alpha, "double_shift").value
        assert value == Fraction(1, 2**b) + Fraction(1, 2 ** (a + b))


@pytest.fixture(scope="module")
def scales():
    rng = np.random.default_rng(6)
    return np.concatenate([2.0 ** rng.uniform(-20, 0, 300), [1.0, 0.5, 0.75, 0.375, 0.0119]])


def test_single_shift_is_the_best_power_of_two(scales):
    s = np.arange(0, 32)
    for alpha in scales:
        errors = np.abs(2.0**-s / alpha - 1)
        best = single_shift_scaling(float(alpha))
        assert errors[best] == errors.min(), alpha


def test_double_shift_is_the_best_pair(scales):
    a, b = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    values = (1 + 2.0**-a) * 2.0**-b
    for alpha in scales:
        errors = np.abs(values / alpha - 1)
        got_a, got_b = double_shift_scaling(float(alpha))
        assert errors[got_a, got_b] <= errors.min() * (1 + 1e-12), alpha
        # never worse than a single shift (a = 0 is one) and within 1/3 of the scale's binade
        single = abs(2.0 ** -single_shift_scaling(float(alpha)) / alpha - 1)
        assert errors[got_a, got_b] <= single


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_fixed_point_is_the_best_m_that_fits(scales, bits):
    m_max = 2 ** (bits - 1) - 1
    for alpha in scales:
        m, f = fixed_point_scaling(float(alpha), bits)
        assert 2 ** (bits - 2) <= m <= m_max
        err = abs(Fraction(m, 2**f) / Fraction(float(alpha)) - 1)
        assert err <= Fraction(1, 2 * m - 1)
        # exhaustive: no F in 0..80 with a fitting M does better
        for g in range(81):
            mg = math.floor(Fraction(float(alpha)) * 2**g + Fraction(1, 2))
            if 1 <= mg <= m_max:
                assert err <= abs(Fraction(mg, 2**g) / Fraction(float(alpha)) - 1), (alpha, g)


def test_the_errors_of_the_modes_compare_as_expected(scales):
    """Double shift beats single shift; 16-bit fixed point beats both; Q0.31 (gemmlowp) beats 16 bits."""
    for alpha in scales:
        errs = {mode: abs(approximate_scale(float(alpha), mode).relative_error) for mode in MODES}
        assert errs["fixed_point"] <= errs["double_shift"] <= errs["single_shift"] <= 1 / 3
        assert errs["fixed_point"] <= 1 / (2**15 - 1)
        m0, shift = quantize_multiplier(float(alpha))
        q31 = abs(float(dequantize_multiplier(m0, shift)) / alpha - 1)
        assert q31 <= 2**-31 and q31 <= errs["fixed_point"]


def _round_half_up(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2))


def test_rescaling_rounds_once_half_up():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.integers(-(2**31), 2**31, 3000), [-(2**31), 2**31 - 1, 0, 1, -1]])
    tx = torch.from_numpy(x)
    for alpha in (0.9, 0.0119, 3e-4):
        m, f = fixed_point_scaling(alpha, 16)
        s = single_shift_scaling(alpha)
        a, b = double_shift_scaling(alpha)
        got = [fixed_point_rescale(tx, m, f).tolist(), single_shift_rescale(tx, s).tolist(),
               double_shift_rescale(tx, a, b).tolist()]
        values = [Fraction(m, 2**f), Fraction(1, 2**s), (1 + Fraction(1, 2**a)) / 2**b]
        for out, value in zip(got, values):
            assert out == [_round_half_up(v * value) for v in x.tolist()]


def test_rescaling_ties_hand_values():
    # x * 2^-2: 6 -> 1.5 -> 2, -6 -> -1.5 -> -1 (ties toward +infinity), 5 -> 1.25 -> 1
    assert single_shift_rescale(torch.tensor([6, -6, 5, -5]), 2).tolist() == [2, -1, 1, -1]
    # x * 3 * 2^-3 = x * 0.375: 4 -> 1.5 -> 2, -4 -> -1.5 -> -1
    assert fixed_point_rescale(torch.tensor([4, -4]), 3, 3).tolist() == [2, -1]
    # double shift (1 + 2^-1) * 2^-2 = 0.375: the same
    assert double_shift_rescale(torch.tensor([4, -4]), 1, 2).tolist() == [2, -1]
    assert single_shift_rescale(torch.tensor([7]), 0).tolist() == [7]


def test_fixed_point_above_one():
    m, f = fixed_point_scaling(3.7, 16)
    assert (m, f) == (30310, 13)  # 3.7 * 2^13 = 30310.4
    assert approximate_scale(3.7, "fixed_point").apply(torch.tensor([10])).tolist() == [37]


@pytest.mark.parametrize("call, error, words", [
    (lambda: single_shift_scaling(0.0), ValueError, "positive"),
    (lambda: single_shift_scaling(-1.0), ValueError, "positive"),
    (lambda: double_shift_scaling(float("nan")), ValueError, "finite"),
    (lambda: single_shift_scaling(2.0), ValueError, "above 1"),
    (lambda: double_shift_scaling(1e-12), ValueError, "beyond 31"),
    (lambda: double_shift_scaling(1.5), ValueError, "fixed point"),
    (lambda: fixed_point_scaling(1e6, 16), ValueError, "more than 16 bits"),
    (lambda: fixed_point_scaling(0.1, 40), ValueError, "at most 32"),
    (lambda: fixed_point_scaling(0.1, 1), ValueError, "bits"),
    (lambda: approximate_scale(0.1, "triple_shift"), ValueError, "unknown mode"),
    (lambda: single_shift_scaling("0.1"), TypeError, "real number"),
    (lambda: single_shift_rescale(torch.tensor([1.5]), 2), TypeError, "integers"),
    (lambda: single_shift_rescale(torch.tensor([1]), -1), ValueError, "shift"),
    (lambda: double_shift_rescale(torch.tensor([1]), 40, 1), ValueError, "at most 31"),
])
def test_bad_input_is_refused(call, error, words):
    with pytest.raises(error, match=words):
        call()
