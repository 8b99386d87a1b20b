"""Quantization-aware training: layers that fake-quantize their weights and inputs.

Chapter: Quantization-aware training (lab07_qat).

A QAT layer keeps its weights in float32 (the *master* copy that the optimizer
updates) and, in every forward pass, computes with fake-quantized copies:

    y = op(fq_in(x), fq_w(W), b)        op = F.linear or the layer's convolution

so the loss sees the rounding and clipping the deployed integer model will see,
while tiny updates, too small to move a weight to the next level, still
accumulate in ``W`` until they do. The bias stays in float32 (an integer model
stores it as int32 at scale S_W * S_X, chapter 6).

Quantizers, chosen by ``method`` in :func:`prepare_qat`:

* ``"ste"``: weights symmetric signed, per output channel or per tensor, with the
  min-max scale of the *current* weights (``max|W| / qmax``, recomputed every step);
  inputs asymmetric unsigned ``[0, 2**b - 1]`` with a range tracked during
  training by :class:`qlib.observers.MovingAverageMinMaxObserver` (frozen in eval
  mode). Both round half to even and pass gradients straight through
  (:mod:`qlib.ste`); scales get no gradient.
* ``"lsq"``: learned step sizes for weights and inputs (:mod:`qlib.lsq`).
* ``"pact"``: weights as ``"ste"``; inputs clipped at a learned ``alpha`` (:mod:`qlib.pact`).

Where activations are quantized: at the input of every Linear and Conv2d (the
operands of each matrix product), the first layer's input image included.
The last layer's output (the logits) stays in float32. Every quantized input of
the digits models is non-negative (pixels in [0, 1], ReLU outputs), so the
unsigned ranges lose nothing.

Batch norm: :func:`prepare_qat` first folds every batch norm into the
convolution before it, with the running statistics (:mod:`qlib.folding`), and
trains the folded convolution. The weight that QAT quantizes is then exactly the
weight that integer inference uses, and nothing depends on batch statistics
during fine-tuning. (The alternative, keeping batch norm and re-folding after
training, quantizes a weight that is never deployed.)

After training, :func:`to_integer_model` turns an ``"ste"`` or ``"pact"`` digits CNN into
the integer-only model of chapter 6 (:mod:`qlib.integer_model`) with the ranges QAT learned.

One bit: a weight quantizer at 1 bit is binary, ``W_hat = s * sign(W)``
(sign(0) = +1), ``s = max|W|`` per channel for ``"ste"`` (the min-max rule) or a
learned step for ``"lsq"``; see :mod:`qlib.lsq` and chapter 8.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from qlib._checks import check_bits
from qlib._reference import reference
from qlib.folding import fold_every_batchnorm
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity, per_channel_range, qparams
from qlib.linear import integer_range
from qlib.lsq import LSQBinarize, LSQQuantizer
from qlib.observers import MinMaxObserver, MovingAverageMinMaxObserver, Observer
from qlib.pact import PACTQuantizer
from qlib.ste import FakeQuantizeSTE

METHODS = ("ste", "lsq", "pact")
#: Bits of the integer model's logits at the least (QAT never quantizes them).
LOGIT_BITS = 8
_QAT_SOURCES = (nn.Linear, nn.Conv2d)


# --- quantizers with a straight-through gradient --------------------------------------------

class WeightFakeQuantize(nn.Module):
    """Symmetric signed fake quantization of a weight, scale from its current min-max.

        scale = max(|W_c|) / qmax   (granularity "channel": per output channel c, axis 0;
                                     "tensor": over the whole tensor)
        W_hat = clamp(round(W * (1/scale)), qmin, qmax) * scale     (round half to even)

    ``[qmin, qmax] = [-2**(b-1), 2**(b-1) - 1]``, the formula of
    :func:`qlib.linear.symmetric_qparams`. The scale is recomputed from the weight at
    every call and gets no gradient; the weight gets the straight-through gradient
    (:class:`qlib.ste.FakeQuantizeSTE`). At 1 bit: ``W_hat = max|W_c| * sign(W)``.
    """

    def __init__(self, bits: int, granularity: str = "channel"):
        super().__init__()
        self.bits = check_bits(bits)
        if self.bits > 24:
            raise ValueError(f"weight bits must be at most 24, got {bits}")
        self.granularity = check_granularity(granularity, TENSOR_OR_CHANNEL, "WeightFakeQuantize")
        self.qmin, self.qmax = (-1, 1) if self.bits == 1 else integer_range.unguarded(self.bits, signed=True)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """The scale for ``w``: shape ``[C, 1, ...]`` per channel, ``[]`` per tensor."""
        w = w.detach().to(torch.float32)
        if self.granularity == "channel":
            rmin, rmax = per_channel_range(w, 0)
        else:
            rmin, rmax = torch.aminmax(w)
        scale, _ = qparams(rmin, rmax, 0, self.qmax, symmetric=True)  # max|W| / qmax, at least eps
        return scale.reshape(-1, *([1] * (w.ndim - 1))) if self.granularity == "channel" else scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.scale(w)
        if self.bits == 1:
            return LSQBinarize.apply(w, scale, 1.0)  # the scale is a constant here: its gradient is unused
        return FakeQuantizeSTE.apply(w, scale, torch.zeros((), dtype=torch.float32), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        levels = "binary" if self.bits == 1 else f"[{self.qmin}, {self.qmax}]"
        return f"bits={self.bits}, {levels}, per {self.granularity}, min-max"


class ActivationFakeQuantize(nn.Module):
    """Asymmetric unsigned fake quantization with a range tracked by an observer.

    In training mode every batch first updates the observer (by default a
    :class:`qlib.observers.MovingAverageMinMaxObserver`, ``[0, 2**b - 1]``); in eval
    mode the range is frozen. Then ``scale, zero_point = observer.qparams()`` and

        x_hat = (clamp(round(x * (1/scale)) + zero_point, qmin, qmax) - zero_point) * scale

    with the straight-through gradient for ``x`` (:class:`qlib.ste.FakeQuantizeSTE`).
    """

    def __init__(self, bits: int, observer: Observer | None = None):
        super().__init__()
        self.bits = check_bits(bits)
        self.observer = observer if observer is not None else MovingAverageMinMaxObserver(bits, signed=False)
        if self.observer.bits != self.bits:
            raise ValueError(f"the observer quantizes to {self.observer.bits} bits, not {self.bits}")

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` of the range observed so far."""
        return self.observer.qparams()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observer(x)
        scale, zero_point = self.observer.qparams()
        return FakeQuantizeSTE.apply(x, scale, zero_point.to(torch.float32), self.observer.qmin, self.observer.qmax)


