"""Magnitude pruning: set the smallest weights to zero, then retrain the rest with the zeros held.

Chapter: Deep Compression (chapter 2). Han et al., "Learning both Weights and Connections for
Efficient Neural Networks", NeurIPS 2015, and Deep Compression (arXiv:1510.00149), section 2.

A layer pruned to sparsity s keeps its n - round(s * n) weights of largest magnitude |w| and
stores zeros elsewhere. ``round`` is Python's (half to even) and equal magnitudes are pruned in
order of flat (row-major) index, lower index first, so the mask is the same on every machine.
That equals ``torch.nn.utils.prune.l1_unstructured`` whenever no magnitudes tie.

Retraining keeps the zeros: call :func:`apply_masks` after every optimizer step (a gradient hook
alone is not enough, since weight decay and momentum can move a weight whose gradient is 0).
"""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from qlib._checks import as_float_tensor
from qlib._reference import reference
from qlib.models import accuracy
from qlib.weights import quantized_layers

SENSITIVITY_SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number, got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:  # also refuses NaN
        raise ValueError(f"sparsity must satisfy 0 <= sparsity < 1 (the share of weights set to 0), got {sparsity}")
    return float(sparsity)


@reference
def magnitude_mask(w, sparsity: float) -> torch.Tensor:
    """Boolean mask of ``w``'s shape: True for the weights kept, False for exactly round(sparsity * n) pruned.

    The pruned ones are those of smallest |w|; among equal |w| the lower flat index is pruned
    first. ``0 <= sparsity < 1`` (``round`` is Python's, half to even: 0.5 * 5 -> 2 pruned).
    """
    w = as_float_tensor(w, "w")
    sparsity = _check_sparsity(sparsity)
    n_pruned = round(sparsity * w.numel())
    order = torch.argsort(w.detach().abs().reshape(-1), stable=True)  # ties: lower flat index first
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[order[:n_pruned]] = False
    return mask.reshape(w.shape)


def _layers(model: nn.Module, names) -> dict[str, nn.Module]:
    layers = dict(quantized_layers(model))
    unknown = set(names) - set(layers)
    if unknown:
        raise ValueError(f"no Linear/Conv2d layer named {sorted(unknown)}; the layers are {sorted(layers)}")
    return layers


@torch.no_grad()
def prune_model(model: nn.Module, sparsities: dict[str, float] | float) -> dict[str, torch.Tensor]:
    """Prune the Linear/Conv2d weights of ``model`` IN PLACE; return the masks by layer name.

    ``sparsities`` is one float for every layer or ``{layer_name: sparsity}`` for some of them
    (the others are left alone and get no mask). Pass ``copy.deepcopy(model)`` to keep the original.
    """
    layers = _layers(model, sparsities if isinstance(sparsities, dict) else ())
    if not isinstance(sparsities, dict):
        sparsities = {name: sparsities for name in layers}
    masks = {}
    for name, s in sparsities.items():
        weight = layers[name].weight
        masks[name] = magnitude_mask.unguarded(weight, s)
        weight.mul_(masks[name])
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights again (``weight *= mask``); call it after every optimizer step."""
    layers = _layers(model, masks)
    for name, mask in masks.items():
        weight = layers[name].weight
        if mask.shape != weight.shape:
            raise ValueError(f"mask of {name} has shape {tuple(mask.shape)}, its weight {tuple(weight.shape)}")
        weight.mul_(mask.to(torch.bool))


def sparsity(model: nn.Module) -> float:
    """Share of the Linear/Conv2d weights of ``model`` that are exactly 0 (biases not counted)."""
    weights = [layer.weight.detach() for _, layer in quantized_layers(model)]
    total = sum(w.numel() for w in weights)
    if total == 0:
        raise ValueError("the model has no Linear/Conv2d weights")
    return sum(int((w == 0).sum()) for w in weights) / total


def sensitivity_scan(model: nn.Module, data, sparsities=SENSITIVITY_SPARSITIES) -> dict[str, list[float]]:
    """Test accuracy on ``data`` with ONE layer pruned at a time, without retraining.

    Returns ``{layer_name: [accuracy at each sparsity]}``; every point prunes a fresh copy, so
    ``model`` is never changed. Layers whose accuracy falls early are the sensitive ones
    (in AlexNet the first convolution is the most sensitive, Han et al. 2015, figure 5; so it is here).
    """
    sparsities = [_check_sparsity(s) for s in sparsities]
    curves: dict[str, list[float]] = {}
    for name, _ in quantized_layers(model):
        curves[name] = []
        for s in sparsities:
            pruned = copy.deepcopy(model)
            weight = dict(quantized_layers(pruned))[name].weight
            with torch.no_grad():
                weight.mul_(magnitude_mask.unguarded(weight, s))
            curves[name].append(accuracy(pruned, data))
    return curves
