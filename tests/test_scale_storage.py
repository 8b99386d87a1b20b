"""Tests of qlib.scale_storage: what the scales of each granularity cost, in bits per weight.

Oracles: counts worked by hand (the digits CNN's four layers, the module's example), a
brute-force count that walks every row and every group start, the scales that
``qlib.granularity.quantize_per_group`` actually returns, and the MX module's tested
``bits_per_element`` and ``mx_quantize`` (one shared exponent per block of 32).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qlib._reference import ReferenceUnavailable, blocked
from qlib.granularity import quantize_per_group
from qlib.microscaling import MX_ELEMENTS, bits_per_element, mx_quantize
from qlib.models import load_pretrained
from qlib.scale_storage import (
    GRANULARITIES,
    SCALE_FORMAT_BITS,
    bits_per_weight,
    layers_bits_per_weight,
    scale_bits_per_weight,
    scale_count,
    scale_storage_bits,
)
from qlib.weights import quantized_layers

CNN_SHAPES = [(16, 1, 3, 3), (32, 16, 3, 3), (64, 512), (10, 64)]  # conv1, conv2, fc1, fc2
CNN_WEIGHTS = 144 + 4608 + 32768 + 640


def test_scale_formats_and_granularities():
    assert SCALE_FORMAT_BITS == {"fp32": 32, "fp16": 16, "bf16": 16, "e8m0": 8}
    assert GRANULARITIES == ("tensor", "channel", "group", "mx")


def test_module_docstring_example():
    # [64, 512] at 4 bits, groups of 128, FP16 scales, 4-bit zero points
    assert scale_count((64, 512), "group", 128) == 256
    assert scale_storage_bits((64, 512), "group", 128, scale_bits=16, zero_point_bits=4) == 5120
    assert scale_bits_per_weight((64, 512), "group", 128, scale_bits=16, zero_point_bits=4) == 0.15625
    assert bits_per_weight((64, 512), 4, "group", 128, scale_bits=16, zero_point_bits=4) == 4.15625


@pytest.mark.parametrize("granularity, group_size, scale_bits, zp_bits, expected", [
    # per-tensor: one FP32 scale for 32768 weights
    ("tensor", None, 32, 0, Fraction(32, 32768)),
    # per-channel: 64 FP32 scales, one per row of 512
    ("channel", None, 32, 0, Fraction(64 * 32, 32768)),
    ("channel", None, 16, 8, Fraction(64 * 24, 32768)),
    # groups: (scale + zero point) / g
    ("group", 128, 16, 0, Fraction(16, 128)),
    ("group", 64, 16, 0, Fraction(16, 64)),
    ("group", 32, 16, 0, Fraction(1, 2)),
    ("group", 32, 32, 4, Fraction(36, 32)),
    ("group", 512, 32, 0, Fraction(32, 512)),   # one group per row: per-channel
    # MX: an 8-bit E8M0 scale per 32 values
    ("mx", None, None, 0, Fraction(8, 32)),
])
def test_hand_worked_bits_per_weight_of_fc1(granularity, group_size, scale_bits, zp_bits, expected):
    got = scale_bits_per_weight((64, 512), granularity, group_size, scale_bits, zp_bits)
    assert got == float(expected)
    assert bits_per_weight((64, 512), 3, granularity, group_size, scale_bits, zp_bits) == float(3 + expected)


def test_a_group_that_does_not_fill_up_still_needs_a_scale():
    # conv1 of the digits CNN: 16 rows of K = 9 values; groups of 32 hold 9 values each,
    # conv2: K = 144 = 4 * 32 + 16, so five groups per row, the last half full
    assert scale_count((16, 1, 3, 3), "group", 32) == 16
    assert scale_count((32, 16, 3, 3), "group", 32) == 32 * 5
    assert scale_bits_per_weight((16, 1, 3, 3), "group", 32, scale_bits=16) == 16 / 9
    assert scale_count((32, 16, 3, 3), "mx") == 160


def _brute_force_count(shape, granularity, group_size):
    """Walk every row and every group start."""
    rows, k = shape[0], math.prod(shape[1:])
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return sum(1 for _ in range(rows))
    return sum(1 for _ in range(rows) for _ in range(0, k, group_size))


@pytest.mark.parametrize("shape", [(3, 5), (8, 96), (7, 2, 3, 3), (64, 512), (1, 1), (10, 64), (5, 33)])
@pytest.mark.parametrize("granularity, group_size", [("tensor", None), ("channel", None), ("group", 1),
                                                     ("group", 4), ("group", 32), ("group", 100), ("mx", None)])
def test_counts_against_brute_force(shape, granularity, group_size):
    expected = _brute_force_count(shape, granularity, 32 if granularity == "mx" else group_size)
    assert scale_count(shape, granularity, group_size) == expected
    scale_bits = None if granularity == "mx" else 16
    assert scale_storage_bits(shape, granularity, group_size, scale_bits) == expected * (16 if scale_bits else 8)


@pytest.mark.parametrize("shape, group_size", [((8, 96), 32), ((6, 4, 3, 3), 12), ((5, 20), 4), ((4, 64), 64)])
def test_counts_match_the_scales_that_per_group_quantization_returns(shape, group_size):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1)).reshape(shape[0], -1)
    _, scale, zero_point = quantize_per_group(w, 1, group_size, -8, 7)
    assert scale.numel() == zero_point.numel() == scale_count(shape, "group", group_size)


@pytest.mark.parametrize("name", sorted(MX_ELEMENTS))
@pytest.mark.parametrize("shape", [(4, 32), (16, 128), (3, 2, 64)])
def test_mx_matches_the_microscaling_module(name, shape):
    element = MX_ELEMENTS[name]
    assert bits_per_weight(shape, element.bits, "mx") == bits_per_element(element)
    x = np.random.default_rng(0).standard_normal(shape).reshape(shape[0], -1)
    shared, _ = mx_quantize(x, element)
    assert shared.size == scale_count(shape, "mx")
    assert scale_storage_bits(shape, "mx") == shared.size * 8


def test_mx_block_size_can_be_changed():
    assert scale_count((4, 64), "mx", group_size=16) == 16
    assert scale_bits_per_weight((4, 64), "mx", group_size=16) == 0.5


def test_digits_cnn_by_hand():
    shapes = [tuple(layer.weight.shape) for _, layer in quantized_layers(load_pretrained("cnn"))]
    assert shapes == CNN_SHAPES
    # per-channel FP32: 16 + 32 + 64 + 10 = 122 scales
    assert layers_bits_per_weight(shapes, 4, "channel") == 4 + 122 * 32 / CNN_WEIGHTS
    # groups of 32, FP16: 16 * 1 + 32 * 5 + 64 * 16 + 10 * 2 = 1220 scales
    assert layers_bits_per_weight(shapes, 2, "group", 32, 16) == 2 + 1220 * 16 / CNN_WEIGHTS
    # per-tensor: four FP32 scales
    assert layers_bits_per_weight(shapes, 8, "tensor") == 8 + 4 * 32 / CNN_WEIGHTS
    # MX: the same 1220 blocks, 8 bits each
    assert layers_bits_per_weight(shapes, 4, "mx") == 4 + 1220 * 8 / CNN_WEIGHTS


def test_layers_of_one_shape_cost_what_one_layer_costs():
    for g, gs in (("tensor", None), ("channel", None), ("group", 64), ("mx", None)):
        assert layers_bits_per_weight([(64, 512)] * 3, 4, g, gs) == bits_per_weight((64, 512), 4, g, gs)


def test_finer_granularity_costs_more():
    costs = [scale_bits_per_weight((64, 512), *args) for args in
             (("tensor",), ("channel",), ("group", 128), ("group", 64), ("group", 32), ("group", 8))]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"granularity": "row"}, ValueError, "granularity must be one of"),
    ({"granularity": "group"}, ValueError, "needs a group_size"),
    ({"granularity": "group", "group_size": 0}, ValueError, "group_size must be at least 1"),
    ({"granularity": "group", "group_size": 2.5}, TypeError, "group_size must be an integer"),
    ({"granularity": "channel", "group_size": 32}, ValueError, "only used with granularity"),
    ({"granularity": "mx", "scale_bits": 16}, ValueError, "E8M0"),
    ({"granularity": "mx", "zero_point_bits": 4}, ValueError, "no zero point"),
    ({"granularity": "channel", "scale_bits": 0}, ValueError, "bits must be between 1 and 32"),
    ({"granularity": "channel", "zero_point_bits": -1}, ValueError, "zero_point_bits must be at least 0"),
])
def test_bad_schemes_are_refused(kwargs, error, words):
    with pytest.raises(error, match=words):
        scale_storage_bits((4, 8), **kwargs)


@pytest.mark.parametrize("shape, error, words", [
    ((8,), ValueError, "output-channel axis"),
    ((4, 0), ValueError, "positive integer"),
    ((4, 2.0), ValueError, "positive integer"),
    (5, TypeError, "sequence of integers"),
])
def test_bad_shapes_are_refused(shape, error, words):
    with pytest.raises(error, match=words):
        scale_bits_per_weight(shape, "channel")


def test_bad_weight_bits_and_empty_layer_list_are_refused():
    with pytest.raises(ValueError, match="bits must be between"):
        bits_per_weight((4, 8), 0, "tensor")
    with pytest.raises(ValueError, match="shapes is empty"):
        layers_bits_per_weight([], 4, "tensor")


def test_the_lab_reference_is_blocked_while_grading():
    with blocked(["scale_bits_per_weight"]), pytest.raises(ReferenceUnavailable):
        scale_bits_per_weight((4, 8), "tensor")
    with blocked(["scale_bits_per_weight"]):  # other functions of the module still work
        assert bits_per_weight((4, 8), 4, "tensor") == 5.0