# --- QAT layers -----------------------------------------------------------------------------

class _QATLayer:
    """What QATLinear and QATConv2d share: two quantizers and the fake-quantized weight."""

    weight_quantizer: nn.Module
    input_quantizer: nn.Module

    def _attach(self, weight_quantizer: nn.Module, input_quantizer: nn.Module | None) -> None:
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()

    @torch.no_grad()
    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight the forward pass uses (a detached copy)."""
        return self.weight_quantizer(self.weight).detach()

    def _copy_parameters(self, layer) -> None:
        with torch.no_grad():
            self.weight.copy_(layer.weight)
            if layer.bias is not None:
                self.bias.copy_(layer.bias)


class QATLinear(_QATLayer, nn.Linear):
    """``nn.Linear`` computing ``F.linear(input_quantizer(x), weight_quantizer(W), b)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None):
        super().__init__(in_features, out_features, bias)
        self._attach(weight_quantizer, input_quantizer)

    @classmethod
    def from_float(cls, layer: nn.Linear, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None):
        """A QAT copy of ``layer`` (same shape, weights and bias copied)."""
        with torch.random.fork_rng():  # the throw-away initialization must not move the global seed
            qat = cls(layer.in_features, layer.out_features, layer.bias is not None,
                      weight_quantizer=weight_quantizer, input_quantizer=input_quantizer)
        qat._copy_parameters(layer)
        return qat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QATConv2d(_QATLayer, nn.Conv2d):
    """``nn.Conv2d`` convolving ``input_quantizer(x)`` with ``weight_quantizer(W)``, plus ``b``."""

    def __init__(self, *args, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, input_quantizer)

    @classmethod
    def from_float(cls, layer: nn.Conv2d, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None):
        """A QAT copy of ``layer`` (same shape and hyper-parameters, weights and bias copied)."""
        with torch.random.fork_rng():
            qat = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
                      weight_quantizer=weight_quantizer, input_quantizer=input_quantizer)
        qat._copy_parameters(layer)
        return qat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


QAT_LAYERS = (QATLinear, QATConv2d)


# --- preparing a model ----------------------------------------------------------------------



