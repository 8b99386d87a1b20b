"""Tests of qlib.mixed_precision: the per-bit-width quantizer, the sensitivity scan, sizes, allocation.

Oracles: ``torch.fake_quantize_per_channel_affine`` (PyTorch's kernel) for the linear bit widths;
a sensitivity scan written out here (all images in one batch, layers found by hand); sizes
counted by hand and by qlib.storage; the allocation against exhaustive enumeration of every
combination of bit widths (itertools.product) under the same budget and tie rule.
"""
from __future__ import annotations

import copy
import itertools
import random
from fractions import Fraction

import pytest
import torch
from torch import nn

from qlib._reference import ReferenceUnavailable, blocked
from qlib.binary import fake_binarize
from qlib.data import load_digits
from qlib.mixed_precision import (
    BIT_WIDTHS,
    allocate_bits,
    fake_quantize_any_width,
    layer_size_bits,
    model_size_bits,
    negative_loss,
    quantization_sensitivity,
)
from qlib.models import load_pretrained
from qlib.storage import model_storage_bits
from qlib.ternary import fake_ternarize


def _randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- fake_quantize_any_width ----------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8, 12])
@pytest.mark.parametrize("shape", [(16, 1, 3, 3), (64, 512), (10, 64)])
def test_linear_bit_widths_match_torch_per_channel_fake_quant(bits, shape):
    w = _randn(shape, bits)
    w[1] = 0.0  # an all-zero channel
    qmax = 2 ** (bits - 1) - 1
    amax = w.reshape(shape[0], -1).abs().amax(dim=1)
    scale = torch.clamp(amax / qmax, min=torch.finfo(torch.float32).eps)
    expected = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(shape[0], dtype=torch.int32), 0,
                                                      -(qmax + 1), qmax)
    assert torch.equal(fake_quantize_any_width(w, bits), expected)


def test_one_and_two_bits_are_binary_and_ternary():
    w = _randn((32, 16, 3, 3), 1)
    assert torch.equal(fake_quantize_any_width(w, 1), fake_binarize(w, granularity="channel"))
    assert torch.equal(fake_quantize_any_width(w, 2), fake_ternarize(w, granularity="channel"))
    for c in range(4):  # at most 2 and 3 distinct values per channel
        assert len(torch.unique(fake_quantize_any_width(w, 1)[c])) <= 2
        assert len(torch.unique(fake_quantize_any_width(w, 2)[c])) <= 3


def test_fake_quantize_weight_refuses_bad_bits():
    for bad in (0, 17, 33):
        with pytest.raises(ValueError, match="bits"):
            fake_quantize_any_width(torch.ones(2, 2), bad)
    with pytest.raises(TypeError, match="integer"):
        fake_quantize_any_width(torch.ones(2, 2), 2.0)


# --- quantization_sensitivity ------------------------------------------------------------------

def _accuracy_in_one_batch(model, data) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data.images).argmax(dim=1) == data.labels).float().mean().item()


def _scan_by_hand(model, data, bit_widths, fake_quant):
    names = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    reference = _accuracy_in_one_batch(model, data)
    out = {}
    for name in names:
        out[name] = []
        for bits in bit_widths:
            m = copy.deepcopy(model)
            layer = m.get_submodule(name)
            with torch.no_grad():
                layer.weight.copy_(fake_quant(layer.weight.detach(), bits))
            out[name].append(reference - _accuracy_in_one_batch(m, data))
    return out


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_sensitivity_scan_matches_a_scan_written_out_here(name):
    model, data = load_pretrained(name), load_digits("test")
    before = copy.deepcopy(model.state_dict())
    bit_widths = [1, 2, 3]
    drops = quantization_sensitivity(model, data, bit_widths)
    expected = _scan_by_hand(model, data, bit_widths, fake_quantize_any_width)
    assert list(drops) == list(expected)
    n = len(data)
    for layer in expected:  # accuracies of 360 images: the same count of correct images
        assert [round(d * n) for d in drops[layer]] == [round(d * n) for d in expected[layer]], layer
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched


