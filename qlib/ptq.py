"""Post-training quantization of a whole model: static (calibrated), dynamic, and CEA N2D2's flow.

Chapter 5: Range clipping, calibration and rounding.

Every ``nn.Conv2d`` and ``nn.Linear`` of the model becomes a :class:`QuantizedLayer`:

    y = layer(fake_quantize(x); weight = w_hat)

* **weights**: symmetric, signed ``weight_bits`` integers, ``scale = T_w / qmax`` with one
  threshold per tensor or per output channel (axis 0), chosen by a calibrator of
  :mod:`qlib.calibration` (``"minmax"``: ``T_w = max|w|``);
* **activations**: the *input* of every quantized layer, symmetric ``act_bits`` integers,
  unsigned ``[0, 2^b - 1]`` if the calibration data never went below 0 (pixels, values
  after a ReLU), signed otherwise; ``scale = T_a / qmax``.

Rounding is half to even everywhere (:func:`qlib.calibration.fake_quantize_with_scale`).
Batch norms are folded into the convolution before it first (:mod:`qlib.folding`), as a
deployment would; biases and the final logits stay in float32 (chapter 6 makes them integers).

Three ways to choose the activation thresholds ``T_a``:

* :func:`quantize_static`: observers on every layer input see a few calibration
  batches of the float model; each observer's calibrator picks ``T_a`` once, for good.
* :func:`quantize_dynamic`: no calibration; every batch's own ``max|x|`` is used, at
  the price of a range computation at run time.
* :func:`quantize_n2d2`: the flow of CEA's N2D2: weights normalised to [-1, 1] per layer
  or per output channel, then layer by layer, in forward order, a threshold from the
  histogram of the layer's input (MSE or KL) computed on the *already quantized* earlier
  layers, so each threshold sees the error the earlier ones made.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from qlib._checks import check_bits
from qlib.calibration import calibrate_threshold, fake_quantize_with_scale, threshold_scale
from qlib.folding import fold_every_batchnorm
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity
from qlib.linear import integer_range
from qlib.observers import ClippingObserver, PerChannelClippingObserver

QUANTIZED_LAYERS = (nn.Conv2d, nn.Linear)


def _batches(images, batch_size: int = 256):
    """Calibration data as a list of tensors (a tensor is cut into batches of ``batch_size``)."""
    if isinstance(images, torch.Tensor):
        if images.numel() == 0:
            raise ValueError("the calibration set is empty")
        return list(images.split(batch_size))
    batches = [b if isinstance(b, torch.Tensor) else b[0] for b in images]
    if not batches:
        raise ValueError("the calibration set is empty")
    return batches


def _layers_in_call_order(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the quantized layers in the order ``forward`` calls them."""
    order = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: order.append(name))
             for name, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def layer_inputs(model: nn.Module, images) -> dict[str, torch.Tensor]:
    """The input of every Conv2d and Linear layer when ``model`` runs on ``images`` (concatenated over batches)."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: seen.setdefault(name, []).append(inp[0].detach()))
             for name, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)]
    try:
        for batch in _batches(images):
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in seen.items()}


# --- the quantized modules --------------------------------------------------------------------

class ActivationQuantizer(nn.Module):
    """Fake-quantizes its input with a fixed scale: ``scale * clamp(round(x / scale), qmin, qmax)``."""

    def __init__(self, scale, qmin: int, qmax: int, threshold=None):
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())
        self.threshold = None if threshold is None else float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize_with_scale(x, self.scale, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):.4g}, [{self.qmin}, {self.qmax}]"


class DynamicActivationQuantizer(nn.Module):
    """Fake-quantizes every tensor with a threshold computed from that tensor itself.

    Default calibrator ``"minmax"``: ``T = max|x|`` of the batch; unsigned range if the
    batch has no negative value. Nothing is stored between calls.
    """

    def __init__(self, bits: int, calibrator="minmax"):
        super().__init__()
        self.bits = check_bits(bits)
        self.calibrator = calibrator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = integer_range.unguarded(self.bits, signed=bool((x < 0).any()))
        t = calibrate_threshold(x.detach(), qmin, qmax, self.calibrator)
        return fake_quantize_with_scale(x, threshold_scale(t, qmax), qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, dynamic"


class QuantizedLayer(nn.Module):
    """A Conv2d or Linear with a fake-quantized weight, whose input passes through ``input_quantizer`` first."""

    def __init__(self, layer: nn.Module, input_quantizer: nn.Module | None):
        super().__init__()
        self.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.input_quantizer(x))


# --- weights ----------------------------------------------------------------------------------

@torch.no_grad()
def quantize_weight(weight: torch.Tensor, bits: int, granularity: str, calibrator="minmax",
                    narrow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_hat, scale)``: ``weight`` fake-quantized symmetrically to signed ``bits`` bits.

    The threshold ``T`` comes from ``calibrator`` through a :class:`~qlib.observers.ClippingObserver`:
    one for the whole weight (``granularity="tensor"``) or one per output channel along axis 0
    (``"channel"``, shape ``[C, 1, ...]``). ``scale = T / qmax``, rounding half to even;
    ``narrow=True`` uses ``[-qmax, qmax]``.
    """
    bits = check_bits(bits)
    by_channel = check_granularity(granularity, TENSOR_OR_CHANNEL, "quantize_weight") == "channel"
    if by_channel:
        observer = PerChannelClippingObserver(bits, signed=True, narrow=narrow, calibrator=calibrator, axis=0)
    else:
        observer = ClippingObserver(bits, signed=True, narrow=narrow, calibrator=calibrator)
    observer(weight.detach())
    scale, _ = observer.qparams()
    if by_channel:
        scale = scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return fake_quantize_with_scale(weight.detach().to(torch.float32), scale, observer.qmin, observer.qmax), scale


