"""How many values share one scale: per-tensor, per-channel, per-group, MX-style blocks.

Chapters: Linear quantization (3) and Post-training quantization: granularity (4).

* per-tensor: one (scale, zero_point) for the whole tensor.
* per-channel: one pair for each index along ``axis`` (for a weight of shape
  ``[out, in, ...]``, ``axis=0`` gives one pair per output channel).
* per-group: the ``axis`` dimension is cut into consecutive groups of
  ``group_size`` values; each group, at every position of the other
  dimensions, gets its own pair. Scale tensors then have the shape of ``x``
  with ``x.shape[axis]`` replaced by ``x.shape[axis] // group_size``.

* MX-style integer blocks (``mxint_quantize``): the last axis is cut into
  blocks of ``block_size`` values (32 in the OCP MX formats) that share one
  power-of-two scale, stored as an 8-bit exponent (E8M0).

The first three compute the range of each slice and hand it to the same formula of
:mod:`qlib.linear`, then quantize with the same rounding (half to even). MX
blocks choose their scale from the block's largest magnitude alone (below).
"""
from __future__ import annotations

import numbers

import torch

from qlib._checks import as_float_tensor, check_axis, check_bits
from qlib._reference import reference
from qlib.linear import asymmetric_qparams, dequantize, integer_range, quantize, symmetric_qparams


#: The granularities of a function with one scale per tensor or one per output channel (axis 0), no groups.
TENSOR_OR_CHANNEL = ("tensor", "channel")


def check_granularity(granularity, allowed, what: str) -> str:
    """Return ``granularity`` after checking that it is one of the strings ``allowed`` by ``what``.

    Granularity is always a string ("tensor", "channel", "group" or "mx"), never a flag.
    Raises ``TypeError`` for a bool (the old ``per_channel`` flag: the message names the
    string to pass instead) or any other non-string, and ``ValueError`` for a string that
    ``what`` (a function or class name, for the message) does not support.
    """
    allowed = tuple(allowed)
    quoted = [f'"{g}"' for g in allowed]
    choices = (" or ".join(quoted) if len(quoted) <= 2
               else "one of " + ", ".join(quoted[:-1]) + " or " + quoted[-1])
    expected = f"granularity must be {choices} for {what}"
    if isinstance(granularity, bool):
        raise TypeError(f"{expected}, got the flag {granularity!r}: per-channel is no longer a True/False "
                        'argument; pass granularity="channel" for per_channel=True, '
                        'granularity="tensor" for per_channel=False')
    if not isinstance(granularity, str):
        raise TypeError(f"{expected}, got {type(granularity).__name__} {granularity!r}")
    if granularity not in allowed:
        raise ValueError(f"{expected}, got {granularity!r}")
    return granularity


def qparams(rmin, rmax, qmin: int, qmax: int, symmetric: bool):
    """Scale and zero point of [rmin, rmax]: symmetric or asymmetric formula."""
    return (symmetric_qparams.unguarded if symmetric else asymmetric_qparams.unguarded)(rmin, rmax, qmin, qmax)


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


@reference
def quantize_per_channel(x, axis: int, qmin: int, qmax: int, symmetric: bool = False):
    """Quantize with one (scale, zero_point) per index along ``axis``.

    Returns ``(q, scale, zero_point)``: ``q`` has the shape of ``x``; ``scale``
    and ``zero_point`` have shape ``[x.shape[axis]]``. Channel ``c`` uses the
    range ``[min(x_c), max(x_c)]`` in the formula of :func:`qlib.linear.asymmetric_qparams`
    (or :func:`~qlib.linear.symmetric_qparams`), rounding half to even.
    """
    x = as_float_tensor(x).to(torch.float32)
    axis = check_axis(x, axis)
    scale, zero_point = qparams(*per_channel_range(x, axis), qmin, qmax, symmetric)
    shape = channel_shape(x.ndim, axis, x.shape[axis])
    q = quantize.unguarded(x, scale.reshape(shape), zero_point.reshape(shape), qmin, qmax)
    return q, scale, zero_point


@reference
def dequantize_per_channel(q, scale, zero_point, axis: int) -> torch.Tensor:
    """``scale[c] * (q - zero_point[c])`` along ``axis``, as float32."""
    q = torch.as_tensor(q)
    axis = check_axis(q, axis)
    shape = channel_shape(q.ndim, axis, q.shape[axis])
    return dequantize.unguarded(q, torch.as_tensor(scale).reshape(shape), torch.as_tensor(zero_point).reshape(shape))


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