def test_sensitivity_scan_with_other_quantizers_and_scores():
    model, data = load_pretrained("mlp"), load_digits("test")
    zeros = quantization_sensitivity(model, data, [4], fake_quant=lambda w, b: torch.zeros_like(w))
    exact = quantization_sensitivity(model, data, [4, 8], fake_quant=lambda w, b: w)
    assert all(d == [0.0, 0.0] for d in exact.values())
    hand = _scan_by_hand(model, data, [4], lambda w, b: torch.zeros_like(w))
    assert {k: [round(v * 360) for v in d] for k, d in zeros.items()} == \
           {k: [round(v * 360) for v in d] for k, d in hand.items()}
    loss = quantization_sensitivity(model, data, [1], score=negative_loss)
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.fc1.weight.copy_(fake_quantize_any_width(m.fc1.weight, 1))
        ce = nn.functional.cross_entropy
        expected = ce(m(data.images), data.labels).item() - ce(model(data.images), data.labels).item()
    assert loss["fc1"][0] == pytest.approx(expected, rel=1e-4)


def test_sensitivity_scan_refuses_bad_arguments():
    model, data = load_pretrained("mlp"), load_digits("test")
    with pytest.raises(ValueError, match="empty"):
        quantization_sensitivity(model, data, [])
    with pytest.raises(ValueError, match="bits must be between"):
        quantization_sensitivity(model, data, [0])
    with pytest.raises(TypeError, match="fake_quant must be a function"):
        quantization_sensitivity(model, data, [4], fake_quant="linear")
    with pytest.raises(ValueError, match="returned shape"):
        quantization_sensitivity(model, data, [4], fake_quant=lambda w, b: w[0])
    with pytest.raises(ValueError, match="no Linear/Conv2d"):
        quantization_sensitivity(nn.Sequential(nn.ReLU()), data, [4])
    with blocked(["quantization_sensitivity"]):
        with pytest.raises(ReferenceUnavailable):
            quantization_sensitivity(model, data, [4])


# --- sizes -------------------------------------------------------------------------------------

def test_sizes_by_hand_and_against_qlib_storage():
    assert layer_size_bits((16, 1, 3, 3), 1) == 144 + 512
    assert layer_size_bits((64, 512), 4) == 4 * 32768 + 32 * 64
    model = load_pretrained("cnn")
    assert model_size_bits(model, {})["total"] == model_storage_bits(model)["total"]  # all FP32
    uniform = model_size_bits(model, dict.fromkeys(["conv1", "conv2", "fc1", "fc2"], 8))
    assert uniform["weights"] == 8 * (144 + 4608 + 32768 + 640)
    assert uniform["scales"] == 32 * (16 + 32 + 64 + 10)
    assert uniform["other_fp32"] == model_storage_bits(model)["other_fp32"]
    mixed = model_size_bits(model, {"conv1": 8, "fc1": 1})
    assert mixed["weights"] == 8 * 144 + 32 * 4608 + 32768 + 32 * 640 and mixed["scales"] == 32 * (16 + 64)
    with pytest.raises(ValueError, match="no Linear/Conv2d layer named"):
        model_size_bits(model, {"bn1": 4})
    with pytest.raises(ValueError, match="positive integers"):
        layer_size_bits((), 4)


# --- allocate_bits against exhaustive enumeration ----------------------------------------------

def _brute_force(drops, sizes, budget):
    names = list(drops)
    best = None
    for bits in itertools.product(*[sorted(set(drops[n]) & set(sizes[n])) for n in names]):
        size = sum(sizes[n][b] for n, b in zip(names, bits))
        if size > budget:
            continue
        drop = sum((Fraction(drops[n][b]) for n, b in zip(names, bits)), Fraction(0))
        key = (drop, -size, tuple(-b for b in bits))  # the documented order
        if best is None or key < best[0]:
            best = (key, dict(zip(names, bits)))
    return best[1]


