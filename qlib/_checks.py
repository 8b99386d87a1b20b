"""Argument checks shared by every quantizer: each failure names the problem.

A quantizer fed a NaN, an empty tensor or an impossible bit width must stop
with a message that says so, never return NaN or a silently wrong number.
"""
from __future__ import annotations

import numbers

import torch


def as_float_tensor(x, name: str = "x") -> torch.Tensor:
    """Return ``x`` as a float tensor (float32 unless it already is float64).

    Raises ``TypeError`` for non-numeric input, ``ValueError`` for an empty
    tensor or one holding NaN or infinity.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from err
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    elif t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: there is no range to quantize")
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"{name} holds {n_nan} NaN and {n_inf} infinite values: quantization needs finite numbers")
    return t


def check_bits(bits) -> int:
    """Return ``bits`` as an int after checking 1 <= bits <= 32."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer, got {bits!r}")
    if not 1 <= int(bits) <= 32:
        raise ValueError(f"bits must be between 1 and 32, got {bits}")
    return int(bits)


def check_integer_range(qmin: int, qmax: int) -> None:
    """Check that [qmin, qmax] is an integer range with at least two levels."""
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    if qmin >= qmax:
        raise ValueError(f"the integer range needs qmin < qmax, got qmin={qmin}, qmax={qmax}")


def check_axis(x: torch.Tensor, axis: int) -> int:
    """Return ``axis`` as a non-negative index into ``x.shape``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    return int(axis) % x.ndim


def check_count(value, name: str, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)
