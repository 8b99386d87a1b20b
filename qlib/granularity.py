"""How many values share one scale: per-tensor, per-channel, per-group.

Chapter: Linear quantization (and Post-training quantization granularity).

* per-tensor: one (scale, zero_point) for the whole tensor.
* per-channel: one pair for each index along ``axis`` (for a weight of shape
  ``[out, in, ...]``, ``axis=0`` gives one pair per output channel).
* per-group: the ``axis`` dimension is cut into consecutive groups of
  ``group_size`` values; each group, at every position of the other
  dimensions, gets its own pair. Scale tensors then have the shape of ``x``
  with ``x.shape[axis]`` replaced by ``x.shape[axis] // group_size``.

All three compute the range of each slice and hand it to the same formula of
:mod:`qlib.linear`, then quantize with the same rounding (half to even).
"""
from __future__ import annotations

import numbers

import torch

from qlib._checks import as_float_tensor, check_axis
from qlib._reference import refuse_if_blocked
from qlib.linear import asymmetric_qparams, dequantize, integer_range, quantize, symmetric_qparams


def qparams(rmin, rmax, qmin: int, qmax: int, symmetric: bool):
    """Scale and zero point of [rmin, rmax]: symmetric or asymmetric formula."""
    return (symmetric_qparams if symmetric else asymmetric_qparams)(rmin, rmax, qmin, qmax)


def channel_shape(ndim: int, axis: int, length: int) -> tuple[int, ...]:
    """Shape that makes a length-``length`` vector broadcast along ``axis`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = length
    return tuple(shape)


# --- per-channel ---------------------------------------------------------------------------

def per_channel_range(x, axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of every slice ``x.select(axis, c)``, each of shape ``[x.shape[axis]]``."""
    x = as_float_tensor(x).to(torch.float32)
    axis = check_axis(x, axis)
    flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    return flat.amin(dim=1), flat.amax(dim=1)


def quantize_per_channel(x, axis: int, qmin: int, qmax: int, symmetric: bool = False):
    """Quantize with one (scale, zero_point) per index along ``axis``.

    Returns ``(q, scale, zero_point)``: ``q`` has the shape of ``x``; ``scale``
    and ``zero_point`` have shape ``[x.shape[axis]]``. Channel ``c`` uses the
    range ``[min(x_c), max(x_c)]`` in the formula of :func:`qlib.linear.asymmetric_qparams`
    (or :func:`~qlib.linear.symmetric_qparams`), rounding half to even.
    """
    refuse_if_blocked("quantize_per_channel")
    x = as_float_tensor(x).to(torch.float32)
    axis = check_axis(x, axis)
    scale, zero_point = qparams(*per_channel_range(x, axis), qmin, qmax, symmetric)
    shape = channel_shape(x.ndim, axis, x.shape[axis])
    q = quantize(x, scale.reshape(shape), zero_point.reshape(shape), qmin, qmax)
    return q, scale, zero_point


def dequantize_per_channel(q, scale, zero_point, axis: int) -> torch.Tensor:
    """``scale[c] * (q - zero_point[c])`` along ``axis``, as float32."""
    refuse_if_blocked("dequantize_per_channel")
    q = torch.as_tensor(q)
    axis = check_axis(q, axis)
    shape = channel_shape(q.ndim, axis, q.shape[axis])
    return dequantize(q, torch.as_tensor(scale).reshape(shape), torch.as_tensor(zero_point).reshape(shape))


# --- per-group -----------------------------------------------------------------------------

def _grouped(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """View ``x`` as ``[..., n_groups, group_size]`` with the grouped axis moved last."""
    if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    length = x.shape[axis]
    if length % group_size:
        raise ValueError(f"group_size {group_size} does not divide the length {length} of axis {axis}")
    moved = x.movedim(axis, -1)
    return moved.reshape(*moved.shape[:-1], length // group_size, group_size)


def per_group_range(x, axis: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of every group; shape of ``x`` with ``axis`` shrunk by ``group_size``."""
    x = as_float_tensor(x).to(torch.float32)
    axis = check_axis(x, axis)
    groups = _grouped(x, axis, group_size)
    return groups.amin(dim=-1).movedim(-1, axis), groups.amax(dim=-1).movedim(-1, axis)


def expand_groups(p, axis: int, group_size: int) -> torch.Tensor:
    """Repeat each group's parameter ``group_size`` times along ``axis`` (back to the shape of ``x``)."""
    return torch.as_tensor(p).repeat_interleave(group_size, dim=axis)


def quantize_per_group(x, axis: int, group_size: int, qmin: int, qmax: int, symmetric: bool = False):
    """Quantize with one (scale, zero_point) per group of ``group_size`` values along ``axis``.

    Returns ``(q, scale, zero_point)``; ``scale`` and ``zero_point`` have the
    shape of ``x`` with ``x.shape[axis]`` replaced by ``x.shape[axis] // group_size``.
    Raises ``ValueError`` if ``group_size`` does not divide ``x.shape[axis]``.
    """
    x = as_float_tensor(x).to(torch.float32)
    axis = check_axis(x, axis)
    scale, zero_point = qparams(*per_group_range(x, axis, group_size), qmin, qmax, symmetric)
    q = quantize(x, expand_groups(scale, axis, group_size), expand_groups(zero_point, axis, group_size), qmin, qmax)
    return q, scale, zero_point


def dequantize_per_group(q, scale, zero_point, axis: int, group_size: int) -> torch.Tensor:
    """``scale_g * (q - zero_point_g)`` with each group's parameters repeated along ``axis``."""
    q = torch.as_tensor(q)
    axis = check_axis(q, axis)
    return dequantize(q, expand_groups(scale, axis, group_size), expand_groups(zero_point, axis, group_size))


# --- one entry point -----------------------------------------------------------------------

GRANULARITIES = ("tensor", "channel", "group")


def fake_quantize_tensor(x, bits: int = 8, granularity: str = "tensor", axis: int = 0,
                         group_size: int | None = None, symmetric: bool = True,
                         signed: bool = True, narrow: bool = False) -> torch.Tensor:
    """Quantize ``x`` to ``bits`` bits at the given granularity and return the dequantized float32 tensor.

    ``granularity`` is ``"tensor"``, ``"channel"`` (one pair per index of ``axis``)
    or ``"group"`` (groups of ``group_size`` along ``axis``). Rounding: half to even.
    """
    refuse_if_blocked("fake_quantize_tensor")
    x = as_float_tensor(x).to(torch.float32)
    qmin, qmax = integer_range(bits, signed=signed, narrow=narrow)
    if granularity == "tensor":
        scale, zero_point = qparams(x.min(), x.max(), qmin, qmax, symmetric)
        return dequantize(quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)
    if granularity == "channel":
        q, scale, zero_point = quantize_per_channel(x, axis, qmin, qmax, symmetric)
        return dequantize_per_channel(q, scale, zero_point, axis)
    if granularity == "group":
        if group_size is None:
            raise ValueError("granularity='group' needs a group_size")
        q, scale, zero_point = quantize_per_group(x, axis, group_size, qmin, qmax, symmetric)
        return dequantize_per_group(q, scale, zero_point, axis, group_size)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