def _quantizers(method: str, w_bits: int, a_bits: int | None, granularity: str, observer_cls):
    if method == "ste":
        weight = WeightFakeQuantize(w_bits, granularity)
        act = None if a_bits is None else ActivationFakeQuantize(a_bits, observer_cls(a_bits, signed=False))
    elif method == "lsq":
        weight = LSQQuantizer(w_bits, signed=True, granularity=granularity)
        act = None if a_bits is None else LSQQuantizer(a_bits, signed=False, activation=True)
    elif method == "pact":
        weight = WeightFakeQuantize(w_bits, granularity)
        act = None if a_bits is None else PACTQuantizer(a_bits)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return weight, act


def _layer_bits(w_bits, names: list[str]) -> dict[str, int]:
    """Weight bits of each QAT layer: one width for all, or a dict that names every layer exactly."""
    if isinstance(w_bits, Mapping):
        if sorted(map(str, w_bits)) != sorted(names):
            missing, extra = sorted(set(names) - set(w_bits)), sorted(set(map(str, w_bits)) - set(names))
            raise ValueError(f"w_bits must name every Linear/Conv2d layer of the model ({', '.join(names)}); "
                             f"missing: {', '.join(missing) or 'none'}, not a layer: {', '.join(extra) or 'none'}")
        return {name: check_bits(w_bits[name]) for name in names}
    return dict.fromkeys(names, check_bits(w_bits))


@reference
def prepare_qat(model: nn.Module, w_bits: int | Mapping[str, int], a_bits: int | None, method: str = "ste",
                granularity: str = "channel", observer=MovingAverageMinMaxObserver) -> nn.Module:
    """A QAT copy of ``model``: batch norms folded, every Linear/Conv2d replaced by its QAT version.

    ``w_bits``: weight bits (1 = binary), one width for every layer or a dict giving each
    Linear/Conv2d layer (by its name in ``model.named_modules()``) its own, mixed precision
    (chapter 8). ``a_bits``: bits of every layer's input, or
    ``None`` to leave activations in float32. ``method``: ``"ste"``, ``"lsq"`` or
    ``"pact"`` (see the module). ``granularity``: ``"channel"``, one weight scale per output
    channel (axis 0), or ``"tensor"``, one per weight.
    ``observer``: the observer class of the ``"ste"`` activation quantizers
    (:class:`qlib.observers.MinMaxObserver` for post-training calibration).

    Activation ranges, LSQ steps and PACT clipping values are set by the first batch
    the model sees in training mode (:func:`calibrate_qat`). The copy is returned in
    training mode; ``model`` is not changed.
    """
    if a_bits is not None:
        check_bits(a_bits)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_granularity(granularity, TENSOR_OR_CHANNEL, "prepare_qat")
    if not (isinstance(observer, type) and issubclass(observer, Observer)):
        raise TypeError(f"observer must be an Observer class from qlib.observers, got {observer!r}")
    folded = fold_every_batchnorm(model)
    sources = [(name, layer) for name, layer in folded.named_modules()
               if isinstance(layer, _QAT_SOURCES) and not isinstance(layer, QAT_LAYERS)]
    bits = _layer_bits(w_bits, [name for name, _ in sources])
    for name, layer in sources:
        weight_q, input_q = _quantizers(method, bits[name], a_bits, granularity, observer)
        cls = QATConv2d if isinstance(layer, nn.Conv2d) else QATLinear
        folded.set_submodule(name, cls.from_float(layer, weight_q, input_q))
    return folded.train()


def qat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every QAT layer of ``model``, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QAT_LAYERS)]


@torch.no_grad()
def calibrate_qat(model: nn.Module, data, n_batches: int | None = None, batch_size: int = 256) -> nn.Module:
    """Run ``data`` (a :class:`qlib.data.Digits`) through ``model`` in training mode, without gradients.

    Sets the observers' ranges (min-max over the batches, or their moving average),
    and initializes LSQ steps and PACT clipping values on the first batch. Weights do
    not change. Returns ``model`` in eval mode, ready to measure post-training accuracy.
    """
    model.train()
    for i, (images, _) in enumerate(data.batches(batch_size)):
        if n_batches is not None and i >= n_batches:
            break
        model(images)
    return model.eval()


# --- to the integer-only model ----------------------------------------------------------------

