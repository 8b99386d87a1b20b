"""Tests of qlib.pytorch_flow: PyTorch's eager-mode post-training quantization of the digits CNN.

What is checked, and against what:

* the quantizable copy computes exactly what qlib.models.DigitsCNN computes (float, same weights);
* the converted model is really quantized (quint8 activations, qint8 per-channel weights, the
  fused quantized module classes) and its test accuracy is within a point of FP32;
* the input scale is the hand-worked 1/255 (images in [0, 1], min-max) and about 1/127 (the
  default qconfig's reduce_range);
* fbgemm_requantize reproduces PyTorch's own quantized Linear, LinearReLU and Conv2d on the fbgemm
  engine bit for bit (the oracle is PyTorch's kernel), rounds ties to even (hand-worked values),
  and raises clear errors.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from qlib.data import load_digits
from qlib.models import accuracy, load_pretrained
from qlib.pytorch_flow import QuantizableDigitsCNN, fbgemm_requantize, minmax_qconfig, pytorch_ptq

pytestmark = pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines,
                                reason="PyTorch's fbgemm engine is not built into this torch")


@pytest.fixture(scope="module")
def data():
    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="module")
def converted(data):
    train, _ = data
    return {name: pytorch_ptq(load_pretrained("cnn"), train.images, qconfig=name) for name in ("fbgemm", "minmax")}


def test_quantizable_copy_computes_the_same_function(data):
    _, test = data
    cnn = load_pretrained("cnn")
    copy = QuantizableDigitsCNN(cnn).eval()
    with torch.no_grad():
        assert torch.equal(copy(test.images), cnn(test.images))
    with torch.no_grad():                       # a deep copy: changing it leaves the original alone
        copy.fc2.bias.add_(1.0)
    assert not torch.equal(copy.fc2.bias, cnn.fc2.bias)


@pytest.mark.parametrize("name", ["fbgemm", "minmax"])
def test_converted_model_is_quantized_and_accurate(converted, data, name):
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d, LinearReLU
    from torch.ao.nn.quantized import Linear

    _, test = data
    model = converted[name]
    assert isinstance(model.conv1, ConvReLU2d) and isinstance(model.conv2, ConvReLU2d)
    assert isinstance(model.fc1, LinearReLU) and type(model.fc2) is Linear
    for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
        w = layer.weight()
        assert w.dtype == torch.qint8 and w.qscheme() == torch.per_channel_affine
        assert int(w.int_repr().min()) >= -128 and int(w.int_repr().max()) <= 127
    with torch.no_grad():
        q_in = model.quant(test.images)
        assert q_in.dtype == torch.quint8
        assert model.conv1(q_in).dtype == torch.quint8
    fp32 = accuracy(load_pretrained("cnn"), test)
    assert abs(accuracy(model, test) - fp32) <= 0.01


def test_minmax_input_scale_is_one_over_255(converted):
    quant = converted["minmax"].quant
    assert float(quant.scale) == pytest.approx(1 / 255, rel=1e-6) and int(quant.zero_point) == 0


def test_default_qconfig_spreads_a_range_over_seven_bits(converted):
    # reduce_range: the range [0, 1] of the images is spread over 128 codes, [0, 127] (the histogram
    # observer's range ends within a bin of 1: about 1/127, twice the 1/255 of 8 bits).
    quant = converted["fbgemm"].quant
    assert float(quant.scale) == pytest.approx(1 / 127, rel=1e-3) and int(quant.zero_point) == 0


def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fbgemm_requantize_matches_pytorch_linear(relu, per_channel):
    from torch.ao.nn.intrinsic.quantized import LinearReLU
    from torch.ao.nn.quantized import Linear

    ctx = _quiet()
    try:
        torch.backends.quantized.engine = "fbgemm"
        g = torch.Generator().manual_seed(3 + 2 * relu + per_channel)
        n, k, c = 64, 200, 48
        x = torch.randn(n, k, generator=g) * 2 + 0.5
        w = torch.randn(c, k, generator=g) * 0.1
        b = torch.randn(c, generator=g)
        s_x, z_x = 0.031, 97
        qx = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8)
        if per_channel:
            s_w = (w.abs().amax(dim=1) / 127).double()
            qw = torch.quantize_per_channel(w, s_w, torch.zeros(c, dtype=torch.long), 0, torch.qint8)
        else:
            s_w = torch.tensor(float(w.abs().max()) / 127, dtype=torch.float64)
            qw = torch.quantize_per_tensor(w, float(s_w), 0, torch.qint8)
        layer = (LinearReLU if relu else Linear)(k, c)
        layer.set_weight_bias(qw, b)
        layer.scale, layer.zero_point = 0.07, 113
        theirs = layer(qx).int_repr().long()

        acc = (qx.int_repr().long() - z_x) @ qw.int_repr().long().T      # exact, no bias
        ours = fbgemm_requantize(acc, b, s_x, s_w, 0.07, 113, relu=relu, axis=1)
    finally:
        ctx.__exit__(None, None, None)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} of {ours.numel()} outputs differ"


def test_fbgemm_requantize_matches_pytorch_conv2d():
    from torch.ao.nn.quantized import Conv2d

    ctx = _quiet()
    try:
        torch.backends.quantized.engine = "fbgemm"
        g = torch.Generator().manual_seed(11)
        x = torch.rand(4, 8, 10, 10, generator=g) * 3
        w = torch.randn(12, 8, 3, 3, generator=g) * 0.2
        b = torch.randn(12, generator=g) * 0.5
        s_x, z_x = 3 / 255, 0
        qx = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8)
        s_w = (w.abs().amax(dim=(1, 2, 3)) / 127).double()
        qw = torch.quantize_per_channel(w, s_w, torch.zeros(12, dtype=torch.long), 0, torch.qint8)
        conv = Conv2d(8, 12, 3, padding=1)
        conv.set_weight_bias(qw, b)
        conv.scale, conv.zero_point = 0.05, 128
        theirs = conv(qx).int_repr().long()
        acc = F.conv2d((qx.int_repr() - z_x).double(), qw.int_repr().double(), padding=1)
        ours = fbgemm_requantize(acc.round().long(), b, s_x, s_w, 0.05, 128, axis=1)
    finally:
        ctx.__exit__(None, None, None)
    assert torch.equal(ours, theirs), f"{int((ours != theirs).sum())} of {ours.numel()} outputs differ"


def test_fbgemm_requantize_is_float32_arithmetic():
    """Every product (q_X - Z_X) q_W of one input feature: float32 matches PyTorch, float64 would not."""
    from torch.ao.nn.quantized import Linear

    ctx = _quiet()
    try:
        torch.backends.quantized.engine = "fbgemm"
        q_x = torch.arange(256, dtype=torch.uint8).reshape(256, 1)          # every uint8 input
        q_w = torch.arange(-127, 128, dtype=torch.int8).reshape(255, 1)     # every narrow int8 weight
        s_x, z_x, s_y, z_y = 0.1, 100, 0.3, 128
        s_w = 0.01 * (1 + torch.arange(255, dtype=torch.float64) / 1000)
        bias = torch.zeros(255)
        qx = torch._make_per_tensor_quantized_tensor(q_x, s_x, z_x)
        qw = torch._make_per_channel_quantized_tensor(q_w, s_w, torch.zeros(255, dtype=torch.long), 0)
        layer = Linear(1, 255)
        layer.set_weight_bias(qw, bias)
        layer.scale, layer.zero_point = s_y, z_y
        theirs = layer(qx).int_repr().long()
    finally:
        ctx.__exit__(None, None, None)
    acc = (q_x.long() - z_x) @ q_w.long().T
    assert torch.equal(fbgemm_requantize(acc, bias, s_x, s_w, s_y, z_y), theirs)
    a = s_x * s_w                                                           # the same formula in float64
    in_float64 = torch.clamp(torch.round(acc.double() * (a / s_y)).long() + z_y, 0, 255)
    assert int((in_float64 != theirs).sum()) >= 1


def test_fbgemm_requantize_rounds_ties_to_even_by_hand():
    # S_X S_W = 0.5 and S_Y = 1: q = round(acc / 2) + Z_Y, every odd acc a tie.
    acc = torch.tensor([[1, 3, 5, 7, -3]]).T                  # one channel on axis 1
    q = fbgemm_requantize(acc, None, 1.0, 0.5, 1.0, 10, axis=1)
    assert q.reshape(-1).tolist() == [10, 12, 12, 14, 8]      # 0.5->0, 1.5->2, 2.5->2, 3.5->4, -1.5->-2
    relu = fbgemm_requantize(acc, None, 1.0, 0.5, 1.0, 10, relu=True, axis=1)
    assert relu.reshape(-1).tolist() == [10, 12, 12, 14, 10]  # the ReLU is the clamp at Z_Y
    # the float bias joins the accumulator in its units: 1.0 / 0.5 = 2 units, so 1 + 2 = 3 -> 1.5 -> 2
    assert fbgemm_requantize(torch.tensor([[1]]), torch.tensor([1.0]), 1.0, 0.5, 1.0, 0, axis=1).item() == 2


def test_fbgemm_requantize_errors():
    acc = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(TypeError, match="integer tensor"):
        fbgemm_requantize(acc.float(), None, 1.0, 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="3 channels"):
        fbgemm_requantize(acc, None, 1.0, torch.ones(4), 1.0, 0)
    with pytest.raises(ValueError, match="positive"):
        fbgemm_requantize(acc, None, 1.0, torch.tensor([1.0, 0.0, 1.0]), 1.0, 0)
    with pytest.raises(ValueError, match="outside"):
        fbgemm_requantize(acc, None, 1.0, 1.0, 1.0, 300)
    with pytest.raises(ValueError, match="axis"):
        fbgemm_requantize(acc, None, 1.0, 1.0, 1.0, 0, axis=2)


def test_pytorch_ptq_errors(data):
    train, _ = data
    with pytest.raises(TypeError, match="DigitsCNN"):
        pytorch_ptq(load_pretrained("mlp"), train.images)
    with pytest.raises(ValueError, match="qconfig"):
        pytorch_ptq(load_pretrained("cnn"), train.images, qconfig="histogram")
    with pytest.raises(ValueError, match="shape"):
        pytorch_ptq(load_pretrained("cnn"), train.images.flatten(1))
    with pytest.raises(ValueError, match="engine"):
        pytorch_ptq(load_pretrained("cnn"), train.images, engine="no-such-engine")
    assert minmax_qconfig().activation().dtype == torch.quint8
