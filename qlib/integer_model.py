"""An integer-only digits CNN: convert the FP32 model, calibrate, run it on integers alone.

Chapter 6: Integer-only inference (lab06_integer_inference).

The pretrained :class:`qlib.models.DigitsCNN` becomes a model in which everything between
quantizing the input and dequantizing the logits is integer arithmetic:

    x (float)  --quantize-->  q_X (uint8)
               --conv1+bn1+ReLU-->  q (uint8)  --conv2+bn2+ReLU-->  q (uint8)  --max pool-->  q (uint8)
               --fc1+ReLU-->  q (uint8)  --fc2-->  q_Y (uint8)
               --dequantize-->  logits (float)

Conversion, in three steps (as in PyTorch's eager-mode post-training quantization):

1. :func:`prepare`: fold each batch norm into its convolution (:mod:`qlib.folding`) and put
   an activation observer (:mod:`qlib.observers`, min-max or moving-average min-max) on the
   input and on the output of every layer.
2. :func:`calibrate`: run calibration images through the folded FP32 model; the observers
   record the activation ranges.
3. :func:`convert`: for every layer with input scale ``S_X`` and output ``(S_Y, Z_Y)``,

       q_W, S_W   per-output-channel symmetric int8 weights ([-127, 127], rounding half to even)
       q_b        = round(b / (S_X S_W))            int32 bias (qlib.integer_layers.quantize_bias)
       (m0, n)    = quantize_multiplier(S_X S_W / S_Y)    one Q0.31 multiplier and shift per channel

   Activations are asymmetric, unsigned (uint8, after a ReLU ``Z = 0``) by default or signed.

The integer model calls its kernels through three arguments, ``linear``, ``conv2d`` and
``max_pool2d`` (by default qlib's :func:`~qlib.integer_layers.quantized_linear`,
:func:`~qlib.integer_layers.quantized_conv2d`, :func:`~qlib.integer_layers.integer_max_pool2d`),
so any function with the same signature can run inside it: :meth:`IntegerModel.with_kernels`.

:func:`fake_quantized_model` builds the float simulation of the same model (same scales,
same integer weights, float32 arithmetic, fake quantization of every activation, rounding half
to even) for comparison with the true integer execution. :class:`FloatTensorGuard` raises as
soon as a floating-point tensor enters or leaves any torch operation; the integer part of the
model runs under it.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from qlib._checks import as_float_tensor, check_bits, check_count
from qlib.folding import fold_every_batchnorm
from qlib.granularity import quantize_per_channel
from qlib.integer_layers import integer_max_pool2d, quantize_bias, quantized_conv2d, quantized_linear
from qlib.linear import dequantize, fake_quantize, integer_range, quantize
from qlib.models import DigitsCNN
from qlib.observers import MinMaxObserver, MovingAverageMinMaxObserver, Observer
from qlib.requantize import quantize_multiplier, real_multiplier

#: Observers that :func:`prepare` accepts by name.
OBSERVERS = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver}
#: The batch norms of the digits CNN and the convolutions they fold into.
#: Shape of one digits image.
IMAGE_SHAPE = (1, 8, 8)
#: The layers of the digits CNN that hold weights, in order.
DIGITS_CNN_LAYERS = ("conv1", "conv2", "fc1", "fc2")


# --- the pieces of an integer model -------------------------------------------------------------

@dataclass(frozen=True)
class ActivationQParams:
    """How one activation tensor is stored: ``x = scale * (q - zero_point)``, ``q`` in [qmin, qmax]."""

    scale: float       # a float32 value (kept as a Python float)
    zero_point: int
    qmin: int
    qmax: int

    @property
    def dtype(self) -> torch.dtype:
        """The smallest torch integer dtype that holds [qmin, qmax]."""
        for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
            info = torch.iinfo(dtype)
            if info.min <= self.qmin and self.qmax <= info.max:
                return dtype
        return torch.int64


@dataclass(frozen=True)
class IntegerLayer:
    """A convolution (``kind="conv2d"``) or fully connected layer (``"linear"``) in integers.

    ``q_weight`` int8 (per-output-channel scales ``weight_scale``, zero point 0), ``q_bias``
    int32 at scale ``S_X * S_W``, ``(m0, shift)`` one multiplier per output channel for
    ``M = S_X S_W / S_Y``, ``relu`` fused into the output clamp.
    """

    name: str
    kind: str
    q_weight: torch.Tensor
    weight_scale: torch.Tensor
    q_bias: torch.Tensor
    m0: torch.Tensor
    shift: torch.Tensor
    input: ActivationQParams
    output: ActivationQParams
    relu: bool
    stride: int = 1
    padding: int = 0

    def run(self, q_x: torch.Tensor, kernels: "Kernels") -> torch.Tensor:
        """Apply the layer to the integers ``q_x`` with the given kernels."""
        out = self.output
        if self.kind == "conv2d":
            return kernels.conv2d(q_x, self.q_weight, self.q_bias, self.input.zero_point, self.m0, self.shift,
                                  out.zero_point, out.qmin, out.qmax, self.stride, self.padding, 1, self.relu)
        return kernels.linear(q_x, self.q_weight, self.q_bias, self.input.zero_point, self.m0, self.shift,
                              out.zero_point, out.qmin, out.qmax, self.relu)


@dataclass(frozen=True)
class IntegerMaxPool:
    """Max pooling on the integers (it commutes with ``scale * (q - zero_point)``)."""

    kernel_size: int
    name: str = "pool"

    def run(self, q_x: torch.Tensor, kernels: "Kernels") -> torch.Tensor:
        return kernels.max_pool2d(q_x, self.kernel_size)


@dataclass(frozen=True)
class Flatten:
    """``[N, C, H, W] -> [N, C*H*W]`` (a reshape: no arithmetic)."""

    name: str = "flatten"

    def run(self, q_x: torch.Tensor, kernels: "Kernels") -> torch.Tensor:
        return q_x.flatten(1)


@dataclass(frozen=True)
class Kernels:
    """The three functions an integer model calls (signatures of qlib.integer_layers)."""

    linear: Callable = quantized_linear.unguarded
    conv2d: Callable = quantized_conv2d.unguarded
    max_pool2d: Callable = integer_max_pool2d


# --- the integer model --------------------------------------------------------------------------

class IntegerModel(nn.Module):
    """Float images in, float logits out; integers only in between.

    ``steps`` is the list of integer layers, poolings and reshapes; ``input_qparams`` says how
    the input is quantized; the output is dequantized with the last layer's output qparams.
    ``input_shape`` (without the batch dimension) is checked on every call.
    ``linear``, ``conv2d``, ``max_pool2d``: the kernels (defaults: qlib's).
    """

    def __init__(self, steps, input_qparams: ActivationQParams, input_shape: tuple[int, ...],
                 linear: Callable | None = None, conv2d: Callable | None = None,
                 max_pool2d: Callable | None = None):
        super().__init__()
        self.steps = list(steps)
        layers = [s for s in self.steps if isinstance(s, IntegerLayer)]
        if not layers:
            raise ValueError("an integer model needs at least one layer")
        self.input_qparams = input_qparams
        self.output_qparams = layers[-1].output
        self.input_shape = tuple(input_shape)
        defaults = Kernels()
        self.kernels = Kernels(linear or defaults.linear, conv2d or defaults.conv2d,
                               max_pool2d or defaults.max_pool2d)

    def with_kernels(self, linear: Callable | None = None, conv2d: Callable | None = None,
                     max_pool2d: Callable | None = None) -> "IntegerModel":
        """A copy that calls other kernels (same signatures as qlib's); unnamed ones are kept."""
        twin = copy.copy(self)
        twin.kernels = replace(self.kernels, **{k: v for k, v in
                                                 (("linear", linear), ("conv2d", conv2d),
                                                  ("max_pool2d", max_pool2d)) if v is not None})
        return twin

    @property
    def layers(self) -> list[IntegerLayer]:
        return [s for s in self.steps if isinstance(s, IntegerLayer)]

    def _check_images(self, x) -> torch.Tensor:
        x = as_float_tensor(x, "images")
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            expected = ", ".join(map(str, self.input_shape))
            raise ValueError(f"this model takes a batch of inputs of shape [N, {expected}], got shape {list(x.shape)}")
        return x

    def quantize_input(self, x) -> torch.Tensor:
        """``q_X = clamp(round(x / S_X) + Z_X, qmin, qmax)`` (half to even), stored in the input's integer dtype."""
        x = self._check_images(x)
        p = self.input_qparams
        return quantize.unguarded(x, p.scale, p.zero_point, p.qmin, p.qmax).to(p.dtype)

    def forward_integer(self, q_x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """The integer part: integers in, integers out. ``trace`` (a dict) receives every intermediate."""
        if not isinstance(q_x, torch.Tensor) or q_x.is_floating_point() or q_x.dtype == torch.bool:
            raise TypeError("forward_integer takes an integer tensor (use quantize_input first)")
        q = q_x
        own_kernels = self.kernels == Kernels()
        for i, step in enumerate(self.steps):
            q = self._checked(step.run(q, self.kernels), q.dtype, step, i, own_kernels)
            if trace is not None:
                trace[step.name] = q
        return q

    def _checked(self, q, input_dtype: torch.dtype, step, index: int, own_kernels: bool = False) -> torch.Tensor:
        """Check a step's output and store it in the activation's integer dtype.

        A layer's output goes to the dtype of its output range; pooling and reshaping keep
        the values, and so the dtype, of their input. The values are checked against that range
        unless ``own_kernels`` (qlib's kernels, which clamp every output to it: tested), so a
        kernel given by ``with_kernels`` that forgets to clamp is named, not wrapped around.
        """
        label = step.name
        if not isinstance(q, torch.Tensor):
            raise TypeError(f"step {index} ({label}) returned a {type(q).__name__}, not a tensor")
        if q.is_floating_point() or q.dtype == torch.bool or q.is_complex():
            raise TypeError(f"step {index} ({label}) returned dtype {q.dtype}: an integer-only model needs integers")
        if own_kernels:
            return q.to(step.output.dtype if isinstance(step, IntegerLayer) else input_dtype)
        if isinstance(step, IntegerLayer):
            p = step.output
            lo, hi = (int(v) for v in torch.aminmax(q))
            if lo < p.qmin or hi > p.qmax:
                raise ValueError(f"step {index} ({label}) returned values in [{lo}, {hi}], outside the output "
                                 f"range [{p.qmin}, {p.qmax}]: the output must be clamped")
            return q.to(p.dtype)
        info = torch.iinfo(input_dtype)
        lo, hi = (int(v) for v in torch.aminmax(q))
        if lo < info.min or hi > info.max:
            raise ValueError(f"step {index} ({label}) returned values in [{lo}, {hi}], which do not fit the "
                             f"{input_dtype} of its input")
        return q.to(input_dtype)

    def dequantize_output(self, q_y: torch.Tensor) -> torch.Tensor:
        """Logits ``S_Y (q_Y - Z_Y)`` as float32."""
        p = self.output_qparams
        return dequantize.unguarded(q_y, p.scale, p.zero_point)

    def forward(self, x) -> torch.Tensor:
        """Float logits of the float images ``x``: quantize, integer layers, dequantize."""
        return self.dequantize_output(self.forward_integer(self.quantize_input(x)))

    def predict(self, x) -> torch.Tensor:
        """Class of each image: the argmax of the integer logits (no dequantization needed)."""
        return self.forward_integer(self.quantize_input(x)).argmax(dim=1)

    def extra_repr(self) -> str:
        lines = [f"input: scale={self.input_qparams.scale:.6g}, zero_point={self.input_qparams.zero_point}"]
        for s in self.steps:
            if isinstance(s, IntegerLayer):
                lines.append(f"{s.name}: {s.kind} {tuple(s.q_weight.shape)}, relu={s.relu}, "
                             f"out scale={s.output.scale:.6g}, zero_point={s.output.zero_point}")
            else:
                lines.append(repr(s))
        return "\n".join(lines)


# --- conversion: prepare, calibrate, convert ----------------------------------------------------

class ObservedDigitsCNN(nn.Module):
    """The digits CNN with batch norms folded and an activation observer after every layer."""

    ACTIVATIONS = ("input", "conv1", "conv2", "fc1", "fc2")

    def __init__(self, folded: DigitsCNN, make_observer: Callable[[], Observer]):
        super().__init__()
        self.folded = folded.eval()
        self.observers = nn.ModuleDict({name: make_observer() for name in self.ACTIVATIONS})
        self.n_batches = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, obs = self.folded, self.observers
        x = obs["input"](x)
        x = obs["conv1"](torch.relu(m.conv1(x)))
        x = obs["conv2"](torch.relu(m.conv2(x)))
        x = m.pool(x).flatten(1)
        x = obs["fc1"](torch.relu(m.fc1(x)))
        return obs["fc2"](m.fc2(x))

    @property
    def calibrated(self) -> bool:
        return all(o.observed for o in self.observers.values())


def _observer_factory(observer, bits: int, signed: bool, averaging_constant: float | None):
    if isinstance(observer, str):
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {sorted(OBSERVERS)} or an Observer class, got {observer!r}")
        observer = OBSERVERS[observer]
    if not (isinstance(observer, type) and issubclass(observer, Observer)):
        raise TypeError(f"observer must be a name or a subclass of qlib.observers.Observer, got {observer!r}")
    kwargs = {}
    if averaging_constant is not None:
        if not issubclass(observer, MovingAverageMinMaxObserver):
            raise ValueError("averaging_constant applies only to the moving-average observer")
        kwargs["averaging_constant"] = averaging_constant
    return lambda: observer(bits=bits, signed=signed, symmetric=False, **kwargs)


def prepare(model: nn.Module, observer="minmax", activation_bits: int = 8, signed_activations: bool = False,
            averaging_constant: float | None = None) -> ObservedDigitsCNN:
    """Fold the batch norms of a digits CNN and attach asymmetric activation observers.

    ``observer``: ``"minmax"`` (:class:`~qlib.observers.MinMaxObserver`), ``"moving_average"``
    (:class:`~qlib.observers.MovingAverageMinMaxObserver`, ``averaging_constant`` 0.01 unless
    given) or an Observer subclass. Activations get ``activation_bits`` bits, unsigned unless
    ``signed_activations``. ``model`` itself is not changed.
    """
    if not isinstance(model, DigitsCNN):
        raise TypeError(f"prepare converts a qlib.models.DigitsCNN, got {type(model).__name__}")
    bits = check_bits(activation_bits)
    if bits > 16:
        raise ValueError(f"activation_bits must be at most 16 (the products are accumulated in int32), got {bits}")
    make_observer = _observer_factory(observer, bits, signed_activations, averaging_constant)
    return ObservedDigitsCNN(fold_every_batchnorm(model), make_observer)


@torch.no_grad()
def calibrate(observed: ObservedDigitsCNN, images, batch_size: int = 64) -> ObservedDigitsCNN:
    """Run ``images`` ([N, 1, 8, 8], float) through the observed model in batches, in order."""
    if not isinstance(observed, ObservedDigitsCNN):
        raise TypeError("calibrate takes the model returned by prepare()")
    images = as_float_tensor(images, "calibration images").to(torch.float32)
    if tuple(images.shape[1:]) != IMAGE_SHAPE or images.ndim != 4:
        raise ValueError(f"calibration images must have shape [N, 1, 8, 8], got {list(images.shape)}")
    batch_size = check_count(batch_size, "batch_size", 1)
    for start in range(0, len(images), batch_size):
        observed(images[start:start + batch_size])
        observed.n_batches += 1
    return observed


def _activation_qparams(obs: Observer) -> ActivationQParams:
    scale, zero_point = obs.qparams()
    return ActivationQParams(float(scale), int(zero_point), obs.qmin, obs.qmax)


def _integer_layer(name: str, layer: nn.Module, input_qp: ActivationQParams, output_qp: ActivationQParams,
                   relu: bool, weight_bits: int) -> IntegerLayer:
    wmin, wmax = integer_range.unguarded(weight_bits, signed=True, narrow=True)
    q_weight, weight_scale, _ = quantize_per_channel.unguarded(layer.weight.detach(), 0, wmin, wmax, symmetric=True)
    q_bias = quantize_bias.unguarded(layer.bias.detach(), input_qp.scale, weight_scale)
    m0, shift = quantize_multiplier.unguarded(real_multiplier(input_qp.scale, weight_scale, output_qp.scale))
    weight_dtype = torch.int8 if weight_bits <= 8 else torch.int16
    kind = "conv2d" if isinstance(layer, nn.Conv2d) else "linear"
    extra = {}
    if kind == "conv2d":
        if layer.groups != 1 or layer.dilation != (1, 1) or layer.stride[0] != layer.stride[1] \
                or layer.padding[0] != layer.padding[1]:
            raise ValueError(f"{name}: only square stride and padding, no groups or dilation, are converted")
        extra = {"stride": layer.stride[0], "padding": layer.padding[0]}
    return IntegerLayer(name, kind, q_weight.to(weight_dtype), weight_scale, q_bias.to(torch.int32),
                        m0, shift, input_qp, output_qp, relu, **extra)


def _layer_weight_bits(weight_bits) -> dict[str, int]:
    """layer -> weight bits, from one width for every layer or a dict naming each of the four layers."""
    if isinstance(weight_bits, Mapping):
        if sorted(weight_bits) != sorted(DIGITS_CNN_LAYERS):
            raise ValueError(f"weight_bits must name every layer, {', '.join(DIGITS_CNN_LAYERS)}; "
                             f"got {', '.join(map(str, weight_bits))}")
        bits = {name: check_bits(weight_bits[name]) for name in DIGITS_CNN_LAYERS}
    else:
        bits = dict.fromkeys(DIGITS_CNN_LAYERS, check_bits(weight_bits))
    for name, b in bits.items():
        if not 2 <= b <= 16:
            raise ValueError(f"weight_bits must be between 2 and 16, got {b} for {name}")
    return bits


def convert(observed: ObservedDigitsCNN, weight_bits: int | Mapping[str, int] = 8, linear: Callable | None = None,
            conv2d: Callable | None = None, max_pool2d: Callable | None = None) -> IntegerModel:
    """The integer-only model of a calibrated :class:`ObservedDigitsCNN` (see the module for the formulas).

    Weights: ``weight_bits``-bit signed narrow range, symmetric, one scale per output channel;
    ``weight_bits`` is one width for every layer, or a dict giving each layer of
    :data:`DIGITS_CNN_LAYERS` its own (mixed precision). Raises ``RuntimeError`` if the model
    has not been calibrated.
    """
    if not isinstance(observed, ObservedDigitsCNN):
        raise TypeError("convert takes the model returned by prepare() and calibrate()")
    if not observed.calibrated:
        raise RuntimeError("the model has not been calibrated: run calibrate(observed, images) before convert(), "
                           "so that every activation has a range")
    bits = _layer_weight_bits(weight_bits)
    qp = {name: _activation_qparams(o) for name, o in observed.observers.items()}
    m = observed.folded
    steps = [
        _integer_layer("conv1", m.conv1, qp["input"], qp["conv1"], True, bits["conv1"]),
        _integer_layer("conv2", m.conv2, qp["conv1"], qp["conv2"], True, bits["conv2"]),
        IntegerMaxPool(2),
        Flatten(),
        _integer_layer("fc1", m.fc1, qp["conv2"], qp["fc1"], True, bits["fc1"]),
        _integer_layer("fc2", m.fc2, qp["fc1"], qp["fc2"], False, bits["fc2"]),
    ]
    return IntegerModel(steps, qp["input"], IMAGE_SHAPE, linear, conv2d, max_pool2d)


def convert_digits_cnn(model: nn.Module, calibration_images, observer="minmax", activation_bits: int = 8,
                       weight_bits: int | Mapping[str, int] = 8, signed_activations: bool = False, batch_size: int = 64,
                       averaging_constant: float | None = None, **kernels) -> IntegerModel:
    """:func:`prepare`, :func:`calibrate` and :func:`convert` in one call.

    Example: ``convert_digits_cnn(load_pretrained("cnn"), load_digits("train").images)``.
    ``kernels``: ``linear=``, ``conv2d=``, ``max_pool2d=`` to run other kernels.
    """
    observed = prepare(model, observer, activation_bits, signed_activations, averaging_constant)
    calibrate(observed, calibration_images, batch_size)
    return convert(observed, weight_bits, **kernels)


# --- the float simulation of the same model ------------------------------------------------------

class FakeQuantizedModel(nn.Module):
    """Float32 simulation of an :class:`IntegerModel`: same scales, float arithmetic.

    Weights are ``S_W * q_W`` and biases ``S_X S_W * q_b`` (dequantized from the integer
    model); every activation is fake-quantized with its ``(scale, zero_point)`` (rounding
    half to even). It differs from the integer model only in how the rescaling rounds (the
    exact real ``M`` and half to even, versus ``M0 * 2^-n`` with gemmlowp's two roundings)
    and in float32 rounding of the sums.
    """

    def __init__(self, integer_model: IntegerModel):
        super().__init__()
        self.integer_model = integer_model
        self.weights = {}
        for layer in integer_model.layers:
            shape = (-1,) + (1,) * (layer.q_weight.ndim - 1)
            w = layer.q_weight.to(torch.float32) * layer.weight_scale.reshape(shape)
            bias_scale = real_multiplier(layer.input.scale, layer.weight_scale, 1.0)   # S_X S_W, float64
            b = (layer.q_bias.to(torch.float64) * bias_scale).to(torch.float32)
            self.weights[layer.name] = (w, b)

    @staticmethod
    def _fake_quantize(x: torch.Tensor, p: ActivationQParams) -> torch.Tensor:
        return fake_quantize(x, p.scale, p.zero_point, p.qmin, p.qmax)

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        x = self.integer_model._check_images(x).to(torch.float32)
        x = self._fake_quantize(x, self.integer_model.input_qparams)
        for step in self.integer_model.steps:
            if isinstance(step, IntegerLayer):
                w, b = self.weights[step.name]
                if step.kind == "conv2d":
                    x = nn.functional.conv2d(x, w, b, stride=step.stride, padding=step.padding)
                else:
                    x = nn.functional.linear(x, w, b)
                if step.relu:
                    x = torch.relu(x)
                x = self._fake_quantize(x, step.output)
            elif isinstance(step, IntegerMaxPool):
                x = nn.functional.max_pool2d(x, step.kernel_size)
            else:
                x = x.flatten(1)
        return x


def fake_quantized_model(integer_model: IntegerModel) -> FakeQuantizedModel:
    """The float (fake-quantized) simulation of ``integer_model``, with the same scales."""
    return FakeQuantizedModel(integer_model)


# --- a guard: no floating-point tensor may pass ---------------------------------------------------

class FloatTensorGuard(TorchFunctionMode):
    """While active, any torch operation that receives or returns a floating-point tensor raises.

    ``with FloatTensorGuard(): q_y = model.forward_integer(q_x)`` proves that the integer part of
    a model touches no float tensor. ``ops`` records the names of the operations it saw.
    """

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        self._refuse_floats(name, "received", (args, kwargs))
        out = func(*args, **kwargs)
        self._refuse_floats(name, "returned", out)
        self.ops.append(name)
        return out

    @staticmethod
    def _refuse_floats(name: str, verb: str, tree) -> None:
        for leaf in tree_flatten(tree)[0]:
            if isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
                raise FloatingPointInIntegerModel(f"torch operation {name} {verb} a {leaf.dtype} tensor "
                                                  f"of shape {list(leaf.shape)} inside the integer-only span")


class FloatingPointInIntegerModel(RuntimeError):
    """Raised by :class:`FloatTensorGuard` when a float tensor shows up."""


__all__ = [
    "ActivationQParams", "FakeQuantizedModel", "Flatten", "FloatTensorGuard", "FloatingPointInIntegerModel",
    "IntegerLayer", "IntegerMaxPool", "IntegerModel", "Kernels", "ObservedDigitsCNN", "calibrate", "convert",
    "convert_digits_cnn", "fake_quantized_model", "prepare",
]
