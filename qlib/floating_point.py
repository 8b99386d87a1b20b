"""Floating-point formats, bit for bit: FP32 down to FP4, and the E8M0 scale.

Chapter 1: Number formats. A code of ``1 + E + M`` bits ``s | e | m`` (sign,
exponent field, mantissa field) with exponent bias ``b`` stands for

    normal     (e > 0):  (-1)^s * (1 + m / 2^M) * 2^(e - b)
    subnormal  (e = 0):  (-1)^s * (m / 2^M)     * 2^(1 - b)       (includes +0 and -0)

Formats differ in what the all-ones exponent field means (``special``):

* ``"ieee"``   (FP32, FP16, BF16, TF32, FP8 E5M2): all-ones exponent is +-inf
  (m = 0) or NaN (m != 0). Largest finite value (2 - 2^-M) * 2^(2^E - 2 - b).
* ``"fn"``     (FP8 E4M3FN, OCP "E4M3"): finite and NaN only. The all-ones
  exponent holds ordinary numbers except ``S.1111.111``, the only NaN, so the
  largest value is 1.75 * 2^8 = 448.
* ``"finite"`` (OCP FP6 E2M3, FP6 E3M2, FP4 E2M1): no inf, no NaN; every code is a number.
* ``"e8m0"``   (the OCP MX shared scale): 8 exponent bits, no sign, no mantissa:
  code ``c`` is 2^(c - 127) for c = 0..254, and 255 is NaN. There is no zero.

Encoding (:func:`encode_float`) rounds to nearest, ties to even, with
subnormals; what happens beyond the largest finite value depends on
``special``: ``"ieee"`` overflows to +-inf (IEEE 754: |x| >= max + ulp/2 -> inf),
``"fn"`` and ``"finite"`` saturate to +-max (as ``torch``'s float8_e4m3fn
conversion and the OCP MX spec's element conversion do).

Every function here is exact: codes decode to Python floats / float64 (which
hold every value of every format here exactly), and encoding rounds once,
from the exact float64 input.

The FP32 worked examples of the chapter:
0.265625 = 1.0625 * 2^-2: sign 0, exponent field -2 + 127 = 125, mantissa 0.0625 * 2^23;
-314.625 = -1.00111010101 * 2^8: ``1 10000111 00111010101000000000000``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from qlib._reference import reference

SPECIALS = ("ieee", "fn", "finite", "e8m0")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: field widths, bias, and the meaning of its special codes."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    special: str = "ieee"
    signed: bool = True

    def __post_init__(self):
        if self.special not in SPECIALS:
            raise ValueError(f"special must be one of {SPECIALS}, got {self.special!r}")
        if self.exponent_bits < 1 or self.mantissa_bits < 0:
            raise ValueError("a float format needs at least 1 exponent bit and 0 or more mantissa bits")
        if self.signed != (self.special != "e8m0"):
            raise ValueError("only the e8m0 format is unsigned, and it must be")
        if self.special == "e8m0" and self.mantissa_bits != 0:
            raise ValueError("an e8m0 format has no mantissa bits")
        if self.special in ("ieee", "fn") and self.mantissa_bits < 1:
            raise ValueError(f"a {self.special!r} format needs a mantissa bit to tell NaN apart")

    @property
    def total_bits(self) -> int:
        """Sign bit (if any) + exponent bits + mantissa bits."""
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def max_exponent_field(self) -> int:
        """Largest exponent field that holds finite numbers (all ones minus one for "ieee" and "e8m0")."""
        all_ones = 2**self.exponent_bits - 1
        return all_ones - 1 if self.special in ("ieee", "e8m0") else all_ones

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value: ``max_value = significand * 2^emax``."""
        return self.max_exponent_field - self.bias

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value, 1 - bias (-bias for e8m0, whose field 0 is a number)."""
        return -self.bias if self.special == "e8m0" else 1 - self.bias

    @property
    def max_significand(self) -> int:
        """Largest integer significand (1.m as an (M+1)-bit integer) at exponent ``emax``."""
        top = 2 ** (self.mantissa_bits + 1) - 1
        return top - 1 if self.special == "fn" else top  # "fn": mantissa all ones is NaN

    @property
    def max_value(self) -> float:
        """Largest finite value: (max_significand / 2^M) * 2^emax (448 for E4M3, 57344 for E5M2, 6 for E2M1)."""
        return math.ldexp(self.max_significand, self.emax - self.mantissa_bits)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2^emin."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float | None:
        """Smallest positive subnormal value, 2^(emin - M); None for e8m0 (no subnormals)."""
        if self.special == "e8m0":
            return None
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """Machine epsilon: the gap between 1 and the next larger value, 2^-M."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def dynamic_range_binades(self) -> float:
        """log2(max_value / smallest positive value): how many powers of two the format spans."""
        smallest = self.min_subnormal if self.min_subnormal is not None else self.min_normal
        return math.log2(self.max_value / smallest)


