"""Short fine-tuning of a model whose weights are binary, ternary or low-bit, with FP32 latent weights.

Chapter: Binary and ternary networks, mixed precision (chapter 8).

BinaryConnect's recipe, for any weight quantizer: every Linear/Conv2d layer keeps its FP32
weight ``w`` (the latent weight the optimizer updates); the forward pass uses ``fake_quant(w)``;
the backward pass sends the gradient of the quantized weight straight through to ``w``
(:func:`qlib.binary.straight_through`). Batch-norm layers train as usual, so their statistics
adapt to the quantized weights. At the end the latent weights are dropped: each layer's weight
becomes ``fake_quant(w)``, exactly the values the quantized model stores.

Deterministic: the batch order comes from a generator seeded with ``seed``, the model starts
from a copy of the one given, and the run prints one line per epoch.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from qlib._checks import check_count
from qlib.binary import straight_through
from qlib.models import accuracy
from qlib.weights import quantized_layers


class QuantizedWeight(nn.Module):
    """A parametrization: the layer sees ``fake_quant(w)``, the gradient reaches ``w`` unchanged."""

    def __init__(self, fake_quant) -> None:
        super().__init__()
        self.fake_quant = fake_quant

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return straight_through(w, torch.as_tensor(self.fake_quant(w.detach())))


def _quantizers(model: nn.Module, fake_quant) -> dict:
    names = [name for name, _ in quantized_layers(model)]
    if callable(fake_quant):
        return dict.fromkeys(names, fake_quant)
    if not isinstance(fake_quant, dict) or not set(fake_quant) <= set(names):
        raise ValueError(f"fake_quant must be a function w -> w_hat or a dict of them keyed by layer name "
                         f"({names}), got {fake_quant!r}")
    return fake_quant


def finetune_quantized(model: nn.Module, fake_quant, data, epochs: int = 5, lr: float = 1e-3,
                       batch_size: int = 64, seed: int = 0, eval_data=None, log=print) -> nn.Module:
    """A copy of ``model`` fine-tuned with quantized weights; its weights end up quantized.

    ``fake_quant`` is a function ``w -> w_hat`` applied to every Linear/Conv2d weight, or a dict
    ``{layer name: function}`` (layers not named stay FP32). Adam with learning rate ``lr`` decaying to 0
    along a cosine,
    cross-entropy on ``data`` (a :class:`qlib.data.Digits`), ``epochs`` passes in batches of
    ``batch_size`` in an order seeded by ``seed``. Each epoch logs its mean loss, and the accuracy
    on ``eval_data`` if given. Returns the model in eval mode.
    """
    epochs = check_count(epochs, "epochs", 1)
    batch_size = check_count(batch_size, "batch_size", 1)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    model = copy.deepcopy(model)
    layers = dict(quantized_layers(model))
    for name, fn in _quantizers(model, fake_quant).items():
        parametrize.register_parametrization(layers[name], "weight", QuantizedWeight(fn))
    torch.manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)  # lr decays to 0 by the end
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in torch.randperm(len(data), generator=order_gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(data.images[idx]), data.labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        line = f"epoch {epoch + 1}/{epochs}  loss {total / count:.4f}"
        if eval_data is not None:
            line += f"  accuracy {accuracy(model, eval_data):.4f}"
        log(line)
    for name, layer in layers.items():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model.eval()
