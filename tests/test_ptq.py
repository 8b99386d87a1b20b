"""Tests of qlib.ptq: the pipeline against a forward pass written here with PyTorch's own
fake-quantization kernels and observers; dynamic ranges; N2D2's layer-by-layer thresholds."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qlib import calibration as cal
from qlib import ptq
from qlib.data import load_digits
from qlib.folding import fold_every_batchnorm
from qlib.models import accuracy, load_pretrained


@pytest.fixture(scope="module")
def digits():
    return load_pretrained("cnn"), load_digits("train").images[:256], load_digits("test")


def test_every_batchnorm_is_folded_and_the_outputs_stay(digits):
    model, images, _ = digits
    folded = fold_every_batchnorm(model)
    assert isinstance(folded.bn1, nn.Identity) and folded.conv1.bias is not None
    torch.testing.assert_close(folded(images), model(images), atol=1e-4, rtol=1e-5)


def _torch_weight(w, bits, granularity):
    """Symmetric signed weight fake quantization with PyTorch's kernels; scale = max|w| / qmax."""
    qmax = 2 ** (bits - 1) - 1
    if granularity == "channel":
        scale = w.abs().reshape(w.shape[0], -1).amax(dim=1) / qmax
        return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(w.shape[0], dtype=torch.int32),
                                                      0, -qmax - 1, qmax)
    return torch.fake_quantize_per_tensor_affine(w, float(w.abs().max() / qmax), 0, -qmax - 1, qmax)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("bits", [(8, 8), (4, 4)])