FP32 = FloatFormat("fp32", 8, 23, 127)
FP16 = FloatFormat("fp16", 5, 10, 15)
BF16 = FloatFormat("bf16", 8, 7, 127)
TF32 = FloatFormat("tf32", 8, 10, 127)  # 19 bits: FP32's range, FP16's precision
FP8_E4M3 = FloatFormat("fp8_e4m3", 4, 3, 7, "fn")
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2, 15, "ieee")
FP6_E2M3 = FloatFormat("fp6_e2m3", 2, 3, 1, "finite")
FP6_E3M2 = FloatFormat("fp6_e3m2", 3, 2, 3, "finite")
FP4_E2M1 = FloatFormat("fp4_e2m1", 2, 1, 1, "finite")
E8M0 = FloatFormat("e8m0", 8, 0, 127, "e8m0", signed=False)

FORMATS = {f.name: f for f in (FP32, FP16, BF16, TF32, FP8_E4M3, FP8_E5M2, FP6_E2M3, FP6_E3M2, FP4_E2M1, E8M0)}


# --- checks and special codes --------------------------------------------------------------

def _check_format(fmt) -> FloatFormat:
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat such as qlib.floating_point.FP16, got {fmt!r}")
    return fmt


def _check_code(bits, fmt: FloatFormat) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer code, got {bits!r} ({type(bits).__name__})")
    if not 0 <= bits < 2**fmt.total_bits:
        raise ValueError(f"code {bits} does not fit in the {fmt.total_bits} bits of {fmt.name}: "
                         f"codes run from 0 to {2**fmt.total_bits - 1}")
    return int(bits)


def _check_real(x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"x must be a real number, got {x!r} ({type(x).__name__})")
    return float(x)


def _sign_bit(fmt: FloatFormat) -> int:
    return 1 << (fmt.exponent_bits + fmt.mantissa_bits)


def _code(sign: int, exponent_field: int, mantissa_field: int, fmt: FloatFormat) -> int:
    return (sign << (fmt.exponent_bits + fmt.mantissa_bits)) | (exponent_field << fmt.mantissa_bits) | mantissa_field


def _max_code(fmt: FloatFormat) -> int:
    """Magnitude bits of the largest finite value."""
    return _code(0, fmt.max_exponent_field, fmt.max_significand - 2**fmt.mantissa_bits, fmt)


def _overflow_code(fmt: FloatFormat) -> int:
    """Magnitude bits a too-large value encodes to: inf ("ieee"), max ("fn", "finite"), NaN ("e8m0")."""
    if fmt.special == "ieee":
        return _code(0, 2**fmt.exponent_bits - 1, 0, fmt)
    if fmt.special == "e8m0":
        return 2**fmt.exponent_bits - 1
    return _max_code(fmt)


def _nan_code(fmt: FloatFormat) -> int:
    """Magnitude bits of the NaN a NaN input encodes to.

    "ieee": the quiet NaN, all-ones exponent and the top mantissa bit (FP16 0x7E00,
    BF16 0x7FC0, FP32 0x7FC00000, E5M2 0x7E); "fn": the only NaN, all ones (0x7F);
    "e8m0": 0xFF. "finite" formats have no NaN: ValueError.
    """
    if fmt.special == "finite":
        raise ValueError(f"x is NaN, and {fmt.name} has no NaN code (every one of its codes is a finite number)")
    if fmt.special == "ieee":
        return _code(0, 2**fmt.exponent_bits - 1, 1 << (fmt.mantissa_bits - 1), fmt)
    if fmt.special == "fn":
        return _code(0, 2**fmt.exponent_bits - 1, 2**fmt.mantissa_bits - 1, fmt)
    return 2**fmt.exponent_bits - 1


# --- the readable scalar versions ----------------------------------------------------------

def float_fields(bits: int, fmt: FloatFormat) -> tuple[int, int, int]:
    """The three fields ``(sign, exponent_field, mantissa_field)`` of a code (sign is 0 for unsigned E8M0)."""
    fmt = _check_format(fmt)
    bits = _check_code(bits, fmt)
    m_bits, e_bits = fmt.mantissa_bits, fmt.exponent_bits
    sign = (bits >> (e_bits + m_bits)) & 1 if fmt.signed else 0
    return sign, (bits >> m_bits) & (2**e_bits - 1), bits & (2**m_bits - 1)