def _with_quantized_weights(model: nn.Module, bits: int, granularity: str, calibrator, narrow: bool = False):
    """A prepared copy of ``model`` whose Conv2d/Linear weights are fake-quantized."""
    model = fold_every_batchnorm(model)
    with torch.no_grad():
        for _, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_LAYERS)]:
            w_hat, _ = quantize_weight(layer.weight, bits, granularity, calibrator, narrow)
            layer.weight.copy_(w_hat)
    return model


def _wrap(model: nn.Module, quantizers: dict[str, nn.Module]) -> nn.Module:
    for name, quantizer in quantizers.items():
        model.set_submodule(name, QuantizedLayer(model.get_submodule(name), quantizer))
    return model


# --- activations ------------------------------------------------------------------------------

@torch.no_grad()
def calibrate_activations(model: nn.Module, images, bits: int, calibrator="minmax",
                          layers=None) -> dict[str, ClippingObserver]:
    """Attach a :class:`~qlib.observers.ClippingObserver` to the input of every quantized layer, run ``images``.

    Each observer is unsigned if the first batch has no negative value at its layer's
    input, signed otherwise (a later negative value at an unsigned input raises ``ValueError``).
    ``layers`` restricts the observers to those layer names. Returns name -> observer,
    in the order ``forward`` calls the layers.
    """
    bits = check_bits(bits)
    batches = _batches(images)
    order = _layers_in_call_order(model, batches[0])
    wanted = order if layers is None else [n for n in order if n in set(layers)]
    observers: dict[str, ClippingObserver] = {}

    def observe(name):
        def hook(module, inputs):
            x = inputs[0]
            if name not in observers:
                observers[name] = ClippingObserver(bits, signed=bool((x < 0).any()), calibrator=calibrator)
            elif not observers[name].signed and bool((x < 0).any()):
                raise ValueError(f"the input of {name} was non-negative in the first calibration batch but not "
                                 "in a later one: calibrate with batches that show its sign")
            observers[name](x)
        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(observe(name)) for name in wanted]
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return {name: observers[name] for name in wanted}


def _static_quantizer(observer: ClippingObserver) -> ActivationQuantizer:
    scale, _ = observer.qparams()
    return ActivationQuantizer(scale, observer.qmin, observer.qmax, threshold=float(observer.threshold()))


def static_activation_quantizers(model: nn.Module, calibration_images, act_bits: int = 8, calibrator="minmax",
                                 input_calibrator=None) -> dict[str, ActivationQuantizer]:
    """Layer name -> fixed :class:`ActivationQuantizer` for its input, calibrated on the float model.

    The observers of :func:`calibrate_activations` see ``calibration_images`` on the
    prepared (batch-norm folded) float ``model``; ``calibrator`` picks every threshold,
    except the model's own input (the first layer's), which ``input_calibrator`` picks if
    given. The weights do not enter: the same quantizers serve every weight bit width.
    """
    float_model = fold_every_batchnorm(model)
    observers = calibrate_activations(float_model, calibration_images, act_bits, calibrator)
    if input_calibrator is not None:
        first = next(iter(observers))
        observers[first] = calibrate_activations(float_model, calibration_images, act_bits, input_calibrator,
                                                 layers=[first])[first]
    return {name: _static_quantizer(obs) for name, obs in observers.items()}


