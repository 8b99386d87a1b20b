"""Two-level scales: an integer scale per vector of weights under a float scale per output channel.

Chapter 4: Post-training quantization: granularity (the VS-Quant section).

A weight is seen as the matrix ``[C_out, K]`` (a convolution's ``[C_out, C_in, k_h, k_w]`` flattened
to ``K = C_in * k_h * k_w``, as :func:`qlib.weights.weight_matrix` does). Each row is cut into
vectors of ``V`` consecutive weights along the input axis (the last vector of a row is shorter
when ``V`` does not divide ``K``). Quantizing to signed ``b``-bit weights with ``b_S``-bit
unsigned integer vector scales (``bits`` and ``scale_bits`` in the code):

    qmax       = 2^(b-1) - 1                                         weights live in [-qmax, qmax]
    S_v        = max_{j in v} |w_j| / qmax                           first level: the exact float scale of vector v
    S_c        = max(fp32(max_{v in c} S_v / (2^b_S - 1)), 2^-126)   second level: one float32 scale per channel
    q_s        = clamp(round(S_v / S_c), 1, 2^b_S - 1)               the b_S-bit integer scale of vector v
    q_j        = clamp(round(w_j / (S_c * q_s)), -qmax, qmax)        the b-bit weights of vector v
    w_hat_j    = S_c * q_s * q_j                                     (dequantize)

``round`` is round half to even (``torch.round``) in both places. The vector scales and weights
are computed in float64 from float32 inputs; ``S_c`` is rounded to float32 once (it is stored as
FP32, and that is the value used afterwards), and floored at the smallest normal float32 so that
an all-zero channel still has a positive scale (its weights are 0 and its vector scales 1).
Dequantization is exact in float64 (a float32 times integers below 2^12 and 2^15) and rounded
to float32 once.

So the effective scale of every vector is an integer multiple ``q_s`` of its channel's scale, and
the kernel can keep integer arithmetic inside a channel: it multiplies each vector's integer
partial sum by the small integer ``q_s`` and rescales the channel's sum by ``S_c`` once, as
per-channel quantization does.

Clamps, and what they cost: the widest vector of a channel gets ``q_s = 2^b_S - 1`` exactly. A
vector whose ``S_v / S_c`` rounds *down* gets a slightly finer step than its own exact scale, and
its largest weights clamp to ``+-qmax`` (for ``q_s = 1`` by up to half of ``qmax``). A vector
below half of ``S_c`` would round to 0; the clamp to 1 gives it the channel's finest step
instead. With ``b_S = 1`` every vector gets ``q_s = 1``: that is per-channel quantization. As ``b_S``
grows, ``S_c * q_s`` approaches ``S_v`` and the result approaches per-group quantization with
exact float scales (:func:`qlib.granularity.quantize_per_group`, groups of ``V``).

Storage, in the chapter's accounting (:mod:`qlib.scale_storage`):

    bits = N * b  +  C_out * ceil(K / V) * b_S  +  C_out * 32        (N = C_out * K weights)
    bits per weight = b + b_S * ceil(K / V) / K + 32 / K

Example: ``[64, 512]`` at 4 bits, ``V = 16``, ``b_S = 4``: 4 + 4/16 + 32/512 = 4.3125 bits per weight.

Source: Dai et al., "VS-Quant: Per-vector Scaled Quantization for Accurate Low-Precision Neural
Network Inference" (MLSys 2021). This module follows the scheme as the paper states it: a separate
scale for each small vector (about 16-64 elements) within one dimension of a tensor, stored as a
low-bitwidth unsigned integer and calibrated by a two-level quantization scheme whose second, coarser
level is a float scale. Where the paper leaves a choice open or makes it differently, this
module's choices are the ones stated above: max calibration at both levels, one FP32
second-level scale per output channel, round half to even, and the clamp of ``q_s`` to
``[1, 2^b_S - 1]``.
"""
from __future__ import annotations

import math

import torch

from qlib._checks import as_float_tensor, check_bits, check_count
from qlib.scale_storage import _check_shape, scale_storage_bits

#: Bits of the per-channel float scale (stored as FP32).
CHANNEL_SCALE_BITS = 32
#: Widest weights and integer scales allowed: S_c * q_s * q stays exact in float64 (24 + 12 + 15 < 53 bits).
MAX_BITS, MAX_SCALE_BITS = 16, 12
#: Smallest channel scale: the smallest normal float32, 2^-126.
MIN_CHANNEL_SCALE = float(torch.finfo(torch.float32).tiny)


def _check_widths(bits, scale_bits) -> tuple[int, int]:
    bits, scale_bits = check_bits(bits), check_bits(scale_bits)
    if not 2 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be between 2 and {MAX_BITS} (a sign and at least one magnitude bit), got {bits}")
    if scale_bits > MAX_SCALE_BITS:
        raise ValueError(f"scale_bits must be between 1 and {MAX_SCALE_BITS}, got {scale_bits}")
    return bits, scale_bits


