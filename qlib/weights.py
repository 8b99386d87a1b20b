"""Fake-quantize the weights of a whole model (weights only; activations stay FP32).

Chapter 3 (Linear quantization): every ``nn.Linear`` and ``nn.Conv2d`` weight is
quantized symmetrically to signed ``bits`` bits, per tensor or per output
channel (axis 0), rounding half to even, and replaced by its dequantized value.
Biases and batch-norm parameters stay in float32.

Chapter 4 (Post-training quantization: granularity) adds groups along the input
axis and MX blocks (:func:`fake_quantize_weight`), schemes that know what their
scales cost (:class:`WeightScheme`), and the accuracy-versus-bits sweep.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_bits, check_count
from qlib._reference import reference
from qlib.granularity import (MX_BLOCK_SIZE, TENSOR_OR_CHANNEL, check_granularity, fake_quantize_tensor,
                              mxint_dequantize, mxint_quantize)
from qlib.microscaling import MXElement, mx_dequantize, mx_quantize
from qlib.scale_storage import layers_bits_per_weight

QUANTIZED_LAYERS = (nn.Linear, nn.Conv2d)


def quantized_layers(model: nn.Module):
    """``(name, module)`` of every layer whose weight is quantized, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)]


@reference
@torch.no_grad()
def fake_quantize_weights(model: nn.Module, bits: int, granularity: str) -> nn.Module:
    """A copy of ``model`` whose layer weights are fake-quantized (the original is untouched).

    ``granularity``: ``"tensor"`` (one scale ``max|w| / qmax`` per weight) or ``"channel"``
    (one per output channel, axis 0); symmetric signed ``bits``-bit integers, half to even.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "fake_quantize_weights")
    model = copy.deepcopy(model)
    for _, layer in quantized_layers(model):
        layer.weight.copy_(fake_quantize_tensor.unguarded(layer.weight, bits, granularity, axis=0, symmetric=True))
    return model


# --- one weight at any granularity, and the sweep of chapter 4 --------------------------------

#: Granularities of :func:`fake_quantize_weight`.
WEIGHT_GRANULARITIES = ("tensor", "channel", "group", "mx")


def weight_matrix(w: torch.Tensor) -> torch.Tensor:
    """``w`` flattened to ``[C_out, K]``: one row per output channel, ``K`` = the rest (``C_in * k_h * k_w``)."""
    if w.ndim < 2:
        raise ValueError(f"a weight needs an output-channel axis and an input axis, got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1)


def _padded(w2: torch.Tensor, multiple: int) -> torch.Tensor:
    """``w2`` with zero columns appended until its width is a multiple of ``multiple``."""
    return nn.functional.pad(w2, (0, -w2.shape[1] % multiple))


def fake_quantize_weight(w, bits: int, granularity: str, group_size: int | None = None,
                         element: MXElement | None = None) -> torch.Tensor:
    """One layer's weight, fake-quantized symmetrically to signed ``bits`` bits, as float32 of ``w``'s shape.

    The weight is seen as the matrix ``[C_out, K]`` (:func:`weight_matrix`), the input axis last:

    * ``"tensor"``: one scale ``max|w| / qmax``, ``qmax = 2^(bits-1) - 1``;
    * ``"channel"``: one scale per output channel (row);
    * ``"group"``: one scale per ``group_size`` consecutive values of a row;
    * ``"mx"``: blocks of ``group_size`` (default 32) values of a row sharing a power-of-two
      scale: MXINT-``bits`` (:func:`qlib.granularity.mxint_quantize`), or, if ``element``
      is given, that OCP MX element (e.g. :data:`qlib.microscaling.MXFP4_E2M1`, whose
      ``bits`` must equal ``bits``).

    Rounding is half to even throughout. When ``group_size`` does not divide ``K``, each row
    is padded with zeros to a multiple of it and cropped back afterwards: the last group of a
    row is then shorter, and its scale comes from its own values only (a zero never changes
    a symmetric range or a block's largest magnitude).
    """
    w = as_float_tensor(w, "w").to(torch.float32)
    bits = check_bits(bits)
    check_granularity(granularity, WEIGHT_GRANULARITIES, "fake_quantize_weight")
    if element is not None and granularity != "mx":
        raise ValueError("an MX element type is only used with granularity 'mx'")
    w2 = weight_matrix(w)
    k = w2.shape[1]
    if granularity in ("tensor", "channel"):
        if group_size is not None:
            raise ValueError(f"group_size is only used with granularity 'group' or 'mx', not {granularity!r}")
        w_hat = fake_quantize_tensor.unguarded(w2, bits, granularity, 0, None, True, True, False)
    elif granularity == "group":
        if group_size is None:
            raise ValueError("granularity='group' needs a group_size")
        group_size = check_count(group_size, "group_size", 1)
        w_hat = fake_quantize_tensor.unguarded(_padded(w2, group_size), bits, "group", 1, group_size, True, True, False)
    else:
        group_size = MX_BLOCK_SIZE if group_size is None else check_count(group_size, "group_size", 1)
        padded = _padded(w2, group_size)
        if element is None:
            w_hat = mxint_dequantize.unguarded(*mxint_quantize.unguarded(padded, bits, group_size), bits, group_size)
        else:
            if element.bits != bits:
                raise ValueError(f"{element.name} elements have {element.bits} bits, not {bits}")
            shared, codes = mx_quantize.unguarded(padded.numpy(), element, group_size)
            w_hat = torch.from_numpy(mx_dequantize.unguarded(shared, codes, element, group_size)).to(torch.float32)
    return w_hat[:, :k].reshape(w.shape)


@dataclass(frozen=True)
class WeightScheme:
    """A way to quantize every weight of a model, and the format its scales are stored in.

    ``granularity`` and ``group_size`` as in :func:`fake_quantize_weight`; ``scale_bits`` is the
    size of one stored scale (32 for FP32, 16 for FP16; MX scales are always E8M0, 8 bits);
    ``element`` picks an OCP MX float element instead of MXINT. Symmetric, so no zero points.
    """

    label: str
    granularity: str
    group_size: int | None = None
    scale_bits: int | None = None
    element: MXElement | None = None

    def bit_widths(self, bit_widths) -> list[int]:
        """The element widths this scheme is evaluated at: those given, or its MX element's own."""
        return [self.element.bits] if self.element is not None else list(bit_widths)

    def bits_per_weight(self, shapes, bits: int) -> float:
        """Effective bits per weight of weights of ``shapes``: ``bits`` plus the scales' share."""
        return layers_bits_per_weight(shapes, bits, self.granularity, self.group_size, self.scale_bits)


@torch.no_grad()
def fake_quantize_model_weights(model: nn.Module, bits: int, scheme: WeightScheme) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv2d weights are fake-quantized by ``scheme`` (see above).

    Biases, batch-norm parameters and activations stay in float32.
    """
    model = copy.deepcopy(model)
    for _, layer in quantized_layers(model):
        layer.weight.copy_(fake_quantize_weight(layer.weight, bits, scheme.granularity, scheme.group_size,
                                                scheme.element))
    return model


def granularity_sweep(model: nn.Module, data, bit_widths, schemes) -> list[dict]:
    """Weights-only quantization of ``model`` for every scheme and bit width: one row each.

    A row holds ``scheme`` (its label), ``bits`` (element bits), ``bits_per_weight`` (effective, the
    scales included, over all quantized layers), ``relative_error``
    (``sum_l ||W_l - W_hat_l||^2 / sum_l ||W_l||^2``) and ``accuracy`` on ``data``
    (:func:`qlib.models.accuracy`). Activations stay in float32. Deterministic.
    """
    from qlib.models import accuracy

    originals = [layer.weight.detach().clone() for _, layer in quantized_layers(model)]
    shapes = [tuple(w.shape) for w in originals]
    energy = sum(float((w.double() ** 2).sum()) for w in originals)
    rows = []
    for scheme in schemes:
        for bits in scheme.bit_widths(bit_widths):
            quantized = fake_quantize_model_weights(model, bits, scheme)
            error = sum(float(((layer.weight.detach().double() - w.double()) ** 2).sum())
                        for (_, layer), w in zip(quantized_layers(quantized), originals))
            rows.append({"scheme": scheme.label, "bits": bits, "bits_per_weight": scheme.bits_per_weight(shapes, bits),
                         "relative_error": error / energy, "accuracy": accuracy(quantized, data)})
    return rows
