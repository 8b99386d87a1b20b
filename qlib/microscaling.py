"""Microscaling (MX) formats: blocks of small elements that share one power-of-two scale.

Chapter 1: Number formats (OCP Microscaling Formats (MX) Specification v1.0).
A block of ``k = 32`` consecutive values ``x_i`` is stored as one shared scale
``X = 2^s`` (an E8M0 code, ``s + 127``) and ``k`` elements ``P_i``:

    x_i ~ X * P_i

The spec's conversion (section 6.3), for an element format whose largest
power of two is ``2^emax_elem``:

    s   = floor(log2(max_i |x_i|)) - emax_elem       clamped to the E8M0 range [-127, 127]
    P_i = encode(x_i / 2^s)                           round half to even, saturating at +-max_elem

so the block's largest value lands in the element's top binade. (Microsoft's ``microxcaling``
emulation library rounds elements to nearest with ties away from zero unless asked for
``round='even'``: at an exact tie its codes and these can differ by one.) Elements that
would exceed the element's largest value (e.g. 7 in FP4, which holds up to 6)
are clamped to it, keeping their sign (E5M2 elements too: no inf is produced).
An all-zero block gets ``s = -127`` (any ``s`` would do; this is the smallest).

Elements (``emax_elem``, largest value): FP8 E4M3 (8, 448), FP8 E5M2 (15, 57344),
FP6 E2M3 (2, 7.5), FP6 E3M2 (4, 28), FP4 E2M1 (2, 6), and INT8: an 8-bit two's
complement integer with an implicit scale 2^-6, so its codes stand for
``q / 64`` in [-2, 127/64]; its ``emax_elem`` is 0 and conversion clamps to
+-127/64 (the largest value, kept symmetric: -128 is never produced, though it
decodes to -2).

Codes are bit patterns (numpy int64 arrays), as in :mod:`qlib.floating_point`:
an MXINT8 element of value -1/64 has code 255 (0b11111111). Shared exponents
are returned as the integer ``s``; the stored E8M0 code is ``s + 127``.

Inputs must be finite (the spec gives a block holding NaN or inf a NaN scale;
here that is a ``ValueError``).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from qlib._reference import reference
from qlib.floating_point import (
    E8M0,
    FP4_E2M1,
    FP6_E2M3,
    FP6_E3M2,
    FP8_E4M3,
    FP8_E5M2,
    FloatFormat,
    decode_floats,
    encode_floats,
)

#: Elements per block in every MX format of the spec.
MX_BLOCK = 32
#: Range of the shared exponent s: E8M0 codes 0..254 are 2^-127 .. 2^127 (255 is NaN).
SCALE_EXP_MIN, SCALE_EXP_MAX = E8M0.emin, E8M0.emax
#: MXINT8 codes q stand for q * 2^-6.
MXINT8_FRACTION_BITS = 6


@dataclass(frozen=True)
class MXElement:
    """The element type of an MX format: a float format, or (float_format None) MXINT8."""

    name: str
    bits: int
    emax: int
    float_format: FloatFormat | None = None

    @property
    def max_value(self) -> float:
        """Largest element magnitude: the float format's max_value, or 127/64 for MXINT8."""
        if self.float_format is None:
            return math.ldexp(2 ** (self.bits - 1) - 1, -MXINT8_FRACTION_BITS)
        return self.float_format.max_value


MXFP8_E4M3 = MXElement("mxfp8_e4m3", 8, FP8_E4M3.emax, FP8_E4M3)
MXFP8_E5M2 = MXElement("mxfp8_e5m2", 8, FP8_E5M2.emax, FP8_E5M2)
MXFP6_E2M3 = MXElement("mxfp6_e2m3", 6, FP6_E2M3.emax, FP6_E2M3)
MXFP6_E3M2 = MXElement("mxfp6_e3m2", 6, FP6_E3M2.emax, FP6_E3M2)
MXFP4_E2M1 = MXElement("mxfp4_e2m1", 4, FP4_E2M1.emax, FP4_E2M1)
MXINT8 = MXElement("mxint8", 8, 0, None)

MX_ELEMENTS = {e.name: e for e in (MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4_E2M1, MXINT8)}


def _check_element(element) -> MXElement:
    if not isinstance(element, MXElement):
        raise TypeError(f"element must be an MXElement such as qlib.microscaling.MXFP8_E4M3, got {element!r}")
    return element


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise TypeError(f"block_size must be an integer, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    return int(block_size)


def _finite_float64(x, name: str = "x") -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.size == 0:
        raise ValueError(f"{name} is empty: there is no block to quantize")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds {int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} infinite values: "
                         "MX quantization needs finite numbers")
    return a


def bits_per_element(element: MXElement, block_size: int = MX_BLOCK) -> float:
    """Storage cost per value: element bits + 8 / block_size (the shared E8M0 scale), e.g. 8.25 for MXFP8."""
    element = _check_element(element)
    return element.bits + E8M0.total_bits / _check_block_size(block_size)


def _shared_exponents(amax: np.ndarray, element: MXElement) -> np.ndarray:
    """floor(log2(amax)) - emax_elem, clamped to [-127, 127]; -127 where amax == 0."""
    exponent = np.frexp(amax)[1].astype(np.int64) - 1  # amax = (1.f) * 2^exponent, exactly
    s = np.clip(exponent - element.emax, SCALE_EXP_MIN, SCALE_EXP_MAX)
    return np.where(amax == 0, SCALE_EXP_MIN, s)


