"""LSQ: learned step size quantization (Esser et al., 2020).

Chapter: Quantization-aware training (lab07_qat).

The step size ``s`` (the scale) is a trained parameter, like a weight. With the
integer range ``[qmin, qmax] = [-Q_N, Q_P]`` (signed ``b``-bit weights:
``Q_N = 2**(b-1)``, ``Q_P = 2**(b-1) - 1``; unsigned activations: ``Q_N = 0``,
``Q_P = 2**b - 1``) and no zero point:

    q     = round(v * (1/s))                        (round half to even, float32)
    v_hat = clamp(q, -Q_N, Q_P) * s

Backward (straight-through for ``round``, the exact derivative of the clamp):

    d v_hat / d v = 1 where -Q_N <= q <= Q_P, else 0
    d v_hat / d s = q - v/s = (v_hat - v) / s    where -Q_N <= q <= Q_P
                    -Q_N                          where q < -Q_N
                    Q_P                           where q > Q_P

Inside the range the step's gradient is the rounding error measured in steps:
it is what makes LSQ sensitive to where a value sits between two levels, which
a clipping-only gradient (:mod:`qlib.pact`) ignores.

Two details set the step's learning rate apart from the weights':

* gradient scale ``g = 1 / sqrt(N * Q_P)`` multiplies ``d loss / d s``, where ``N`` is
  the number of values that share the step: the weights of the layer (or of one
  output channel, per channel), or the features of one input sample for
  activations. Without it the step's update is far larger, relative to its size,
  than a weight's.
* initial step ``s0 = 2 * mean(|v|) / sqrt(Q_P)`` from the initial weights, or from the
  first batch of activations.

Inside vs. outside is decided on the rounded value ``q``, as in PyTorch's
``torch._fake_quantize_learnable_per_tensor_affine``; the paper states it on
``v/s`` before rounding. The two differ only within half a step beyond the last
level, where ``q`` still equals ``Q_P``. Inside, the step's gradient is computed as
``dy * e * (1/s) * g`` in float32, with the rounding error ``e = clamp(q) * s - v``
rounded once (the product is exact in float64): the operations of PyTorch's
compiled kernel, which fuses that multiply and subtract. So each element's
gradient equals PyTorch's exactly; their sum over a tensor agrees to float32
rounding (the summation order is PyTorch's own). See tests/test_lsq.py.

One bit: a signed 1-bit range ``[-1, 0]`` has no positive level and ``Q_P = 0``,
so 1-bit weights are *binary* here: ``v_hat = s * sign(v)`` (sign(0) = +1) with
``Q_N = Q_P = 1``; the same rules give ``d v_hat / d v = 1`` for ``|v/s| <= 1`` and
``d v_hat / d s = sign(v) - v/s`` there, ``sign(v)`` outside. Its initial step is
``mean(|v|)``, the scale that minimizes ``||v - s sign(v)||^2`` (chapter 8 covers
binary networks).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_bits, check_count, check_integer_range
from qlib._reference import reference
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity
from qlib.linear import _scale_tensor, integer_range


@reference
def lsq_grad_scale(n: int, qmax: int) -> float:
    """``g = 1 / sqrt(n * Q_P)``: the factor applied to the step's gradient (``n`` values share the step)."""
    n = check_count(n, "n", 1)
    qmax = check_count(qmax, "qmax (Q_P)", 1)
    return 1.0 / math.sqrt(n * qmax)


