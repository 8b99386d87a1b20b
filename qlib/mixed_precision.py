"""Mixed precision: how sensitive each layer is to fewer bits, and a bit width per layer under a size budget.

Chapter: Binary and ternary networks, mixed precision (chapter 8, lab08_binary_mixed).

Sensitivity (:func:`quantization_sensitivity`): quantize the weight of ONE layer at a time,
keep every other layer in FP32, and measure the accuracy drop

    drop[layer][b] = accuracy(FP32 model) - accuracy(model with only `layer` at b bits)

A negative drop is possible (quantization noise that happens to help on this data).

Allocation (:func:`allocate_bits`): choose one bit width b_l per layer to

    minimize  sum_l drop[l][b_l]          (the single-layer drops, added: a proxy)
    subject   sum_l size[l][b_l] <= budget

Ties are broken by the larger total size (use the budget), then by more bits for earlier
layers; so the answer is unique. The drops are added exactly (as fractions), so ties are exact.

The method is a dynamic program over the layers, keyed by the total size so far. It is exact:
two partial allocations of the first layers with the same size are interchangeable in any
completion (the rest adds the same size and the same drops to both), so only the better of the
two (smaller drop, then more bits in earlier layers) can start an optimal allocation, and the
program keeps just that one per size. Every allocation within the budget is thus dominated by one
that the program keeps, and the best kept one is optimal. With K bit widths and L layers the
program handles at most min(K^l, budget + 1) sizes after l layers; exhaustive enumeration
(K^L allocations, 6^4 = 1,296 for the digits CNN) gives the same answer, as tests check.

The quantizer of each bit width (:func:`fake_quantize_any_width`), all per output channel:
1 bit is binary (XNOR scale, :mod:`qlib.binary`), 2 bits ternary (TWN, :mod:`qlib.ternary`,
stored in 2 bits), 3 to 8 bits symmetric linear (:mod:`qlib.granularity`, half to even).
Size of a layer at b bits (:func:`layer_size_bits`): b bits per weight plus one float32
scale per output channel.
"""
from __future__ import annotations

import copy
import math
import numbers
from fractions import Fraction

import torch
from torch import nn

from qlib._checks import check_bits, check_count
from qlib._reference import reference
from qlib.binary import SCALE_BITS, fake_binarize
from qlib.granularity import fake_quantize_tensor
from qlib.models import accuracy
from qlib.storage import model_storage_bits
from qlib.ternary import fake_ternarize
from qlib.weights import quantized_layers

#: The bit widths a layer may get in the chapter's allocation.
BIT_WIDTHS = (1, 2, 3, 4, 6, 8)
#: Largest bit width of :func:`fake_quantize_any_width` (linear, symmetric, per channel).
MAX_BITS = 16


def fake_quantize_any_width(w, bits: int) -> torch.Tensor:
    """The weight ``w`` (output channels on axis 0) fake-quantized to ``bits`` bits, per output channel.

        bits = 1:      alpha * sign(w), alpha = mean|w|                (binary, XNOR scale)
        bits = 2:      alpha * t, TWN threshold 0.7 * mean|w|         (ternary, stored in 2 bits)
        bits = 3..16:  symmetric linear, scale = max|w| / (2**(bits-1) - 1), round half to even
    """
    bits = check_bits(bits)
    if bits > MAX_BITS:
        raise ValueError(f"fake_quantize_any_width handles 1 to {MAX_BITS} bits, got {bits}")
    if bits == 1:
        return fake_binarize(w, "channel")
    if bits == 2:
        return fake_ternarize(w, "channel")
    return fake_quantize_tensor.unguarded(w, bits, "channel", axis=0, symmetric=True)


def _check_bit_widths(bit_widths) -> list[int]:
    bit_widths = list(bit_widths)
    if not bit_widths:
        raise ValueError("bit_widths is empty: give at least one bit width")
    return [check_bits(b) for b in bit_widths]


@reference
@torch.no_grad()
def quantization_sensitivity(model: nn.Module, data, bit_widths, fake_quant=fake_quantize_any_width,
                             score=accuracy) -> dict[str, list[float]]:
    """Score drop when ONE Linear/Conv2d layer's weight is fake-quantized, for each layer and bit width.

        drop[name][i] = score(model, data) - score(copy with name.weight = fake_quant(weight, bit_widths[i]), data)

    ``fake_quant(w, bits)`` returns the quantized weight (default :func:`fake_quantize_any_width`);
    ``score(model, data)`` is higher for a better model (default :func:`qlib.models.accuracy`:
    eval mode, batches of 256; :func:`negative_loss` is a smoother choice).
    Layers in model order; every point quantizes a fresh copy, so ``model`` never changes.
    """
    bit_widths = _check_bit_widths(bit_widths)
    if not callable(fake_quant):
        raise TypeError(f"fake_quant must be a function (w, bits) -> w_hat, got {type(fake_quant).__name__}")
    if not callable(score):
        raise TypeError(f"score must be a function (model, data) -> number, got {type(score).__name__}")
    names = [name for name, _ in quantized_layers(model)]
    if not names:
        raise ValueError("the model has no Linear/Conv2d layer to quantize")
    reference = score(model, data)
    drops: dict[str, list[float]] = {}
    for name in names:
        drops[name] = []
        for bits in bit_widths:
            quantized = copy.deepcopy(model)
            weight = dict(quantized_layers(quantized))[name].weight
            w_hat = torch.as_tensor(fake_quant(weight.detach().clone(), bits))
            if w_hat.shape != weight.shape:
                raise ValueError(f"fake_quant returned shape {tuple(w_hat.shape)} for {name}.weight {tuple(weight.shape)}")
            weight.copy_(w_hat)
            drops[name].append(reference - score(quantized, data))
    return drops


