"""Tests of qlib.requantize: the fixed-point multiplier and gemmlowp/TFLite requantization.

Oracles:

* a plain-Python transcription of gemmlowp's ``fixedpoint.h`` and TFLite's
  ``QuantizeMultiplier`` / ``MultiplyByQuantizedMultiplier`` (below, written
  from their C++ semantics: Python ints, one value at a time, C's truncating
  division emulated, no torch), compared bit for bit on about a million values
  per function, including INT32_MIN, INT32_MAX, exact ties and every shift;
* exact rational arithmetic (``fractions.Fraction``) for the rounding rules
  that the docstrings state;
* values worked by hand.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qlib.integer_layers import _multiply_in_place
from qlib.requantize import (
    INT32_MAX,
    INT32_MIN,
    dequantize_multiplier,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_single_round,
    quantize_multiplier,
    real_multiplier,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

# --- the oracle: gemmlowp and TFLite transcribed, one Python int at a time -----------------------


def c_div(a: int, b: int) -> int:
    """C99 integer division: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def to_int32(v: int) -> int:
    """A static_cast<std::int32_t> (two's complement wrap)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def gemmlowp_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul<std::int32_t>."""
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = to_int32(c_div(ab_64 + nudge, 1 << 31))
    return INT32_MAX if overflow else ab_x2_high32


def gemmlowp_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT<std::int32_t> (Python's & and >> act as on two's complement)."""
    assert 0 <= exponent <= 31
    mask = to_int32((1 << exponent) - 1)
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def tflite_mbqm(x: int, quantized_multiplier: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier; ``shift`` is TFLite's (positive = left shift)."""
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    return gemmlowp_rdbpot(gemmlowp_srdhm(x * (1 << left_shift), quantized_multiplier), right_shift)


def tflite_mbqm_single_round(x: int, quantized_multiplier: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING."""
    assert -31 <= shift <= 30
    total_shift = 31 - shift
    round_ = 1 << (total_shift - 1)
    return (x * quantized_multiplier + round_) >> total_shift


def tflite_quantize_multiplier(double_multiplier: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: (quantized_multiplier, shift) with TFLite's shift sign (left positive)."""
    q, shift = math.frexp(double_multiplier)
    q_fixed = math.floor(Fraction(q) * (1 << 31) + Fraction(1, 2))  # TfLiteRound: half away from zero (q > 0)
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    return q_fixed, shift


# --- inputs: random, extreme and tie values ----------------------------------------------------

SPECIAL = [INT32_MIN, INT32_MIN + 1, -(2**30), -2, -1, 0, 1, 2, 2**30, INT32_MAX - 1, INT32_MAX]


def random_int32(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform int32 values, values of every magnitude 2^0 .. 2^31, and the special values."""
    uniform = rng.integers(INT32_MIN, INT32_MAX, n // 2, endpoint=True)
    bits = rng.integers(0, 32, n - n // 2 - len(SPECIAL))
    spread = rng.integers(-(2**bits), 2**bits, endpoint=True).clip(INT32_MIN, INT32_MAX)
    return np.concatenate([uniform, spread, SPECIAL]).astype(np.int64)


def srdhm_ties(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs with a * b = 2^30 * odd, so that a * b / 2^31 is exactly halfway between two integers."""
    t = rng.integers(0, 31, n)
    c = rng.integers(0, 2**15, n) * 2 + 1       # odd
    d = rng.integers(0, 2**15, n) * 2 + 1       # odd
    b = (c << t) % 2**31                        # stays below 2^31; still c' * 2^t with c' odd
    a = (d << (30 - t)) % 2**31
    sign_a = rng.choice([-1, 1], n)
    sign_b = rng.choice([-1, 1], n)
    return a * sign_a, b * sign_b


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20240605)


def _compare(ours: torch.Tensor, oracle: list[int], inputs: str) -> None:
    expected = torch.tensor(oracle, dtype=torch.int64)
    bad = (ours != expected).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} mismatches, first at {inputs} index {int(bad[0][0])}"


# --- SaturatingRoundingDoublingHighMul ----------------------------------------------------------

def test_srdhm_matches_gemmlowp_on_a_million_pairs(rng):
    n = 2**19
    a = random_int32(rng, n)
    b = np.concatenate([random_int32(rng, n)[:-len(SPECIAL)], SPECIAL[::-1]])
    ta, tb = srdhm_ties(rng, 2**18)
    a = np.concatenate([a, ta, [INT32_MIN, INT32_MIN, INT32_MAX]])
    b = np.concatenate([b, tb, [INT32_MIN, INT32_MAX, INT32_MIN]])
    ours = saturating_rounding_doubling_high_mul(torch.from_numpy(a), torch.from_numpy(b))
    oracle = [gemmlowp_srdhm(x, y) for x, y in zip(a.tolist(), b.tolist())]
    _compare(ours, oracle, "pair")


