"""Tests of the MobileNet-style digits model (qlib.models.DepthwiseDigitsCNN) and its checkpoint.

The page "When per-tensor quantization fails" (book/04b_depthwise_failure.md) rests on three
measured facts, checked here with PyTorch's own tools as the oracle (torch.nn.utils.fusion for
batch-norm folding, torch.fake_quantize_per_tensor_affine / _per_channel_affine for the 8-bit
weights, accuracy counted from the logits): FP32 accuracy 99.4%, per-tensor 8-bit weights of the
folded model 39.7%, per-channel 8-bit weights 99.4%. The margins below are wide enough for another
platform's float rounding, narrow enough that the page's story cannot silently stop being true.
"""
from __future__ import annotations

import copy
import hashlib

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qlib.data import load_digits
from qlib.models import (
    DEPTHWISE_WIDENED_CHANNEL,
    DEPTHWISE_WIDENING,
    DepthwiseDigitsCNN,
    checkpoint_path,
    depthwise_widening,
    load_pretrained,
    rescale_depthwise_channels,
)

from tests import load_script

#: The depthwise CNN's (convolution, batch norm) pairs, read off its definition by hand.
DEPTHWISE_PAIRS = [("conv1", "bn1"), ("dw1", "bn2"), ("pw1", "bn3"), ("dw2", "bn4"), ("pw2", "bn5")]
#: sha256 of the shipped state (names and float32 bytes, in state-dict order), recorded once from
#: ``python scripts/train_depthwise.py``. Retraining with other settings changes it: update it then.
SHIPPED_STATE_SHA256 = "dc024112cf7130756d89fa993168b0d42ed0a4ee29aa2159c463ada06321396a"


@pytest.fixture(scope="module")
def test_set():
    return load_digits("test")


@pytest.fixture(scope="module")
def model():
    return load_pretrained("depthwise")


def _accuracy(model, data) -> float:
    with torch.no_grad():
        return (model(data.images).argmax(dim=1) == data.labels).double().mean().item()


def _torch_folded(model):
    """Every batch norm folded into its convolution by PyTorch's own fusion."""
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in DEPTHWISE_PAIRS:
        fused = fuse_conv_bn_eval(getattr(folded, conv_name), getattr(folded, bn_name))
        setattr(folded, conv_name, fused)
        setattr(folded, bn_name, nn.Identity())
    return folded


def _torch_int8_weights(model, granularity: str):
    """Symmetric signed 8-bit weights (scale max|w| / 127, round half to even) by torch's kernels.

    ``granularity``: ``"channel"``, one scale per output channel, or ``"tensor"``, one per weight.
    """
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for module in quantized.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                w = module.weight
                if granularity == "channel":
                    scale = w.reshape(w.shape[0], -1).abs().amax(dim=1) / 127
                    q = torch.fake_quantize_per_channel_affine(
                        w, scale, torch.zeros(w.shape[0], dtype=torch.int32), 0, -128, 127)
                else:
                    q = torch.fake_quantize_per_tensor_affine(w, (w.abs().max() / 127).item(), 0, -128, 127)
                w.copy_(q)
    return quantized


def _state_sha256(model) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


# --- the checkpoint ---------------------------------------------------------------------------

def test_checkpoint_is_shipped_small_and_loads_fresh(test_set):
    path = checkpoint_path("depthwise")
    assert path.is_file() and path.suffix == ".pt" and path.stat().st_size < 100_000
    first = load_pretrained("depthwise")
    assert isinstance(first, DepthwiseDigitsCNN) and not first.training
    assert 3_000 < sum(p.numel() for p in first.parameters()) < 6_000     # "about 4k parameters"
    with torch.no_grad():
        for p in first.parameters():
            p.zero_()
    again = load_pretrained("depthwise")
    assert _accuracy(again, test_set) > 0.9


def test_shipped_state_is_the_recorded_one():
    assert _state_sha256(load_pretrained("depthwise")) == SHIPPED_STATE_SHA256


def test_depthwise_layers_are_depthwise():
    model = load_pretrained("depthwise")
    for name, channels in (("dw1", 16), ("dw2", 32)):
        layer = getattr(model, name)
        assert layer.groups == layer.in_channels == layer.out_channels == channels
        assert tuple(layer.weight.shape) == (channels, 1, 3, 3)
    assert tuple(model.pw1.weight.shape) == (32, 16, 1, 1) and tuple(model.pw2.weight.shape) == (64, 32, 1, 1)


# --- the three numbers of the page ------------------------------------------------------------

