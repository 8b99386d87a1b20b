"""Fake quantization with the straight-through estimator (STE).

Chapter: Quantization-aware training (lab07_qat).

Forward, the value a quantized tensor stands for (as :func:`qlib.linear.fake_quantize`):

    q     = round(x * (1 / scale)) + zero_point          (round half to even, float32)
    x_hat = (clamp(q, qmin, qmax) - zero_point) * scale

``round`` has derivative 0 almost everywhere, so the true gradient would stop
training. The straight-through estimator pretends that rounding is the
identity and keeps only the clamp:

    d x_hat / d x = 1   where qmin <= q <= qmax      (the rounded value lands inside)
                    0   where q < qmin or q > qmax   (the value was clamped)

The mask is decided on the *rounded* value ``q``, exactly as PyTorch's
``fake_quantize_per_tensor_affine`` and ``fake_quantize_per_channel_affine``
decide it. So a value up to half a step beyond the last level, which still
rounds onto ``qmax`` (or ``qmin``), keeps its gradient; at an exact tie the
half-to-even rule decides: with ``scale = 1``, ``zero_point = 0`` and
``qmax = 127``, ``x = 127.5`` rounds to 128 and gets gradient 0, while with
``qmin = -128``, ``x = -128.5`` rounds to -128 and gets gradient 1.

``scale`` and ``zero_point`` are constants here (no gradient); they may be
scalars or tensors that broadcast against ``x`` (one per channel, see
:mod:`qlib.granularity`). Learning the scale is :mod:`qlib.lsq`; learning a
clipping value is :mod:`qlib.pact`.

The forward output equals PyTorch's fake quantization bit for bit, and the
backward gradient is the same 0/1 mask times the incoming gradient, so both are
exact (tests/test_ste.py).
"""
from __future__ import annotations

import torch

from qlib._checks import as_float_tensor, check_integer_range
from qlib._reference import reference
from qlib.linear import _scale_tensor, _zero_point_tensor

#: Integers up to 2**24 are exact in float32; the forward pass keeps ``q`` in float32.
FLOAT32_EXACT_INTEGERS = 2**24


def _rounded(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``round(x * (1/scale)) + zero_point`` in float32, before the clamp (half to even)."""
    return torch.round(x * torch.reciprocal(scale)) + zero_point


class FakeQuantizeSTE(torch.autograd.Function):
    """Fake quantization whose backward pass is the straight-through estimator.

    ``FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax)``: ``x`` float32,
    ``scale`` a positive float32 tensor and ``zero_point`` a float32 tensor of
    integers, both broadcasting against ``x``. No argument checks: use
    :func:`fake_quantize_ste` unless the arguments are known to be valid.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = _rounded(x, scale, zero_point)
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None, None, None, None


def _as_qparams(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int):
    """Checked float32 ``scale`` and ``zero_point`` tensors that broadcast against ``x``."""
    check_integer_range(qmin, qmax)
    if max(abs(qmin), abs(qmax)) > FLOAT32_EXACT_INTEGERS:
        raise ValueError(f"[qmin, qmax] = [{qmin}, {qmax}] reaches beyond 2**24, where float32 "
                         "no longer holds every integer: use at most 24 bits")
    scale = _scale_tensor(scale.detach() if isinstance(scale, torch.Tensor) else scale)
    zero_point = _zero_point_tensor(zero_point)
    if bool(((zero_point < qmin) | (zero_point > qmax)).any()):
        raise ValueError(f"zero_point must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        try:
            torch.broadcast_shapes(t.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast against x of shape "
                             f"{tuple(x.shape)}") from None
    return scale, zero_point.to(torch.float32)


@reference
def fake_quantize_ste(x, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Fake-quantize ``x`` (see the module) with a straight-through gradient.

    Forward: ``(clamp(round(x * (1/scale)) + zero_point, qmin, qmax) - zero_point) * scale``,
    round half to even, float32; bit for bit ``torch.fake_quantize_per_tensor_affine``
    (or ``..._per_channel_affine`` when ``scale`` is a tensor per channel).
    Backward: the incoming gradient where ``qmin <= round(x/scale) + zero_point <= qmax``,
    0 elsewhere. ``scale`` and ``zero_point`` receive no gradient.
    """
    if isinstance(x, torch.Tensor) and x.dtype == torch.float64:
        x = x.to(torch.float32)  # differentiable: the gradient flows back as float64
    x = as_float_tensor(x)
    scale, zero_point = _as_qparams(x, scale, zero_point, qmin, qmax)
    return FakeQuantizeSTE.apply(x, scale, zero_point, int(qmin), int(qmax))


def ste_mask(x, scale, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Boolean tensor: True where the straight-through gradient passes (``q`` inside [qmin, qmax])."""
    x = as_float_tensor(x).detach().to(torch.float32)
    scale, zero_point = _as_qparams(x, scale, zero_point, qmin, qmax)
    q = _rounded(x, scale, zero_point)
    return (q >= qmin) & (q <= qmax)