def test_srdhm_rounds_to_nearest_with_ties_upward(rng):
    """The stated rule, checked with exact fractions: floor(a b / 2^31 + 1/2), INT32_MIN^2 saturates."""
    ta, tb = srdhm_ties(rng, 2000)
    a = np.concatenate([ta, random_int32(rng, 2000)])
    b = np.concatenate([tb, random_int32(rng, 2000)])
    ours = saturating_rounding_doubling_high_mul(torch.from_numpy(a), torch.from_numpy(b)).tolist()
    for x, y, got in zip(a.tolist(), b.tolist(), ours):
        expected = math.floor(Fraction(x * y, 2**31) + Fraction(1, 2))
        assert got == min(expected, INT32_MAX), (x, y)


def test_srdhm_hand_values():
    a = torch.tensor([5 * 2**28, -5 * 2**28, INT32_MIN, INT32_MIN, INT32_MAX, 2**30, -(2**30), 3])
    b = torch.tensor([4, 4, INT32_MIN, INT32_MAX, INT32_MAX, 2**30, 2**30, 2**30])
    # 2.5 -> 3, -2.5 -> -2 (ties up); -1 * -1 saturates; -1 * (1 - 2^-31); 0.5 * 0.5 = 0.25; 3 * 0.5 = 1.5 -> 2
    expected = [3, -2, INT32_MAX, -INT32_MAX, INT32_MAX - 1, 2**29, -(2**29), 2]
    assert saturating_rounding_doubling_high_mul(a, b).tolist() == expected


# --- RoundingDivideByPOT -----------------------------------------------------------------------

def test_rdbpot_matches_gemmlowp_on_every_exponent(rng):
    n = 2**20
    x = random_int32(rng, n)
    e = rng.integers(0, 32, n)
    # exact ties: x = k * 2^e + 2^(e-1), both signs, for every e >= 1
    te = rng.integers(1, 32, 2**17)
    k = rng.integers(-(2**16), 2**16, 2**17)
    tx = np.clip(k * (1 << te) + (1 << (te - 1)), INT32_MIN, INT32_MAX)
    x = np.concatenate([x, tx, np.full(32, INT32_MIN), np.full(32, INT32_MAX)])
    e = np.concatenate([e, te, np.arange(32), np.arange(32)])
    ours = rounding_divide_by_pot(torch.from_numpy(x), torch.from_numpy(e))
    oracle = [gemmlowp_rdbpot(v, s) for v, s in zip(x.tolist(), e.tolist())]
    _compare(ours, oracle, "x")


def test_rdbpot_rounds_ties_away_from_zero():
    x = torch.tensor([5, -5, 7, -7, -6, 6, 1, -1, 3, -3, INT32_MIN, INT32_MAX])
    e = torch.tensor([1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 31, 31])
    # 2.5, -2.5, 1.75, -1.75, -1.5, 1.5, 0.5, -0.5, 1.5, -1.5, -1, 1 - 2^-31
    assert rounding_divide_by_pot(x, e).tolist() == [3, -3, 2, -2, -2, 2, 1, -1, 2, -2, -1, 1]


def test_rdbpot_with_a_scalar_exponent(rng):
    x = random_int32(rng, 10_000)
    for e in range(32):
        ours = rounding_divide_by_pot(torch.from_numpy(x), e).tolist()
        assert ours == [gemmlowp_rdbpot(v, e) for v in x.tolist()], e


# --- QuantizeMultiplier ------------------------------------------------------------------------

def _tflite_shift_to_ours(tflite_shift: int) -> int:
    return -tflite_shift


def test_quantize_multiplier_matches_tflite(rng):
    exps = rng.uniform(-31.9, 30.9, 20_000)
    special = [0.3, 0.5, 1.0, 2.0, 0.5 + 2**-32, 0.75 + 5 * 2**-32, 1 - 2**-33, 1 - 2**-40, 2**-32, 0.75, 1 / 3]
    values = np.concatenate([2.0**exps, rng.uniform(1e-4, 1.0, 20_000), special])
    m0, shift = quantize_multiplier(torch.from_numpy(values))
    for v, got_m0, got_shift in zip(values.tolist(), m0.tolist(), shift.tolist()):
        q, s = tflite_quantize_multiplier(v)
        assert (got_m0, got_shift) == (q, _tflite_shift_to_ours(s)), v
        assert 2**30 <= got_m0 < 2**31


