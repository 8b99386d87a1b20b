"""Tests of the granularity half of qlib.weights: one layer at any granularity, schemes, the sweep.

Oracles: PyTorch's fake-quantization kernels with scales from its observers (per tensor, per
channel, and per channel of the matrix reshaped so that every row is one group), each short
last group quantized on its own by torch's per-tensor observer and kernel, the OCP MX
conversion of ``qlib.microscaling`` on rows padded with numpy, and counts worked by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlib.data import load_digits
from qlib.microscaling import MXFP4_E2M1, MXFP6_E2M3, MXFP8_E4M3, MXINT8, mx_fake_quantize
from qlib.models import accuracy, load_pretrained
from qlib.weights import (
    WeightScheme,
    fake_quantize_model_weights,
    fake_quantize_weight,
    fake_quantize_weights,
    granularity_sweep,
    quantized_layers,
    weight_matrix,
)

from tests.test_granularity import torch_fake_quantize


def _weight(shape, seed):
    """A weight whose output channels differ in range by up to 100x."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    spread = torch.pow(10.0, 2 * torch.rand(shape[0], generator=gen) - 1)  # 0.1 .. 10
    return w * spread.reshape(-1, *[1] * (len(shape) - 1))


def _torch_symmetric(x, bits, ao, axis=None):
    """torch's symmetric fake quantization at ``bits``: per tensor, or per channel along ``axis`` (rows: axis 0)."""
    qmax = 2 ** (bits - 1) - 1
    return torch_fake_quantize(ao, x, -qmax - 1, qmax, symmetric=True, axis=axis, observed=(-qmax, qmax))


SHAPES = [(16, 1, 3, 3), (32, 16, 3, 3), (64, 512), (10, 64), (6, 40)]


@pytest.mark.silence_ao
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_per_tensor_and_per_channel_vs_torch(ao, shape, bits):
    w = _weight(shape, seed=bits)
    assert torch.equal(fake_quantize_weight(w, bits, "tensor"), _torch_symmetric(w, bits, ao))
    expected = _torch_symmetric(w.reshape(shape[0], -1), bits, ao, axis=0).reshape(shape)
    assert torch.equal(fake_quantize_weight(w, bits, "channel"), expected)


@pytest.mark.silence_ao
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape, group_size", [((64, 512), 32), ((64, 512), 128), ((32, 16, 3, 3), 16),
                                               ((10, 64), 64), ((8, 96), 8)])
def test_groups_that_divide_the_row_vs_torch_per_channel_of_the_reshaped_matrix(ao, shape, group_size, bits):
    w = _weight(shape, seed=10 + bits)
    expected = _torch_symmetric(w.reshape(-1, group_size), bits, ao, axis=0).reshape(shape)
    assert torch.equal(fake_quantize_weight(w, bits, "group", group_size), expected)


@pytest.mark.silence_ao
@pytest.mark.parametrize("shape, group_size", [((16, 1, 3, 3), 32), ((32, 16, 3, 3), 32), ((6, 40), 16),
                                               ((5, 7), 3)])
def test_a_short_last_group_is_quantized_on_its_own(ao, shape, group_size):
    bits = 3
    w = _weight(shape, seed=20)
    got = weight_matrix(fake_quantize_weight(w, bits, "group", group_size))
    rows = weight_matrix(w)
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], group_size):
            piece = rows[r, start:start + group_size]
            assert torch.equal(got[r, start:start + group_size], _torch_symmetric(piece, bits, ao))


def _numpy_padded_mx(w2, element, block=32):
    pad = -w2.shape[1] % block
    padded = np.pad(w2.numpy().astype(np.float64), ((0, 0), (0, pad)))
    return mx_fake_quantize(padded, element, block)[:, :w2.shape[1]]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("element", [MXFP4_E2M1, MXFP6_E2M3, MXFP8_E4M3, MXINT8])