def bit_string(bits: int, fmt: FloatFormat) -> str:
    """The code as its fields' bits separated by spaces, e.g. ``"1 10000111 00111010101000000000000"`` for FP32."""
    sign, exponent, mantissa = float_fields(bits, fmt)
    groups = [str(sign)] if fmt.signed else []
    groups.append(format(exponent, f"0{fmt.exponent_bits}b"))
    if fmt.mantissa_bits:
        groups.append(format(mantissa, f"0{fmt.mantissa_bits}b"))
    return " ".join(groups)


@reference
def decode_float(bits: int, fmt: FloatFormat) -> float:
    """The value of the code ``bits`` in ``fmt``, as an exact Python float.

        normal    (0 < e, not special):  (-1)^s * (2^M + m) * 2^(e - bias - M)
        subnormal (e = 0):               (-1)^s * m * 2^(1 - bias - M)
        "ieee", e all ones:              +-inf if m = 0, else NaN
        "fn", e and m all ones:          NaN
        e8m0:                            2^(e - 127), NaN for e = 255

    Raises ``ValueError`` if ``bits`` does not fit in ``fmt.total_bits`` bits.
    """
    sign, e, m = float_fields(bits, fmt)
    M, all_ones = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    if fmt.special == "e8m0":
        return math.nan if e == all_ones else math.ldexp(1.0, e - fmt.bias)
    if fmt.special == "ieee" and e == all_ones:
        return math.nan if m else (-math.inf if sign else math.inf)
    if fmt.special == "fn" and e == all_ones and m == 2**M - 1:
        return math.nan
    if e == 0:
        magnitude = math.ldexp(m, fmt.emin - M)
    else:
        magnitude = math.ldexp(2**M + m, e - fmt.bias - M)
    return -magnitude if sign else magnitude


@reference
def encode_float(x: float, fmt: FloatFormat) -> int:
    """The code of ``fmt`` nearest to ``x`` (round half to even), as a Python int.

    With ``x = f * 2^E`` (``math.frexp``), the exponent is ``e = max(E - 1, emin)``
    (the ``max`` gives subnormals) and the integer significand is

        n = round_half_to_even(|x| * 2^(M - e))          (exact scaling, one rounding)

    A carry (n = 2^(M+1)) moves to the next exponent. If the result exceeds
    ``max_value``: "ieee" gives +-inf, "fn" and "finite" saturate to +-max_value.
    +-inf follow the same rule. NaN gives the format's NaN (quiet NaN for "ieee",
    the all-ones code for "fn") and ``ValueError`` for "finite" formats, which
    have none. -0.0 keeps its sign bit.

    E8M0 (unsigned, no zero): positive ``x`` rounds to the nearest power of two
    2^e (ties, 1.5 * 2^e, go up); e < -127 gives 2^-127, e > 127 and +inf give
    NaN (0xFF), as ``torch.float8_e8m0fnu`` does. Zero and negative ``x`` raise
    ``ValueError``.
    """
    fmt = _check_format(fmt)
    x = _check_real(x)
    sign = 1 if math.copysign(1.0, x) < 0 else 0
    if math.isnan(x):
        return (sign * _sign_bit(fmt) if fmt.signed else 0) | _nan_code(fmt)
    if not fmt.signed:
        if x <= 0:
            raise ValueError(f"{fmt.name} holds only positive powers of two (no sign, no zero), got {x!r}")
        if math.isinf(x):
            return _overflow_code(fmt)
        e = math.frexp(x)[1] - 1  # x = (1.f) * 2^e
        if round(math.ldexp(x, -e)) == 2:  # significand 1.5 or more rounds up to 2: next power of two
            e += 1
        e = max(e, fmt.emin)
        return _overflow_code(fmt) if e > fmt.emax else e + fmt.bias
    a = abs(x)
    if math.isinf(a):
        return sign * _sign_bit(fmt) | _overflow_code(fmt)
    M = fmt.mantissa_bits
    e = max(math.frexp(a)[1] - 1, fmt.emin)
    n = round(math.ldexp(a, M - e))  # Python's round() of a float is exact and ties to even
    if n == 2 ** (M + 1):  # rounding carried into the next binade
        n, e = n // 2, e + 1
    if e > fmt.emax or (e == fmt.emax and n > fmt.max_significand):
        return sign * _sign_bit(fmt) | _overflow_code(fmt)
    if n < 2**M:  # only possible at e == emin: a subnormal (or zero)
        return _code(sign, 0, n, fmt)
    return _code(sign, e + fmt.bias, n - 2**M, fmt)


