"""Lab 1 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import LabGradingTests, Target, Wrong

LAB = "lab01_number_formats"
POINTS = {"test_encode_integer": 2, "test_decode_integer": 2, "test_fixed_point": 3, "test_decode_float": 3,
          "test_encode_float": 6, "test_mx_quantize": 4}

WRONG = {
    "sign_magnitude_as_twos_complement": Wrong("encode_integer", "test_encode_integer",
                                               "first bit 1 for a negative value", '''
def encode_integer(value, bits, encoding="twos_complement"):
    lo = 0 if encoding == "unsigned" else -(2 ** (bits - 1)) + (encoding == "sign_magnitude")
    hi = 2**bits - 1 if encoding == "unsigned" else 2 ** (bits - 1) - 1
    if not lo <= value <= hi:
        raise ValueError("out of range")
    return format(value % 2**bits, f"0{bits}b")
'''),
    "twos_complement_read_as_unsigned": Wrong("decode_integer", "test_decode_integer",
                                              "subtract 2^bits from the unsigned value", '''
def decode_integer(bit_string, encoding="twos_complement"):
    u = int(bit_string, 2)
    if encoding == "sign_magnitude" and bit_string[0] == "1":
        return -(u - 2 ** (len(bit_string) - 1))
    return u
'''),
    "fixed_point_truncates": Wrong("fixed_point", "test_fixed_point", "ties to even", '''
def encode_fixed(x, total_bits, frac_bits, rounding="half_to_even"):
    raw = int(x * 2**frac_bits)
    return min(max(raw, -(2 ** (total_bits - 1))), 2 ** (total_bits - 1) - 1)


def decode_fixed(raw, frac_bits):
    return raw / 2**frac_bits
'''),
    "subnormals_with_hidden_one": Wrong("decode_float", "test_decode_float", "no hidden 1", '''
def decode_float(bits, fmt):
    E, M = fmt.exponent_bits, fmt.mantissa_bits
    sign, e, m = (bits >> (E + M)) & 1, (bits >> M) & (2**E - 1), bits & (2**M - 1)
    if fmt.special == "ieee" and e == 2**E - 1:
        return math.nan if m else (-math.inf if sign else math.inf)
    if fmt.special == "fn" and e == 2**E - 1 and m == 2**M - 1:
        return math.nan
    magnitude = math.ldexp(2**M + m, e - fmt.bias - M)
    return -magnitude if sign else magnitude
'''),
    "encode_truncates": Wrong("encode_float", "test_encode_float", "rounded toward zero", '''
def encode_float(x, fmt):
    E, M, bias = fmt.exponent_bits, fmt.mantissa_bits, fmt.bias
    sign_bit = (1 << (E + M)) if math.copysign(1.0, x) < 0 else 0
    if math.isnan(x):
        return ((2**E - 1) << M) | (2**M - 1)
    top = (2**M - 2) if fmt.special == "fn" else (2**M - 1)
    overflow = sign_bit | ((2**E - 1) << M) | (0 if fmt.special == "ieee" else top)
    a = abs(x)
    if math.isinf(a) or a > fmt.max_value:
        return overflow
    exponent = max(math.frexp(a)[1] - 1, 1 - bias) if a > 0 else 1 - bias
    n = int(math.ldexp(a, M - exponent))          # truncates
    if n < 2**M:
        return sign_bit | n
    return sign_bit | ((exponent + bias) << M) | (n - 2**M)
'''),
    "mx_without_clamp": Wrong("mx_quantize", "test_mx_quantize", "shared exponent", '''
def mx_quantize(x, element, block_size=32):
    fmt = element.float_format
    amax = max(abs(float(v)) for v in x)
    s = -127 if amax == 0 else round(math.log2(amax)) - element.emax
    return s, [encode_float(math.ldexp(float(v), -s), fmt) for v in x]
'''),
    "saturates_at_8_bits": Wrong("fixed_point", "test_fixed_point", "A hidden check failed for encode_fixed", '''
def encode_fixed(x, total_bits, frac_bits, rounding="half_to_even"):
    return min(max(round(x * 2**frac_bits), -128), 127)


def decode_fixed(raw, frac_bits):
    return raw * 2.0**-frac_bits
'''),
}

# A different, correct algorithm: exact binary search over the ordered positive codes (fractions).
DIFFERENT = {
    "encode_integer": '''
def encode_integer(value, bits, encoding="twos_complement"):
    if encoding == "unsigned":
        ok, pattern = 0 <= value < (1 << bits), value
    elif encoding == "sign_magnitude":
        ok, pattern = abs(value) < (1 << (bits - 1)), (abs(value) | ((value < 0) << (bits - 1)))
    else:
        ok, pattern = -(1 << (bits - 1)) <= value < (1 << (bits - 1)), value & ((1 << bits) - 1)
    if not ok:
        raise ValueError(f"{value} out of range")
    return "".join("1" if pattern >> i & 1 else "0" for i in reversed(range(bits)))
''',
    "decode_integer": '''
def decode_integer(bit_string, encoding="twos_complement"):
    digits = [int(c) for c in bit_string]
    n = len(digits)
    if encoding == "unsigned":
        return sum(d << (n - 1 - i) for i, d in enumerate(digits))
    rest = sum(d << (n - 2 - i) for i, d in enumerate(digits[1:]))
    if encoding == "sign_magnitude":
        return -rest if digits[0] else rest
    return rest - digits[0] * (1 << (n - 1))
''',
    "decode_float": '''
from fractions import Fraction

def decode_float(bits, fmt):
    E, M = fmt.exponent_bits, fmt.mantissa_bits
    s, e, m = bits >> (E + M), (bits >> M) % (1 << E), bits % (1 << M)
    if e == (1 << E) - 1 and (fmt.special == "ieee" or (fmt.special == "fn" and m == (1 << M) - 1)):
        return float("nan") if m else float("-inf") if s else float("inf")
    significand = Fraction(m, 1 << M) + (1 if e else 0)
    value = significand * Fraction(2) ** (max(e, 1) - fmt.bias)
    if value == 0:
        return -0.0 if s else 0.0
    return float(-value) if s else float(value)
''',
    "encode_float": '''
from fractions import Fraction

def encode_float(x, fmt):
    E, M = fmt.exponent_bits, fmt.mantissa_bits
    sign_bit = (1 << (E + M)) if math.copysign(1.0, x) < 0 else 0
    if x != x:
        return ((1 << E) - 1) << M | ((1 << M) - 1)
    top_code = ((1 << E) - 1) << M | ((1 << M) - 2 if fmt.special == "fn" else (1 << M) - 1)
    if fmt.special == "ieee":
        top_code = (((1 << E) - 2) << M) | ((1 << M) - 1)
    def value(code):
        e, m = code >> M, code % (1 << M)
        return (Fraction(m, 1 << M) + (1 if e else 0)) * Fraction(2) ** (max(e, 1) - fmt.bias)
    if abs(x) == float("inf"):
        a = None
    else:
        a = Fraction(abs(x))
    big = value(top_code)
    ulp = big - value(top_code - 1)
    if a is None or a >= big + ulp / 2 and fmt.special == "ieee" or a > big and fmt.special != "ieee":
        return sign_bit | (((1 << E) - 1) << M if fmt.special == "ieee" else top_code)
    lo, hi = 0, top_code            # codes are ordered by value: find the last code <= a
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if value(mid) <= a:
            lo = mid
        else:
            hi = mid - 1
    best = lo
    if lo < top_code or fmt.special == "ieee":
        up = lo + 1
        if up <= top_code or fmt.special == "ieee":
            gap_down, gap_up = a - value(lo), value(up) - a
            if gap_up < gap_down or (gap_up == gap_down and up % 2 == 0):
                best = up
    if fmt.special == "ieee" and best > top_code:
        return sign_bit | (((1 << E) - 1) << M)
    return sign_bit | best
''',
}


class TestLab01Grading(LabGradingTests):
    LAB, POINTS, N_STUBS = LAB, POINTS, 7
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, DIFFERENT, "saturates_at_8_bits"
    CHEAT_TARGET = Target("encode_integer", "test_encode_integer", "qlib.integers.encode_integer")
    ANSWER_LINES = ("raw = round(x * 2**frac_bits)", "n = round(math.ldexp(a, M - exponent))",
                    "s = min(max(math.frexp(amax)[1] - 1 - element.emax, -127), 127)")
    CELL_SECONDS = 10  # the slowest cell of a correct submission takes under 3 s