def test_mx_elements_vs_the_microscaling_module(shape, element):
    w = _weight(shape, seed=30)
    expected = _numpy_padded_mx(weight_matrix(w), element)
    got = weight_matrix(fake_quantize_weight(w, element.bits, "mx", element=element))
    assert np.array_equal(got.double().numpy(), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_mxint8_blocks_are_ocp_mxint8(shape):
    w = _weight(shape, seed=31)
    expected = _numpy_padded_mx(weight_matrix(w), MXINT8)
    assert np.array_equal(weight_matrix(fake_quantize_weight(w, 8, "mx")).double().numpy(), expected)


def test_mxint_blocks_keep_at_most_2_to_the_bits_minus_1_levels_per_block():
    w = _weight((8, 64), seed=32)
    for bits in (2, 3, 4):
        w_hat = fake_quantize_weight(w, bits, "mx").reshape(-1, 32)
        for block in w_hat:
            assert len(torch.unique(block)) <= 2 ** bits - 1


def test_weight_matrix_flattens_everything_but_the_output_channels():
    w = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    assert weight_matrix(w).shape == (2, 12)
    assert torch.equal(weight_matrix(w)[1], w[1].flatten())
    with pytest.raises(ValueError, match="output-channel axis"):
        weight_matrix(torch.ones(5))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"granularity": "row"}, ValueError, "granularity must be one of"),
    ({"granularity": "group"}, ValueError, "needs a group_size"),
    ({"granularity": "channel", "group_size": 8}, ValueError, "only used with"),
    ({"granularity": "group", "group_size": 0}, ValueError, "group_size must be at least 1"),
    ({"granularity": "channel", "element": MXFP4_E2M1}, ValueError, "only used with granularity 'mx'"),
    ({"granularity": "mx", "element": MXFP8_E4M3}, ValueError, "have 8 bits, not 4"),
    ({"granularity": "mx", "bits": 1}, ValueError, "at least 2 bits"),
    ({"granularity": "tensor", "bits": 0}, ValueError, "bits must be between"),
])
def test_bad_arguments_are_refused(kwargs, error, words):
    kwargs = {"bits": 4} | kwargs
    with pytest.raises(error, match=words):
        fake_quantize_weight(torch.ones(4, 8), **kwargs)


def test_nan_weights_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        fake_quantize_weight(torch.tensor([[1.0, float("nan")]]), 4, "channel")


# --- whole models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn():
    return load_pretrained("cnn")


@pytest.fixture(scope="module")
def test_set():
    return load_digits("test")


def test_model_copy_changes_only_the_layer_weights(cnn):
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    quantized = fake_quantize_model_weights(cnn, 3, WeightScheme("g32", "group", 32, 16))
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    weights = {f"{name}.weight" for name, _ in quantized_layers(cnn)}
    for key, value in quantized.state_dict().items():
        assert torch.equal(value, before[key]) != (key in weights), key


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_tensor_and_channel_schemes_agree_with_the_chapter_3_function(cnn, bits):
    for granularity in ("tensor", "channel"):
        a = fake_quantize_weights(cnn, bits, granularity).state_dict()
        b = fake_quantize_model_weights(cnn, bits, WeightScheme(granularity, granularity)).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_groups_spanning_every_row_are_per_channel(cnn):
    # every layer of the CNN has K <= 512: a group of 512 is the whole (padded) row
    a = fake_quantize_model_weights(cnn, 3, WeightScheme("g512", "group", 512)).state_dict()
    b = fake_quantize_model_weights(cnn, 3, WeightScheme("channel", "channel")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sweep_rows_by_hand(cnn, test_set):
    schemes = [WeightScheme("tensor", "tensor"), WeightScheme("g32 fp16", "group", 32, 16),
               WeightScheme("mxint", "mx"), WeightScheme("mxfp4", "mx", element=MXFP4_E2M1)]
    rows = granularity_sweep(cnn, test_set, [2, 8], schemes)
    assert [(r["scheme"], r["bits"]) for r in rows] == [("tensor", 2), ("tensor", 8), ("g32 fp16", 2),
                                                        ("g32 fp16", 8), ("mxint", 2), ("mxint", 8),
                                                        ("mxfp4", 4)]
    n = 144 + 4608 + 32768 + 640
    by_key = {(r["scheme"], r["bits"]): r for r in rows}
    assert by_key["tensor", 8]["bits_per_weight"] == 8 + 4 * 32 / n
    assert by_key["g32 fp16", 2]["bits_per_weight"] == 2 + 1220 * 16 / n
    assert by_key["mxfp4", 4]["bits_per_weight"] == 4 + 1220 * 8 / n
    # accuracy and error measured independently of the sweep
    model = fake_quantize_model_weights(cnn, 2, schemes[1])
    assert by_key["g32 fp16", 2]["accuracy"] == accuracy(model, test_set)
    num = sum(float(((a.weight - b.weight).detach().double() ** 2).sum())
              for (_, a), (_, b) in zip(quantized_layers(model), quantized_layers(cnn)))
    den = sum(float((b.weight.detach().double() ** 2).sum()) for _, b in quantized_layers(cnn))
    assert math.isclose(by_key["g32 fp16", 2]["relative_error"], num / den, rel_tol=1e-12)
    # at 8 bits every scheme keeps the float32 accuracy within one test image
    fp32 = accuracy(cnn, test_set)
    for r in rows:
        if r["bits"] == 8:
            assert abs(r["accuracy"] - fp32) <= 1 / len(test_set) + 1e-12


def test_sweep_is_deterministic(cnn, test_set):
    schemes = [WeightScheme("channel", "channel"), WeightScheme("mxint", "mx")]
    assert granularity_sweep(cnn, test_set, [3], schemes) == granularity_sweep(cnn, test_set, [3], schemes)