def quantize_static(model: nn.Module, calibration_images, weight_bits: int = 8, act_bits: int = 8,
                    granularity: str = "tensor", calibrator="minmax", weight_calibrator="minmax",
                    input_calibrator=None, quantizers: dict | None = None) -> nn.Module:
    """Static PTQ: weights fake-quantized, activation scales fixed from calibration data.

    1. fold batch norms; 2. observers on the input of every Conv2d/Linear see
    ``calibration_images`` (a tensor, cut in batches of 256, or a list of batches) on the
    float model; 3. each observer's ``calibrator`` chooses its threshold (a name of
    :func:`qlib.calibration.get_calibrator` or a function ``(x, qmin, qmax) -> T``;
    ``input_calibrator``, if given, for the model's input); 4. weights quantized with
    ``weight_calibrator``, one scale per weight (``granularity="tensor"``) or per output
    channel, axis 0 (``"channel"``).

    ``quantizers`` (from :func:`static_activation_quantizers`) skips steps 2-3, so one
    calibration serves several weight settings. Returns a new model; ``model`` is not changed.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "quantize_static")
    if quantizers is None:
        quantizers = static_activation_quantizers(model, calibration_images, act_bits, calibrator, input_calibrator)
    quantized = _with_quantized_weights(model, weight_bits, granularity, weight_calibrator)
    return _wrap(quantized, copy.deepcopy(quantizers)).eval()


def quantize_dynamic(model: nn.Module, weight_bits: int = 8, act_bits: int = 8, granularity: str = "tensor",
                     weight_calibrator="minmax", calibrator="minmax") -> nn.Module:
    """Dynamic PTQ: weights fake-quantized ahead of time, each activation's range computed on the fly.

    Weights as in :func:`quantize_static` (``granularity`` ``"tensor"`` or ``"channel"``). No
    calibration data: every input of a quantized layer is quantized with the threshold
    ``calibrator`` picks for that very batch (``max|x|`` by default).
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "quantize_dynamic")
    quantized = _with_quantized_weights(model, weight_bits, granularity, weight_calibrator)
    names = [n for n, m in quantized.named_modules() if isinstance(m, QUANTIZED_LAYERS)]
    return _wrap(quantized, {name: DynamicActivationQuantizer(act_bits, calibrator) for name in names}).eval()


# --- CEA N2D2's flow --------------------------------------------------------------------------

@torch.no_grad()
def quantize_n2d2(model: nn.Module, calibration_images, weight_bits: int = 8, act_bits: int = 8,
                  granularity: str = "tensor", method: str = "mse",
                  input_calibrator=None) -> tuple[nn.Module, list[dict]]:
    """PTQ as CEA's N2D2 framework does it; returns ``(model, report)``.

    1. **Weight normalisation**: every weight is divided by ``alpha = max|w|`` of its layer
       (``granularity="tensor"``) or of its output channel (``"channel"``), so it lies
       in [-1, 1], then quantized to the narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
       (Dividing by ``alpha`` and multiplying the layer's output back by it is the same
       as a symmetric scale ``alpha / qmax``; this is what the fake-quantized weight holds.)
    2. **Activation thresholds, layer by layer**: in forward order, the input of each layer
       is observed with every *earlier* layer already quantized (weights and inputs), and
       its threshold ``beta`` is chosen from those values by ``method`` (``"mse"`` or
       ``"kl"``, :mod:`qlib.calibration`). Activations normalised by ``beta`` lie in [0, 1]
       (unsigned, after a ReLU) or [-1, 1] and are quantized to ``act_bits`` bits.
    3. The real scaling between two layers, ``alpha_k * beta_k / beta_(k+1)``, is what an
       integer implementation multiplies the accumulator by (chapter 6 approximates it with
       a fixed-point multiplier and shifts).

    ``input_calibrator`` (e.g. ``"minmax"``), if given, picks the model input's threshold instead.
    ``report`` has one entry per layer: ``name``, ``alpha`` (weight normalisation factors),
    ``beta`` (input threshold), ``signed``.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "quantize_n2d2")
    if method not in ("mse", "kl"):
        raise ValueError(f"method must be 'mse' or 'kl' (N2D2's two distances), got {method!r}")
    quantized = _with_quantized_weights(model, weight_bits, granularity, "minmax", narrow=True)
    reference = fold_every_batchnorm(model)
    report = []
    batches = _batches(calibration_images)
    for k, name in enumerate(_layers_in_call_order(quantized, batches[0])):
        chooser = input_calibrator if k == 0 and input_calibrator is not None else method
        observer = calibrate_activations(quantized, batches, act_bits, chooser, layers=[name])[name]
        _wrap(quantized, {name: _static_quantizer(observer)})
        w = reference.get_submodule(name).weight
        rows = w.abs().reshape(w.shape[0], -1) if granularity == "channel" else w.abs().reshape(1, -1)
        alpha = rows.amax(dim=1)
        report.append({"name": name, "alpha": alpha, "beta": float(observer.threshold()),
                       "signed": observer.signed})
    return quantized.eval(), report
