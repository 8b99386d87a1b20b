"""What the scales cost: the storage of a quantized weight's scales and zero points, in bits per weight.

Chapter 4: Post-training quantization: granularity (lab04_ptq_granularity).

A weight of shape ``[C_out, d_1, d_2, ...]`` holds ``N = C_out * K`` values, where
``K = d_1 * d_2 * ...`` is the length of one output channel's dot product (for a
convolution, ``C_in * k_h * k_w``: the input axis once the weight is flattened to
``[C_out, K]``). Quantized to ``b`` bits, it also stores one scale (and, when
asymmetric, one zero point) per tensor, per output channel, or per group:

    granularity   number of scales
    "tensor"      1
    "channel"     C_out
    "group"       C_out * ceil(K / g)       groups of g consecutive values along the input axis
    "mx"          C_out * ceil(K / 32)      MX blocks of 32 with an 8-bit E8M0 scale, no zero point

    scale storage   = number of scales * (scale_bits + zero_point_bits)
    bits per weight = b + scale storage / N                          (the effective bit width)

A group that does not fill ``g`` values (the last one of a row, when ``g`` does
not divide ``K``) still needs a whole scale: that is the ``ceil``. Typical scale
formats: FP32 (32 bits), FP16 or BF16 (16 bits), E8M0 (8 bits, powers of two only).
A zero point lies in ``[qmin, qmax]``, so ``b`` bits hold it.

Example: a ``[64, 512]`` weight at 4 bits in groups of 128 with FP16 scales and
4-bit zero points has ``64 * 4 = 256`` groups, ``256 * (16 + 4) = 5120`` bits of
scales, ``5120 / 32768 = 0.15625`` bits per weight: 4.15625 bits per weight in all.
Everything here is exact integer arithmetic (``bits per weight`` is the one division).
"""
from __future__ import annotations

import math
import numbers

from qlib._checks import check_bits, check_count
from qlib._reference import reference

#: Bits of one stored scale, by format name.
SCALE_FORMAT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "e8m0": 8}
#: Granularities whose scale storage is counted here.
GRANULARITIES = ("tensor", "channel", "group", "mx")
#: Values per MX block, and the bits of its E8M0 shared scale (OCP MX specification v1.0).
MX_BLOCK_SIZE, MX_SCALE_BITS = 32, 8


def _check_shape(shape) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError as err:
        raise TypeError(f"shape must be a sequence of integers such as (64, 512), got {shape!r}") from err
    if len(dims) < 2:
        raise ValueError(f"a weight shape needs an output-channel axis and at least one input axis, got {dims}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise ValueError(f"every dimension of shape must be a positive integer, got {dims}")
    return tuple(int(d) for d in dims)


def _check_scheme(granularity, group_size, scale_bits, zero_point_bits) -> tuple[int | None, int, int]:
    """``(group_size, scale_bits, zero_point_bits)`` after checks and the defaults of ``granularity``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "mx":
        if scale_bits not in (None, MX_SCALE_BITS):
            raise ValueError(f"MX scales are E8M0 (8 bits), got scale_bits={scale_bits!r}")
        if zero_point_bits:
            raise ValueError("MX blocks are symmetric: they store no zero point (zero_point_bits must be 0)")
        group_size = MX_BLOCK_SIZE if group_size is None else group_size
        scale_bits = MX_SCALE_BITS
    if granularity in ("group", "mx"):
        if group_size is None:
            raise ValueError("granularity='group' needs a group_size")
        group_size = check_count(group_size, "group_size", 1)
    elif group_size is not None:
        raise ValueError(f"group_size is only used with granularity 'group' or 'mx', not {granularity!r}")
    scale_bits = check_bits(32 if scale_bits is None else scale_bits)
    zero_point_bits = check_count(zero_point_bits, "zero_point_bits", 0)
    return group_size, scale_bits, zero_point_bits


def _count(dims: tuple[int, ...], granularity: str, group_size: int | None) -> int:
    out_channels, k = dims[0], math.prod(dims[1:])
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return out_channels
    return out_channels * -(-k // group_size)  # ceil(K / g) groups in every output channel


def scale_count(shape, granularity: str, group_size: int | None = None) -> int:
    """How many scales a weight of ``shape`` stores: 1, ``C_out`` or ``C_out * ceil(K / group_size)``.

    ``K`` is the product of every dimension after the first (the input axis of the
    weight flattened to ``[C_out, K]``). ``"mx"`` means groups of 32 unless
    ``group_size`` says otherwise.
    """
    dims = _check_shape(shape)
    group_size, _, _ = _check_scheme(granularity, group_size, None, 0)
    return _count(dims, granularity, group_size)


def scale_storage_bits(shape, granularity: str, group_size: int | None = None,
                       scale_bits: int | None = None, zero_point_bits: int = 0) -> int:
    """Bits of all the scales and zero points of a weight: ``scale_count * (scale_bits + zero_point_bits)``.

    ``scale_bits`` defaults to 32 (FP32); ``"mx"`` always uses 8 (E8M0) and no zero point.
    """
    dims = _check_shape(shape)
    group_size, scale_bits, zero_point_bits = _check_scheme(granularity, group_size, scale_bits, zero_point_bits)
    return _count(dims, granularity, group_size) * (scale_bits + zero_point_bits)


@reference
def scale_bits_per_weight(shape, granularity: str, group_size: int | None = None,
                          scale_bits: int | None = None, zero_point_bits: int = 0) -> float:
    """Scale storage spread over the weights: ``scale_storage_bits / N`` (``N`` = number of weights).

    Per-tensor costs almost nothing; per-channel ``(scale_bits + zero_point_bits) / K``;
    groups of ``g`` about ``(scale_bits + zero_point_bits) / g`` (exactly that when
    ``g`` divides ``K``). MX blocks of 32 cost 8 / 32 = 0.25 bits per weight.
    """
    dims = _check_shape(shape)
    return scale_storage_bits(dims, granularity, group_size, scale_bits, zero_point_bits) / math.prod(dims)


def bits_per_weight(shape, bits: int, granularity: str, group_size: int | None = None,
                    scale_bits: int | None = None, zero_point_bits: int = 0) -> float:
    """Effective bit width of a quantized weight: ``bits`` plus the scales' share, ``bits + scale_bits_per_weight``."""
    bits = check_bits(bits)
    dims = _check_shape(shape)
    return bits + scale_storage_bits(dims, granularity, group_size, scale_bits, zero_point_bits) / math.prod(dims)


def layers_bits_per_weight(shapes, bits: int, granularity: str, group_size: int | None = None,
                           scale_bits: int | None = None, zero_point_bits: int = 0) -> float:
    """Effective bit width of several weights together (a model): total bits over total weights.

        (sum_l bits * N_l + sum_l scale_storage_bits_l) / sum_l N_l

    Layers with many weights dominate; a small layer pays a high price per weight for its
    scales but adds little to the total. Biases and other parameters are not counted.
    """
    bits = check_bits(bits)
    dims = [_check_shape(s) for s in shapes]
    if not dims:
        raise ValueError("shapes is empty: there is no weight to count")
    n = sum(math.prod(d) for d in dims)
    scales = sum(scale_storage_bits(d, granularity, group_size, scale_bits, zero_point_bits) for d in dims)
    return (bits * n + scales) / n
