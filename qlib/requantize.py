"""Requantization: rescaling int32 accumulators with an integer multiplier, the gemmlowp/TFLite way.

Chapter 6: Integer-only inference (lab06_integer_inference).

An integer layer accumulates ``acc = sum(q_W q_X) + q_bias`` in int32 at scale
``S_W * S_X``. Its output, at scale ``S_Y`` with zero point ``Z_Y``, is

    q_Y = clamp(round(M * acc) + Z_Y, qmin, qmax),      M = S_W * S_X / S_Y

The real multiplier ``M`` is stored as an int32 fixed-point number and a shift,

    M ~= M0 * 2^-31 * 2^-n,        M0 in [2^30, 2^31)   (Q0.31: M0 * 2^-31 in [0.5, 1))

so that rescaling needs one 32x32 -> 64-bit integer multiply and shifts, no
floating point. ``n`` is a *right* shift; a multiplier ``M >= 1`` gets a
negative ``n`` (a left shift), as in TFLite's ``QuantizeMultiplier``.

Two ways to apply ``(M0, n)`` to ``acc``, which round differently:

* :func:`multiply_by_quantized_multiplier` (TFLite, two roundings):
  ``rounding_divide_by_pot(saturating_rounding_doubling_high_mul(acc * 2^max(-n, 0), M0), max(n, 0))``.
  The high multiply rounds ``acc * M0 / 2^31`` to nearest with ties toward +infinity;
  the right shift rounds to nearest with ties away from zero.
* :func:`multiply_by_quantized_multiplier_single_round` (TFLite's single-rounding
  variant): ``floor((acc * M0 + 2^(30 + n)) / 2^(31 + n))``, i.e. the exact 64-bit
  product rounded once, to nearest with ties toward +infinity.

Conventions of this module: integer inputs may be int8 ... int64 tensors, numpy
arrays or Python ints, and must hold int32 values; float inputs are refused
(accumulators are integers). Results are int64 tensors holding int32 values.
Every function is vectorised and exact. ``m0`` and ``shift`` may be scalars or
tensors (one per output channel: pass ``axis`` to lay a 1-D vector along that axis).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from qlib._checks import as_float_tensor, check_axis, check_integer_range
from qlib._reference import reference
from qlib.rounding import round_half_away_from_zero

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
#: Smallest and largest right shift ``n`` that :func:`quantize_multiplier` returns.
MIN_SHIFT, MAX_SHIFT = -31, 31


# --- argument checks ----------------------------------------------------------------------------

def _int_tensor(x, name: str, lo: int = INT32_MIN, hi: int = INT32_MAX) -> torch.Tensor:
    """``x`` as an int64 tensor after checking it holds integers in [lo, hi]."""
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold integers, got a numpy array of dtype {x.dtype}")
        t = torch.from_numpy(x.astype(np.int64))
    elif isinstance(x, bool):
        raise TypeError(f"{name} must hold integers, got a boolean")
    elif isinstance(x, numbers.Integral):
        if not lo <= int(x) <= hi:
            raise ValueError(f"{name}={x} is outside [{lo}, {hi}]")
        return torch.tensor(int(x), dtype=torch.int64)
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise TypeError(f"{name} must be an integer tensor, got {type(x).__name__}") from err
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integers (an int8 ... int64 tensor), got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    t = t.to(torch.int64)
    if bool((t < lo).any()) or bool((t > hi).any()):
        raise ValueError(f"{name} holds values outside [{lo}, {hi}] (found {int(t.min())} ... {int(t.max())})")
    return t


def _along_axis(values: torch.Tensor, x: torch.Tensor, axis: int | None, name: str) -> torch.Tensor:
    """Shape ``values`` (scalar or one per channel) to broadcast against ``x``."""
    if axis is not None:
        axis = check_axis(x, axis)
    if axis is None or values.ndim == 0:
        try:
            torch.broadcast_shapes(values.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(values.shape)} does not broadcast against "
                             f"shape {tuple(x.shape)}; pass axis= for one value per channel") from None
        return values
    values = values.reshape(-1)
    if values.numel() not in (1, x.shape[axis]):
        raise ValueError(f"{name} has {values.numel()} values but the input has {x.shape[axis]} "
                         f"channels along axis {axis}")
    shape = [1] * x.ndim
    shape[axis] = values.numel()
    return values.reshape(shape)


def _check_zero_point(zero_point, qmin: int, qmax: int) -> int:
    if isinstance(zero_point, torch.Tensor) and zero_point.numel() == 1 and not zero_point.is_floating_point():
        zero_point = int(zero_point.item())
    if isinstance(zero_point, bool) or not isinstance(zero_point, numbers.Integral):
        raise TypeError(f"zero_point must be an integer, got {zero_point!r}")
    if not qmin <= zero_point <= qmax:
        raise ValueError(f"zero_point={zero_point} is outside the output range [{qmin}, {qmax}]")
    return int(zero_point)


# --- the multiplier -----------------------------------------------------------------------------

def real_multiplier(input_scale, weight_scale, output_scale) -> torch.Tensor:
    """The real rescaling factor ``M = S_X * S_W / S_Y`` of a layer, as float64.

    ``S_X * S_W`` is exact in float64 (a product of two float32 numbers has at
    most 48 significant bits); the division is rounded once, to nearest even.
    ``weight_scale`` may hold one scale per output channel.
    """
    sx = as_float_tensor(input_scale, "input_scale").to(torch.float64)
    sw = as_float_tensor(weight_scale, "weight_scale").to(torch.float64)
    sy = as_float_tensor(output_scale, "output_scale").to(torch.float64)
    for name, s in (("input_scale", sx), ("weight_scale", sw), ("output_scale", sy)):
        if bool((s <= 0).any()):
            raise ValueError(f"{name} must be positive")
    return sx * sw / sy


@reference
def quantize_multiplier(multiplier) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-point form ``(m0, shift)`` of a real multiplier ``M > 0``: ``M ~= m0 * 2^-31 * 2^-shift``.

    Write ``M = f * 2^e`` with ``f`` in [0.5, 1) (``frexp``); then

        m0    = round(f * 2^31)      (round half away from zero, as TFLite's std::round)
        shift = -e                   (a right shift; negative for M >= 1, i.e. a left shift)

    ``f * 2^31`` is exact in float64, so ``m0`` is the nearest integer to it and
    ``|m0 * 2^-31 - f| <= 2^-32``: a relative error of at most 2^-31 on ``M``.
    Carry: when ``f`` is within 2^-32 of 1, ``m0`` rounds up to 2^31, which does
    not fit in int32; it then becomes ``2^30`` and ``shift`` drops by one (same
    value, ``2^31 * 2^-31 * 2^-shift = 2^30 * 2^-31 * 2^-(shift-1)``).

    ``m0`` always lies in [2^30, 2^31 - 1]. ``multiplier`` is a Python float
    (taken as float64), or a tensor of them (e.g. one per output channel); the
    results are int64 tensors of its shape. Raises ``ValueError`` for ``M <= 0``,
    NaN or infinity, or an ``M`` outside [2^-32, 2^31) whose shift would leave
    [-31, 31].

    Example: ``M = 0.3`` gives ``m0 = 1288490189``, ``shift = 1``
    (``1288490189 / 2^32 = 0.30000000004656613``).
    """
    if not isinstance(multiplier, torch.Tensor):
        if isinstance(multiplier, bool):
            raise TypeError("multiplier must be a real number, got a boolean")
        try:
            multiplier = torch.as_tensor(multiplier, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"multiplier must be a real number or a tensor, got {type(multiplier).__name__}") from err
    m = as_float_tensor(multiplier, "multiplier").to(torch.float64)
    if bool((m <= 0).any()):
        raise ValueError(f"the multiplier must be positive, got {float(m.min())}")
    mantissa, exponent = torch.frexp(m)  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = round_half_away_from_zero(mantissa * 2.0**31).to(torch.int64)
    exponent = exponent.to(torch.int64)
    carry = m0 == 2**31
    m0 = torch.where(carry, torch.full_like(m0, 2**30), m0)
    shift = -(exponent + carry.to(torch.int64))
    if bool((shift < MIN_SHIFT).any()) or bool((shift > MAX_SHIFT).any()):
        raise ValueError(f"multiplier {float(m.min()):.6g} ... {float(m.max()):.6g} needs a shift outside "
                         f"[{MIN_SHIFT}, {MAX_SHIFT}]: supported multipliers lie in [2^-32, 2^31)")
    return m0, shift