# --- vectorised versions (numpy), held equal to the scalar ones by the tests ---------------

def _as_codes(codes, fmt: FloatFormat) -> np.ndarray:
    c = np.asarray(codes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array, got dtype {c.dtype}")
    c = c.astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= 2**fmt.total_bits):
        raise ValueError(f"codes must lie in [0, {2**fmt.total_bits - 1}] for the {fmt.total_bits}-bit {fmt.name}, "
                         f"got values in [{c.min()}, {c.max()}]")
    return c


def _as_float64(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"x must be an array of real numbers, got dtype {a.dtype}")
    with np.errstate(invalid="ignore"):  # a float32 signalling NaN becomes a quiet float64 NaN, silently
        return a.astype(np.float64)


@reference
def decode_floats(codes, fmt: FloatFormat) -> np.ndarray:
    """Vectorised :func:`decode_float`: a float64 array of the values of an integer array of codes."""
    c = _as_codes(codes, _check_format(fmt))
    M, all_ones = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    e = (c >> M) & all_ones
    m = c & (2**M - 1)
    if fmt.special == "e8m0":
        return np.where(e == all_ones, np.nan, np.ldexp(1.0, (e - fmt.bias).astype(np.int32)))
    subnormal = e == 0
    significand = np.where(subnormal, m, m + 2**M).astype(np.float64)
    exponent = np.where(subnormal, fmt.emin, e - fmt.bias) - M
    value = np.ldexp(significand, exponent.astype(np.int32))
    value = np.where((c >> (fmt.exponent_bits + M)) & 1 == 1, -value, value)
    if fmt.special == "ieee":
        value = np.where((e == all_ones) & (m == 0), np.copysign(np.inf, value), value)
        value = np.where((e == all_ones) & (m != 0), np.nan, value)
    elif fmt.special == "fn":
        value = np.where((e == all_ones) & (m == 2**M - 1), np.nan, value)
    return value


@reference
def encode_floats(x, fmt: FloatFormat) -> np.ndarray:
    """Vectorised :func:`encode_float`: an int64 array of codes (same rounding, overflow and NaN rules).

    ``x`` (any real array, e.g. float32 or float64) is read exactly as float64.
    """
    fmt = _check_format(fmt)
    x = _as_float64(x)
    nan, inf = np.isnan(x), np.isinf(x)
    if fmt.special == "finite" and nan.any():
        raise ValueError(f"x holds {int(nan.sum())} NaN values, and {fmt.name} has no NaN code")
    if not fmt.signed:
        if (x <= 0).any():
            raise ValueError(f"{fmt.name} holds only positive powers of two (no sign, no zero), "
                             f"but x holds {int((x <= 0).sum())} values <= 0")
        a = np.where(nan | inf, 1.0, x)
        e = np.frexp(a)[1].astype(np.int64) - 1
        e = e + (np.rint(np.ldexp(a, (-e).astype(np.int32))) == 2)
        e = np.maximum(e, fmt.emin)
        code = np.where((e > fmt.emax) | nan | inf, _overflow_code(fmt), e + fmt.bias)
        return code.astype(np.int64)
    M = fmt.mantissa_bits
    sign = np.signbit(x).astype(np.int64) * _sign_bit(fmt)
    a = np.where(nan | inf, 0.0, np.abs(x))
    e = np.maximum(np.frexp(a)[1].astype(np.int64) - 1, fmt.emin)
    n = np.rint(np.ldexp(a, (M - e).astype(np.int32))).astype(np.int64)  # rint: ties to even
    carry = n == 2 ** (M + 1)
    n = np.where(carry, n // 2, n)
    e = e + carry
    overflow = inf | (e > fmt.emax) | ((e == fmt.emax) & (n > fmt.max_significand))
    subnormal = n < 2**M
    exponent_field = np.where(subnormal, 0, e + fmt.bias)
    mantissa_field = np.where(subnormal, n, n - 2**M)
    code = (exponent_field << M) | mantissa_field
    code = np.where(overflow, _overflow_code(fmt), code)
    if nan.any():
        code = np.where(nan, _nan_code(fmt), code)
    return (sign | code).astype(np.int64)


@reference
def round_to_format(x, fmt: FloatFormat) -> np.ndarray:
    """Fake quantization to a float format: ``decode(encode(x))`` as a float64 array.

    Each value becomes the nearest value of ``fmt`` (ties to even), with the
    format's overflow rule (inf for "ieee", saturation for "fn"/"finite").
    """
    return decode_floats.unguarded(encode_floats.unguarded(x, fmt), fmt)
