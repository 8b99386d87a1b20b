"""Tests of qlib.qat and qlib.qat_training: QAT layers, preparing the digits models, fine-tuning.

Oracles: a QAT layer's forward pass must equal the float op (``F.linear``/``F.conv2d``) applied
to weights fake-quantized by ``qlib.granularity.fake_quantize_tensor`` and inputs fake-quantized
by ``torch.fake_quantize_per_tensor_affine`` with the scale and zero point of PyTorch's own
``MovingAverageMinMaxObserver``, bit for bit; the master weight's gradient must equal the
gradient through ``torch.fake_quantize_per_channel_affine``. Batch-norm folding is checked
against the unfolded pretrained model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qlib.data import load_digits
from qlib.granularity import fake_quantize_tensor
from qlib.lsq import LSQQuantizer
from qlib.models import accuracy, load_pretrained
from qlib.observers import MinMaxObserver
from qlib.pact import PACTQuantizer
from qlib.qat import (
    ActivationFakeQuantize,
    QATConv2d,
    QATLinear,
    WeightFakeQuantize,
    calibrate_qat,
    prepare_qat,
    qat_layers,
    to_integer_model,
)
from qlib.qat_training import ptq_accuracy, train_qat


@pytest.fixture(scope="module")
def digits():
    return load_digits("train"), load_digits("test")


def _torch_observer(ao, bits, batches):
    obs = ao.MovingAverageMinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=2**bits - 1)
    for b in batches:
        obs(b)
    scale, zp = obs.calculate_qparams()
    return scale.to(torch.float32), zp.to(torch.int32)


def _batches(shape, seed, n=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.relu(torch.randn(shape, generator=gen) * (1 + i)) for i in range(n)]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("w_bits, a_bits, granularity", [(8, 8, "channel"), (4, 4, "channel"), (4, 8, "tensor"),
                                                       (2, 2, "channel")])
def test_linear_forward_equals_fake_quantized_float_op(ao, w_bits, a_bits, granularity):
    torch.manual_seed(0)
    layer = nn.Linear(20, 7)
    qat = QATLinear.from_float(layer, WeightFakeQuantize(w_bits, granularity), ActivationFakeQuantize(a_bits))
    batches = _batches((16, 20), seed=w_bits)
    qat.train()
    for b in batches:
        qat(b)
    qat.eval()
    x = batches[-1] * 1.3
    scale, zp = _torch_observer(ao, a_bits, batches)
    x_hat = torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 2**a_bits - 1)
    w_hat = fake_quantize_tensor(layer.weight.detach(), w_bits, granularity, 0)
    assert torch.equal(qat(x), F.linear(x_hat, w_hat, layer.bias))
    assert torch.equal(qat.quantized_weight(), w_hat)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("w_bits, a_bits", [(8, 8), (3, 4)])
def test_conv_forward_equals_fake_quantized_float_op(ao, w_bits, a_bits):
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=1)
    qat = QATConv2d.from_float(conv, WeightFakeQuantize(w_bits), ActivationFakeQuantize(a_bits)).train()
    batches = _batches((4, 3, 6, 6), seed=a_bits)
    for b in batches:
        qat(b)
    qat.eval()
    scale, zp = _torch_observer(ao, a_bits, batches)
    x_hat = torch.fake_quantize_per_tensor_affine(batches[0], scale, zp, 0, 2**a_bits - 1)
    w_hat = fake_quantize_tensor(conv.weight.detach(), w_bits, "channel", 0)
    assert torch.equal(qat(batches[0]), F.conv2d(x_hat, w_hat, conv.bias, padding=1))


def test_master_weight_gradient_equals_torch_per_channel_fake_quant():
    torch.manual_seed(2)
    layer = nn.Linear(12, 6)
    qat = QATLinear.from_float(layer, WeightFakeQuantize(3), None)
    x = torch.randn(8, 12)
    upstream = torch.randn(8, 6)
    (g_ours,) = torch.autograd.grad(qat(x), qat.weight, upstream)
    w = layer.weight.detach().clone().requires_grad_()
    scale = (w.detach().abs().amax(dim=1) / 3).to(torch.float32)
    w_hat = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(6, dtype=torch.int32), 0, -4, 3)
    (g_theirs,) = torch.autograd.grad(F.linear(x, w_hat, layer.bias), w, upstream)
    assert torch.equal(g_ours, g_theirs)
    assert qat.weight is not layer.weight and torch.equal(qat.weight, layer.weight)  # an FP32 master copy


def test_input_gradient_is_masked_where_the_range_clamps():
    q = ActivationFakeQuantize(4, MinMaxObserver(4)).train()
    q(torch.tensor([0.0, 1.0]))  # range [0, 1]
    q.eval()
    x = torch.tensor([-0.5, 0.2, 0.9, 1.02, 1.2], requires_grad=True)
    (g,) = torch.autograd.grad(q(x).sum(), x)
    assert g.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]   # 1.02 * 15 = 15.3 still rounds to 15


def test_range_moves_in_training_and_freezes_in_eval():
    q = ActivationFakeQuantize(8).train()
    q(torch.tensor([0.0, 1.0]))
    q(torch.tensor([0.0, 3.0]))
    assert q.observer.rmax.item() == pytest.approx(1.0 + 0.01 * 2.0)
    q.eval()
    q(torch.tensor([0.0, 100.0]))
    assert q.observer.rmax.item() == pytest.approx(1.02)


def test_unobserved_activation_quantizer_says_so():
    with pytest.raises(RuntimeError, match="calibration"):
        ActivationFakeQuantize(8).eval()(torch.ones(3))


def test_one_bit_weights_are_binary_per_channel():
    w = torch.tensor([[0.5, -0.2, 0.0], [-1.0, 0.25, 0.5]])
    out = WeightFakeQuantize(1)(w)
    assert out.tolist() == [[0.5, -0.5, 0.5], [-1.0, 1.0, 1.0]]


def test_prepare_folds_batchnorm_and_keeps_the_model(digits):
    train, test = digits
    cnn = load_pretrained("cnn")
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    qat = prepare_qat(cnn, 16, 16, observer=MinMaxObserver)
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qat.modules())
    assert [name for name, _ in qat_layers(qat)] == ["conv1", "conv2", "fc1", "fc2"]
    assert isinstance(qat.conv1, QATConv2d) and isinstance(qat.fc2, QATLinear) and qat.training
    calibrate_qat(qat, train)  # min-max input ranges over the whole training set
    with torch.no_grad():
        ref = cnn.eval()(test.images)
        got = qat(test.images)
    # folded and quantized to 16 bits: FP32 up to 16-bit rounding (and a few test inputs beyond the range)
    assert torch.allclose(got, ref, atol=1e-4 * ref.abs().max().item())
    assert accuracy(qat, test) == accuracy(cnn, test)


@pytest.mark.parametrize("method, weight_type, act_type", [("ste", WeightFakeQuantize, ActivationFakeQuantize),
                                                          ("lsq", LSQQuantizer, LSQQuantizer),
                                                          ("pact", WeightFakeQuantize, PACTQuantizer)])
def test_methods_choose_their_quantizers(method, weight_type, act_type):
    qat = prepare_qat(load_pretrained("mlp"), 4, 4, method)
    layers = qat_layers(qat)
    assert len(layers) == 3
    for _, layer in layers:
        assert isinstance(layer.weight_quantizer, weight_type) and isinstance(layer.input_quantizer, act_type)
    assert isinstance(prepare_qat(load_pretrained("mlp"), 4, None).fc1.input_quantizer, nn.Identity)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(w_bits=0, a_bits=8), ValueError, "bits"),
    (dict(w_bits=4, a_bits=33), ValueError, "bits"),
    (dict(w_bits=4, a_bits=4, method="dorefa"), ValueError, "method"),
    (dict(w_bits=4, a_bits=4, observer=nn.Identity), TypeError, "Observer"),
])
def test_prepare_refuses_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        prepare_qat(load_pretrained("cnn"), **kwargs)


def test_ptq_at_eight_bits_keeps_fp32_accuracy(digits):
    train, test = digits
    cnn = load_pretrained("cnn")
    assert ptq_accuracy(cnn, train, test, 8, 8) == accuracy(cnn, test)


def test_training_is_seeded_logged_and_recovers_what_ptq_loses(digits):
    train, test = digits
    cnn = load_pretrained("cnn")
    lines = []
    runs = []
    for _ in range(2):
        qat = prepare_qat(cnn, 2, 2, "ste")
        runs.append((train_qat(qat, train, test, epochs=2, lr=1e-3, seed=3, log=lines.append), qat.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(v, runs[1][1][k]) for k, v in runs[0][1].items())
    assert len(lines) == 4 and lines[0].startswith("epoch 1/2: loss")
    ptq = ptq_accuracy(cnn, train, test, 2, 2)
    assert runs[0][0] > ptq + 0.15, (ptq, runs[0][0])


def test_trained_qat_model_converts_to_the_integer_model(digits):
    train, test = digits
    qat = prepare_qat(load_pretrained("cnn"), 8, 8, "ste")
    qat_acc = train_qat(qat, train, test, epochs=1, log=None)
    integer = to_integer_model(qat, train.images)
    assert [layer.name for layer in integer.layers] == ["conv1", "conv2", "fc1", "fc2"]
    # the conv1 input range is the one QAT learned, not a new calibration
    assert integer.input_qparams.scale == pytest.approx(float(qat.conv1.input_quantizer.qparams()[0]), rel=1e-6)
    with torch.no_grad():
        agree = (integer(test.images).argmax(1) == qat.eval()(test.images).argmax(1)).double().mean().item()
    assert agree >= 0.99
    assert abs(accuracy(integer, test) - qat_acc) <= 2 / len(test)


def test_lsq_models_do_not_convert(digits):
    train, _ = digits
    qat = calibrate_qat(prepare_qat(load_pretrained("cnn"), 8, 8, "lsq"), train, n_batches=1)
    with pytest.raises(ValueError, match="per-channel min-max"):
        to_integer_model(qat, train.images[:64])


def test_low_bit_qat_model_converts_with_eight_bit_logits(digits):
    # QAT never quantizes the logits: at 4 bits their 16 levels would tie the top classes
    train, test = digits
    qat = prepare_qat(load_pretrained("cnn"), 4, 4, "ste")
    train_qat(qat, train, test, epochs=2, log=None)
    integer = to_integer_model(qat, train.images)
    assert (integer.output_qparams.qmin, integer.output_qparams.qmax) == (0, 255)
    assert [layer.output.qmax for layer in integer.layers[:3]] == [15, 15, 15]  # hidden activations: 4 bits
    with torch.no_grad():
        agree = (integer(test.images).argmax(1) == qat.eval()(test.images).argmax(1)).double().mean().item()
    assert agree >= 0.99, agree


MIXED_BITS = {"conv1": 4, "conv2": 3, "fc1": 2, "fc2": 8}


def test_mixed_weight_bits_give_each_layer_its_own():
    qat = prepare_qat(load_pretrained("cnn"), MIXED_BITS, 8, "ste")
    for name, layer in qat_layers(qat):
        assert layer.weight_quantizer.bits == MIXED_BITS[name]
        with torch.no_grad():
            w_hat = layer.weight_quantizer(layer.weight).flatten(1)
        # b bits, symmetric narrow range: at most 2**b - 1 levels in each output channel
        levels = max(len(torch.unique(row)) for row in w_hat)
        assert levels <= 2 ** MIXED_BITS[name] - 1, (name, levels)
    assert max(len(torch.unique(row)) for row in qat.fc1.weight_quantizer(qat.fc1.weight).detach()) == 3


@pytest.mark.parametrize("bits, words", [({"conv1": 4, "conv2": 4, "fc1": 4}, "missing: fc2"),
                                         ({**MIXED_BITS, "fc3": 4}, "not a layer: fc3"),
                                         ({**MIXED_BITS, "fc1": 0}, "bits")])
def test_mixed_weight_bits_must_name_every_layer(bits, words):
    with pytest.raises(ValueError, match=words):
        prepare_qat(load_pretrained("cnn"), bits, 8)


def test_mixed_precision_qat_model_converts_with_each_layers_bits(digits):
    train, test = digits
    qat = prepare_qat(load_pretrained("cnn"), MIXED_BITS, 8, "ste")
    train_qat(qat, train, test, epochs=1, log=None)
    integer = to_integer_model(qat, train.images)
    for layer in integer.layers:
        qmax = 2 ** (MIXED_BITS[layer.name] - 1) - 1
        assert int(layer.q_weight.abs().max()) <= qmax, layer.name
    with torch.no_grad():
        agree = (integer(test.images).argmax(1) == qat.eval()(test.images).argmax(1)).double().mean().item()
    assert agree >= 0.99, agree