@reference
def quantize_per_group(x, axis: int, group_size: int, qmin: int, qmax: int, symmetric: bool = False):
    """Quantize with one (scale, zero_point) per group of ``group_size`` values along ``axis``.

    Returns ``(q, scale, zero_point)``; ``scale`` and ``zero_point`` have the
    shape of ``x`` with ``x.shape[axis]`` replaced by ``x.shape[axis] // group_size``.
    Raises ``ValueError`` if ``group_size`` does not divide ``x.shape[axis]``.

    Group ``g`` of row ``i`` (2-D ``x``, ``axis=1``) holds ``x[i, g*group_size:(g+1)*group_size]``;
    its range gives its scale and zero point through the formula of
    :func:`qlib.linear.asymmetric_qparams` (or :func:`~qlib.linear.symmetric_qparams`),
    and its values are rounded half to even.
    """
    x = as_float_tensor(x).to(torch.float32)
    axis = check_axis(x, axis)
    scale, zero_point = qparams(*per_group_range(x, axis, group_size), qmin, qmax, symmetric)
    q = quantize.unguarded(x, expand_groups(scale, axis, group_size), expand_groups(zero_point, axis, group_size),
                           qmin, qmax)
    return q, scale, zero_point


@reference
def dequantize_per_group(q, scale, zero_point, axis: int, group_size: int) -> torch.Tensor:
    """``scale_g * (q - zero_point_g)`` with each group's parameters repeated along ``axis``, as float32."""
    q = torch.as_tensor(q)
    axis = check_axis(q, axis)
    return dequantize.unguarded(q, expand_groups(scale, axis, group_size),
                                expand_groups(zero_point, axis, group_size))


# --- MX-style integer blocks: a shared power-of-two scale --------------------------------------

#: Values per block in the OCP MX formats.
MX_BLOCK_SIZE = 32
#: Range of a shared exponent stored as E8M0 (code s + 127; code 255 is NaN).
SHARED_EXPONENT_MIN, SHARED_EXPONENT_MAX = -127, 127


def mxint_element_range(bits: int) -> tuple[int, int]:
    """Integers ``(-(2**(bits-1) - 1), 2**(bits-1) - 1)`` of a ``bits``-bit MXINT element (narrow, symmetric)."""
    bits = check_bits(bits)
    if bits < 2:
        raise ValueError(f"an MXINT element needs at least 2 bits (sign and one magnitude bit), got {bits}")
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1