@reference
def lsq_init_step(v, qmax: int, axis: int | None = None) -> torch.Tensor:
    """Initial step ``2 * mean(|v|) / sqrt(Q_P)`` (float32).

    ``axis=None``: one step for the whole tensor (shape ``[]``). ``axis=0``: one step
    per output channel, shape ``[C, 1, ...]`` ready to broadcast against ``v``.
    An all-zero ``v`` gets the smallest scale, float32 eps, instead of 0.
    """
    v = as_float_tensor(v).detach().to(torch.float32)
    qmax = check_count(qmax, "qmax (Q_P)", 1)
    if axis is None:
        mean_abs = v.abs().mean()
    elif axis == 0 and v.ndim >= 1:
        mean_abs = v.abs().reshape(v.shape[0], -1).mean(dim=1).reshape(-1, *([1] * (v.ndim - 1)))
    else:
        raise ValueError(f"axis must be None (per tensor) or 0 (per output channel), got {axis!r}")
    eps = torch.finfo(torch.float32).eps
    return torch.clamp(2.0 * mean_abs / math.sqrt(qmax), min=eps)


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``t`` over the dimensions that were broadcast to reach its shape from ``shape``."""
    if t.shape == shape:
        return t
    if len(shape) == 0 or math.prod(shape) == 1:
        return t.sum().reshape(shape)
    lead = t.ndim - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1)
    return t.sum(dim=dims, keepdim=True).reshape(shape)


class LSQFakeQuantize(torch.autograd.Function):
    """``LSQFakeQuantize.apply(v, step, qmin, qmax, grad_scale)`` (see the module for the formulas).

    ``v`` float32; ``step`` a positive float32 tensor broadcasting against ``v``
    (shape ``[]`` or ``[1]`` per tensor, ``[C, 1, ...]`` per channel); ``qmin = -Q_N``,
    ``qmax = Q_P``. Returns ``v_hat``; the backward gives ``v`` and ``step`` gradients.
    No argument checks: see :func:`lsq_fake_quantize`.
    """

    @staticmethod
    def forward(ctx, v, step, qmin: int, qmax: int, grad_scale: float):
        inv_step = torch.reciprocal(step)
        q = torch.round(v * inv_step)
        v_hat = torch.clamp(q, qmin, qmax) * step
        ctx.save_for_backward(v, step, inv_step, q)
        ctx.qmin, ctx.qmax, ctx.grad_scale, ctx.step_shape = qmin, qmax, grad_scale, step.shape
        return v_hat

    @staticmethod
    def backward(ctx, grad_output):
        v, step, inv_step, q = ctx.saved_tensors
        below, above = q < ctx.qmin, q > ctx.qmax
        inside = ~(below | above)
        grad_v = grad_output * inside
        # the rounding error clamp(q) * s - v, rounded once to float32 (exact in float64 first)
        error = (torch.clamp(q, ctx.qmin, ctx.qmax).double() * step.double() - v.double()).float()
        # d v_hat / d s: error / s inside, -Q_N below, Q_P above; then scaled by g
        grad_step = torch.where(inside, grad_output * error * inv_step,
                                torch.where(below, grad_output * float(ctx.qmin), grad_output * float(ctx.qmax)))
        grad_step = _sum_to(grad_step * ctx.grad_scale, ctx.step_shape)
        return grad_v, grad_step, None, None, None


class LSQBinarize(torch.autograd.Function):
    """1-bit LSQ: ``LSQBinarize.apply(v, step, grad_scale)`` gives ``step * sign(v)`` (sign(0) = +1).

    Backward: ``d/dv = 1`` where ``|v| * (1/step) <= 1``, else 0; ``d/d step = sign(v) - v/step``
    there, ``sign(v)`` elsewhere (``Q_N = Q_P = 1``), times ``grad_scale``.
    """

    @staticmethod
    def forward(ctx, v, step, grad_scale: float):
        inv_step = torch.reciprocal(step)
        sign = torch.where(v >= 0, 1.0, -1.0)
        ctx.save_for_backward(v, sign, inv_step)
        ctx.grad_scale, ctx.step_shape = grad_scale, step.shape
        return sign * step

    @staticmethod
    def backward(ctx, grad_output):
        v, sign, inv_step = ctx.saved_tensors
        inside = (v * inv_step).abs() <= 1
        grad_step = grad_output * torch.where(inside, sign - v * inv_step, sign)
        return grad_output * inside, _sum_to(grad_step * ctx.grad_scale, ctx.step_shape), None


@reference
def lsq_fake_quantize(v, step, qmin: int, qmax: int, grad_scale: float) -> torch.Tensor:
    """``clamp(round(v * (1/step)), qmin, qmax) * step`` with LSQ's gradients for ``v`` and ``step``.

    Round half to even, float32. ``qmin = -Q_N <= 0 < qmax = Q_P``. ``step`` is
    usually an ``nn.Parameter``; ``grad_scale`` is ``g`` (see :func:`lsq_grad_scale`).
    """
    check_integer_range(qmin, qmax)
    if qmin > 0 or qmax <= 0:
        raise ValueError(f"LSQ needs qmin <= 0 < qmax (qmin = -Q_N, qmax = Q_P), got [{qmin}, {qmax}]")
    step = _checked_step(v, step)
    v = _float32(v)
    return LSQFakeQuantize.apply(v, step, int(qmin), int(qmax), _checked_grad_scale(grad_scale))


def _float32(v) -> torch.Tensor:
    if isinstance(v, torch.Tensor) and v.dtype == torch.float64:
        v = v.to(torch.float32)
    return as_float_tensor(v)


def _checked_step(v, step) -> torch.Tensor:
    if not isinstance(step, torch.Tensor):
        step = torch.as_tensor(step, dtype=torch.float32)
    _scale_tensor(step.detach())  # positive, finite, with a finite reciprocal
    if step.dtype != torch.float32:
        raise TypeError(f"step must be a float32 tensor, got {step.dtype}")
    shape = v.shape if isinstance(v, torch.Tensor) else torch.as_tensor(v).shape
    try:
        if torch.broadcast_shapes(step.shape, shape) != shape:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"step of shape {tuple(step.shape)} does not broadcast against v of shape "
                         f"{tuple(shape)}") from None
    return step


def _checked_grad_scale(grad_scale) -> float:
    grad_scale = float(grad_scale)
    if not (math.isfinite(grad_scale) and grad_scale > 0):
        raise ValueError(f"grad_scale must be a positive finite number, got {grad_scale}")
    return grad_scale


class LSQQuantizer(nn.Module):
    """Fake-quantizes what passes through it with a learned step (one LSQ quantizer).

    ``signed=True`` (weights): ``[-2**(b-1), 2**(b-1) - 1]``, or binary ``+-s`` at 1 bit.
    ``signed=False`` (activations after a ReLU): ``[0, 2**b - 1]``.
    ``granularity``: ``"tensor"`` learns one step for the whole tensor, ``"channel"`` one step
    per index of axis 0 (per output channel; weights only).
    The step is initialized on the first tensor seen, ``2 * mean(|v|) / sqrt(Q_P)``
    (binary: ``mean(|v|)``),
    and ``g = 1 / sqrt(N * Q_P)`` with ``N`` the values per step: all weights (or one
    channel's), or one sample's features for activations (``activation=True``: the
    first dimension is the batch).
    """

    def __init__(self, bits: int, signed: bool, granularity: str = "tensor", activation: bool = False):
        super().__init__()
        self.bits = check_bits(bits)
        self.granularity = check_granularity(granularity, TENSOR_OR_CHANNEL, "LSQQuantizer")
        if granularity == "channel" and activation:
            raise ValueError("per-channel steps are for weights; an activation quantizer has one step")
        if bits == 1 and not signed:
            raise ValueError("a 1-bit unsigned quantizer would map everything to 0 or one level; use 2+ bits")
        self.binary = bits == 1
        self.qmin, self.qmax = (-1, 1) if self.binary else integer_range.unguarded(bits, signed=signed)
        self.signed, self.activation = signed, activation
        self.step = nn.Parameter(torch.empty(0))

    @property
    def initialized(self) -> bool:
        return self.step.numel() > 0

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            with torch.no_grad():
                axis = 0 if self.granularity == "channel" else None
                # binary: mean|v|, the scale that minimizes ||v - s sign(v)||^2 (2 mean|v| is twice too large)
                init = lsq_init_step.unguarded(v, 4 if self.binary else self.qmax, axis)
                self.step = nn.Parameter(init)
        n = v[0].numel() if self.activation or self.granularity == "channel" else v.numel()
        g = lsq_grad_scale.unguarded(n, self.qmax)
        if self.binary:
            return LSQBinarize.apply(_float32(v), _checked_step(v, self.step), g)
        return LSQFakeQuantize.apply(_float32(v), _checked_step(v, self.step), self.qmin, self.qmax, g)

    def extra_repr(self) -> str:
        levels = "binary +-s" if self.binary else f"[{self.qmin}, {self.qmax}]"
        return f"bits={self.bits}, {levels}, per {self.granularity}"