def test_static_min_max_model_is_pytorch_fake_quant_forward(digits, ao, bits, granularity):
    model, images, _ = digits
    wb, ab = bits
    q = ptq.quantize_static(model, images, wb, ab, granularity, calibrator="minmax")
    folded = fold_every_batchnorm(model)
    inputs = ptq.layer_inputs(folded, images)
    # activation scales: PyTorch's affine MinMaxObserver on these non-negative inputs
    a_scale = {}
    for name, x in inputs.items():
        obs = ao.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2 ** ab - 1)
        obs(x)
        scale, zp = obs.calculate_qparams()
        assert int(zp) == 0
        a_scale[name] = float(scale)
        assert torch.equal(q.get_submodule(name).input_quantizer.scale.reshape(1), scale.float().reshape(1))

    def fq(x, name):
        return torch.fake_quantize_per_tensor_affine(x, a_scale[name], 0, 0, 2 ** ab - 1)

    w = {name: _torch_weight(folded.get_submodule(name).weight.detach(), wb, granularity) for name in inputs}
    x = images
    x = torch.relu(F.conv2d(fq(x, "conv1"), w["conv1"], folded.conv1.bias, padding=1))
    x = torch.relu(F.conv2d(fq(x, "conv2"), w["conv2"], folded.conv2.bias, padding=1))
    x = F.max_pool2d(x, 2).flatten(1)
    x = torch.relu(F.linear(fq(x, "fc1"), w["fc1"], folded.fc1.bias))
    expected = F.linear(fq(x, "fc2"), w["fc2"], folded.fc2.bias)
    with torch.no_grad():
        got = q(images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_calibrator_thresholds_reach_the_quantizers(digits):
    model, images, _ = digits
    inputs = ptq.layer_inputs(fold_every_batchnorm(model), images)
    for name_cal, fn in (("mse", lambda x: cal.mse_threshold(x, 0, 15)),
                         ("percentile", lambda x: cal.percentile_threshold(x, 99.99))):
        quantizers = ptq.static_activation_quantizers(model, images, 4, name_cal)
        for name, x in inputs.items():
            assert quantizers[name].threshold == pytest.approx(fn(x), rel=1e-6)
            assert torch.equal(quantizers[name].scale, cal.threshold_scale(quantizers[name].threshold, 15))


def test_input_calibrator_replaces_only_the_first_threshold(digits):
    model, images, _ = digits
    kl = ptq.static_activation_quantizers(model, images, 4, "kl")
    mixed = ptq.static_activation_quantizers(model, images, 4, "kl", input_calibrator="minmax")
    assert mixed["conv1"].threshold == 1.0                 # pixels in [0, 1]
    assert kl["conv1"].threshold < 0.1                      # KL collapses on the 17 pixel levels
    for name in ("conv2", "fc1", "fc2"):
        assert mixed[name].threshold == kl[name].threshold


def test_a_function_can_be_the_calibrator(digits):
    model, images, test = digits
    q = ptq.quantize_static(model, images, 8, 8, calibrator=lambda x, qmin, qmax: float(x.abs().max()) / 2)
    inputs = ptq.layer_inputs(fold_every_batchnorm(model), images)
    assert q.fc1.input_quantizer.threshold == pytest.approx(float(inputs["fc1"].max()) / 2)


def test_accuracy_facts(digits):
    model, images, test = digits
    fp32 = accuracy(model, test)
    for calibrator in ("minmax", "percentile", "mse", "kl"):
        assert accuracy(ptq.quantize_static(model, images, 8, 8, "channel", calibrator), test) >= fp32 - 0.01
    assert accuracy(ptq.quantize_dynamic(model, 8, 8, "channel"), test) >= fp32 - 0.01
    # the quantized copy is not the float model: at 2 bits per tensor it loses a lot
    assert accuracy(ptq.quantize_static(model, images, 2, 2, "tensor"), test) < fp32 - 0.2


def test_dynamic_ranges_follow_each_batch():
    quantizer = ptq.DynamicActivationQuantizer(4)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert torch.equal(quantizer(x), torch.fake_quantize_per_tensor_affine(x, 0.2, 0, 0, 15))
    y = torch.tensor([-1.0, 0.5, 7.0])                      # signed: scale 7 / 7
    assert torch.equal(quantizer(y), torch.fake_quantize_per_tensor_affine(y, 1.0, 0, -8, 7))


def test_dynamic_model_uses_no_calibration(digits):
    model, images, _ = digits
    q = ptq.quantize_dynamic(model, 8, 4)
    assert all(isinstance(q.get_submodule(n).input_quantizer, ptq.DynamicActivationQuantizer)
               for n in ("conv1", "conv2", "fc1", "fc2"))
    # the same image quantized alone or in a batch with a brighter neighbour gives different logits
    with torch.no_grad():
        alone = q(images[:1])
        together = q(torch.cat([images[:1], images[1:2] * 3]))[:1]
    assert not torch.equal(alone, together)


def test_signs_are_detected_and_a_sign_change_is_refused():
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    obs = ptq.calibrate_activations(model, [torch.randn(4, 3)], 8)
    assert obs["0"].signed
    obs = ptq.calibrate_activations(model, [torch.rand(4, 3)], 8)
    assert not obs["0"].signed
    with pytest.raises(ValueError, match="non-negative in the first calibration batch"):
        ptq.calibrate_activations(model, [torch.rand(4, 3), -torch.rand(4, 3)], 8)


def test_n2d2_thresholds_are_computed_on_the_quantized_earlier_layers(digits):
    model, images, _ = digits
    q, report = ptq.quantize_n2d2(model, images, 4, 4, granularity="channel", method="mse")
    assert [r["name"] for r in report] == ["conv1", "conv2", "fc1", "fc2"]
    seen = {}
    hooks = [q.get_submodule(r["name"]).register_forward_pre_hook(
        lambda m, inp, name=r["name"]: seen.__setitem__(name, inp[0])) for r in report]
    with torch.no_grad():
        q(images)
    for h in hooks:
        h.remove()
    folded = fold_every_batchnorm(model)
    float_inputs = ptq.layer_inputs(folded, images)
    for r in report:
        assert r["beta"] == pytest.approx(cal.mse_threshold(seen[r["name"]], 0, 15), rel=1e-6)
        w = folded.get_submodule(r["name"]).weight
        torch.testing.assert_close(r["alpha"], w.abs().reshape(w.shape[0], -1).amax(dim=1))
        # weights: narrow range, w_hat = alpha / 7 * round(w / (alpha / 7))
        w_hat = q.get_submodule(r["name"]).layer.weight
        scale = cal.threshold_scale(r["alpha"], 7).reshape(-1, *([1] * (w.ndim - 1)))
        assert torch.equal(w_hat, torch.clamp(torch.round(w * torch.reciprocal(scale)), -7, 7) * scale)
    # the first input is the same in both flows; later ones differ (quantized upstream)
    assert torch.equal(seen["conv1"], float_inputs["conv1"])
    assert not torch.equal(seen["fc1"], float_inputs["fc1"])


def test_bad_input_is_refused(digits):
    model, images, _ = digits
    with pytest.raises(ValueError, match="empty"):
        ptq.quantize_static(model, images[:0])
    with pytest.raises(ValueError, match="'mse' or 'kl'"):
        ptq.quantize_n2d2(model, images, method="minmax")
    with pytest.raises(ValueError, match="bits"):
        ptq.quantize_static(model, images, act_bits=0)
