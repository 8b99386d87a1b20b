"""SAT: scale-adjusted training (Jin, Yang and Liao, 2019), and its gradient-calibrated PACT.

Chapter: Quantization-aware training.

SAT starts from DoReFa's weights (:mod:`qlib.dorefa`) and fixes their scale. The rule it keeps
is the one behind He initialisation in its fan-out form: for a layer ``y = W x`` with ``n_out``
outputs, the backward pass computes ``dL/dx = W^T dL/dy``, so with independent zero-mean entries

    VAR[dL/dx] = n_out * VAR[W] * VAR[dL/dy],

and gradients keep their size from layer to layer when ``n_out * VAR[W] = 1``. DoReFa's weights
``w_q`` lie in [-1, 1] with a variance set by their grid, not by ``n_out`` (at 2 bits, levels +-1/3
and +-1, their mean square lies between 1/9 and 1), so a layer with no batch norm after it multiplies the variance
of the gradient by ``n_out * VAR[w_q]``, which grows with the layer's width. SAT's *weight scale
adjustment* divides it out:

    w_q  = dorefa_weight(w, b)
    w_q* = w_q / sqrt(n_out * VAR[w_q])          so that n_out * VAR[w_q*] = 1

``n_out`` is the fan-out: ``out_features`` of a Linear, ``out_channels * kh * kw`` of a Conv2d
(:func:`fan_out`). ``VAR`` is the population variance over all entries of the tensor (mean squared
deviation, divided by N). The factor is a constant for the backward pass (computed from the detached
``w_q``, as in the authors' released code), so ``d w_q* / d w = (d w_q / d w) / sqrt(n_out VAR[w_q])``.
A layer followed by a batch norm does not need the adjustment (batch norm undoes any scale); the
N2D2 recipe applies it to the fully connected layers only, and so does :func:`prepare_sat`. At
inference the factor is one number per layer, folded into the next rescaling.

Activations: PACT's clip-and-quantize (:mod:`qlib.pact`) with the forward pass unchanged,

    y_q = round(clip(x, 0, alpha) * (1/S)) * S,      S = alpha / (2**b - 1)

but SAT's *gradient-calibrated* PACT (CG-PACT) differentiates ``y_q = alpha * quantize_b(x/alpha)``
with respect to ``alpha`` without dropping the levels' dependence on it (straight through the
rounding only):

    d y_q / d alpha = (y_q - x) / alpha    where 0 <= x < alpha       (PACT: 0)
                      1                    where x >= alpha           (as PACT)
                      0                    where x < 0
    d y_q / d x     = 1 where 0 <= x < alpha, else 0                  (as PACT)

Inside the range this is LSQ's step gradient (:mod:`qlib.lsq`) with the step ``S = alpha / (2**b - 1)``
and no gradient scale, written for ``alpha``: ``d/d alpha = (d/dS) / (2**b - 1)``. The two differ
only just above ``alpha``: LSQ decides inside/outside on the rounded value, so values within half a
step above ``alpha`` still count as inside for LSQ; CG-PACT clips first.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from qlib.dorefa import DoReFaActivationQuantizer, _checked_bits, _float32, dorefa_weight
from qlib.pact import PACTQuantizer, check_pact_arguments
from qlib.folding import batchnorm_pairs
from qlib.qat import QATConv2d, QATLinear

METHODS = ("dorefa", "sat")


def fan_out(weight: torch.Tensor) -> int:
    """``n_out`` of a weight: ``shape[0] * prod(shape[2:])`` (Linear: out_features; Conv2d: C_out * kh * kw)."""
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        raise ValueError("fan_out needs a weight tensor with at least 2 dimensions "
                         f"([out, in, ...]), got {getattr(weight, 'shape', type(weight).__name__)}")
    return int(weight.shape[0] * math.prod(weight.shape[2:]))


def scale_adjust(w_q, n_out: int) -> torch.Tensor:
    """SAT's weight scale adjustment ``w_q / sqrt(n_out * VAR[w_q])`` (population variance, factor detached).

    Afterwards ``n_out * VAR[result] = 1`` (to float32 rounding). Raises ``ValueError`` if
    ``n_out < 1`` or if ``w_q`` is constant (variance 0: no scale to adjust).
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"n_out must be a positive integer (the layer's fan-out), got {n_out!r}")
    w_q = _float32(w_q, "w_q")
    variance = w_q.detach().var(correction=0)
    if not float(variance) > 0:
        raise ValueError("scale_adjust: the quantized weights are all equal (variance 0), so there is no "
                         "scale to adjust")
    return w_q * torch.rsqrt(n_out * variance)


def sat_weight(w, bits: int, n_out: int | None = None) -> torch.Tensor:
    """SAT's weights: ``dorefa_weight(w, bits)`` scale-adjusted to ``n_out * VAR = 1``.

    ``n_out`` defaults to :func:`fan_out` of ``w``.
    """
    w_q = dorefa_weight(w, bits)
    return scale_adjust(w_q, fan_out(w_q) if n_out is None else n_out)