def _matrix(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` viewed as ``[C_out, K]``."""
    if t.ndim < 2:
        raise ValueError(f"{name} needs an output-channel axis and an input axis, got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def _vectors(w2: torch.Tensor, vector_size: int) -> torch.Tensor:
    """``w2`` of shape ``[C_out, K]`` as ``[C_out, ceil(K / V), V]``, the last vector padded with zeros."""
    padded = torch.nn.functional.pad(w2, (0, -w2.shape[1] % vector_size))
    return padded.reshape(w2.shape[0], -1, vector_size)


def _expand(per_vector: torch.Tensor, vector_size: int, k: int) -> torch.Tensor:
    """One value per vector, ``[C_out, n_vectors]``, repeated over its weights: ``[C_out, K]``."""
    return per_vector.repeat_interleave(vector_size, dim=1)[:, :k]


def per_vector_quantize(w, bits: int, vector_size: int = 16,
                        scale_bits: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a weight with integer per-vector scales under float32 per-channel scales.

    Returns ``(q, vector_scales, channel_scales)``: the ``bits``-bit weights ``q`` (int64, the shape
    of ``w``), the ``scale_bits``-bit vector scales ``q_s`` (int64, ``[C_out, ceil(K / V)]``) and
    the channel scales ``S_c`` (float32, ``[C_out]``). The formulas, rounding and clamps are in the
    module docstring. Raises ``ValueError`` for a weight with fewer than two axes, bit widths
    outside ``2..16`` (``bits``) or ``1..12`` (``scale_bits``), a ``vector_size`` below 1, and
    NaN or infinite weights; ``TypeError`` for non-integer widths.
    """
    w = as_float_tensor(w, "w")
    w2 = _matrix(w, "w").to(torch.float64)              # float32 values are exact in float64
    bits, scale_bits = _check_widths(bits, scale_bits)
    vector_size = check_count(vector_size, "vector_size", 1)
    qmax, smax = 2 ** (bits - 1) - 1, 2 ** scale_bits - 1

    vector_fp = _vectors(w2, vector_size).abs().amax(dim=-1) / qmax           # S_v, [C_out, n_vectors]
    channel = (vector_fp.amax(dim=1) / smax).to(torch.float32)               # S_c, stored as FP32
    channel = torch.clamp(channel, min=MIN_CHANNEL_SCALE)
    vector_scales = torch.clamp(torch.round(vector_fp / channel.double()[:, None]), 1, smax)
    step = channel.double()[:, None] * vector_scales                          # S_c * q_s, exact in float64
    q = torch.clamp(torch.round(w2 / _expand(step, vector_size, w2.shape[1])), -qmax, qmax)
    return q.to(torch.int64).reshape(w.shape), vector_scales.to(torch.int64), channel


def per_vector_dequantize(q, vector_scales, channel_scales, vector_size: int = 16) -> torch.Tensor:
    """``S_c * q_s * q`` for every weight, as float32 of the shape of ``q`` (exact, then rounded once).

    ``q`` holds integers of shape ``[C_out, ...]``; ``vector_scales`` integers of shape
    ``[C_out, ceil(K / vector_size)]``, each at least 1; ``channel_scales`` positive finite
    floats of shape ``[C_out]``. Anything else raises ``TypeError`` (wrong dtype) or
    ``ValueError`` (shape or value), naming the argument.
    """
    vector_size = check_count(vector_size, "vector_size", 1)
    q, qs = torch.as_tensor(q), torch.as_tensor(vector_scales)
    for name, t in (("q", q), ("vector_scales", qs)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    channel = as_float_tensor(channel_scales, "channel_scales")
    q2 = _matrix(q, "q")
    c_out, k = q2.shape
    n_vectors = -(-k // vector_size)
    if tuple(qs.shape) != (c_out, n_vectors):
        raise ValueError(f"vector_scales has shape {tuple(qs.shape)}; q of shape {tuple(q.shape)} with "
                         f"vector_size={vector_size} needs ({c_out}, {n_vectors})")
    if tuple(channel.shape) != (c_out,):
        raise ValueError(f"channel_scales has shape {tuple(channel.shape)}; q needs ({c_out},)")
    if bool((qs < 1).any()):
        raise ValueError("vector_scales must be at least 1 (an integer scale of 0 would erase its vector)")
    if bool((channel <= 0).any()):
        raise ValueError("channel_scales must be positive")
    step = channel.double()[:, None] * qs.double()
    w_hat = _expand(step, vector_size, k) * q2.double()
    return w_hat.to(torch.float32).reshape(q.shape)


def per_vector_fake_quantize(w, bits: int, vector_size: int = 16, scale_bits: int = 4) -> torch.Tensor:
    """``per_vector_dequantize(*per_vector_quantize(w, ...))``: the float32 weights that the integers stand for."""
    q, vector_scales, channel_scales = per_vector_quantize(w, bits, vector_size, scale_bits)
    return per_vector_dequantize(q, vector_scales, channel_scales, vector_size)


def per_vector_storage_bits(shape, bits: int, vector_size: int = 16, scale_bits: int = 4) -> int:
    """Bits of a weight of ``shape`` stored this way: its integers, vector scales and FP32 channel scales.

        N * bits + C_out * ceil(K / vector_size) * scale_bits + C_out * 32

    (:func:`qlib.scale_storage.scale_storage_bits` counts both levels of scales.)
    """
    dims = _check_shape(shape)
    bits, scale_bits = _check_widths(bits, scale_bits)
    vector_size = check_count(vector_size, "vector_size", 1)
    vector_level = scale_storage_bits(dims, "group", vector_size, scale_bits)
    channel_level = scale_storage_bits(dims, "channel", None, CHANNEL_SCALE_BITS)
    return math.prod(dims) * bits + vector_level + channel_level


def per_vector_bits_per_weight(shape, bits: int, vector_size: int = 16, scale_bits: int = 4) -> float:
    """Effective bit width: :func:`per_vector_storage_bits` over the number of weights.

    That is ``bits + scale_bits * ceil(K / V) / K + 32 / K``.
    """
    dims = _check_shape(shape)
    return per_vector_storage_bits(dims, bits, vector_size, scale_bits) / math.prod(dims)