def dequantize_multiplier(m0, shift) -> torch.Tensor:
    """The real number ``m0 * 2^-31 * 2^-shift`` that ``(m0, shift)`` stands for (float64, exact)."""
    m0 = _int_tensor(m0, "m0", 0, INT32_MAX)
    shift = _int_tensor(shift, "shift", MIN_SHIFT, MAX_SHIFT)
    return torch.ldexp(m0.to(torch.float64), (-31 - shift).to(torch.float64))


# --- gemmlowp's fixed-point primitives ----------------------------------------------------------

@reference
def saturating_rounding_doubling_high_mul(a, b) -> torch.Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul: ``a * b / 2^31`` rounded, for int32 ``a``, ``b``.

    Reads ``a`` and ``b`` as Q0.31 numbers (``a * 2^-31``) and returns their
    Q0.31 product (the ARM NEON instruction VQRDMULH):

        ab    = a * b                                  (exact, 64 bits)
        nudge = 2^30 if ab >= 0 else 1 - 2^30
        out   = trunc((ab + nudge) / 2^31)             (C integer division: toward zero)

    Rounding: to nearest, ties toward +infinity (``ab / 2^31 = 2.5 -> 3``,
    ``-2.5 -> -2``): the nudge of ``1 - 2^30`` below zero combined with truncation
    rounds a negative tie up. Saturation: the only product that overflows int32
    is ``INT32_MIN * INT32_MIN`` (-1 * -1 = +1 in Q0.31), which returns INT32_MAX.
    """
    a = _int_tensor(a, "a")
    b = _int_tensor(b, "b")
    return _srdhm(a, b)


def _srdhm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ab = a * b
    nudge = torch.where(ab >= 0, 2**30, 1 - 2**30)
    high = torch.div(ab + nudge, 2**31, rounding_mode="trunc")
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return torch.where(overflow, INT32_MAX, high)


@reference
def rounding_divide_by_pot(x, exponent) -> torch.Tensor:
    """gemmlowp's RoundingDivideByPOT: ``x / 2^exponent`` rounded to nearest, ties away from zero.

    For int32 ``x`` and ``exponent`` in 0..31:

        mask      = 2^exponent - 1
        remainder = x & mask                        (the bits shifted out; always >= 0)
        threshold = (mask >> 1) + (1 if x < 0 else 0)
        out       = (x >> exponent) + (1 if remainder > threshold else 0)

    ``x >> exponent`` is the arithmetic shift (floor); adding one when the
    remainder exceeds half rounds to nearest, and the extra 1 in the threshold
    for negative ``x`` sends ties away from zero: 5/2 -> 3, -5/2 -> -3, -7/4 -> -2.
    """
    x = _int_tensor(x, "x")
    exponent = _int_tensor(exponent, "exponent", 0, 31)
    return _rdbpot(x, exponent)


def _rdbpot(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).to(torch.int64)
    return (x >> exponent) + (remainder > threshold).to(torch.int64)


# --- applying the multiplier --------------------------------------------------------------------

def _multiplier_args(x, m0, shift, axis, min_shift: int):
    x = _int_tensor(x, "x")
    m0 = _along_axis(_int_tensor(m0, "m0", 0, INT32_MAX), x, axis, "m0")
    shift = _along_axis(_int_tensor(shift, "shift", min_shift, MAX_SHIFT), x, axis, "shift")
    return x, m0, shift


@reference
def multiply_by_quantized_multiplier(x, m0, shift, axis: int | None = None) -> torch.Tensor:
    """``x * M`` for ``M = m0 * 2^-31 * 2^-shift``, rounded the TFLite way (two roundings).

        left  = max(-shift, 0),  right = max(shift, 0)
        out   = rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x * 2^left, m0), right)

    First rounding: ``x * 2^left * m0 / 2^31`` to nearest, ties toward +infinity;
    second: the right shift, to nearest, ties away from zero. The result can
    differ by one from ``x * M`` rounded once (see
    :func:`multiply_by_quantized_multiplier_single_round`).

    ``x`` holds int32 values; ``m0`` in [0, 2^31 - 1]; ``shift`` in [-31, 31].
    For a left shift (``M >= 1``) ``x * 2^left`` must fit in int32 (in C it would
    overflow): otherwise ``ValueError``. ``m0``/``shift`` may be one per channel
    (1-D, laid along ``axis``).
    """
    x, m0, shift = _multiplier_args(x, m0, shift, axis, MIN_SHIFT)
    return _mbqm(x, m0, shift)


def _mbqm(x: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    left = torch.clamp(-shift, min=0)
    right = torch.clamp(shift, min=0)
    if bool((left > 0).any()):
        x = x << left
        if bool((x < INT32_MIN).any()) or bool((x > INT32_MAX).any()):
            raise ValueError("x * 2^left_shift overflows int32: the multiplier is too large for these values")
    return _rdbpot(_srdhm(x, m0), right)


@reference
def multiply_by_quantized_multiplier_single_round(x, m0, shift, axis: int | None = None) -> torch.Tensor:
    """``x * M`` for ``M = m0 * 2^-31 * 2^-shift`` with a single rounding of the 64-bit product.

        total = 31 + shift
        out   = (x * m0 + 2^(total - 1)) >> total       (arithmetic shift: floor)

    i.e. ``floor(x * M + 1/2)``: round to nearest, ties toward +infinity
    (``2.5 -> 3``, ``-2.5 -> -2``). ``x * m0`` is exact in 64 bits. This is TFLite's
    ``TFLITE_SINGLE_ROUNDING`` variant; it needs ``shift`` in [-30, 31] and the
    result must fit in int32 (``ValueError`` otherwise).
    """
    x, m0, shift = _multiplier_args(x, m0, shift, axis, MIN_SHIFT + 1)
    return _mbqm_single_round(x, m0, shift)


def _mbqm_single_round(x: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    total = 31 + shift
    out = (x * m0 + (1 << (total - 1))) >> total
    if bool((out < INT32_MIN).any()) or bool((out > INT32_MAX).any()):
        raise ValueError("x * M overflows int32: the multiplier is too large for these values")
    return out


@reference
def requantize(acc, m0, shift, zero_point: int, qmin: int, qmax: int, axis: int | None = None,
               single_round: bool = False) -> torch.Tensor:
    """Output integers ``q_Y = clamp(multiply_by_quantized_multiplier(acc, m0, shift) + Z_Y, qmin, qmax)``.

    ``acc`` are int32 accumulators (bias included) at scale ``S_W * S_X``;
    ``(m0, shift) = quantize_multiplier(S_W * S_X / S_Y)``; ``zero_point`` is
    ``Z_Y``, an integer in [qmin, qmax]. Rounding: as
    :func:`multiply_by_quantized_multiplier` (ties toward +infinity, then away
    from zero), or with ``single_round=True`` as
    :func:`multiply_by_quantized_multiplier_single_round`. The clamp saturates;
    a fused ReLU is the clamp with ``qmin = Z_Y``.

    Per-channel requantization: ``m0`` and ``shift`` hold one value per output
    channel, laid along ``axis`` of ``acc`` (e.g. ``axis=-1`` for a linear
    layer's ``(N, C_out)``, ``axis=1`` for a convolution's ``(N, C_out, H, W)``).
    Returns an int64 tensor.
    """
    check_integer_range(qmin, qmax)
    zero_point = _check_zero_point(zero_point, qmin, qmax)
    if single_round:
        acc, m0, shift = _multiplier_args(acc, m0, shift, axis, MIN_SHIFT + 1)
        scaled = _mbqm_single_round(acc, m0, shift)
    else:
        acc, m0, shift = _multiplier_args(acc, m0, shift, axis, MIN_SHIFT)
        scaled = _mbqm(acc, m0, shift)
    return torch.clamp(scaled + zero_point, qmin, qmax)