@torch.no_grad()
def negative_loss(model: nn.Module, data) -> float:
    """Minus the mean cross-entropy of ``model`` on ``data`` (eval mode): a score that, unlike
    accuracy, still moves when every image stays correctly classified."""
    model.eval()
    total = 0.0
    for images, labels in data.batches():
        total += float(nn.functional.cross_entropy(model(images), labels, reduction="sum"))
    return -total / len(data)


def layer_size_bits(shape, bits: int) -> int:
    """Bits of one weight of ``shape`` at ``bits`` bits: ``bits * numel + 32 * shape[0]`` (a scale per channel)."""
    shape = tuple(shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive integers, got {shape}")
    return check_bits(bits) * math.prod(shape) + SCALE_BITS * shape[0]


def model_size_bits(model: nn.Module, allocation: dict[str, int]) -> dict[str, int]:
    """Size in bits of ``model`` with the Linear/Conv2d weights of ``allocation`` at their bit widths.

    Returns ``weights`` (every weight: ``bits`` per quantized weight, 32 per FP32 one), ``scales``
    (32 per output channel of each quantized layer), ``other_fp32`` (biases, batch norm, as in
    :func:`qlib.storage.model_storage_bits`) and their ``total``.
    """
    layers = dict(quantized_layers(model))
    unknown = set(allocation) - set(layers)
    if unknown:
        raise ValueError(f"no Linear/Conv2d layer named {sorted(unknown)}; the layers are {sorted(layers)}")
    sizes = {"weights": 0, "scales": 0, "other_fp32": model_storage_bits(model)["other_fp32"]}
    for name, layer in layers.items():
        shape = tuple(layer.weight.shape)
        if name in allocation:
            sizes["weights"] += check_bits(allocation[name]) * math.prod(shape)
            sizes["scales"] += SCALE_BITS * shape[0]
        else:
            sizes["weights"] += 32 * math.prod(shape)
    sizes["total"] = sum(sizes.values())
    return sizes


def _check_table(table: dict, what: str, layers=None) -> dict[str, dict[int, object]]:
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{what} must be a non-empty dict {{layer: {{bits: value}}}}")
    if layers is not None and set(table) != set(layers):
        raise ValueError(f"{what} names the layers {sorted(table)}, the drops name {sorted(layers)}")
    for name, row in table.items():
        if not isinstance(row, dict) or not row:
            raise ValueError(f"{what}[{name!r}] must be a non-empty dict {{bits: value}}")
        for bits, value in row.items():
            check_bits(bits)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{what}[{name!r}][{bits}] must be a finite number, got {value!r}")
    return table


def allocation_key(drop: Fraction, size: int, bits: tuple[int, ...]) -> tuple:
    """Order of allocations: smaller total drop, then larger size, then more bits in earlier layers."""
    return drop, -size, tuple(-b for b in bits)


def allocate_bits(drops: dict[str, dict[int, float]], sizes: dict[str, dict[int, int]], budget_bits: int) -> dict[str, int]:
    """The bit width per layer with the least total drop whose total size fits ``budget_bits``.

    ``drops[layer][bits]`` is the accuracy drop of that layer alone at ``bits`` (from
    :func:`quantization_sensitivity`); ``sizes[layer][bits]`` its size in bits (integers, e.g.
    :func:`layer_size_bits`). A layer may use the bit widths present in both tables. Exact dynamic
    program over total sizes (see the module docstring for the proof and the tie rule).
    Raises ``ValueError`` if even the smallest allocation exceeds the budget.
    """
    drops = _check_table(drops, "drops")
    sizes = _check_table(sizes, "sizes", layers=drops)
    budget_bits = check_count(budget_bits, "budget_bits", 0)
    names = list(drops)
    choices = {}
    for name in names:
        choices[name] = sorted(set(drops[name]) & set(sizes[name]), reverse=True)
        if not choices[name]:
            raise ValueError(f"layer {name!r}: no bit width appears in both drops and sizes")
        if any(isinstance(s, float) and not float(s).is_integer() or s < 0 for s in sizes[name].values()):
            raise ValueError(f"sizes[{name!r}] must hold non-negative whole numbers of bits")
    smallest = sum(min(int(sizes[n][b]) for b in choices[n]) for n in names)
    if smallest > budget_bits:
        raise ValueError(f"the budget of {budget_bits} bits is below the smallest allocation ({smallest} bits)")
    # states: total size of the layers so far -> (total drop, their bits), the best per size
    states: dict[int, tuple[Fraction, tuple[int, ...]]] = {0: (Fraction(0), ())}
    for name in names:
        grown: dict[int, tuple[Fraction, tuple[int, ...]]] = {}
        for size, (drop, bits) in states.items():
            for b in choices[name]:
                s = size + int(sizes[name][b])
                if s > budget_bits:
                    continue
                candidate = (drop + Fraction(drops[name][b]), bits + (b,))
                kept = grown.get(s)
                if kept is None or allocation_key(candidate[0], 0, candidate[1]) < allocation_key(kept[0], 0, kept[1]):
                    grown[s] = candidate
        states = grown
    size, (_, bits) = min(states.items(), key=lambda item: allocation_key(item[1][0], item[0], item[1][1]))
    return dict(zip(names, bits))
