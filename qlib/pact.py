"""PACT: a learned clipping value for activations (Choi et al., 2018).

Chapter: Quantization-aware training.

A ReLU's output has no upper bound, so a min-max range is set by rare large
values and wastes levels on them. PACT replaces the ReLU by a clipped one whose
upper bound ``alpha`` is trained with the network, then quantizes the clipped
value to ``k`` bits unsigned:

    y     = clip(x, 0, alpha)                          (= 0.5 * (|x| - |x - alpha| + alpha))
    scale = alpha / (2**k - 1)
    y_q   = round(y * (1/scale)) * scale              (round half to even, float32)

Backward, with the straight-through estimator for the rounding (``d y_q / d y = 1``):

    d y_q / d x     = 1 where 0 <= x < alpha, else 0
    d y_q / d alpha = 1 where x >= alpha,     else 0

The paper deliberately ignores that ``scale`` depends on ``alpha``: the gradient
is the one of the clip alone. (LSQ, :mod:`qlib.lsq`, keeps that dependence.)
``alpha`` is pulled down by an L2 penalty ``lambda * alpha**2`` in the loss
(the paper's regularizer; :func:`pact_penalty`) and up by clipped values that matter.

The forward output equals ``torch.fake_quantize_per_tensor_affine(clip(x, 0, alpha),
alpha / (2**k - 1), 0, 0, 2**k - 1)`` bit for bit; there is no PyTorch oracle for the
gradients, so tests/test_pact.py checks them against finite differences of the
clip function (away from its kinks at 0 and alpha) and against autograd through
``torch.clamp``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_bits
from qlib._reference import reference
from qlib.linear import _scale_tensor


class PACTFakeQuantize(torch.autograd.Function):
    """``PACTFakeQuantize.apply(x, alpha, bits)``: clip to [0, alpha], quantize unsigned (see the module).

    ``x`` float32, ``alpha`` a positive float32 tensor of one element. No argument
    checks: see :func:`pact_fake_quantize`.
    """

    @staticmethod
    def forward(ctx, x, alpha, bits: int):
        qmax = 2**bits - 1
        y = torch.minimum(torch.clamp(x, min=0.0), alpha)
        scale = alpha / qmax
        y_q = torch.round(y * torch.reciprocal(scale)) * scale
        ctx.save_for_backward(x, alpha)
        return y_q

    @staticmethod
    def backward(ctx, grad_output):
        x, alpha = ctx.saved_tensors
        grad_x = grad_output * ((x >= 0) & (x < alpha))
        grad_alpha = (grad_output * (x >= alpha)).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


def check_pact_arguments(x, alpha, bits: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """PACT's arguments checked (also CG-PACT's, :func:`qlib.sat.cg_pact_fake_quantize`): ``(x, alpha, bits)``.

    ``x`` as a float32 tensor; ``alpha`` a float32 tensor of one positive finite value whose scale
    ``alpha / (2**bits - 1)`` has a finite reciprocal; ``bits`` from 1 to 24 (float32 holds every
    integer up to 2**24). Anything else is an error that names the argument.
    """
    bits = check_bits(bits)
    if bits > 24:
        raise ValueError(f"bits must be at most 24 (float32 holds every integer up to 2**24), got {bits}")
    if isinstance(x, torch.Tensor) and x.dtype == torch.float64:
        x = x.to(torch.float32)
    x = as_float_tensor(x)
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha), dtype=torch.float32)
    if alpha.numel() != 1:
        raise ValueError(f"alpha must hold one value (one clipping level per tensor), got shape {tuple(alpha.shape)}")
    if alpha.dtype != torch.float32:
        raise TypeError(f"alpha must be float32, got {alpha.dtype}")
    a = alpha.detach()
    if not bool(torch.isfinite(a).all()) or not bool((a > 0).all()):
        raise ValueError(f"alpha must be a positive finite number, got {float(a.reshape(()))}: "
                         "a clipping level at or below 0 would zero every activation")
    _scale_tensor(a / (2**bits - 1))  # the scale must have a finite reciprocal
    return x, alpha, bits


@reference
def pact_fake_quantize(x, alpha, bits: int) -> torch.Tensor:
    """``round(clip(x, 0, alpha) * (1/scale)) * scale`` with ``scale = alpha / (2**bits - 1)``.

    Round half to even, float32. Gradients: 1 to ``x`` where ``0 <= x < alpha``; 1 to
    ``alpha`` where ``x >= alpha`` (summed over the tensor). Arguments: :func:`check_pact_arguments`.
    """
    return PACTFakeQuantize.apply(*check_pact_arguments(x, alpha, bits))


def pact_penalty(model: nn.Module, weight: float) -> torch.Tensor:
    """``weight * sum(alpha**2)`` over every :class:`PACTQuantizer` of ``model`` (the paper's L2 term)."""
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantizer) and m.initialized]
    if not alphas:
        return torch.zeros(())
    return weight * sum((a**2).sum() for a in alphas)


class PACTQuantizer(nn.Module):
    """Clips at a learned ``alpha`` and fake-quantizes to ``bits`` bits unsigned (an activation quantizer).

    ``alpha`` starts at ``init_alpha`` if given, else at the largest value of the
    first batch seen (so fine-tuning a trained model starts from its min-max range).
    It replaces a ReLU: negative inputs become 0.
    """

    def __init__(self, bits: int, init_alpha: float | None = None):
        super().__init__()
        self.bits = check_bits(bits)
        if init_alpha is not None and not (math.isfinite(init_alpha) and init_alpha > 0):
            raise ValueError(f"init_alpha must be positive, got {init_alpha}")
        self.init_alpha = init_alpha
        self.alpha = nn.Parameter(torch.empty(0))

    @property
    def initialized(self) -> bool:
        return self.alpha.numel() > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self._start_alpha(x)
        return self.fake_quantize(x)

    def _start_alpha(self, x: torch.Tensor) -> None:
        start = self.init_alpha if self.init_alpha is not None else float(x.detach().max())
        if not start > 0:
            raise ValueError(f"the first batch seen by {type(self).__name__} has no positive value: "
                             "give init_alpha explicitly")
        self.alpha = nn.Parameter(torch.tensor(start, dtype=torch.float32))

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """PACT's forward with its gradients (:func:`pact_fake_quantize`) at the current ``alpha``."""
        return pact_fake_quantize.unguarded(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha) if self.initialized else 'not set'}"
