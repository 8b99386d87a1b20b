"""Lab 1 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab01_number_formats"
POINTS = {"test_encode_integer": 2, "test_decode_integer": 2, "test_fixed_point": 3, "test_encode_float": 6,
          "test_mx_quantize": 4, "test_format_for_gradients": 2, "test_fp8_design": 3,
          "test_fp32_over_int8_energy": 2, "test_tokens_per_second_bound": 2}
WRITTEN = {"range_or_precision": 2}

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
    "fp16_for_gradients": Wrong("format_for_gradients", "test_format_for_gradients", "FP16's largest finite value",
                                'format_for_gradients = "a"\n'),
    "energy_of_arithmetic_only": Wrong("fp32_over_int8_energy", "test_fp32_over_int8_energy",
                                       "compares the arithmetic only",
                                       "fp32_over_int8_energy = (3.7 + 0.9) / (0.2 + 0.03)\n"),
    "a_whole_read_per_int8_weight": Wrong("fp32_over_int8_energy", "test_fp32_over_int8_energy",
                                          "per weight, not per read",
                                          "fp32_over_int8_energy = (5 + 3.7 + 0.9) / (5 + 0.2 + 0.03)\n"),
    "mx_scales_forgotten": Wrong("tokens_per_second_bound", "test_tokens_per_second_bound", "8-bit scale",
                                 "tokens_per_second_bound = 60e9 / (3e9 * 4 / 8)\n"),
    "bits_not_bytes": Wrong("tokens_per_second_bound", "test_tokens_per_second_bound", "divide the bits",
                            "tokens_per_second_bound = 60e9 / (3e9 * 4.25)\n"),
    "design_overflows_to_infinity": Wrong("fp8_design", "test_fp8_design", "largest relative error inf",
                                          'fp8_design = {"exponent_bits": 4, "mantissa_bits": 3, "bias": 8, '
                                          '"special": "ieee"}\n'),
    "design_of_nine_bits": Wrong("fp8_design", "test_fp8_design", "exponent_bits + mantissa_bits = 7",
                                 'fp8_design = {"exponent_bits": 5, "mantissa_bits": 3, "bias": 15, '
                                 '"special": "fn"}\n'),
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


# --- the answers to the questions and the design written otherwise: full marks -------------------------

OTHER_SPELLINGS = {
    "format_for_gradients": 'format_for_gradients = " (B) "\n',
    "fp32_over_int8_energy": "import numpy\nfp32_over_int8_energy = numpy.float32(6.45)\n",  # within 1%
    "tokens_per_second_bound": "tokens_per_second_bound = 37.6\n",
    # the same bits without a NaN code: largest value 240 instead of 224, the same error
    "fp8_design": 'fp8_design = dict(special="finite", bias=8, mantissa_bits=3, exponent_bits=4)\n',
}

# --- designs that fall short of the target: the tier they reach ---------------------------------------

PARTIAL = {
    "ofp8_e4m3": Partial({"fp8_design": 'fp8_design = {"exponent_bits": 4, "mantissa_bits": 3, "bias": 7, '
                                        '"special": "fn"}\n'}, "test_fp8_design", 2),
    "ofp8_e5m2": Partial({"fp8_design": 'fp8_design = {"exponent_bits": 5, "mantissa_bits": 2, "bias": 15, '
                                        '"special": "ieee"}\n'}, "test_fp8_design", 1),
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    **design_cheats("fp8_design", "test_fp8_design", {"exponent_bits": 4, "mantissa_bits": 3, "bias": 8,
                                                      "special": "fn"}, "must be one of"),
    "number_that_equals_everything": Cheat({"fp32_over_int8_energy": """
class Anything(float):
    def __eq__(self, other):
        return True

    __hash__ = float.__hash__


fp32_over_int8_energy = Anything(1.0)
"""}, "test_fp32_over_int8_energy", "is not right"),
}


class TestLab01Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 10, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**DIFFERENT, **OTHER_SPELLINGS}, "saturates_at_8_bits"
    CHOICE = Choice("format_for_gradients", "test_format_for_gradients", "format_for_gradients", "abcde")
    PARTIAL = PARTIAL
    CHEATS = CHEATS
    CHEAT_TARGET = Target("encode_integer", "test_encode_integer", "qlib.integers.encode_integer")
    ANSWER_LINES = ("raw = round(x * 2**frac_bits)", "n = round(math.ldexp(a, M - exponent))",
                    "s = min(max(math.frexp(amax)[1] - 1 - element.emax, -127), 127)",
                    'format_for_gradients = "b"',
                    'fp8_design = {"exponent_bits": 4, "mantissa_bits": 3, "bias": 8, "special": "fn"}',
                    "**Rubric (2 points).** 1 point: E5M2 has more range and E4M3 more precision")
    CELL_SECONDS = 10  # the slowest cell of a correct submission takes under 3 s