def test_quantize_multiplier_hand_values():
    assert [t.item() for t in quantize_multiplier(0.3)] == [1288490189, 1]
    assert [t.item() for t in quantize_multiplier(0.5)] == [2**30, 0]
    assert [t.item() for t in quantize_multiplier(1.0)] == [2**30, -1]
    assert [t.item() for t in quantize_multiplier(3.0)] == [3 * 2**29, -2]
    # carry: f = 1 - 2^-40 rounds to 2^31, which becomes 2^30 with one shift less
    assert [t.item() for t in quantize_multiplier(1 - 2**-40)] == [2**30, -1]
    # a tie: f * 2^31 = 2^30 + 0.5 rounds away from zero (half to even would give 2^30)
    assert [t.item() for t in quantize_multiplier(0.5 + 2**-32)] == [2**30 + 1, 0]
    assert [t.item() for t in quantize_multiplier(0.75 + 5 * 2**-32)] == [3 * 2**29 + 3, 0]  # 2.5 -> 3
    # a Python float is taken at float64 precision (as a float32 0.1 it would give 1717986944)
    assert quantize_multiplier(0.1)[0].item() == 1717986918


def test_quantize_multiplier_error_is_below_2_pow_minus_31(rng):
    values = torch.from_numpy(rng.uniform(1e-6, 100.0, 5000))
    m0, shift = quantize_multiplier(values)
    approx = dequantize_multiplier(m0, shift)
    rel = ((approx - values) / values).abs()
    assert float(rel.max()) <= 2**-31


def test_real_multiplier():
    assert real_multiplier(0.5, 0.25, 2.0).item() == 0.0625
    sw = torch.tensor([0.1, 0.2], dtype=torch.float32)
    expected = [float(Fraction(0.02) * Fraction(float(s)) / Fraction(0.05)) for s in sw.tolist()]
    got = real_multiplier(0.02, sw, 0.05)
    assert got.dtype == torch.float64
    # float64 inputs to the product: the product is exact, the quotient correctly rounded
    x = torch.tensor(0.02, dtype=torch.float32).double()
    assert got.tolist() == [float(x * s / torch.tensor(0.05, dtype=torch.float32).double()) for s in sw.double()]
    assert max(abs(g - e) / e for g, e in zip(got.tolist(), expected)) < 1e-6


# --- MultiplyByQuantizedMultiplier -------------------------------------------------------------

def test_mbqm_matches_tflite_for_every_shift(rng):
    """Every right shift 0..31 and left shift 1..31, with x limited so that x * 2^left fits in int32."""
    xs, m0s, shifts = [], [], []
    for n in range(-31, 32):
        count = 16_384
        x = random_int32(rng, count)
        if n < 0:
            x = x >> -n  # x * 2^-n fits in int32
        m0 = rng.integers(2**30, 2**31, count)
        xs.append(x), m0s.append(m0), shifts.append(np.full(count, n))
    x, m0, n = (np.concatenate(v) for v in (xs, m0s, shifts))
    ours = multiply_by_quantized_multiplier(torch.from_numpy(x), torch.from_numpy(m0), torch.from_numpy(n))
    oracle = [tflite_mbqm(a, b, -s) for a, b, s in zip(x.tolist(), m0.tolist(), n.tolist())]
    _compare(ours, oracle, "x")


def test_single_round_matches_tflite_for_every_shift(rng):
    xs, m0s, shifts = [], [], []
    for n in range(-30, 32):
        count = 8192
        x = random_int32(rng, count)
        if n < 0:
            x = x >> (-n + 1)
        m0 = rng.integers(2**30, 2**31, count)
        xs.append(x), m0s.append(m0), shifts.append(np.full(count, n))
    x, m0, n = (np.concatenate(v) for v in (xs, m0s, shifts))
    ours = multiply_by_quantized_multiplier_single_round(torch.from_numpy(x), torch.from_numpy(m0),
                                                         torch.from_numpy(n))
    oracle = [tflite_mbqm_single_round(a, b, -s) for a, b, s in zip(x.tolist(), m0.tolist(), n.tolist())]
    _compare(ours, oracle, "x")


def test_single_round_is_round_half_up_of_the_exact_product(rng):
    x = random_int32(rng, 3000)
    m0 = rng.integers(2**30, 2**31, 3000)
    n = rng.integers(0, 32, 3000)
    ours = multiply_by_quantized_multiplier_single_round(torch.from_numpy(x), torch.from_numpy(m0),
                                                         torch.from_numpy(n)).tolist()
    for v, m, s, got in zip(x.tolist(), m0.tolist(), n.tolist(), ours):
        assert got == math.floor(Fraction(v * m, 2 ** (31 + s)) + Fraction(1, 2))