def _encode_elements(v: np.ndarray, element: MXElement) -> np.ndarray:
    """Element codes of the scaled values v = x / 2^s: round half to even, clamp to +-max."""
    if element.float_format is None:
        q = np.clip(np.rint(np.ldexp(v, MXINT8_FRACTION_BITS)), -127, 127).astype(np.int64)
        return q % 2**element.bits  # two's complement bit pattern
    clamped = np.clip(v, -element.max_value, element.max_value)  # saturate (E5M2 would round to inf)
    return encode_floats.unguarded(clamped, element.float_format)


def _decode_elements(codes: np.ndarray, element: MXElement) -> np.ndarray:
    if element.float_format is None:
        c = np.asarray(codes).astype(np.int64)
        if c.size and (c.min() < 0 or c.max() >= 2**element.bits):
            raise ValueError(f"MXINT8 codes must lie in [0, 255], got values in [{c.min()}, {c.max()}]")
        q = np.where(c >= 2 ** (element.bits - 1), c - 2**element.bits, c)
        return np.ldexp(q.astype(np.float64), -MXINT8_FRACTION_BITS)
    return decode_floats.unguarded(codes, element.float_format)


@reference
def mx_shared_exponent(block, element: MXElement) -> int:
    """The shared exponent ``s`` of one block (the E8M0 scale is 2^s, stored as code s + 127).

        s = floor(log2(max |block|)) - emax_elem,   clamped to [-127, 127]

    ``emax_elem`` is the exponent of the element's largest power of two (E4M3: 8,
    E5M2: 15, E2M3: 2, E3M2: 4, E2M1: 2, INT8: 0). An all-zero block gives -127.
    ``floor(log2(.))`` is taken exactly from the binary exponent (``frexp``),
    never from a rounded logarithm.
    """
    element = _check_element(element)
    block = _finite_float64(block, "block")
    return int(_shared_exponents(np.abs(block).max(), element))


@reference
def mx_quantize(x, element: MXElement, block_size: int = MX_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``x`` to an MX format over its last axis: ``(shared_exponents, element_codes)``.

    The last axis is cut into blocks of ``block_size`` consecutive values; each
    block ``b`` gets ``s_b = floor(log2(max|x_b|)) - emax_elem`` (clamped to
    [-127, 127], -127 for an all-zero block) and each value the element code of
    ``x / 2^s_b``, rounded half to even and clamped to +-max_elem (saturation,
    as the spec requires). Division by 2^s_b is exact.

    Returns int64 arrays: ``shared_exponents`` of shape ``x.shape[:-1] + (n_blocks,)``
    and ``element_codes`` (bit patterns) of the shape of ``x``. Raises
    ``ValueError`` if the last axis is not a multiple of ``block_size`` or if
    ``x`` holds NaN or inf.
    """
    element = _check_element(element)
    block_size = _check_block_size(block_size)
    x = _finite_float64(x)
    if x.ndim == 0 or x.shape[-1] % block_size != 0:
        length = x.shape[-1] if x.ndim else "a scalar"
        raise ValueError(f"the last axis has length {length}, which is not a multiple of block_size={block_size}: "
                         "pad it or choose a block_size that divides it")
    blocks = x.reshape(x.shape[:-1] + (x.shape[-1] // block_size, block_size))
    s = _shared_exponents(np.abs(blocks).max(axis=-1), element)
    scaled = np.ldexp(blocks, (-s)[..., None].astype(np.int32))  # x / 2^s, exact
    codes = _encode_elements(scaled, element)
    return s.astype(np.int64), codes.reshape(x.shape).astype(np.int64)


@reference
def mx_dequantize(shared_exponents, element_codes, element: MXElement, block_size: int = MX_BLOCK) -> np.ndarray:
    """The float64 values ``2^s_b * decode(code)`` of an MX tensor (exact).

    ``element_codes`` has blocks of ``block_size`` along its last axis;
    ``shared_exponents`` has one integer in [-127, 127] per block.
    """
    element = _check_element(element)
    block_size = _check_block_size(block_size)
    s = np.asarray(shared_exponents)
    codes = np.asarray(element_codes)
    for name, arr in (("shared_exponents", s), ("element_codes", codes)):
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if codes.ndim == 0 or codes.shape[-1] % block_size != 0:
        raise ValueError(f"element_codes must have a last axis that is a multiple of block_size={block_size}")
    expected = codes.shape[:-1] + (codes.shape[-1] // block_size,)
    if s.shape != expected:
        raise ValueError(f"shared_exponents has shape {s.shape}; element_codes of shape {codes.shape} "
                         f"with block_size={block_size} need shape {expected}")
    if s.size and (s.min() < SCALE_EXP_MIN or s.max() > SCALE_EXP_MAX):
        raise ValueError(f"shared exponents must lie in the E8M0 range [{SCALE_EXP_MIN}, {SCALE_EXP_MAX}]")
    values = _decode_elements(codes, element).reshape(expected + (block_size,))
    return np.ldexp(values, s[..., None].astype(np.int32)).reshape(codes.shape)


@reference
def mx_fake_quantize(x, element: MXElement, block_size: int = MX_BLOCK) -> np.ndarray:
    """``mx_dequantize(*mx_quantize(x))``: the float64 values an MX tensor stores for ``x``."""
    s, codes = mx_quantize.unguarded(x, element, block_size)
    return mx_dequantize.unguarded(s, codes, element, block_size)
