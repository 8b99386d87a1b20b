"""Fixed point: a two's-complement integer with an implied binary point.

Chapter 1: Number formats. A fixed-point format ``<w, f>`` stores a ``w``-bit
two's-complement integer ``raw`` and reads it as

    x = raw * 2^-f                     (f = number of fraction bits)

so its values are the multiples of 2^-f in

    [-2^(w-1) * 2^-f, (2^(w-1) - 1) * 2^-f]       (<8, 4>: [-8, 7.9375], step 0.0625)

Worked example: the bits ``00110001`` with 4 fraction bits are 49 * 2^-4 = 3.0625
(``0011.0001`` = 2 + 1 + 1/16).

Fixed point is linear quantization with a power-of-two scale (2^-f) and a zero
point of 0: see :mod:`qlib.linear`.
"""
from __future__ import annotations

import math
import numbers

import torch

from qlib._reference import reference
from qlib.integers import integer_bounds
from qlib.rounding import round_with


def _check_frac_bits(frac_bits) -> int:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, numbers.Integral):
        raise TypeError(f"frac_bits must be an integer, got {frac_bits!r}")
    if frac_bits < 0:
        raise ValueError(f"frac_bits must be 0 or more, got {frac_bits}")
    return int(frac_bits)


def fixed_point_range(total_bits: int, frac_bits: int) -> tuple[float, float]:
    """The smallest and largest real value ``(lo, hi)`` of the two's-complement format ``<total_bits, frac_bits>``.

        lo = -2^(w-1) * 2^-f,    hi = (2^(w-1) - 1) * 2^-f

    ``fixed_point_range(8, 4) == (-8.0, 7.9375)``.
    """
    f = _check_frac_bits(frac_bits)
    qmin, qmax = integer_bounds(total_bits, "twos_complement")
    return math.ldexp(qmin, -f), math.ldexp(qmax, -f)


@reference
def encode_fixed(x: float, total_bits: int, frac_bits: int, rounding: str = "half_to_even") -> int:
    """The raw ``total_bits``-bit two's-complement integer that stores ``x`` with ``frac_bits`` fraction bits.

        raw = clamp(round(x * 2^f), -2^(w-1), 2^(w-1) - 1)

    ``x * 2^f`` is exact (a power-of-two scaling); ``round`` is the named mode of
    :mod:`qlib.rounding` (default half to even; also ``"half_away_from_zero"``,
    ``"floor"``, ``"ceil"``). Values beyond the range **saturate** to the nearest
    end (so do ``+inf`` and ``-inf``); they never wrap around. Returns a Python
    int; its bit string is ``qlib.integers.encode_integer(raw, total_bits)``.

    Raises ``ValueError`` for NaN and ``TypeError`` for a non-number.
    """
    f = _check_frac_bits(frac_bits)
    qmin, qmax = integer_bounds(total_bits, "twos_complement")
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"x must be a real number, got {x!r} ({type(x).__name__})")
    if isinstance(x, numbers.Integral):
        scaled = int(x) * 2**f  # exact for integers of any size: no rounding needed
    else:
        xf = float(x)
        if math.isnan(xf):
            raise ValueError("x is NaN: a fixed-point number cannot hold NaN")
        if math.isinf(xf):
            return qmax if xf > 0 else qmin
        # round in float64: x * 2^f is exact, and every rounding mode returns an exact integer
        scaled = int(round_with(torch.tensor(math.ldexp(xf, f), dtype=torch.float64), rounding).item())
    return min(max(scaled, qmin), qmax)


@reference
def decode_fixed(raw: int, frac_bits: int) -> float:
    """The real value ``raw * 2^-frac_bits`` of a raw fixed-point integer (exact for |raw| < 2^53).

    ``decode_fixed(0b00110001, 4) == 3.0625``. ``raw`` is the signed integer (for
    an 8-bit pattern ``11001111`` pass -49, e.g. ``qlib.integers.decode_integer``).
    """
    f = _check_frac_bits(frac_bits)
    if isinstance(raw, bool) or not isinstance(raw, numbers.Integral):
        raise TypeError(f"raw must be an integer, got {raw!r} ({type(raw).__name__})")
    return math.ldexp(int(raw), -f)
