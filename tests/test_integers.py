"""Tests of qlib.integers: every 8-bit pattern in each encoding against formulas written here and numpy.

The oracles read a bit string digit by digit (a weighted sum, independent of the
modular arithmetic qlib uses) or let numpy reinterpret the byte as int8.
"""
from __future__ import annotations

import numpy as np
import pytest

from qlib._reference import ReferenceUnavailable, blocked
from qlib.integers import ENCODINGS, decode_integer, encode_integer, integer_bounds

ALL_BYTES = [format(i, "08b") for i in range(256)]


def weighted_sum(bits: str, encoding: str) -> int:
    """The value of a bit string from its digits' weights (the definitions of chapter 1)."""
    n = len(bits)
    digits = [int(b) for b in bits]  # most significant first
    magnitude = sum(d * 2 ** (n - 2 - i) for i, d in enumerate(digits[1:]))
    if encoding == "unsigned":
        return digits[0] * 2 ** (n - 1) + magnitude
    if encoding == "sign_magnitude":
        return -magnitude if digits[0] else magnitude
    return -digits[0] * 2 ** (n - 1) + magnitude  # two's complement: the top bit weighs -2^(n-1)


def test_encoding_names():
    assert ENCODINGS == ("unsigned", "sign_magnitude", "twos_complement")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_byte_decodes_like_the_weighted_sum(encoding):
    assert [decode_integer(b, encoding) for b in ALL_BYTES] == [weighted_sum(b, encoding) for b in ALL_BYTES]


def test_every_byte_decodes_like_numpy():
    codes = np.arange(256, dtype=np.uint8)
    assert [decode_integer(b, "twos_complement") for b in ALL_BYTES] == codes.view(np.int8).tolist()
    assert [decode_integer(b, "unsigned") for b in ALL_BYTES] == codes.tolist()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_value_in_range_encodes_to_its_pattern(encoding):
    lo, hi = integer_bounds(8, encoding)
    for value in range(lo, hi + 1):
        bits = encode_integer(value, 8, encoding)
        assert len(bits) == 8 and weighted_sum(bits, encoding) == value
    # every pattern is hit once (two's complement, unsigned) or all but negative zero (sign-magnitude)
    patterns = {encode_integer(v, 8, encoding) for v in range(lo, hi + 1)}
    missing = set(ALL_BYTES) - patterns
    assert missing == ({"10000000"} if encoding == "sign_magnitude" else set())


def test_twos_complement_matches_numpy_for_16_bits():
    values = np.random.default_rng(0).integers(-(2**15), 2**15, size=2000).astype(np.int16)
    expected = [format(int(u), "016b") for u in values.view(np.uint16)]
    assert [encode_integer(int(v), 16) for v in values] == expected


@pytest.mark.parametrize("bits, encoding, expected", [
    (8, "unsigned", (0, 255)),
    (8, "sign_magnitude", (-127, 127)),  # not -2^(n-1) - 1 = -129, as the notes print it
    (8, "twos_complement", (-128, 127)),
    (4, "sign_magnitude", (-7, 7)),
    (16, "twos_complement", (-32768, 32767)),
    (32, "twos_complement", (-(2**31), 2**31 - 1)),
    (1, "twos_complement", (-1, 0)),
])
def test_bounds(bits, encoding, expected):
    assert integer_bounds(bits, encoding) == expected


def test_bounds_match_numpy_iinfo():
    for bits, signed, unsigned in [(8, np.int8, np.uint8), (16, np.int16, np.uint16), (32, np.int32, np.uint32)]:
        assert integer_bounds(bits) == (np.iinfo(signed).min, np.iinfo(signed).max)
        assert integer_bounds(bits, "unsigned") == (np.iinfo(unsigned).min, np.iinfo(unsigned).max)


def test_worked_examples():
    assert decode_integer("00110001", "unsigned") == 49
    assert decode_integer("00110001", "sign_magnitude") == 49
    assert decode_integer("00110001", "twos_complement") == 49
    assert decode_integer("10110001", "sign_magnitude") == -49
    assert decode_integer("11001111", "twos_complement") == -49
    assert encode_integer(-49, 8, "twos_complement") == "11001111"
    assert encode_integer(-49, 8) == "11001111"  # two's complement is the default
    assert encode_integer(-49, 8, "sign_magnitude") == "10110001"
    assert encode_integer(49, 8, "unsigned") == "00110001"


def test_sign_magnitude_has_two_zeros():
    assert decode_integer("10000000", "sign_magnitude") == 0
    assert decode_integer("00000000", "sign_magnitude") == 0
    assert encode_integer(0, 8, "sign_magnitude") == "00000000"
    assert decode_integer("10000000", "twos_complement") == -128


def test_width_comes_from_the_string():
    assert decode_integer("1") == -1 and decode_integer("1", "unsigned") == 1
    assert decode_integer("0111") == 7 and decode_integer("1000") == -8
    assert decode_integer("1" * 64) == -1 and decode_integer("1" * 64, "unsigned") == 2**64 - 1


@pytest.mark.parametrize("value, bits, encoding", [
    (128, 8, "twos_complement"), (-129, 8, "twos_complement"), (256, 8, "unsigned"), (-1, 8, "unsigned"),
    (-128, 8, "sign_magnitude"), (128, 8, "sign_magnitude"),
])
def test_out_of_range_values_are_refused(value, bits, encoding):
    with pytest.raises(ValueError, match=rf"{value} is outside the {bits}-bit {encoding} range"):
        encode_integer(value, bits, encoding)


def test_argument_errors():
    with pytest.raises(TypeError, match="value must be an integer"):
        encode_integer(3.0, 8)
    with pytest.raises(TypeError, match="value must be an integer"):
        encode_integer(True, 8)
    with pytest.raises(TypeError, match="bits must be an integer"):
        encode_integer(3, 8.0)
    with pytest.raises(ValueError, match="bits must be between"):
        encode_integer(0, 0)
    with pytest.raises(ValueError, match="bits must be between 2"):
        encode_integer(0, 1, "sign_magnitude")
    with pytest.raises(ValueError, match="unknown encoding"):
        encode_integer(3, 8, "ones_complement")
    with pytest.raises(ValueError, match="other than 0 and 1"):
        decode_integer("0012")
    with pytest.raises(ValueError, match="other than 0 and 1"):
        decode_integer("0b0101")
    with pytest.raises(ValueError, match="empty"):
        decode_integer("")
    with pytest.raises(TypeError, match="str of 0s and 1s"):
        decode_integer(0b0101)
    assert encode_integer(np.int8(-49), 8) == "11001111"  # numpy integers are integers


@pytest.mark.parametrize("name, call", [
    ("encode_integer", lambda: encode_integer(5, 8)),
    ("decode_integer", lambda: decode_integer("0101")),
])
def test_references_refuse_while_blocked(name, call):
    call()
    with blocked([name]), pytest.raises(ReferenceUnavailable, match=name):
        call()