class CGPACTFakeQuantize(torch.autograd.Function):
    """``CGPACTFakeQuantize.apply(x, alpha, bits)``: PACT's forward, SAT's calibrated gradient for ``alpha``.

    ``x`` float32, ``alpha`` a positive float32 tensor of one element. No argument checks: see
    :func:`cg_pact_fake_quantize`.
    """

    @staticmethod
    def forward(ctx, x, alpha, bits: int):
        scale = alpha / (2**bits - 1)
        y_q = torch.round(torch.minimum(torch.clamp(x, min=0.0), alpha) * torch.reciprocal(scale)) * scale
        ctx.save_for_backward(x, alpha, y_q)
        return y_q

    @staticmethod
    def backward(ctx, grad_output):
        x, alpha, y_q = ctx.saved_tensors
        inside = (x >= 0) & (x < alpha)
        d_alpha = torch.where(inside, (y_q - x) / alpha, (x >= alpha).to(x.dtype))
        grad_alpha = (grad_output * d_alpha).sum().reshape(alpha.shape)
        return grad_output * inside, grad_alpha, None


def cg_pact_fake_quantize(x, alpha, bits: int) -> torch.Tensor:
    """PACT's ``round(clip(x, 0, alpha) * (1/S)) * S``, ``S = alpha / (2**bits - 1)``, with CG-PACT's gradients.

    Round half to even, float32; the forward output equals :func:`qlib.pact.pact_fake_quantize`
    bit for bit, and its arguments are checked alike (:func:`qlib.pact.check_pact_arguments`).
    Gradients: see the module (``alpha`` gets ``(y_q - x) / alpha`` from every value inside the
    range, 1 from every clipped value).
    """
    return CGPACTFakeQuantize.apply(*check_pact_arguments(x, alpha, bits))


class CGPACTQuantizer(PACTQuantizer):
    """:class:`qlib.pact.PACTQuantizer` with SAT's calibrated gradient for ``alpha``.

    Same clipping value, same start (``init_alpha`` or the largest value of the first batch),
    same L2 penalty in :func:`qlib.pact.pact_penalty`; only the gradient of ``alpha`` differs.
    """

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """PACT's forward with CG-PACT's gradients (:func:`cg_pact_fake_quantize`) at the current ``alpha``."""
        return cg_pact_fake_quantize(x, self.alpha, self.bits)


class SATWeightQuantizer(nn.Module):
    """A weight quantizer module: DoReFa's weights, scale-adjusted if ``adjust_scale`` (n_out from the weight)."""

    def __init__(self, bits: int, adjust_scale: bool = True):
        super().__init__()
        self.bits = _checked_bits(bits)
        self.adjust_scale = bool(adjust_scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return sat_weight(w, self.bits) if self.adjust_scale else dorefa_weight(w, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, DoReFa{', scale-adjusted' if self.adjust_scale else ''}"


def prepare_sat(model: nn.Module, w_bits: int, a_bits: int | None, method: str = "sat") -> nn.Module:
    """A QAT copy of ``model`` with DoReFa or SAT quantizers; its batch norms are kept, not folded.

    Every Linear/Conv2d becomes a :mod:`qlib.qat` layer (float32 master weights) whose weights
    and input are fake-quantized:

    * ``"dorefa"``: DoReFa weights (:func:`qlib.dorefa.dorefa_weight`), inputs clipped to [0, 1]
      and quantized (:func:`qlib.dorefa.dorefa_activation`);
    * ``"sat"``: DoReFa weights, scale-adjusted in the layers *not* followed by a batch norm;
      inputs through :class:`CGPACTQuantizer`.

    ``a_bits=None`` leaves the inputs in float32. DoReFa's weights have no scale of their own,
    so the batch norms stay and train (batch statistics) to supply it; fold them afterwards.
    The copy is returned in training mode; ``model`` is not changed.
    """
    _checked_bits(w_bits)
    if a_bits is not None:
        _checked_bits(a_bits)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    followed_by_bn = {layer for layer, _ in batchnorm_pairs(model)}
    qat = copy.deepcopy(model)
    for name, layer in list(qat.named_modules()):
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or isinstance(layer, (QATLinear, QATConv2d)):
            continue
        adjust = method == "sat" and name not in followed_by_bn
        weight_q = SATWeightQuantizer(w_bits, adjust_scale=adjust)
        if a_bits is None:
            input_q = None
        else:
            input_q = CGPACTQuantizer(a_bits) if method == "sat" else DoReFaActivationQuantizer(a_bits)
        cls = QATConv2d if isinstance(layer, nn.Conv2d) else QATLinear
        qat.set_submodule(name, cls.from_float(layer, weight_q, input_q))
    return qat.train()