def _input_range(quantizer: nn.Module, name: str) -> tuple[float, float]:
    """The real input range ``[rmin, rmax]`` a QAT layer's input quantizer settled on."""
    if isinstance(quantizer, ActivationFakeQuantize):
        rmin, rmax = quantizer.observer.range()
        return float(rmin), float(rmax)
    if isinstance(quantizer, PACTQuantizer):
        if not quantizer.initialized:
            raise RuntimeError(f"{name}: the PACT clipping value is not set yet; run data through the model first")
        return 0.0, float(quantizer.alpha.detach())
    raise ValueError(f"{name}: only 'ste' and 'pact' QAT models convert (their weights use min-max scales, as "
                     f"the integer model does); this layer's inputs use {type(quantizer).__name__}")


def to_integer_model(qat_model: nn.Module, calibration_images, linear=None, conv2d=None, max_pool2d=None):
    """The integer-only model (:mod:`qlib.integer_model`, chapter 6) of a trained QAT digits CNN.

    ``qat_model`` comes from ``prepare_qat(DigitsCNN, w_bits, a_bits, "ste" or "pact")`` with
    per-channel weights, after training; each layer keeps the weight bits it trained with
    (``w_bits`` may give each layer its own, at least 2). The integer model gets the QAT master weights
    (batch norms already folded) and, as the ranges of its activations, exactly the input
    ranges the QAT layers learned: the image range of ``conv1``, the ReLU output of ``conv1``
    from ``conv2``'s input, that of ``conv2`` from ``fc1``'s (max pooling keeps the maximum),
    that of ``fc1`` from ``fc2``'s. Only the logits' range, which QAT never quantized, is
    measured on ``calibration_images`` (min-max). Weights are quantized per output channel with
    ``max|W_c| / qmax`` on the narrow range, the same grid as the QAT weights. The logits get
    ``max(a_bits, 8)`` bits: QAT trained with float logits, and at 4 bits their 16 levels tie
    the top classes of many images (the argmax of tied integers picks the first class). So
    the integer model computes what the QAT model computed in eval mode, up to the integer
    requantization and the rounding of the logits.
    """
    from qlib import integer_model as im
    from qlib.models import DigitsCNN

    layers = dict(qat_layers(qat_model))
    if sorted(layers) != ["conv1", "conv2", "fc1", "fc2"] or not isinstance(qat_model, DigitsCNN):
        raise TypeError("to_integer_model converts a QAT DigitsCNN made by prepare_qat(DigitsCNN, ...)")
    w_quant = [layer.weight_quantizer for layer in layers.values()]
    if not all(isinstance(q, WeightFakeQuantize) and q.granularity == "channel" for q in w_quant):
        raise ValueError("only per-channel min-max weights ('ste' or 'pact' with granularity=\"channel\") convert")
    w_bits = {name: layer.weight_quantizer.bits for name, layer in layers.items()}
    if min(w_bits.values()) < 2:
        raise ValueError(f"the integer model needs weights of at least 2 bits, got {w_bits}")
    in_quant = {name: layer.input_quantizer for name, layer in layers.items()}
    a_bits = {getattr(q, "bits", None) for q in in_quant.values()}
    if len(a_bits) != 1 or None in a_bits:
        raise ValueError("every layer's input must be quantized with the same number of bits")
    (a_bits,) = a_bits

    float_model = copy.deepcopy(qat_model).eval()
    for name, layer in layers.items():
        plain = nn.Conv2d if isinstance(layer, QATConv2d) else nn.Linear
        setattr(float_model, name, _plain_copy(layer, plain))
    observed = im.ObservedDigitsCNN(float_model, lambda: MinMaxObserver(a_bits, signed=False))
    im.calibrate(observed, calibration_images)   # sets every range; four are replaced next
    for activation, layer_name in (("input", "conv1"), ("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")):
        rmin, rmax = _input_range(in_quant[layer_name], layer_name)
        fixed = MinMaxObserver(a_bits, signed=False)
        fixed(torch.tensor([rmin, rmax], dtype=torch.float32))
        observed.observers[activation] = fixed
    logits = MinMaxObserver(max(a_bits, LOGIT_BITS), signed=False)
    logits(torch.stack(observed.observers["fc2"].range()))
    observed.observers["fc2"] = logits
    return im.convert(observed, w_bits, linear, conv2d, max_pool2d)


def _plain_copy(layer: nn.Module, plain):
    """An ``nn.Conv2d``/``nn.Linear`` holding a QAT layer's master weight and bias."""
    with torch.random.fork_rng():
        if plain is nn.Conv2d:
            out = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
        else:
            out = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.weight)
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out
