"""Tests of qlib.integer_model: the digits CNN converted to an integer-only model.

What is checked, and against what:

* the integer part runs with every floating-point tensor forbidden (a torch function mode that
  raises on any float input or output), and every intermediate has an integer dtype; the guard
  itself is shown to trip;
* predictions agree with the fake-quantized float simulation (same scales, float32 arithmetic,
  PyTorch's conv2d and linear) on at least 99.5% of the test images, and with PyTorch's own
  eager-mode post-training quantization (fbgemm kernels, PyTorch's observers) on at least 99%;
* accuracy at 8 bits is within 0.5 points of the FP32 model (99.17% on the 360 test images);
* a one-layer model worked by hand, rounding tie included;
* clear errors for an uncalibrated model, wrong input shape, NaN input, and kernels that
  return floats or unclamped values.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from qlib.data import load_digits
from qlib.integer_layers import quantized_linear
from qlib.integer_model import (
    ActivationQParams,
    FloatingPointInIntegerModel,
    FloatTensorGuard,
    IntegerLayer,
    IntegerModel,
    calibrate,
    convert,
    convert_digits_cnn,
    fake_quantized_model,
    prepare,
)
from qlib.models import accuracy, load_pretrained
from qlib.requantize import dequantize_multiplier

FP32_ACCURACY = 0.9916666666666667  # 357 of the 360 test images


@pytest.fixture(scope="module")
def data():
    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="module", params=["minmax", "moving_average"])
def integer_cnn(request, data):
    train, _ = data
    return convert_digits_cnn(load_pretrained("cnn"), train.images, observer=request.param)


# --- integer only -------------------------------------------------------------------------------

def test_integer_part_runs_with_float_tensors_forbidden(integer_cnn, data):
    _, test = data
    q_x = integer_cnn.quantize_input(test.images)
    trace = {}
    guard = FloatTensorGuard()
    with guard:
        q_y = integer_cnn.forward_integer(q_x, trace=trace)
    assert "_int_mm" in guard.ops or "matmul" in guard.ops  # the guard did watch the kernels
    assert list(trace) == ["conv1", "conv2", "pool", "flatten", "fc1", "fc2"]
    for name, q in [("input", q_x), *trace.items(), ("output", q_y)]:
        assert q.dtype == torch.uint8, f"{name} has dtype {q.dtype}"
    assert q_x.dtype == torch.uint8 and q_y.dtype == torch.uint8
    # and the unguarded run gives the same integers
    assert torch.equal(integer_cnn.forward_integer(q_x), q_y)


def test_guard_trips_on_a_float_operation(integer_cnn, data):
    _, test = data
    q_x = integer_cnn.quantize_input(test.images[:4])
    with pytest.raises(FloatingPointInIntegerModel, match="float"):
        with FloatTensorGuard():
            q_x.to(torch.float32)

    def float_linear(q_x, q_weight, q_bias, *args):
        q_x.double()  # a kernel that slips into floating point, even briefly
        return quantized_linear(q_x, q_weight, q_bias, *args)

    with pytest.raises(FloatingPointInIntegerModel, match="float64"):
        with FloatTensorGuard():
            integer_cnn.with_kernels(linear=float_linear).forward_integer(q_x)


def test_input_and_output_quantization_are_the_only_float_steps(integer_cnn, data):
    _, test = data
    p = integer_cnn.input_qparams
    # the images lie in [0, 1]: an unsigned 8-bit input with scale 1/255 and zero point 0
    assert (p.qmin, p.qmax, p.zero_point) == (0, 255, 0)
    assert p.scale == pytest.approx(1 / 255, rel=1e-7)
    logits = integer_cnn(test.images)
    assert logits.dtype == torch.float32
    q_y = integer_cnn.forward_integer(integer_cnn.quantize_input(test.images))
    o = integer_cnn.output_qparams
    torch.testing.assert_close(logits, o.scale * (q_y.to(torch.float32) - o.zero_point), rtol=0, atol=0)


# --- accuracy and agreement ---------------------------------------------------------------------

def test_fp32_reference_accuracy(data):
    _, test = data
    assert accuracy(load_pretrained("cnn"), test) == pytest.approx(FP32_ACCURACY)


def test_integer_model_within_half_a_point_of_fp32(integer_cnn, data):
    _, test = data
    acc = (integer_cnn.predict(test.images) == test.labels).double().mean().item()
    assert abs(acc - FP32_ACCURACY) <= 0.005, f"integer accuracy {acc:.4f}"
    assert accuracy(integer_cnn, test) == pytest.approx(acc)  # float logits, same argmax


def test_integer_model_agrees_with_its_fake_quantized_simulation(integer_cnn, data):
    _, test = data
    simulated = fake_quantized_model(integer_cnn)
    ours = integer_cnn.predict(test.images)
    theirs = simulated(test.images).argmax(dim=1)
    agreement = (ours == theirs).double().mean().item()
    assert agreement >= 0.995, f"agreement {agreement:.4f}"
    # the logits live on the same grid and differ by at most one step (the rescaling rounds differently)
    steps = (integer_cnn(test.images) - simulated(test.images)).abs() / integer_cnn.output_qparams.scale
    assert steps.max().item() <= 1.0 + 1e-4


def test_simulation_uses_the_integer_models_scales(integer_cnn):
    simulated = fake_quantized_model(integer_cnn)
    for layer in integer_cnn.layers:
        w, b = simulated.weights[layer.name]
        shape = (-1,) + (1,) * (w.ndim - 1)
        assert torch.equal(torch.round(w / layer.weight_scale.reshape(shape)).to(torch.int64),
                           layer.q_weight.to(torch.int64))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_agrees_with_pytorch_eager_post_training_quantization(data):
    """PyTorch's own PTQ of the same network (fbgemm kernels, its observers, float multipliers)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = pytest.importorskip("torch.ao.quantization")
        train, test = data
        fp32 = load_pretrained("cnn")

        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.quant, self.dequant = ao.QuantStub(), ao.DeQuantStub()
                self.conv1, self.relu1 = fp32.conv1, nn.ReLU()
                self.conv2, self.relu2 = fp32.conv2, nn.ReLU()
                self.bn1, self.bn2, self.pool = fp32.bn1, fp32.bn2, fp32.pool
                self.fc1, self.relu3, self.fc2 = fp32.fc1, nn.ReLU(), fp32.fc2

            def forward(self, x):
                x = self.relu1(self.bn1(self.conv1(self.quant(x))))
                x = self.relu2(self.bn2(self.conv2(x)))
                x = self.pool(x).flatten(1)
                return self.dequant(self.fc2(self.relu3(self.fc1(x))))

        model = Wrapped().eval()
        model = ao.fuse_modules(model, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]])
        model.qconfig = ao.QConfig(
            activation=ao.MinMaxObserver.with_args(dtype=torch.quint8),
            weight=ao.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
        torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines \
            else torch.backends.quantized.supported_engines[-1]
        ao.prepare(model, inplace=True)
        with torch.no_grad():
            for start in range(0, len(train), 64):
                model(train.images[start:start + 64])
        ao.convert(model, inplace=True)
        with torch.no_grad():
            theirs = model(test.images).argmax(dim=1)
    ours = convert_digits_cnn(load_pretrained("cnn"), train.images).predict(test.images)
    assert (ours == theirs).double().mean().item() >= 0.99


# --- conversion details -------------------------------------------------------------------------

def test_converted_parameters_stay_within_their_rounding_error(data):
    train, _ = data
    observed = calibrate(prepare(load_pretrained("cnn")), train.images)
    model = convert(observed)
    folded = observed.folded
    for layer in model.layers:
        w = getattr(folded, layer.name).weight.detach().double()
        b = getattr(folded, layer.name).bias.detach().double()
        shape = (-1,) + (1,) * (w.ndim - 1)
        s_w = layer.weight_scale.double()
        assert layer.q_weight.dtype == torch.int8 and int(layer.q_weight.abs().max()) <= 127
        w_hat = layer.q_weight.double() * s_w.reshape(shape)
        assert bool(((w - w_hat).abs() <= s_w.reshape(shape) / 2 * (1 + 1e-6)).all())
        # every output channel's largest weight uses the top code
        top_codes = layer.q_weight.flatten(1).abs().amax(dim=1)
        assert torch.equal(top_codes, torch.full((w.shape[0],), 127, dtype=torch.int8))
        s_b = layer.input.scale * s_w
        assert layer.q_bias.dtype == torch.int32
        assert bool(((b - layer.q_bias.double() * s_b).abs() <= s_b / 2 * (1 + 1e-6)).all())
        real_m = layer.input.scale * s_w / layer.output.scale
        rel = (dequantize_multiplier(layer.m0, layer.shift) - real_m).abs() / real_m
        assert rel.max().item() <= 2.0**-30
        assert bool(((layer.m0 >= 2**30) & (layer.m0 < 2**31)).all())


def test_activation_ranges_come_from_the_chosen_observer(data):
    train, _ = data
    minmax = calibrate(prepare(load_pretrained("cnn"), "minmax"), train.images)
    moving = calibrate(prepare(load_pretrained("cnn"), "moving_average"), train.images)
    # the float activations recomputed here, outside qlib's observers
    with torch.no_grad():
        m = minmax.folded
        a1 = torch.relu(m.conv1(train.images))
        a2 = torch.relu(m.conv2(a1))
        a3 = torch.relu(m.fc1(m.pool(a2).flatten(1)))
    for name, act in (("conv1", a1), ("conv2", a2), ("fc1", a3)):
        assert minmax.observers[name].range()[1].item() == pytest.approx(act.max().item(), rel=1e-6)
        # a moving average of batch maxima never exceeds the overall maximum
        assert moving.observers[name].range()[1].item() <= act.max().item() * (1 + 1e-6)
    assert minmax.n_batches == moving.n_batches == -(-len(train) // 64)


def test_kernels_can_be_swapped(integer_cnn, data):
    _, test = data
    calls = {"linear": 0, "conv2d": 0}

    def counting(kind, kernel):
        def wrapped(*args):
            calls[kind] += 1
            return kernel(*args)
        return wrapped

    swapped = integer_cnn.with_kernels(linear=counting("linear", integer_cnn.kernels.linear),
                                       conv2d=counting("conv2d", integer_cnn.kernels.conv2d))
    assert torch.equal(swapped.predict(test.images), integer_cnn.predict(test.images))
    assert calls == {"linear": 2, "conv2d": 2}
    assert integer_cnn.kernels.linear is not swapped.kernels.linear  # the original is unchanged

    def no_zero_point(q_x, q_weight, q_bias, x_zero_point, *args):
        return quantized_linear(q_x, q_weight, q_bias, 0, *args)  # forgets Z_X

    broken = integer_cnn.with_kernels(linear=no_zero_point)
    signed = convert_digits_cnn(load_pretrained("cnn"), load_digits("train").images, signed_activations=True)
    # with unsigned activations Z_X = 0 after a ReLU, so the mistake only shows with signed ones
    assert torch.equal(broken.predict(test.images), integer_cnn.predict(test.images))
    assert signed.input_qparams.zero_point == -128
    wrong = signed.with_kernels(linear=no_zero_point).predict(test.images)
    assert (wrong == test.labels).double().mean().item() < 0.9


# --- a one-layer model worked by hand -----------------------------------------------------------

def hand_model():
    """x = 0.5 (q_x - 10); W = [[1, -2], [0.25, 0.75]] = [0.5, 0.25] * [[2, -4], [1, 3]];
    b = [2, -0.5] = (0.5 * [0.5, 0.25]) * [8, -4]; y = 0.25 (q_y - 100).

    M = S_X S_W / S_Y = [1.0, 0.5]:  (m0, shift) = (2^30, -1) and (2^30, 0).
    """
    x_qp = ActivationQParams(0.5, 10, 0, 255)
    y_qp = ActivationQParams(0.25, 100, 0, 255)
    layer = IntegerLayer("fc", "linear", torch.tensor([[2, -4], [1, 3]], dtype=torch.int8),
                         torch.tensor([0.5, 0.25]), torch.tensor([8, -4], dtype=torch.int32),
                         torch.tensor([2**30, 2**30]), torch.tensor([-1, 0]), x_qp, y_qp, relu=False)
    return IntegerModel([layer], x_qp, (2,))


def test_one_layer_by_hand():
    model = hand_model()
    x = torch.tensor([[1.0, 2.0], [-0.5, -1.0]])
    # q_x = x / 0.5 + 10 = [[12, 14], [9, 8]]
    assert model.quantize_input(x).tolist() == [[12, 14], [9, 8]]
    # acc[0] = [2*2 - 4*4 + 8, 1*2 + 3*4 - 4] = [-4, 10]   -> [-4 * 1, 10 * 0.5] + 100 = [96, 105]
    # acc[1] = [2*(-1) - 4*(-2) + 8, 1*(-1) + 3*(-2) - 4] = [14, -11]
    #          -> [14, -5.5 rounded with ties toward +infinity = -5] + 100 = [114, 95]
    q_y = model.forward_integer(model.quantize_input(x))
    assert q_y.tolist() == [[96, 105], [114, 95]]
    assert model(x).tolist() == [[-1.0, 1.25], [3.5, -1.25]]
    # the float simulation rounds the tie -5.5 half to even, to -6: y = 0.25 * -6 = -1.5
    assert fake_quantized_model(model)(x).tolist() == [[-1.0, 1.25], [3.5, -1.5]]
    # with a fused ReLU the negative output clamps at Z_Y = 100 (real 0)
    relu_layer = IntegerLayer(**{**model.layers[0].__dict__, "relu": True})
    relu_model = IntegerModel([relu_layer], model.input_qparams, (2,))
    assert relu_model.forward_integer(relu_model.quantize_input(x)).tolist() == [[100, 105], [114, 100]]


# --- errors -------------------------------------------------------------------------------------

def test_uncalibrated_model_is_refused():
    with pytest.raises(RuntimeError, match="calibrat"):
        convert(prepare(load_pretrained("cnn")))


@pytest.mark.parametrize("shape", [(5, 64), (5, 1, 8, 9), (1, 8, 8), (5, 3, 8, 8)])
def test_wrong_input_shape_is_refused(integer_cnn, shape):
    with pytest.raises(ValueError, match=r"shape \[N, 1, 8, 8\]"):
        integer_cnn(torch.rand(shape))


def test_nan_and_empty_inputs_are_refused(integer_cnn, data):
    _, test = data
    x = test.images[:3].clone()
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        integer_cnn(x)
    with pytest.raises(ValueError, match="NaN"):
        fake_quantized_model(integer_cnn)(x)
    with pytest.raises(ValueError, match="NaN"):
        calibrate(prepare(load_pretrained("cnn")), x)
    with pytest.raises(ValueError, match="empty"):
        integer_cnn(torch.empty(0, 1, 8, 8))


def test_bad_arguments_are_refused(integer_cnn, data):
    _, test = data
    with pytest.raises(ValueError, match="observer"):
        prepare(load_pretrained("cnn"), observer="histogram")
    with pytest.raises(TypeError, match="DigitsCNN"):
        prepare(load_pretrained("mlp"))
    with pytest.raises(ValueError, match="bits"):
        prepare(load_pretrained("cnn"), activation_bits=0)
    with pytest.raises(ValueError, match="averaging_constant"):
        prepare(load_pretrained("cnn"), observer="minmax", averaging_constant=0.1)
    with pytest.raises(TypeError, match="integer tensor"):
        integer_cnn.forward_integer(test.images)


def test_kernels_that_break_the_contract_are_named(integer_cnn, data):
    _, test = data

    def float_conv(*args, **kwargs):
        return integer_cnn.kernels.conv2d(*args, **kwargs).to(torch.float32)

    def unclamped_linear(q_x, q_weight, q_bias, x_zp, m0, shift, y_zp, qmin, qmax, relu=False):
        return quantized_linear(q_x, q_weight, q_bias, x_zp, m0, shift, y_zp, -(2**31), 2**31 - 1, relu) * 4

    with pytest.raises(TypeError, match="conv1.*float32"):
        integer_cnn.with_kernels(conv2d=float_conv)(test.images)
    with pytest.raises(ValueError, match="fc1.*clamped"):
        integer_cnn.with_kernels(linear=unclamped_linear)(test.images)

    def sum_pool(q_x, kernel_size):
        return q_x.to(torch.int64).unfold(2, 2, 2).unfold(3, 2, 2).sum(dim=(-1, -2))

    with pytest.raises(ValueError, match="pool.*do not fit"):
        integer_cnn.with_kernels(max_pool2d=sum_pool)(test.images)


def test_lower_bit_widths_convert_and_run(data):
    train, test = data
    model = convert_digits_cnn(load_pretrained("cnn"), train.images, activation_bits=6, weight_bits=6)
    assert model.input_qparams.qmax == 63 and int(model.layers[0].q_weight.abs().max()) == 31
    acc = (model.predict(test.images) == test.labels).double().mean().item()
    assert acc > 0.9


def test_each_layer_can_have_its_own_weight_bits(data):
    train, test = data
    observed = calibrate(prepare(load_pretrained("cnn")), train.images)
    mixed = convert(observed, {"conv1": 8, "conv2": 3, "fc1": 4, "fc2": 6})
    # every output channel's largest weight uses its layer's top code, 2^(b-1) - 1
    for layer, top in zip(mixed.layers, (127, 3, 7, 31)):
        codes = layer.q_weight.flatten(1).abs().amax(dim=1)
        assert torch.equal(codes, torch.full_like(codes, top)), layer.name
    # a layer's integers are those of the model converted with its bit width everywhere
    uniform = {bits: convert(observed, bits) for bits in (3, 4)}
    assert torch.equal(mixed.layers[1].q_weight, uniform[3].layers[1].q_weight)
    assert torch.equal(mixed.layers[2].q_weight, uniform[4].layers[2].q_weight)
    assert (mixed.predict(test.images) == test.labels).double().mean().item() > 0.9
    with pytest.raises(ValueError, match="must name every layer, conv1, conv2, fc1, fc2; got conv1"):
        convert(observed, {"conv1": 8})
    with pytest.raises(ValueError, match="between 2 and 16, got 1 for fc2"):
        convert(observed, {"conv1": 8, "conv2": 8, "fc1": 8, "fc2": 1})


def test_a_kernel_that_forgets_to_clamp_is_named(integer_cnn, data):
    _, test = data

    def unclamped_conv(*args):
        return integer_cnn.kernels.conv2d(*args) + 300  # beyond the uint8 output range [0, 255]

    with pytest.raises(ValueError, match=r"step 0 \(conv1\) returned values in \[300, .*must be clamped"):
        integer_cnn.with_kernels(conv2d=unclamped_conv)(test.images[:8])
    # qlib's own kernels clamp (the model skips the check for them): passed through a wrapper, which
    # the model checks, every step's output lies in its range and the predictions are the same
    def wrapped(kernel):
        return lambda *args: kernel(*args)

    checked = integer_cnn.with_kernels(linear=wrapped(integer_cnn.kernels.linear),
                                       conv2d=wrapped(integer_cnn.kernels.conv2d),
                                       max_pool2d=wrapped(integer_cnn.kernels.max_pool2d))
    assert torch.equal(checked.predict(test.images), integer_cnn.predict(test.images))
