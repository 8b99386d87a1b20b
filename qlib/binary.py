"""Binary weights and activations: BinaryConnect's sign, XNOR-Net's scale, straight-through gradients.

Chapter: Binary and ternary networks, mixed precision (chapter 8, lab08_binary_mixed).

A binary weight is one bit, +1 or -1, read back through one float32 scale ``alpha`` per output
channel (axis 0) or per tensor:

    b     = sign(w)      +1 where w >= 0, -1 where w < 0   (sign(0) = +1, BinaryConnect's rule)
    alpha = mean(|w|)    over the output channel (or the whole tensor)
    w_hat = alpha * b

``torch.sign`` is not this function: it sends 0 to 0, a third value that one bit cannot hold.

Why ``alpha = mean |w|`` (XNOR-Net's binary-weight networks): for n weights and a fixed b,

    ||w - alpha b||^2 = ||w||^2 - 2 alpha <w, b> + n alpha^2

is a parabola in alpha with its minimum at alpha = <w, b> / n, and with b = sign(w),
<w, b> = sum |w|. Conversely, for any alpha > 0 each term (w_i - alpha b_i)^2 is smallest when
b_i has the sign of w_i (either sign when w_i = 0). So (sign(w), mean|w|) is the best one-bit
approximation of w with one scale: the error is ||w||^2 - n * mean(|w|)^2. ``tests/test_binary.py``
checks both halves by brute force over alpha and over all 2^n sign patterns.

Rounding: none; the only decisions are the comparisons ``w >= 0`` (exact) and the float32
mean of |w| (the reduction order of ``torch.mean``, so other code agrees to float32 rounding).

Training (BinaryConnect): the forward pass uses ``w_hat``, the optimizer updates FP32 latent
weights ``w``. sign has derivative 0 almost everywhere, so the backward pass passes the
gradient straight through (``d w_hat / d w := 1``, alpha held constant): :func:`binarize_ste`.

Binary activations (Hubara et al., Binarized Neural Networks): forward sign(x), backward the
straight-through estimator clipped to |x| <= 1 (the derivative of clamp(x, -1, 1), endpoints
included; ``torch.nn.functional.hardtanh``'s derivative excludes them):
:func:`binary_activation`.

Granularity: ``"channel"`` (the default) gives one alpha per output channel ``w[c]`` (axis 0,
the mean over all its other dimensions); ``"tensor"`` one alpha for the whole weight.

Storage: one bit per weight plus a float32 scale per channel: :func:`binary_storage_bits`.
"""
from __future__ import annotations

import math

import torch

from qlib._checks import as_float_tensor, check_axis
from qlib._reference import reference
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity

#: Bits of one stored scale (a float32 alpha).
SCALE_BITS = 32


def binary_sign(x) -> torch.Tensor:
    """+1 where ``x >= 0``, -1 where ``x < 0``, as an int8 tensor (sign(0) = +1, BinaryConnect)."""
    x = as_float_tensor(x)
    return torch.where(x >= 0, 1, -1).to(torch.int8)


def channel_mean(v: torch.Tensor, granularity: str) -> torch.Tensor:
    """Mean of ``v`` per output channel (``"channel"``: shape ``[v.shape[0]]``, over each row ``v[c]``)
    or per tensor (``"tensor"``: 0-d)."""
    if granularity == "tensor":
        return v.mean()
    check_axis(v, 0)  # a 0-d tensor has no channels
    return v.reshape(v.shape[0], -1).mean(dim=1)


def channel_view(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector ``[C]`` shaped ``[C, 1, ..., 1]`` to broadcast against an ``ndim`` weight."""
    return p.reshape((-1,) + (1,) * (ndim - 1)) if p.ndim == 1 else p


@reference
def binarize(w, granularity: str = "channel") -> tuple[torch.Tensor, torch.Tensor]:
    """Binary codes and scales of ``w``: ``(b, alpha)`` with ``w_hat = alpha * b``.

        b     = sign(w)    int8 of w's shape, +1 where w >= 0 and -1 where w < 0
        alpha = mean |w|   float32: shape [w.shape[0]] for granularity "channel" (one per output
                           channel w[c], axis 0), 0-d for "tensor" (one for the whole weight)

    An all-zero channel gets alpha = 0 (its best approximation is 0). Raises ``ValueError`` for
    NaN, infinity, an empty tensor, a granularity other than "tensor" or "channel", or
    "channel" on a 0-d tensor.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "binarize")
    w = as_float_tensor(w, "w").to(torch.float32)
    alpha = channel_mean(w.abs(), granularity)
    return binary_sign(w), alpha


def fake_binarize(w, granularity: str = "channel") -> torch.Tensor:
    """The float32 values ``alpha * sign(w)`` that the binary weights stand for (see :func:`binarize`)."""
    check_granularity(granularity, TENSOR_OR_CHANNEL, "fake_binarize")
    b, alpha = binarize.unguarded(w, granularity)
    return channel_view(alpha, b.ndim) * b.to(torch.float32)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``w_hat``; backward: the gradient of ``w_hat`` goes unchanged to ``w``."""

    @staticmethod
    def forward(ctx, w, w_hat):
        return w_hat.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """``w_hat`` in the forward pass, with ``d w_hat / d w := 1`` in the backward pass.

    ``w_hat`` must have ``w``'s shape and carries no gradient of its own (it is computed from
    ``w.detach()``). The gradient equals that of ``w + (w_hat - w).detach()``.
    """
    if w_hat.shape != w.shape:
        raise ValueError(f"w_hat has shape {tuple(w_hat.shape)}, w has {tuple(w.shape)}")
    return _StraightThrough.apply(w, w_hat.detach())


def binarize_ste(w: torch.Tensor, granularity: str = "channel") -> torch.Tensor:
    """``alpha * sign(w)`` forward; gradient passed straight through to ``w`` (BinaryConnect).

    alpha = mean |w| is treated as a constant in the backward pass.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "binarize_ste")
    return straight_through(w, fake_binarize(w.detach(), granularity))


class _BinaryActivation(torch.autograd.Function):
    """sign(x) forward (sign(0) = +1); gradient times 1{|x| <= 1} backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def binary_activation(x: torch.Tensor) -> torch.Tensor:
    """Binary activation of a float tensor: +1 or -1 forward, clipped straight-through gradient backward.

        forward:   y = +1 if x >= 0 else -1
        backward:  dL/dx = dL/dy * 1{|x| <= 1}     (Hubara et al. 2016; endpoints included)

    Raises ``ValueError`` for NaN, infinity or an empty tensor.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    as_float_tensor(x.detach(), "x")  # refuses NaN, infinity and empty tensors
    return _BinaryActivation.apply(x)


def binary_storage_bits(shape, granularity: str = "channel") -> int:
    """Bits to store a binary weight of ``shape``: one per weight plus 32 per scale.

        bits = numel + 32 * (shape[0] if granularity == "channel" else 1)

    The digits CNN's conv1, shape [16, 1, 3, 3]: 144 + 32 * 16 = 656 bits (its FP32 weight is 4,608).
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "binary_storage_bits")
    shape = _check_shape(shape)
    return math.prod(shape) + SCALE_BITS * weight_scale_count(shape, granularity)


def weight_scale_count(shape: tuple[int, ...], granularity: str) -> int:
    """Scales of a binary or ternary weight of ``shape``: ``shape[0]`` per channel, 1 per tensor."""
    if granularity == "tensor":
        return 1
    if not shape:
        raise ValueError("per-channel scales need a weight with at least one dimension")
    return shape[0]


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape must hold positive integers, got {shape}")
    return shape
