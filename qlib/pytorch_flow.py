"""PyTorch's own post-training quantization of the digits CNN (eager mode, fbgemm), beside qlib's.

Chapter 6: Integer-only inference (section "The same workflow in PyTorch").

``torch.ao.quantization`` in eager mode converts a model in the steps :mod:`qlib.integer_model`
follows:

1. fuse: ``fuse_modules`` merges conv + batch norm + ReLU into one ``ConvReLU2d`` (the batch norm
   folded into the weights, as :mod:`qlib.folding` does) and linear + ReLU into ``LinearReLU``;
2. prepare: the ``qconfig`` names an activation observer and a weight observer, and ``prepare``
   attaches an activation observer to the output of every module that will be quantized;
3. calibrate: float batches run through the prepared model, the observers record ranges;
4. convert: every observed module is replaced by its quantized twin (quint8 activations, qint8
   weights packed for the quantized engine).

Eager mode needs the model written for it: ``QuantStub`` and ``DeQuantStub`` where float becomes
quint8 and back, and each ReLU a module so that it can be fused. :class:`QuantizableDigitsCNN` is
that copy of :class:`qlib.models.DigitsCNN`, with the same weights. :func:`pytorch_ptq` runs the
steps with one of two qconfigs: ``"fbgemm"`` (PyTorch's default for x86) or ``"minmax"``
(:func:`minmax_qconfig`, qlib's observer rule).

Where PyTorch's quantized model differs from qlib's integer model:

* weights: ``per_channel_symmetric`` qint8 uses [-128, 127] and ``S = max|w| / 127.5``; qlib uses
  [-127, 127] and ``S = max|w| / 127``;
* bias: a float32 vector, added inside the requantization; qlib: int32 at scale ``S_X S_W``;
* requantization: fbgemm multiplies in float32 and rounds half to even
  (:func:`fbgemm_requantize`); qlib: the fixed-point ``M0 * 2^-n`` with gemmlowp's two roundings;
* the default fbgemm qconfig observes activations with a histogram (it may clip outliers) and,
  with ``reduce_range``, spreads the chosen range over 128 codes [0, 127] instead of 256, so that
  older x86 int8 instructions, which add pairs of uint8 x int8 products in int16, do not saturate
  on typical values (the output is still clamped to [0, 255], not to 127).

The functions here silence torch.ao's deprecation warnings for their own calls only.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_count
from qlib.models import DigitsCNN

#: Module groups that ``fuse_modules`` merges in :class:`QuantizableDigitsCNN`.
FUSE_GROUPS = [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]]
#: Shape of one digits image.
IMAGE_SHAPE = (1, 8, 8)


@contextmanager
def _quiet_torch_ao():
    """torch.ao.quantization warns that it is deprecated and that ``reduce_range`` will be: not here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation")
        yield


class QuantizableDigitsCNN(nn.Module):
    """The digits CNN written for eager-mode quantization: stubs at both ends, ReLUs as modules.

    Holds deep copies of ``model``'s layers (changing one never changes the other); in float it
    computes exactly what ``model`` computes.
    """

    def __init__(self, model: DigitsCNN):
        super().__init__()
        if not isinstance(model, DigitsCNN):
            raise TypeError(f"QuantizableDigitsCNN copies a qlib.models.DigitsCNN, got {type(model).__name__}")
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()                     # float -> quint8 (observed at prepare)
        self.conv1, self.bn1, self.relu1 = copy.deepcopy(model.conv1), copy.deepcopy(model.bn1), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = copy.deepcopy(model.conv2), copy.deepcopy(model.bn2), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.relu3 = copy.deepcopy(model.fc1), nn.ReLU()
        self.fc2 = copy.deepcopy(model.fc2)
        self.dequant = DeQuantStub()                 # quint8 -> float logits
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.relu1(self.bn1(self.conv1(x)))      # [N, 16, 8, 8]
        x = self.relu2(self.bn2(self.conv2(x)))      # [N, 32, 8, 8]
        x = self.pool(x).flatten(1)                  # [N, 512]
        x = self.relu3(self.fc1(x))                  # [N, 64]
        return self.dequant(self.fc2(x))             # [N, 10]


def minmax_qconfig():
    """qlib's observer rule in PyTorch: min-max quint8 activations, per-channel symmetric qint8 weights."""
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver, QConfig

    with _quiet_torch_ao():
        return QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
                       weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                 qscheme=torch.per_channel_symmetric))


def _qconfig(qconfig):
    from torch.ao.quantization import QConfig, get_default_qconfig

    if isinstance(qconfig, QConfig):
        return qconfig
    if qconfig == "fbgemm":
        return get_default_qconfig("fbgemm")
    if qconfig == "minmax":
        return minmax_qconfig()
    raise ValueError(f"qconfig must be 'fbgemm', 'minmax' or a torch.ao.quantization.QConfig, got {qconfig!r}")


