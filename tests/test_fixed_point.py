"""Tests of qlib.fixed_point: the chapter's example, ties in each rounding mode, saturation, round trips.

Oracles: values worked by hand, torch's fake quantization with scale 2^-f and zero point 0
(a fixed-point format is exactly that quantizer), Python's decimal module for ties
away from zero, and integer arithmetic on every 8-bit code.
"""
from __future__ import annotations

import decimal
import math

import numpy as np
import pytest
import torch

from qlib._reference import ReferenceUnavailable, blocked
from qlib.fixed_point import decode_fixed, encode_fixed, fixed_point_range
from qlib.integers import decode_integer, encode_integer


def test_worked_example_00110001_with_4_fraction_bits():
    raw = decode_integer("00110001")
    assert raw == 49
    assert decode_fixed(raw, 4) == 3.0625
    assert encode_fixed(3.0625, 8, 4) == 49
    assert encode_integer(encode_fixed(3.0625, 8, 4), 8) == "00110001"


@pytest.mark.parametrize("w, f, expected", [
    (8, 4, (-8.0, 7.9375)), (8, 0, (-128.0, 127.0)), (8, 7, (-1.0, 127 / 128)), (16, 15, (-1.0, 1 - 2**-15)),
    (4, 6, (-0.125, 7 / 64)),  # more fraction bits than bits: all values are below 1/8
])
def test_range(w, f, expected):
    assert fixed_point_range(w, f) == expected


# x = (k + 1/2) * 2^-4, an exact tie at 4 fraction bits
@pytest.mark.parametrize("x, even, away, floor, ceil", [
    (0.5 / 16, 0, 1, 0, 1),
    (1.5 / 16, 2, 2, 1, 2),
    (2.5 / 16, 2, 3, 2, 3),
    (-0.5 / 16, 0, -1, -1, 0),
    (-1.5 / 16, -2, -2, -2, -1),
    (-2.5 / 16, -2, -3, -3, -2),
    (3.0625 + 1 / 32, 50, 50, 49, 50),
])
def test_ties_in_each_rounding_mode(x, even, away, floor, ceil):
    got = [encode_fixed(x, 8, 4, mode) for mode in ("half_to_even", "half_away_from_zero", "floor", "ceil")]
    assert got == [even, away, floor, ceil]


def test_default_rounding_is_half_to_even():
    assert encode_fixed(2.5 / 16, 8, 4) == 2


def test_saturation_never_wraps():
    assert encode_fixed(100.0, 8, 4) == 127  # 7.9375
    assert encode_fixed(-100.0, 8, 4) == -128  # -8
    assert encode_fixed(7.96875, 8, 4) == 127  # 127.5 rounds to 128, one past the end: saturate
    assert encode_fixed(-8.03125, 8, 4, "half_away_from_zero") == -128
    assert encode_fixed(math.inf, 8, 4) == 127 and encode_fixed(-math.inf, 8, 4) == -128
    assert encode_fixed(10**30, 16, 8) == 32767  # a huge Python int
    assert encode_fixed(-3, 8, 4) == -48  # an int: exact, -3 * 16


def test_every_8_bit_code_round_trips():
    for f in (0, 3, 4, 7):
        for raw in range(-128, 128):
            x = decode_fixed(raw, f)
            assert x == raw / 2**f  # exact: a power-of-two division
            assert encode_fixed(x, 8, f) == raw


def test_half_to_even_matches_torch_fake_quantize():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(scale=6.0, size=20_000), (rng.integers(-300, 300, size=2000) + 0.5) / 16])
    x = x.astype(np.float32)
    for w, f in [(8, 4), (8, 2), (12, 6)]:
        qmin, qmax = -(2 ** (w - 1)), 2 ** (w - 1) - 1
        scale = 2.0**-f
        fq = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), scale, 0, qmin, qmax)
        expected = (fq.double() / scale).round().to(torch.int64).tolist()  # fq = q * 2^-f exactly
        assert [encode_fixed(float(v), w, f) for v in x] == expected


def test_half_away_from_zero_matches_decimal():
    rng = np.random.default_rng(1)
    x = np.concatenate([(rng.integers(-250, 250, size=1000) + 0.5) / 16, rng.normal(scale=4.0, size=1000)])
    for v in x:
        exact = decimal.Decimal(float(v)) * 16  # exact: Decimal of a float is exact
        expected = int(exact.to_integral_value(rounding=decimal.ROUND_HALF_UP))  # ties away from zero
        assert encode_fixed(float(v), 8, 4, "half_away_from_zero") == min(max(expected, -128), 127)


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        encode_fixed(math.nan, 8, 4)
    with pytest.raises(TypeError, match="real number"):
        encode_fixed("1.5", 8, 4)
    with pytest.raises(ValueError, match="unknown rounding mode"):
        encode_fixed(1.5, 8, 4, "stochastic")
    with pytest.raises(ValueError, match="frac_bits must be 0 or more"):
        encode_fixed(1.5, 8, -1)
    with pytest.raises(TypeError, match="frac_bits must be an integer"):
        decode_fixed(3, 4.0)
    with pytest.raises(TypeError, match="raw must be an integer"):
        decode_fixed(3.0, 4)
    with pytest.raises(ValueError, match="bits must be between"):
        fixed_point_range(0, 0)


@pytest.mark.parametrize("name, call", [
    ("encode_fixed", lambda: encode_fixed(1.0, 8, 4)),
    ("decode_fixed", lambda: decode_fixed(16, 4)),
])
def test_references_refuse_while_blocked(name, call):
    call()
    with blocked([name]), pytest.raises(ReferenceUnavailable, match=name):
        call()
