"""What an integer-only model stores: every bit it keeps to run, counted from the layers' shapes.

Chapter 6: Integer-only inference; chapter 8: mixed precision (lab09_capstone).

An integer model (:mod:`qlib.integer_model`) keeps, for every layer with ``C_out`` output
channels and ``N`` weights quantized to ``b`` bits:

    weights          b * N          symmetric integers, zero point 0 (nothing else per weight)
    biases           32 * C_out     int32, at the scale S_X S_W of the accumulator
    multipliers      32 * C_out     M0, the Q0.31 significand of M = S_X S_W / S_Y
    shifts            8 * C_out     n, the power of two of M (a small signed integer)

The per-channel weight scales are *not* stored: they live inside the biases and the
multipliers. Nor are the scales of the activations between layers; only two scales are kept:
the input's (to quantize the images) and the output's (to dequantize the logits), 32 bits
each (FP32). Every activation tensor, the input and each layer's output, keeps its zero point
at ``a`` bits (the activations' width). With ``L`` layers:

    total bits = sum over layers of [ b * N + (32 + 32 + 8) * C_out ] + 2 * 32 + (L + 1) * a

Example: one linear layer of shape ``(10, 64)`` at 4 bits, 8-bit activations:
``4 * 640 + 72 * 10 + 64 + 2 * 8 = 2560 + 720 + 64 + 16 = 3360`` bits (420 bytes).
Everything is exact integer arithmetic.
"""
from __future__ import annotations

import math
import numbers

from qlib._checks import check_bits
from qlib._reference import reference

#: Bits of one stored int32 bias, one multiplier M0 (Q0.31 in an int32), one shift.
BIAS_BITS, MULTIPLIER_BITS, SHIFT_BITS = 32, 32, 8
#: Bits of the input's and the output's scale (FP32).
SCALE_BITS = 32


def _check_layer(layer, index: int) -> tuple[tuple[int, ...], int]:
    try:
        shape, bits = layer
    except (TypeError, ValueError) as err:
        raise TypeError(f"layer {index} must be a pair (weight shape, bits), got {layer!r}") from err
    try:
        dims = tuple(shape)
    except TypeError as err:
        raise TypeError(f"layer {index}: the weight shape must be a sequence such as (64, 512), got {shape!r}") from err
    if len(dims) < 2 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in dims):
        raise ValueError(f"layer {index}: a weight shape is (C_out, ...) with at least two positive integers, "
                         f"got {dims}")
    return tuple(int(d) for d in dims), check_bits(bits)


@reference
def integer_model_bits(layers, activation_bits: int = 8) -> int:
    """Bits an integer-only model stores, for ``layers`` = a list of ``(weight shape, weight bits)``.

    Per layer (``C_out = shape[0]`` output channels, ``N`` weights at ``b`` bits):
    ``b * N`` weight bits, plus per output channel an int32 bias (32), a multiplier M0 (32) and
    a shift (8). Once per model: the input's and the output's FP32 scale (``2 * 32``) and one
    zero point per activation tensor (the input and each layer's output: ``len(layers) + 1``
    of them) at ``activation_bits`` bits:

        sum(b * N + 72 * C_out) + 64 + (len(layers) + 1) * activation_bits

    Example: ``integer_model_bits([((10, 64), 4)], 8) == 3360``.
    """
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of (weight shape, bits) pairs, got {type(layers).__name__}")
    checked = [_check_layer(layer, i) for i, layer in enumerate(layers)]
    if not checked:
        raise ValueError("an integer model has at least one layer")
    a = check_bits(activation_bits)
    total = 0
    for shape, bits in checked:
        total += bits * math.prod(shape) + (BIAS_BITS + MULTIPLIER_BITS + SHIFT_BITS) * shape[0]
    return total + 2 * SCALE_BITS + (len(checked) + 1) * a


__all__ = ["BIAS_BITS", "MULTIPLIER_BITS", "SCALE_BITS", "SHIFT_BITS", "integer_model_bits"]