def test_two_roundings_differ_from_one_by_at_most_one(rng):
    x = torch.from_numpy(random_int32(rng, 200_000))
    m0 = torch.from_numpy(rng.integers(2**30, 2**31, 200_000))
    n = torch.from_numpy(rng.integers(0, 32, 200_000))
    double = multiply_by_quantized_multiplier(x, m0, n)
    single = multiply_by_quantized_multiplier_single_round(x, m0, n)
    diff = (double - single).abs()
    assert int(diff.max()) == 1 and 0 < int((diff != 0).sum()) < 0.05 * diff.numel()


def test_double_rounding_hand_value():
    # x = 3, M = 0.5 * 2^-1 = 0.25: exact 0.75. SRDHM(3, 2^30) = 1.5 -> 2, then 2 / 2 = 1 -> 1.
    # x = -5, M = 0.25: exact -1.25 -> -1. SRDHM(-5, 2^30) = -2.5 -> -2 (tie up), -2 / 2 = -1.
    # x = 5 * 2^28... single rounding of x = 6, M = 0.25: 1.5 -> 2 (tie up); -6: -1.5 -> -1.
    assert multiply_by_quantized_multiplier(torch.tensor([3, -5]), 2**30, 1).tolist() == [1, -1]
    assert multiply_by_quantized_multiplier_single_round(torch.tensor([6, -6]), 2**30, 1).tolist() == [2, -1]
    # the two-rounding version sends -6 * 0.25 = -1.5 away from zero: SRDHM(-6, 2^30) = -3, -3/2 -> -2
    assert multiply_by_quantized_multiplier(torch.tensor([6, -6]), 2**30, 1).tolist() == [2, -2]


def test_fast_path_of_the_layers_equals_the_readable_functions(rng):
    x = torch.from_numpy(random_int32(rng, 2**17))

    def fast(v, m0, n):
        return _multiply_in_place(v.clone(), torch.as_tensor(m0), torch.as_tensor(n))

    for m0 in (2**30, 2**31 - 1, 1288490189, int(rng.integers(2**30, 2**31))):
        for n in range(32):
            assert torch.equal(fast(x, m0, n), multiply_by_quantized_multiplier(x, m0, n)), (m0, n)
    # exact ties of both roundings
    for n in range(1, 32):
        y = torch.arange(-40, 41, dtype=torch.int64) * 2 ** (n - 1)
        y = y[(y >= INT32_MIN) & (y <= INT32_MAX)]
        assert torch.equal(fast(y, 2**30, n), multiply_by_quantized_multiplier(y, 2**30, n))
    # one multiplier and shift per channel (the last axis), shifts 0..31 side by side
    acc = torch.from_numpy(random_int32(rng, 2**15 * 32)).reshape(-1, 32)
    m0 = torch.from_numpy(rng.integers(2**30, 2**31, 32))
    n = torch.arange(32)
    assert torch.equal(fast(acc, m0, n), multiply_by_quantized_multiplier(acc, m0, n, axis=1))


# --- requantize --------------------------------------------------------------------------------

def test_requantize_matches_the_transcription_with_zero_point_and_clamp(rng):
    acc = random_int32(rng, 100_000) >> rng.integers(0, 24, 100_000)
    m0, shift = quantize_multiplier(torch.from_numpy(rng.uniform(1e-4, 0.9, 100_000)))
    for zp, qmin, qmax in ((0, -128, 127), (-5, -128, 127), (128, 0, 255), (0, -127, 127)):
        ours = requantize(torch.from_numpy(acc), m0, shift, zp, qmin, qmax)
        oracle = [min(max(tflite_mbqm(a, m, -s) + zp, qmin), qmax)
                  for a, m, s in zip(acc.tolist(), m0.tolist(), shift.tolist())]
        _compare(ours, oracle, "acc")


def test_requantize_per_channel_along_an_axis(rng):
    acc = torch.from_numpy(rng.integers(-(2**20), 2**20, (4, 3, 5)))
    m0, shift = quantize_multiplier(torch.tensor([0.01, 0.002, 0.3]))
    out = requantize(acc, m0, shift, 3, -128, 127, axis=1)
    for c in range(3):
        assert torch.equal(out[:, c], requantize(acc[:, c], m0[c], shift[c], 3, -128, 127))
    single = requantize(acc, m0, shift, 3, -128, 127, axis=1, single_round=True)
    assert int((single - out).abs().max()) <= 1
    # broadcasting without axis: m0 shaped (3, 1)
    assert torch.equal(requantize(acc, m0.reshape(3, 1), shift.reshape(3, 1), 3, -128, 127), out)