def pytorch_ptq(model: DigitsCNN, calibration_images, qconfig="fbgemm", batch_size: int = 64,
                engine: str = "fbgemm") -> nn.Module:
    """PyTorch's eager-mode post-training quantization of the digits CNN: fuse, prepare, calibrate, convert.

    ``qconfig``: ``"fbgemm"`` (``get_default_qconfig("fbgemm")``: histogram observer with
    ``reduce_range``, per-channel symmetric qint8 weights), ``"minmax"`` (:func:`minmax_qconfig`)
    or a ``QConfig``. ``calibration_images`` ([N, 1, 8, 8]) run through the prepared model in
    batches of ``batch_size``, in order. Sets ``torch.backends.quantized.engine`` to ``engine``
    (a process-wide setting: the converted model packs its weights for that engine). ``model`` is
    not changed. Returns the converted model (float images in, float logits out).
    """
    if not isinstance(model, DigitsCNN):
        raise TypeError(f"pytorch_ptq converts a qlib.models.DigitsCNN, got {type(model).__name__}")
    images = as_float_tensor(calibration_images, "calibration images").to(torch.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"calibration images must have shape [N, 1, 8, 8], got {list(images.shape)}")
    batch_size = check_count(batch_size, "batch_size", 1)
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not available here; "
                         f"supported: {torch.backends.quantized.supported_engines}")
    from torch.ao.quantization import convert, fuse_modules, prepare

    with _quiet_torch_ao():
        torch.backends.quantized.engine = engine
        float_model = QuantizableDigitsCNN(model).eval()
        fused = fuse_modules(float_model, FUSE_GROUPS)          # conv+bn+relu, fc1+relu
        fused.qconfig = _qconfig(qconfig)
        prepared = prepare(fused)                                 # observers attached
        with torch.no_grad():
            for start in range(0, len(images), batch_size):       # calibration
                prepared(images[start:start + batch_size])
        return convert(prepared)                                  # quantized modules


def fbgemm_requantize(acc, bias, input_scale, weight_scale, output_scale, output_zero_point: int,
                      relu: bool = False, axis: int = 1, qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    """fbgemm's requantization of an int32 accumulator to uint8, in float32 as the x86 kernels do.

    ``acc`` is the integer sum ``sum_k (q_X - Z_X) q_W`` *without* the bias (the output channel
    on ``axis``); ``bias`` is PyTorch's float bias, one per channel; ``weight_scale`` a number or
    one scale per channel. Every step is a float32 operation, in this order
    (fbgemm's ``ReQuantizeOutput`` with a float bias):

        a = float32(S_X) * float32(S_W)                     the accumulator's scale
        m = a / float32(S_Y)                                the real multiplier M, in float32
        q = round_half_even((float32(acc) + bias / a) * m) + Z_Y
        q = clamp(q, Z_Y if relu else qmin, qmax)

    Rounding half to even is ``std::lrintf`` (and the vector conversion) in the default rounding
    mode. Returns an int64 tensor. Bit-exact against PyTorch's quantized Linear and Conv2d on the
    fbgemm engine (tests/test_pytorch_flow.py).
    """
    if not isinstance(acc, torch.Tensor) or acc.is_floating_point() or acc.dtype == torch.bool:
        raise TypeError(f"acc must be an integer tensor (the int32 accumulator), got "
                        f"{acc.dtype if isinstance(acc, torch.Tensor) else type(acc).__name__}")
    if acc.ndim == 0:
        raise ValueError("acc must have an output-channel axis")
    axis = axis % acc.ndim if -acc.ndim <= axis < acc.ndim else None
    if axis is None:
        raise ValueError(f"axis out of range for an accumulator of shape {list(acc.shape)}")
    channels = acc.shape[axis]
    f32 = torch.float32

    def per_channel(value, name: str) -> torch.Tensor:
        v = as_float_tensor(value, name).to(f32).reshape(-1)
        if v.numel() == 1:
            v = v.expand(channels)
        if v.numel() != channels:
            raise ValueError(f"{name} has {v.numel()} values, the accumulator {channels} channels on axis {axis}")
        shape = [1] * acc.ndim
        shape[axis] = channels
        return v.reshape(shape)

    s_x = as_float_tensor(input_scale, "input_scale").to(f32)
    s_y = as_float_tensor(output_scale, "output_scale").to(f32)
    if s_x.numel() != 1 or s_y.numel() != 1:
        raise ValueError("input_scale and output_scale must be single numbers (per-tensor activations)")
    s_w = per_channel(weight_scale, "weight_scale")
    if bool((s_w <= 0).any()) or float(s_x) <= 0 or float(s_y) <= 0:
        raise ValueError("scales must be positive")
    b = per_channel(torch.zeros(1) if bias is None else bias, "bias")
    zero_point = int(output_zero_point)
    if not qmin <= zero_point <= qmax:
        raise ValueError(f"output_zero_point {zero_point} is outside [{qmin}, {qmax}]")

    a = s_x.reshape(()) * s_w                       # float32 product, one per channel
    m = a / s_y.reshape(())
    raw = acc.to(f32) + b / a
    q = torch.round(raw * m).to(torch.int64) + zero_point   # torch.round: half to even
    return torch.clamp(q, zero_point if relu else qmin, qmax)


__all__ = ["FUSE_GROUPS", "QuantizableDigitsCNN", "fbgemm_requantize", "minmax_qconfig", "pytorch_ptq"]
