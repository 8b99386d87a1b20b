"""Tests of qlib.rounding: tie rules against hand values, numpy and Python's decimal module."""
from __future__ import annotations

import decimal

import numpy as np
import pytest
import torch

from qlib.linear import quantize
from qlib.rounding import ROUNDING_MODES, round_half_away_from_zero, round_half_to_even, round_with

TIES = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]
# the largest float32 below 0.5: floor(x + 0.5) computed in float32 would wrongly give 1
BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0.0)))


def _random_halves_and_values(seed, n=5000):
    """Float32 exact halves k + 0.5 (|k| < 2**22) and arbitrary values, as a numpy array."""
    rng = np.random.default_rng(seed)
    k = rng.integers(-(2**22), 2**22, size=n).astype(np.float64)
    halves = k + 0.5
    small_halves = rng.integers(-50, 50, size=n) + 0.5
    values = rng.normal(scale=rng.choice([1e-3, 1.0, 1e3, 1e7], size=n), size=n)
    big = rng.integers(2**23, 2**30, size=200).astype(np.float64)  # float32 integers beyond 2**23
    extra = np.array([0.0, -0.0, BELOW_HALF, -BELOW_HALF, 8388609.0, -8388609.0, 1e30, -1e30])
    x = np.concatenate([halves, small_halves, values, big, -big, extra]).astype(np.float32)
    assert np.all(x[:n] == halves)  # the halves are exact in float32
    return x


def _decimal_round_half_away(values):
    """Python's decimal ROUND_HALF_UP rounds ties away from zero; Decimal(float) is exact."""
    return np.array([float(decimal.Decimal(float(v)).to_integral_value(rounding=decimal.ROUND_HALF_UP))
                     for v in values])


def test_half_to_even_hand_values():
    x = torch.tensor(TIES)
    assert round_half_to_even(x).tolist() == [-4.0, -2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0]
    assert round_with(x, "half_to_even").tolist() == [-4.0, -2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0]


def test_half_away_from_zero_hand_values():
    x = torch.tensor(TIES)
    assert round_half_away_from_zero(x).tolist() == [-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0]
    assert round_with(x, "half_away_from_zero").tolist() == [-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("mode", ["half_to_even", "half_away_from_zero"])
def test_non_ties_round_to_nearest_in_both_modes(mode):
    x = torch.tensor([BELOW_HALF, -BELOW_HALF, 0.51, -0.51, 1.4, -1.6, 2.0, -7.0, 1e-30])
    assert round_with(x, mode).tolist() == [0.0, -0.0, 1.0, -1.0, 1.0, -2.0, 2.0, -7.0, 0.0]


def test_floor_and_ceil_hand_values():
    x = torch.tensor([-1.5, -0.5, 0.5, 1.5, 2.0])
    assert round_with(x, "floor").tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert round_with(x, "ceil").tolist() == [-1.0, -0.0, 1.0, 2.0, 2.0]


def test_default_mode_is_half_to_even():
    x = torch.tensor(TIES)
    assert torch.equal(round_with(x), torch.tensor([-4.0, -2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_half_to_even_vs_numpy(dtype):
    x = _random_halves_and_values(seed=0)
    got = round_half_to_even(torch.from_numpy(x).to(dtype))
    assert got.dtype == dtype
    expected = np.round(x.astype(np.float64))  # numpy rounds half to even
    np.testing.assert_array_equal(got.double().numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_half_away_from_zero_vs_decimal(dtype):
    x = _random_halves_and_values(seed=1)
    got = round_half_away_from_zero(torch.from_numpy(x).to(dtype))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.double().numpy(), _decimal_round_half_away(x))


def test_half_away_from_zero_on_float64_edge_values():
    # float64 values where |x| + 0.5 is not exact in float64 (float32 inputs are all exact)
    x = np.array([np.nextafter(0.5, 0.0), -np.nextafter(0.5, 0.0), 2.0**52 + 1, -(2.0**52 + 1), 2.0**53 - 1])
    got = round_half_away_from_zero(torch.from_numpy(x))
    np.testing.assert_array_equal(got.numpy(), _decimal_round_half_away(x))


def test_the_two_modes_differ_exactly_on_ties_with_an_even_floor():
    x = torch.from_numpy(_random_halves_and_values(seed=2))
    differ = round_half_to_even(x) != round_half_away_from_zero(x)
    x64 = x.double()  # x - floor(x) is exact in float64 for every float32 x
    is_tie = (x64 - torch.floor(x64)) == 0.5
    assert bool(differ.any())
    # 2.5 -> 2 vs 3 and -2.5 -> -2 vs -3 differ; 1.5 and -1.5 go to +-2 both ways
    assert torch.equal(differ, is_tie & (torch.floor(x.abs()) % 2 == 0))


def test_quantize_uses_the_named_mode():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5])
    assert quantize(x, 1.0, 0, -128, 127).tolist() == [0, 2, 2, 0, -2]
    assert quantize(x, 1.0, 0, -128, 127, rounding="half_away_from_zero").tolist() == [1, 2, 3, -1, -3]
    assert quantize(x, 1.0, 0, -128, 127, rounding="floor").tolist() == [0, 1, 2, -1, -3]


def test_modes_are_named():
    assert set(ROUNDING_MODES) == {"half_to_even", "half_away_from_zero", "floor", "ceil"}


@pytest.mark.parametrize("mode", ["nearest", "round", "HALF_TO_EVEN", "", None])
def test_unknown_mode_is_refused(mode):
    with pytest.raises(ValueError, match="unknown rounding mode") as info:
        round_with(torch.tensor([0.5]), mode)
    assert "half_to_even" in str(info.value)  # the message lists the valid modes