def _instance(seed, tied):
    rng = random.Random(seed)
    n_layers = rng.randint(1, 5)
    widths = sorted(rng.sample([1, 2, 3, 4, 6, 8], rng.randint(1, 5)))
    drops, sizes = {}, {}
    for i in range(n_layers):
        n_weights = rng.choice([9, 144, 640, 4608, 100])
        # drops shrink with more bits; ties when tied (whole images of 360), a few negative ones
        drops[f"l{i}"] = {b: (rng.randint(-1, 40 // b) / 360 if tied else rng.random() / b) for b in widths}
        sizes[f"l{i}"] = {b: b * n_weights + 32 * rng.randint(1, 8) for b in widths}
    lo = sum(min(s.values()) for s in sizes.values())
    hi = sum(max(s.values()) for s in sizes.values())
    return drops, sizes, rng.randint(lo, hi)


@pytest.mark.parametrize("seed", range(60))
def test_allocation_equals_exhaustive_enumeration(seed):
    drops, sizes, budget = _instance(seed, tied=seed % 2 == 0)
    assert allocate_bits(drops, sizes, budget) == _brute_force(drops, sizes, budget)


def test_allocation_on_the_digits_cnn_shapes_equals_enumeration():
    shapes = {"conv1": (16, 1, 3, 3), "conv2": (32, 16, 3, 3), "fc1": (64, 512), "fc2": (10, 64)}
    rng = random.Random(5)
    drops = {n: {b: rng.randint(0, 30) / 360 for b in BIT_WIDTHS} for n in shapes}
    sizes = {n: {b: layer_size_bits(s, b) for b in BIT_WIDTHS} for n, s in shapes.items()}
    for avg in (1, 1.2, 2, 3.3, 8):
        budget = int(avg * 38160) + 32 * 122
        assert allocate_bits(drops, sizes, budget) == _brute_force(drops, sizes, budget)


def test_allocation_by_hand():
    drops = {"a": {1: 0.5, 8: 0.0}, "b": {1: 0.1, 8: 0.0}}
    sizes = {"a": {1: 10, 8: 80}, "b": {1: 100, 8: 800}}
    assert allocate_bits(drops, sizes, 110) == {"a": 1, "b": 1}
    assert allocate_bits(drops, sizes, 180) == {"a": 8, "b": 1}        # a is more sensitive and cheaper
    assert allocate_bits(drops, sizes, 10_000) == {"a": 8, "b": 8}
    # equal drops: the larger size, then more bits for the earlier layer
    tie = {"a": {1: 0.0, 2: 0.0}, "b": {1: 0.0, 2: 0.0}}
    assert allocate_bits(tie, {"a": {1: 1, 2: 2}, "b": {1: 1, 2: 2}}, 3) == {"a": 2, "b": 1}


def test_allocation_refuses_bad_input():
    drops = {"a": {1: 0.5, 8: 0.0}}
    sizes = {"a": {1: 10, 8: 80}}
    with pytest.raises(ValueError, match="below the smallest allocation"):
        allocate_bits(drops, sizes, 9)
    with pytest.raises(ValueError, match="finite"):
        allocate_bits({"a": {1: float("nan")}}, sizes, 100)
    with pytest.raises(ValueError, match="the drops name"):
        allocate_bits(drops, {"b": {1: 10}}, 100)
    with pytest.raises(ValueError, match="non-negative whole"):
        allocate_bits(drops, {"a": {1: -10, 8: 80}}, 100)
    with pytest.raises(ValueError, match="no bit width appears in both"):
        allocate_bits(drops, {"a": {2: 10}}, 100)
    with pytest.raises(ValueError, match="bits must be between"):
        allocate_bits({"a": {0: 0.1}}, {"a": {0: 1}}, 100)
    with pytest.raises(ValueError, match="budget_bits must be at least 0"):
        allocate_bits(drops, sizes, -1)
    with pytest.raises(ValueError, match="non-empty"):
        allocate_bits({}, {}, 10)