def _blocks(x: torch.Tensor, block_size) -> torch.Tensor:
    """View ``x`` as ``[..., n_blocks, block_size]`` over its last axis."""
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if x.ndim == 0 or x.shape[-1] % block_size:
        length = x.shape[-1] if x.ndim else "a scalar"
        raise ValueError(f"block_size {block_size} does not divide the last axis (length {length}): "
                         "pad it with zeros or choose a block size that divides it")
    return x.reshape(*x.shape[:-1], x.shape[-1] // block_size, int(block_size))


@reference
def mxint_quantize(x, bits: int, block_size: int = MX_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` to MXINT-``bits`` blocks over its last axis: ``(shared_exponents, q)``.

    Each block of ``block_size`` consecutive values shares the scale ``2^(s - (bits - 2))``:

        s = floor(log2(max |x_block|))       clamped to [-127, 127]; -127 for an all-zero block
        q = clamp(round(x * 2^(bits - 2 - s)), -(2^(bits-1) - 1), 2^(bits-1) - 1)
        x_hat = q * 2^(s - (bits - 2))

    ``round`` is round half to even (the ``microxcaling`` library's default breaks ties away
    from zero instead); multiplying by a power of two is exact.
    ``floor(log2(.))`` is taken from the binary exponent (``torch.frexp``), never
    from a rounded logarithm. The element is a ``bits``-bit integer read as a
    fixed-point number with ``bits - 2`` fraction bits, so the block's largest
    magnitude lands in [2^(bits-2), 2^(bits-1)) codes; codes above
    ``2^(bits-1) - 1`` are clamped (by less than one step). At ``bits = 8``
    this is the OCP MXINT8 format (:data:`qlib.microscaling.MXINT8`); the OCP
    specification defines no other integer width, so MXINT-4 and the like are
    this rule applied to narrower elements.

    Returns int64 tensors: ``shared_exponents`` of shape ``x.shape[:-1] + (n_blocks,)``
    (the stored E8M0 code is ``s + 127``) and ``q`` of the shape of ``x``.
    """
    qmin, qmax = mxint_element_range(bits)
    x = as_float_tensor(x).to(torch.float64)  # float32 inputs are exact in float64; so is every x * 2^k
    blocks = _blocks(x, block_size)
    amax = blocks.abs().amax(dim=-1)
    s = (torch.frexp(amax).exponent.to(torch.int64) - 1).clamp(SHARED_EXPONENT_MIN, SHARED_EXPONENT_MAX)
    s = torch.where(amax == 0, torch.full_like(s, SHARED_EXPONENT_MIN), s)
    scaled = torch.ldexp(blocks, (bits - 2 - s).unsqueeze(-1).to(torch.float64))
    q = torch.clamp(torch.round(scaled), qmin, qmax).to(torch.int64)
    return s, q.reshape(x.shape)


@reference
def mxint_dequantize(shared_exponents, q, bits: int, block_size: int = MX_BLOCK_SIZE) -> torch.Tensor:
    """``q * 2^(s - (bits - 2))`` for every block of the last axis, as float32 (exact)."""
    qmin, qmax = mxint_element_range(bits)
    s, q = torch.as_tensor(shared_exponents), torch.as_tensor(q)
    for name, t in (("shared_exponents", s), ("q", q)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    blocks = _blocks(q, block_size)
    if s.shape != blocks.shape[:-1]:
        raise ValueError(f"shared_exponents has shape {tuple(s.shape)}; q of shape {tuple(q.shape)} with "
                         f"block_size={block_size} needs {tuple(blocks.shape[:-1])}")
    if s.numel() and (s.min() < SHARED_EXPONENT_MIN or s.max() > SHARED_EXPONENT_MAX):
        raise ValueError(f"shared exponents must lie in [{SHARED_EXPONENT_MIN}, {SHARED_EXPONENT_MAX}] (E8M0)")
    if q.numel() and (q.min() < qmin or q.max() > qmax):
        raise ValueError(f"{bits}-bit MXINT elements lie in [{qmin}, {qmax}], got [{int(q.min())}, {int(q.max())}]")
    x_hat = torch.ldexp(blocks.to(torch.float64), (s - (bits - 2)).unsqueeze(-1).to(torch.float64))
    return x_hat.reshape(q.shape).to(torch.float32)


def mxint_fake_quantize(x, bits: int, block_size: int = MX_BLOCK_SIZE) -> torch.Tensor:
    """``mxint_dequantize(*mxint_quantize(x, bits, block_size), bits, block_size)``: the float32 values stored."""
    s, q = mxint_quantize.unguarded(x, bits, block_size)
    return mxint_dequantize.unguarded(s, q, bits, block_size)


# --- one entry point -----------------------------------------------------------------------

GRANULARITIES = ("tensor", "channel", "group")


@reference
def fake_quantize_tensor(x, bits: int = 8, granularity: str = "tensor", axis: int = 0,
                         group_size: int | None = None, symmetric: bool = True,
                         signed: bool = True, narrow: bool = False) -> torch.Tensor:
    """Quantize ``x`` to ``bits`` bits at the given granularity and return the dequantized float32 tensor.

    ``granularity`` is ``"tensor"``, ``"channel"`` (one pair per index of ``axis``)
    or ``"group"`` (groups of ``group_size`` along ``axis``). Rounding: half to even.
    """
    check_granularity(granularity, GRANULARITIES, "fake_quantize_tensor")
    x = as_float_tensor(x).to(torch.float32)
    qmin, qmax = integer_range.unguarded(bits, signed=signed, narrow=narrow)
    if granularity == "tensor":
        scale, zero_point = qparams(x.min(), x.max(), qmin, qmax, symmetric)
        return dequantize.unguarded(quantize.unguarded(x, scale, zero_point, qmin, qmax), scale, zero_point)
    if granularity == "channel":
        q, scale, zero_point = quantize_per_channel.unguarded(x, axis, qmin, qmax, symmetric)
        return dequantize_per_channel.unguarded(q, scale, zero_point, axis)
    if group_size is None:  # granularity == "group"
        raise ValueError("granularity='group' needs a group_size")
    q, scale, zero_point = quantize_per_group.unguarded(x, axis, group_size, qmin, qmax, symmetric)
    return dequantize_per_group.unguarded(q, scale, zero_point, axis, group_size)
