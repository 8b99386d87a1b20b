"""Cheaper rescaling: the activation-scale approximations of the CEA N2D2 export.

Chapter 6: Integer-only inference.

An integer layer ends by multiplying its accumulator by a real scale ``alpha``
(``S_W S_X / S_Y``). N2D2's post-training quantization (option
``-act-rescaling-mode``) can replace that multiplication by integer operations,
at a cost in accuracy of the scale itself:

* fixed point: ``alpha ~= M * 2^-F`` with ``M`` an integer of at most ``bits``
  bits (``Fixed-point16``/``Fixed-point32``): one integer multiply and a shift;
* single shift: ``alpha ~= 2^-s``: a shift only;
* double shift: ``alpha ~= (1 + 2^-a) * 2^-b = 2^-b + 2^-(a+b)``, a sum of two
  powers of two: ``x * alpha = (x + x * 2^-a) * 2^-b``, two shifts and an add.

The shift modes only shift right, so they need ``alpha <= 1`` (N2D2 falls back
to fixed point above 1). Each ``*_scaling`` function picks the parameters whose
value is closest to ``alpha`` in relative error; each ``*_rescale`` function
applies them to int32 values with one rounding, to nearest with ties toward
+infinity (add half, then arithmetic shift right: ``(v + 2^(k-1)) >> k``),
which is what N2D2's generated code does for the first two. (For the double
shift, N2D2's export computes ``x >> a`` first, truncating; here ``(x << a) + x``
is formed exactly and rounded once.)

Worked example (N2D2's documentation uses ``alpha = 0.0119``): single shift
``2^-6 = 0.015625`` (+31.3 %); double shift ``2^-7 + 2^-8 = 0.01171875``
(-1.52 %); 16-bit fixed point ``24956 * 2^-21 = 0.0118999...`` (-4.4e-6).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

import torch

from qlib._checks import check_count
from qlib.requantize import INT32_MAX, INT32_MIN, _int_tensor

#: Names of the approximation modes, in N2D2's order.
MODES = ("fixed_point", "single_shift", "double_shift")
#: Largest shift the shift modes use.
MAX_SHIFT = 31


def _check_scale(scale, right_shifts_only: bool) -> float:
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {scale!r}")
    scale = float(scale)
    if math.isnan(scale) or math.isinf(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if right_shifts_only and scale > 1:
        raise ValueError(f"scale {scale} is above 1: shift approximations only shift right "
                         "(use fixed point for scales above 1)")
    if right_shifts_only and scale < 2.0 ** -(MAX_SHIFT + 1):
        raise ValueError(f"scale {scale} is below 2^-{MAX_SHIFT + 1}: it needs a shift beyond {MAX_SHIFT}")
    return scale


def _round_half_up(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2))


# --- choosing the parameters --------------------------------------------------------------------

def fixed_point_scaling(scale: float, bits: int = 16) -> tuple[int, int]:
    """``(M, F)`` with ``scale ~= M * 2^-F``: the most fraction bits ``F`` whose ``M`` fits in ``bits`` bits.

        M = round(scale * 2^F)   (round half up, exact),   1 <= M <= 2^(bits-1) - 1   (signed)

    The grid of multiples of ``2^-(F+1)`` contains that of ``2^-F``, so the
    largest ``F`` whose ``M`` fits is the closest. Then ``M >= 2^(bits-2)`` (else
    ``F + 1`` would fit too), and ``|M 2^-F - scale| <= 2^-(F+1)`` gives a relative
    error of at most ``1 / (2M - 1) <= 1 / (2^(bits-1) - 1)``. A scale that needs
    more than ``bits`` bits at ``F = 0`` raises ``ValueError``. ``bits`` is 2..32
    (N2D2 offers 16 and 32).
    """
    scale = _check_scale(scale, right_shifts_only=False)
    bits = check_count(bits, "bits", 2)
    if bits > 32:
        raise ValueError(f"bits must be at most 32, got {bits}")
    m_max = 2 ** (bits - 1) - 1
    exact = Fraction(scale)
    if _round_half_up(exact) > m_max:
        raise ValueError(f"scale {scale} needs more than {bits} bits even without fraction bits")
    # start near the answer, then step to the largest F whose M fits
    f = max(0, math.floor(math.log2(m_max / scale)))
    while _round_half_up(exact * 2 ** (f + 1)) <= m_max:
        f += 1
    while f > 0 and _round_half_up(exact * 2**f) > m_max:
        f -= 1
    m = _round_half_up(exact * 2**f)
    if m < 1:
        raise ValueError(f"scale {scale} is too small for {bits}-bit fixed point")
    return m, f


def single_shift_scaling(scale: float) -> int:
    """The right shift ``s >= 0`` for which ``2^-s`` is closest to ``scale`` in relative error.

    Between two neighbours ``2^-(s+1)`` and ``2^-s`` the relative errors
    ``2^-s / scale - 1`` and ``1 - 2^-(s+1) / scale`` are equal at their arithmetic
    mean ``0.75 * 2^-s``: below it the smaller power wins. Needs ``0 < scale <= 1``;
    ``s <= 31``; a tie goes to the smaller ``s``.
    """
    scale = _check_scale(scale, right_shifts_only=True)
    best = min(range(MAX_SHIFT + 1), key=lambda s: (abs(Fraction(1, 2**s) / Fraction(scale) - 1), s))
    return best


def double_shift_scaling(scale: float) -> tuple[int, int]:
    """``(a, b)`` for which ``(1 + 2^-a) * 2^-b`` is closest to ``scale`` in relative error.

    ``a`` and ``b`` run over 0..31 (``a = 0`` gives ``2^-(b-1)``, so the single
    shift is included; ``a = 31`` is nearly ``2^-b``). Ties go to the smaller
    ``b``, then the smaller ``a``. Needs ``0 < scale <= 1``.
    """
    scale = _check_scale(scale, right_shifts_only=True)
    exact = Fraction(scale)
    # (1 + 2^-a) 2^-b lies in (2^-b, 2^-(b-1)]: only the b next to -log2(scale) can win
    b0 = math.floor(-math.log2(scale))
    shifts_b = range(max(0, b0 - 1), min(MAX_SHIFT, b0 + 2) + 1)
    candidates = ((abs((1 + Fraction(1, 2**a)) / 2**b / exact - 1), b, a)
                  for b in shifts_b for a in range(MAX_SHIFT + 1))
    _, b, a = min(candidates)
    return a, b


# --- applying them to integers ------------------------------------------------------------------

def _rounding_shift_right(v: torch.Tensor, k: int) -> torch.Tensor:
    """``floor(v / 2^k + 1/2)``: add half, arithmetic shift right (ties toward +infinity)."""
    if k == 0:
        return v
    return (v + (1 << (k - 1))) >> k


def _check_shift(k, name: str) -> int:
    k = check_count(k, name, 0)
    if k > 62:
        raise ValueError(f"{name} must be at most 62, got {k}")
    return k


def fixed_point_rescale(x, multiplier: int, frac_bits: int) -> torch.Tensor:
    """``(x * M + 2^(F-1)) >> F``: ``x * M * 2^-F`` rounded to nearest, ties toward +infinity.

    ``x`` holds int32 values; ``x * M`` is exact in 64 bits for ``|M| < 2^32``. Returns int64.
    """
    x = _int_tensor(x, "x", INT32_MIN, INT32_MAX)
    multiplier = int(_int_tensor(multiplier, "multiplier", -(2**32) + 1, 2**32 - 1))
    return _rounding_shift_right(x * multiplier, _check_shift(frac_bits, "frac_bits"))


def single_shift_rescale(x, shift: int) -> torch.Tensor:
    """``(x + 2^(s-1)) >> s``: ``x * 2^-s`` rounded to nearest, ties toward +infinity. Returns int64."""
    x = _int_tensor(x, "x", INT32_MIN, INT32_MAX)
    return _rounding_shift_right(x, _check_shift(shift, "shift"))


def double_shift_rescale(x, a: int, b: int) -> torch.Tensor:
    """``((x << a) + x + 2^(a+b-1)) >> (a + b)``: ``x (1 + 2^-a) 2^-b`` rounded once, ties toward +infinity.

    Shifts and adds only: ``x (1 + 2^-a) 2^-b = (x 2^a + x) 2^-(a+b)``, formed exactly
    in 64 bits (``a <= 31``). Returns int64.
    """
    x = _int_tensor(x, "x", INT32_MIN, INT32_MAX)
    a = _check_shift(a, "a")
    if a > MAX_SHIFT:
        raise ValueError(f"a must be at most {MAX_SHIFT}, got {a}")
    b = _check_shift(b, "b")
    return _rounding_shift_right((x << a) + x, a + b)


# --- one object per approximation ---------------------------------------------------------------

@dataclass(frozen=True)
class ScaleApproximation:
    """A real scale and the integer parameters that approximate it in one of N2D2's modes."""

    mode: str
    params: tuple[int, ...]
    scale: float

    @property
    def value(self) -> Fraction:
        """The scale the integer parameters implement, exactly."""
        if self.mode == "fixed_point":
            m, f = self.params
            return Fraction(m, 2**f)
        if self.mode == "single_shift":
            return Fraction(1, 2 ** self.params[0])
        a, b = self.params
        return (1 + Fraction(1, 2**a)) / 2**b

    @property
    def relative_error(self) -> float:
        """``value / scale - 1`` (signed: negative when the approximation is too small)."""
        return float(self.value / Fraction(self.scale) - 1)

    def apply(self, x) -> torch.Tensor:
        """Rescale int32 values ``x`` with the approximation (see the ``*_rescale`` functions)."""
        if self.mode == "fixed_point":
            return fixed_point_rescale(x, *self.params)
        if self.mode == "single_shift":
            return single_shift_rescale(x, *self.params)
        return double_shift_rescale(x, *self.params)


def approximate_scale(scale: float, mode: str, bits: int = 16) -> ScaleApproximation:
    """The best approximation of ``scale`` in ``mode`` (``"fixed_point"`` with ``bits``-bit M,
    ``"single_shift"`` or ``"double_shift"``)."""
    if mode == "fixed_point":
        params = fixed_point_scaling(scale, bits)
    elif mode == "single_shift":
        params = (single_shift_scaling(scale),)
    elif mode == "double_shift":
        params = double_shift_scaling(scale)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    return ScaleApproximation(mode, tuple(params), float(_check_scale(scale, False)))