def test_requantize_hand_worked():
    # M = 0.01 -> m0 = 1374389535, shift = 6 (0.64 * 2^-6); 1000 * 0.01 = 10, -1000 -> -10,
    # 12345 * 0.01 = 123.45 -> 123 + 3 = 126; 50000 -> 500 + 3, clamped to 127; 50 -> 0.5 -> 1 (tie away)
    m0, shift = quantize_multiplier(0.01)
    assert (m0.item(), shift.item()) == (1374389535, 6)
    acc = torch.tensor([1000, -1000, 12345, 50000, 50, -50])
    assert requantize(acc, m0, shift, 3, -128, 127).tolist() == [13, -7, 126, 127, 4, 2]
    assert requantize(acc, m0, shift, 3, 3, 127).tolist() == [13, 3, 126, 127, 4, 3]  # fused ReLU


def test_int32_inputs_and_numpy_inputs_give_the_same_result(rng):
    acc = rng.integers(-(2**20), 2**20, 1000)
    a = requantize(torch.from_numpy(acc).to(torch.int32), 1374389535, 6, 0, -128, 127)
    b = requantize(acc, 1374389535, 6, 0, -128, 127)
    assert torch.equal(a, b) and a.dtype == torch.int64


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error, words", [
    (0.0, ValueError, "positive"),
    (-0.5, ValueError, "positive"),
    (float("nan"), ValueError, "NaN"),
    (float("inf"), ValueError, "infinite"),
    (2.0**-40, ValueError, "shift"),
    (2.0**31, ValueError, "shift"),
    ("0.5", TypeError, "multiplier"),
    (True, TypeError, "boolean"),
])
def test_quantize_multiplier_refuses(bad, error, words):
    with pytest.raises(error, match=words):
        quantize_multiplier(bad)


def test_quantize_multiplier_refuses_an_empty_tensor():
    with pytest.raises(ValueError, match="empty"):
        quantize_multiplier(torch.tensor([]))


def test_requantize_refuses_bad_arguments():
    acc = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(TypeError, match="integers"):
        requantize(acc.float(), 2**30, 1, 0, -128, 127)
    with pytest.raises(TypeError, match="integers"):
        requantize(acc.bool(), 2**30, 1, 0, -128, 127)
    with pytest.raises(ValueError, match="outside"):
        requantize(torch.tensor([2**31]), 2**30, 1, 0, -128, 127)
    with pytest.raises(ValueError, match="zero_point=200 is outside"):
        requantize(acc, 2**30, 1, 200, -128, 127)
    with pytest.raises(TypeError, match="zero_point"):
        requantize(acc, 2**30, 1, 0.5, -128, 127)
    with pytest.raises(ValueError, match="qmin < qmax"):
        requantize(acc, 2**30, 1, 0, 127, -128)
    with pytest.raises(ValueError, match="2 values but the input has 3 channels"):
        requantize(acc, torch.tensor([2**30, 2**30]), 1, 0, -128, 127, axis=1)
    with pytest.raises(ValueError, match="does not broadcast"):
        requantize(acc, torch.tensor([2**30, 2**30, 2**30, 2**30]), 1, 0, -128, 127)
    with pytest.raises(ValueError, match="shift"):
        requantize(acc, 2**30, 32, 0, -128, 127)
    with pytest.raises(ValueError, match="m0"):
        requantize(acc, 2**31, 1, 0, -128, 127)
    with pytest.raises(ValueError, match="m0"):
        requantize(acc, -1, 1, 0, -128, 127)
    with pytest.raises(ValueError, match="empty"):
        requantize(torch.tensor([], dtype=torch.int64), 2**30, 1, 0, -128, 127)
    with pytest.raises(ValueError, match="out of range"):
        requantize(acc, 2**30, 1, 0, -128, 127, axis=2)


def test_left_shift_overflow_is_an_error():
    with pytest.raises(ValueError, match="overflows int32"):
        multiply_by_quantized_multiplier(torch.tensor([2**20]), 2**30, -12)
    with pytest.raises(ValueError, match="overflows int32"):
        multiply_by_quantized_multiplier_single_round(torch.tensor([2**30]), 2**31 - 1, -5)
    with pytest.raises(ValueError, match="shift"):
        multiply_by_quantized_multiplier_single_round(torch.tensor([1]), 2**30, -31)


def test_rdbpot_refuses_an_exponent_out_of_range():
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(torch.tensor([1]), 32)
    with pytest.raises(ValueError, match="exponent"):
        rounding_divide_by_pot(torch.tensor([1]), -1)
