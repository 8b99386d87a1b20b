"""Tests of qlib.data, qlib.models and qlib.weights: the digits split, the pretrained models,
and fake-quantizing a whole model's weights.

Oracles: scikit-learn's raw digits, accuracy counted here from the logits, a fingerprint of
the split recorded once, and PyTorch's observers and fake-quant kernels for the weights.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

import qlib.models
from qlib.data import load_digits
from qlib.models import DigitsCNN, DigitsMLP, accuracy, checkpoint_path, load_pretrained
from qlib.weights import fake_quantize_weights, quantized_layers

MODELS = ["cnn", "mlp"]


@pytest.fixture(scope="module")
def test_set():
    return load_digits("test")


def _accuracy_by_hand(model, data):
    with torch.no_grad():
        predicted = model(data.images).argmax(dim=1)
    return (predicted == data.labels).double().mean().item()


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- the data -------------------------------------------------------------------------------

def test_split_sizes_and_types():
    train, test = load_digits("train"), load_digits("test")
    assert (len(train), len(test)) == (1437, 360)
    for split, n in ((train, 1437), (test, 360)):
        assert split.images.shape == (n, 1, 8, 8) and split.images.dtype == torch.float32
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
    assert load_digits().labels.shape == (360,)  # the default split is "test"


def test_pixels_are_in_unit_interval():
    for split in ("train", "test"):
        images = load_digits(split).images
        assert images.min().item() == 0.0 and images.max().item() == 1.0
        assert torch.equal(images * 16, torch.round(images * 16))  # raw pixels 0..16, divided by 16


def test_split_is_fixed():
    a, b = load_digits("test"), load_digits("test")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    # fingerprint recorded once (scikit-learn split, seed 0): the same split on every machine
    assert a.labels[:20].tolist() == [7, 6, 3, 7, 7, 3, 2, 8, 9, 3, 2, 6, 6, 4, 5, 8, 1, 3, 5, 6]
    assert load_digits("train").labels[:10].tolist() == [3, 9, 1, 3, 1, 9, 4, 4, 2, 8]


def test_split_is_stratified():
    from sklearn.datasets import load_digits as sklearn_digits

    _, y = sklearn_digits(return_X_y=True)
    total = np.bincount(y, minlength=10)
    test_counts = torch.bincount(load_digits("test").labels, minlength=10).numpy()
    train_counts = torch.bincount(load_digits("train").labels, minlength=10).numpy()
    np.testing.assert_array_equal(test_counts + train_counts, total)
    assert np.all(np.abs(test_counts - 0.2 * total) <= 1), test_counts


def test_split_is_a_partition_of_the_raw_data():
    from sklearn.datasets import load_digits as sklearn_digits

    x, _ = sklearn_digits(return_X_y=True)
    ours = (torch.cat([load_digits("train").images, load_digits("test").images]).reshape(-1, 64).double() * 16).numpy()
    sort_rows = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (rows in lexicographic order)
    assert np.array_equal(sort_rows(ours), sort_rows(x.astype(np.float64)))


def test_batches_cover_the_split_in_order(test_set):
    images = torch.cat([b for b, _ in test_set.batches(100)])
    labels = torch.cat([lab for _, lab in test_set.batches(100)])
    assert [len(lab) for _, lab in test_set.batches(100)] == [100, 100, 100, 60]
    assert torch.equal(images, test_set.images) and torch.equal(labels, test_set.labels)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split must be"):
        load_digits("validation")


# --- the pretrained models ------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("cnn", DigitsCNN), ("mlp", DigitsMLP)])
def test_pretrained_accuracy(name, cls, test_set):
    model = load_pretrained(name)
    assert isinstance(model, cls) and not model.training
    acc = _accuracy_by_hand(model, test_set)
    assert acc >= 0.97, f"{name}: test accuracy {acc:.4f} < 0.97"
    assert accuracy(model, test_set) == pytest.approx(acc, abs=1e-12)


def test_cnn_parameter_count():
    assert 30_000 < sum(p.numel() for p in DigitsCNN().parameters()) < 45_000  # "about 38k"


@pytest.mark.parametrize("name", MODELS)
def test_load_pretrained_returns_a_fresh_model(name, test_set):
    first = load_pretrained(name)
    reference = _state(first)
    assert first is not load_pretrained(name)
    with torch.no_grad():
        for p in first.parameters():
            p.zero_()
    for buf in first.buffers():
        buf.zero_()
    first.train()
    second = load_pretrained(name)
    assert not second.training
    for key, value in second.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert _accuracy_by_hand(second, test_set) >= 0.97


@pytest.mark.parametrize("name", MODELS)
def test_load_pretrained_is_fast(name):
    qlib.models._state_dict.cache_clear()  # time a cold load from disk, not the cache
    start = time.perf_counter()
    load_pretrained(name)
    assert time.perf_counter() - start < 0.5


def test_checkpoints_exist_and_unknown_names_are_refused():
    for name in MODELS:
        assert checkpoint_path(name).is_file()
    with pytest.raises(ValueError, match="model name must be one of"):
        load_pretrained("resnet")


# --- fake-quantized weights -----------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("name", MODELS)
def test_fake_quantize_weights_leaves_the_original_untouched(name, granularity):
    model = load_pretrained(name)
    before = _state(model)
    quantized = fake_quantize_weights(model, 4, granularity)
    assert quantized is not model
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # ... while the copy's layer weights did change, and nothing else did
    changed = {k for k, v in quantized.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{layer}.weight" for layer, _ in quantized_layers(model)}


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("name", MODELS)
def test_eight_bit_weights_keep_accuracy(name, granularity, test_set):
    model = load_pretrained(name)
    fp32 = _accuracy_by_hand(model, test_set)
    int8 = _accuracy_by_hand(fake_quantize_weights(model, 8, granularity), test_set)
    assert abs(int8 - fp32) <= 0.01, f"{name} granularity={granularity}: {fp32:.4f} -> {int8:.4f}"


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("name", MODELS)
def test_quantized_weights_take_at_most_2_to_the_bits_values(name, bits):
    model = load_pretrained(name)
    layers = dict(quantized_layers(model))
    assert len(layers) == (4 if name == "cnn" else 3)
    per_tensor = dict(quantized_layers(fake_quantize_weights(model, bits, "tensor")))
    per_channel = dict(quantized_layers(fake_quantize_weights(model, bits, "channel")))
    for layer_name, layer in layers.items():
        w = per_tensor[layer_name].weight
        assert torch.unique(w).numel() <= 2**bits, layer_name
        w = per_channel[layer_name].weight
        counts = [torch.unique(w[c]).numel() for c in range(w.shape[0])]
        assert max(counts) <= 2**bits, layer_name
        # per-channel is really per channel: the whole tensor has more levels than one channel may
        assert torch.unique(w).numel() > 2**bits, layer_name


@pytest.mark.silence_ao
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("name", MODELS)
def test_quantized_weights_bit_exact_vs_torch(ao, name, bits, granularity):
    """Symmetric signed quantization: torch observer on [-qmax, qmax], fake-quant kernel on [qmin, qmax]."""
    qmax = 2 ** (bits - 1) - 1
    model = load_pretrained(name)
    quantized = dict(quantized_layers(fake_quantize_weights(model, bits, granularity)))
    for layer_name, layer in quantized_layers(model):
        w = layer.weight.detach()
        if granularity == "channel":
            obs = ao.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                              quant_min=-qmax, quant_max=qmax)
            obs(w)
            scale, zero_point = obs.calculate_qparams()
            expected = torch.fake_quantize_per_channel_affine(w, scale, zero_point.to(torch.int32), 0,
                                                              -qmax - 1, qmax)
        else:
            obs = ao.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                    quant_min=-qmax, quant_max=qmax)
            obs(w)
            scale, zero_point = obs.calculate_qparams()
            expected = torch.fake_quantize_per_tensor_affine(w, scale, zero_point, -qmax - 1, qmax)
        assert torch.equal(quantized[layer_name].weight.detach(), expected), layer_name


def test_fake_quantize_weights_refuses_bad_bits():
    model = load_pretrained("mlp")
    with pytest.raises(ValueError, match="bits"):
        fake_quantize_weights(model, 0, granularity="tensor")
    with pytest.raises(TypeError, match="bits"):
        fake_quantize_weights(model, 4.5, granularity="channel")


def test_fake_quantize_weights_on_a_model_without_quantized_layers():
    model = nn.Sequential(nn.ReLU(), nn.Flatten())
    out = fake_quantize_weights(model, 8, granularity="channel")
    assert out is not model and isinstance(out, nn.Sequential) and len(list(out.parameters())) == 0