def test_fp32_accuracy(model, test_set):
    assert _accuracy(model, test_set) >= 0.99
    assert _accuracy(_torch_folded(model), test_set) == _accuracy(model, test_set)


def test_per_tensor_int8_fails(model, test_set):
    fp32 = _accuracy(model, test_set)
    per_tensor = _accuracy(_torch_int8_weights(_torch_folded(model), "tensor"), test_set)
    assert per_tensor <= fp32 - 0.40, f"per-tensor int8 {per_tensor:.4f} is not 40 points below FP32 {fp32:.4f}"


def test_per_channel_int8_recovers(model, test_set):
    fp32 = _accuracy(model, test_set)
    per_channel = _accuracy(_torch_int8_weights(_torch_folded(model), "channel"), test_set)
    assert abs(per_channel - fp32) <= 0.01, f"per-channel int8 {per_channel:.4f} against FP32 {fp32:.4f}"


def test_the_spread_sits_in_dw1(model, test_set):
    """Per tensor, dw1 alone costs most of the accuracy; the trained network before the rescaling does not fail."""
    folded = _torch_folded(model)
    ranges = folded.dw1.weight.detach().reshape(16, -1).abs().amax(dim=1)
    assert int(ranges.argmax()) == DEPTHWISE_WIDENED_CHANNEL and (ranges.max() / ranges.min()).item() > 100
    dw1_only = copy.deepcopy(folded)
    dw1_only.dw1 = _torch_int8_weights(nn.Sequential(folded.dw1), "tensor")[0]
    assert _accuracy(dw1_only, test_set) <= _accuracy(model, test_set) - 0.40
    trained = rescale_depthwise_channels(model, 1 / depthwise_widening())
    trained_folded = _torch_folded(trained)
    spread = trained_folded.dw1.weight.detach().reshape(16, -1).abs().amax(dim=1)
    assert int(spread.argmax()) == DEPTHWISE_WIDENED_CHANNEL   # the rule the training script states
    assert (spread.max() / spread.min()).item() < 10
    trained_per_tensor = _accuracy(_torch_int8_weights(trained_folded, "tensor"), test_set)
    assert trained_per_tensor >= _accuracy(model, test_set) - 0.01


# --- the rescaling ----------------------------------------------------------------------------

def test_rescaling_is_bit_exact_with_powers_of_two(model, test_set):
    gen = torch.Generator().manual_seed(0)
    rho = torch.pow(2.0, torch.randint(-6, 7, (16,), generator=gen).float())
    rescaled = rescale_depthwise_channels(model, rho)
    with torch.no_grad():
        assert torch.equal(rescaled(test_set.images), model(test_set.images))
        assert torch.equal(rescaled.dw1.weight, model.dw1.weight * rho[:, None, None, None])
        assert torch.equal(rescaled.bn1.weight * rho, model.bn1.weight)
    assert rescaled is not model


def test_rescaling_leaves_the_model_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rescale_depthwise_channels(model, torch.full((16,), 4.0))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_widening_is_one_channel_times_64():
    rho = depthwise_widening()
    assert DEPTHWISE_WIDENING == 64.0 and rho[DEPTHWISE_WIDENED_CHANNEL] == 64.0
    assert int((rho != 1).sum()) == 1


def test_rescaling_refuses_bad_input(model):
    with pytest.raises(ValueError, match="one factor per dw1 channel"):
        rescale_depthwise_channels(model, torch.ones(15))
    with pytest.raises(ValueError, match="positive and finite"):
        rescale_depthwise_channels(model, torch.tensor([1.0] * 15 + [0.0]))
    with pytest.raises(ValueError, match="positive and finite"):
        rescale_depthwise_channels(model, torch.tensor([1.0] * 15 + [float("inf")]))
    with pytest.raises(TypeError, match="DepthwiseDigitsCNN"):
        rescale_depthwise_channels(load_pretrained("cnn"), torch.ones(16))


# --- the training script ----------------------------------------------------------------------

def _training_script():
    return load_script("train_depthwise")


def test_training_is_deterministic():
    script = _training_script()
    torch.set_num_threads(1)
    first, second = script.train(max_steps=8), script.train(max_steps=8)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    other_seed = script.train(seed=1, max_steps=8)
    assert not torch.equal(other_seed.dw1.weight, first.dw1.weight)


def test_unknown_model_names_list_the_depthwise_model():
    with pytest.raises(ValueError, match="depthwise"):
        load_pretrained("mobilenet")
