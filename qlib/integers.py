"""Integers as bit strings: unsigned, sign-magnitude and two's complement.

Chapter 1: Number formats. An ``n``-bit string ``b[n-1] ... b[1] b[0]`` (most
significant bit first) stands for

* unsigned:         v = sum_i b[i] 2^i                               in [0, 2^n - 1]
* sign-magnitude:   v = (-1)^b[n-1] * sum_{i<n-1} b[i] 2^i             in [-(2^(n-1) - 1), 2^(n-1) - 1]
* two's complement: v = -b[n-1] 2^(n-1) + sum_{i<n-1} b[i] 2^i         in [-2^(n-1), 2^(n-1) - 1]

Sign-magnitude has two zeros ("000...0" and "100...0"), so its range is one
value short of two's complement on the negative side: -(2^(n-1) - 1), not
-2^(n-1) - 1. Two's complement has one zero and one extra negative number.

Worked examples (8 bits): ``00110001`` is 49 in every encoding; ``10110001`` is
-49 in sign-magnitude; ``11001111`` is -49 in two's complement (256 - 49 = 207).

Nothing here rounds: a value outside the range of the encoding is an error.
"""
from __future__ import annotations

import numbers

from qlib._reference import reference

#: The three ways to read an n-bit string as an integer.
ENCODINGS = ("unsigned", "sign_magnitude", "twos_complement")

#: Widest bit string accepted (Python ints have no limit; 64 covers int64/uint64).
MAX_BITS = 64


def _check_encoding(encoding) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {ENCODINGS}")
    return encoding


def _check_bits(bits, encoding: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer, got {bits!r}")
    smallest = 2 if encoding == "sign_magnitude" else 1  # a sign bit and at least one magnitude bit
    if not smallest <= int(bits) <= MAX_BITS:
        raise ValueError(f"bits must be between {smallest} and {MAX_BITS} for {encoding}, got {bits}")
    return int(bits)


def integer_bounds(bits: int, encoding: str = "twos_complement") -> tuple[int, int]:
    """The smallest and largest integer ``(lo, hi)`` that ``bits`` bits hold in ``encoding``.

    * unsigned:         [0, 2^n - 1]                   (8 bits: [0, 255])
    * sign_magnitude:   [-(2^(n-1) - 1), 2^(n-1) - 1]   (8 bits: [-127, 127])
    * twos_complement:  [-2^(n-1), 2^(n-1) - 1]         (8 bits: [-128, 127])

    :func:`qlib.linear.integer_range` (chapter 3) builds the quantizer's ``(qmin, qmax)`` on these
    bounds, with the ``signed``/``narrow`` arguments of PyTorch and TFLite; this function stays the
    chapter 1 view of a bit string: every encoding, including sign-magnitude, and up to 64 bits.
    """
    encoding = _check_encoding(encoding)
    n = _check_bits(bits, encoding)
    if encoding == "unsigned":
        return 0, 2**n - 1
    if encoding == "sign_magnitude":
        return -(2 ** (n - 1) - 1), 2 ** (n - 1) - 1
    return -(2 ** (n - 1)), 2 ** (n - 1) - 1


@reference
def encode_integer(value: int, bits: int, encoding: str = "twos_complement") -> str:
    """The ``bits``-character bit string (most significant bit first) of ``value`` in ``encoding``.

    * unsigned:         the binary digits of ``value``
    * sign_magnitude:   a sign bit (1 for negative) then the binary digits of ``|value|``;
                        0 is encoded as "000...0" (never as negative zero)
    * twos_complement:  the binary digits of ``value mod 2^n`` (``2^n + value`` when negative)

    ``encode_integer(-49, 8) == "11001111"``. Raises ``TypeError`` if ``value`` is
    not an integer and ``ValueError`` if it is outside :func:`integer_bounds`.
    """
    encoding = _check_encoding(encoding)
    n = _check_bits(bits, encoding)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"value must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    lo, hi = integer_bounds(n, encoding)
    if not lo <= value <= hi:
        raise ValueError(f"{value} is outside the {n}-bit {encoding} range [{lo}, {hi}]")
    if encoding == "unsigned":
        pattern = value
    elif encoding == "sign_magnitude":
        pattern = ((1 if value < 0 else 0) << (n - 1)) | abs(value)
    else:
        pattern = value % 2**n
    return format(pattern, f"0{n}b")


@reference
def decode_integer(bit_string: str, encoding: str = "twos_complement") -> int:
    """The integer that ``bit_string`` (most significant bit first) stands for in ``encoding``.

    The width ``n`` is ``len(bit_string)``; with ``u`` the string read as an unsigned number,

    * unsigned:         u
    * sign_magnitude:   -(u - 2^(n-1)) if the first bit is 1, else u  ("10...0" is negative zero: 0)
    * twos_complement:  u - 2^n if the first bit is 1, else u

    Raises ``TypeError`` if ``bit_string`` is not a string and ``ValueError`` if it
    is empty or holds characters other than 0 and 1.
    """
    encoding = _check_encoding(encoding)
    if not isinstance(bit_string, str):
        raise TypeError(f"bit_string must be a str of 0s and 1s, got {type(bit_string).__name__}")
    if bit_string == "":
        raise ValueError("bit_string is empty: there are no bits to decode")
    bad = sorted(set(bit_string) - {"0", "1"})
    if bad:
        raise ValueError(f"bit_string {bit_string!r} holds characters other than 0 and 1: {bad}")
    n = _check_bits(len(bit_string), encoding)
    u = int(bit_string, 2)
    negative = bit_string[0] == "1"
    if encoding == "unsigned" or not negative:
        return u
    if encoding == "sign_magnitude":
        return -(u - 2 ** (n - 1))
    return u - 2**n
