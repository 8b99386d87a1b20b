"""Fake-quantize the weights of a whole model (weights only; activations stay FP32).

Chapter: Linear quantization. Every ``nn.Linear`` and ``nn.Conv2d`` weight is
quantized symmetrically to signed ``bits`` bits, per tensor or per output
channel (axis 0), rounding half to even, and replaced by its dequantized value.
Biases and batch-norm parameters stay in float32.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from qlib._reference import refuse_if_blocked
from qlib.granularity import fake_quantize_tensor

QUANTIZED_LAYERS = (nn.Linear, nn.Conv2d)


def quantized_layers(model: nn.Module):
    """``(name, module)`` of every layer whose weight is quantized, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)]


@torch.no_grad()
def fake_quantize_weights(model: nn.Module, bits: int, per_channel: bool) -> nn.Module:
    """A copy of ``model`` whose layer weights are fake-quantized (the original is untouched)."""
    refuse_if_blocked("fake_quantize_weights")
    model = copy.deepcopy(model)
    granularity = "channel" if per_channel else "tensor"
    for _, layer in quantized_layers(model):
        layer.weight.copy_(fake_quantize_tensor(layer.weight, bits, granularity, axis=0, symmetric=True))
    return model
