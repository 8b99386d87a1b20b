"""DoReFa-Net's weight and activation quantizers (Zhou et al., 2016).

Chapter: Quantization-aware training.

DoReFa quantizes every tensor through one function of the unit interval, ``quantize_b``
(the paper's ``quantize_k``, ``k`` its bit width; the course writes ``b``):

    quantize_b(r) = round((2**b - 1) * r) / (2**b - 1)          r in [0, 1]

whose ``2**b`` levels are ``i / (2**b - 1)``, ``i = 0 ... 2**b - 1``. Backward it is the
straight-through estimator: ``d quantize_b(r) / d r = 1``.

Weights, ``b`` bits, with no scale to choose:

    u   = tanh(w) / max|tanh(w)|                 (in [-1, 1]; max over the whole tensor)
    w_q = 2 * quantize_b(u / 2 + 1/2) - 1        (levels -1, -1 + 2/(2**b - 1), ..., 1)

The tanh squeezes the largest weights, so the grid spends fewer levels on rare outliers than a
min-max grid would; dividing by the largest ``|tanh(w)|`` maps the tensor onto ``[-1, 1]``.
Backward, ``quantize_b`` is the identity and the affine steps cancel, so ``d w_q / d w`` is the
derivative of the normalisation ``u(w)``, the dependence of the max on ``w`` included (autograd
differentiates it; where several entries share the max, PyTorch splits its gradient evenly).

Activations, ``b`` bits: ``a_q = quantize_b(clip(a, 0, 1))``; backward, the gradient of the clip:
1 where ``0 <= a <= 1``, 0 elsewhere. The range is fixed at ``[0, 1]``: the network must learn to
keep its activations there (PACT, :mod:`qlib.pact`, learns the bound instead).

Rounding: ``torch.round``, half to even, float32 (``r * (2**b - 1)``, rounded, divided by
``2**b - 1``). The paper's ``round`` does not say what happens at a tie, and ties do occur: a zero
weight gives ``u = 0``, ``r = 1/2`` and ``(2**b - 1) / 2``, a half-integer since ``2**b - 1`` is odd.
Half to even sends it up to ``w_q = +1/(2**b - 1)`` for ``b >= 2`` and down to ``-1`` at ``b = 1``:
the weight grid has an even number of levels and none of them is 0.

What DoReFa leaves out, and where it matters: ``|w_q| <= 1`` whatever the size of ``w``, so the
layer's output scale is lost; DoReFa relies on a batch norm after the layer to restore it, and
:mod:`qlib.sat` rescales the layers that have none. At ``b = 1`` the formula above gives ``±1``
(the paper binarizes 1-bit weights with ``sign(w) * mean|w|`` instead, chapter 8). The paper also
quantizes gradients (the G of DoReFa); qlib does not.
"""
from __future__ import annotations

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_bits

#: float32 holds every integer up to 2**24, so (2**b - 1) * r rounds exactly up to b = 24.
MAX_BITS = 24


def _checked_bits(bits) -> int:
    bits = check_bits(bits)
    if bits > MAX_BITS:
        raise ValueError(f"bits must be at most {MAX_BITS} (float32 holds every integer up to 2**24), got {bits}")
    return bits


def _float32(x, name: str) -> torch.Tensor:
    """``x`` as a float32 tensor (float64 is cast, differentiably); refuses NaN, inf, empty."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.float64:
        x = x.to(torch.float32)
    return as_float_tensor(x, name)


class QuantizeUnitSTE(torch.autograd.Function):
    """``QuantizeUnitSTE.apply(r, levels)``: ``round(r * levels) / levels``, gradient passed straight through.

    ``r`` float32 in ``[0, 1]``; ``levels = 2**b - 1``. No argument checks: see :func:`quantize_unit`.
    """

    @staticmethod
    def forward(ctx, r, levels: int):
        return torch.round(r * levels) / levels

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


def quantize_unit(r, bits: int) -> torch.Tensor:
    """DoReFa's ``quantize_b(r) = round((2**b - 1) r) / (2**b - 1)`` for ``r`` in [0, 1] (half to even, STE).

    Raises ``ValueError`` if a value of ``r`` lies outside [0, 1]: DoReFa normalises or clips first.
    """
    bits = _checked_bits(bits)
    r = _float32(r, "r")
    if bool(((r < 0) | (r > 1)).any()):
        raise ValueError(f"quantize_unit expects values in [0, 1], got [{float(r.min())}, {float(r.max())}]: "
                         "normalise (dorefa_weight) or clip (dorefa_activation) first")
    return QuantizeUnitSTE.apply(r, 2**bits - 1)


def dorefa_weight(w, bits: int) -> torch.Tensor:
    """DoReFa's ``b``-bit weights ``2 * quantize_b(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` (see the module).

    Values in [-1, 1]; round half to even, float32. Backward: the gradient of
    ``tanh(w) / max|tanh(w)|`` (straight through ``quantize_b``). Raises ``ValueError`` when
    every weight is 0 (``max|tanh(w)| = 0``: no range to normalise).
    """
    bits = _checked_bits(bits)
    w = _float32(w, "w")
    t = torch.tanh(w)
    largest = t.abs().max()
    if not float(largest.detach()) > 0:
        raise ValueError("dorefa_weight: every weight is 0, so max|tanh(w)| = 0 and there is nothing to normalise")
    r = t / (2 * largest) + 0.5   # u/2 + 1/2, in [0, 1]
    return 2 * QuantizeUnitSTE.apply(r, 2**bits - 1) - 1


class DoReFaActivation(torch.autograd.Function):
    """``DoReFaActivation.apply(a, levels)``: ``quantize_b(clip(a, 0, 1))``; gradient 1 where ``0 <= a <= 1``.

    ``a`` float32, ``levels = 2**b - 1``. No argument checks: see :func:`dorefa_activation`.
    """

    @staticmethod
    def forward(ctx, a, levels: int):
        ctx.save_for_backward((a >= 0) & (a <= 1))
        return torch.round(torch.clamp(a, 0.0, 1.0) * levels) / levels

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None


def dorefa_activation(a, bits: int) -> torch.Tensor:
    """DoReFa's ``b``-bit activations ``quantize_b(clip(a, 0, 1))`` (half to even, float32).

    Backward: the incoming gradient where ``0 <= a <= 1``, 0 where the clip saturated.
    """
    bits = _checked_bits(bits)
    return DoReFaActivation.apply(_float32(a, "a"), 2**bits - 1)


class DoReFaWeightQuantizer(nn.Module):
    """A weight quantizer module: ``forward(w) = dorefa_weight(w, bits)`` (for :mod:`qlib.qat`'s layers)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = _checked_bits(bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return dorefa_weight(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, tanh-normalised to [-1, 1]"


class DoReFaActivationQuantizer(nn.Module):
    """An activation quantizer module: ``forward(a) = dorefa_activation(a, bits)`` (clip to [0, 1])."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = _checked_bits(bits)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return dorefa_activation(a, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, clipped to [0, 1]"
