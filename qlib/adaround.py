"""AdaRound: learn, for every weight, whether to round it down or up.

Chapter 5: Range clipping, calibration and rounding. (Nagel et al., "Up or Down?
Adaptive Rounding for Post-Training Quantization", ICML 2020.)

Rounding each weight to the nearest grid point minimises each weight's own error, not
the error of the layer's output, where the errors of many weights add up. AdaRound keeps
the grid (``scale`` from min-max or MSE, as usual) and only chooses, weight by weight,
``floor`` or ``floor + 1``:

    w_soft = scale * clamp(floor(w / scale) + h(V), qmin, qmax)
    h(V)   = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1

(the *rectified sigmoid*: it reaches 0 and 1 exactly, so gradients can settle there).
``V`` starts where ``h(V) = w/scale - floor(w/scale)`` (so ``w_soft = w`` at first) and is
trained by Adam, layer by layer, on calibration data to minimise

    mean((layer(x_fp; w) - layer(x_q; w_soft))^2) + reg_weight * sum(1 - |2 h(V) - 1|^beta)

``x_fp`` is the layer's input in the float model, ``x_q`` its input with every earlier
layer already rounded, so a layer can make up for the errors before it. The regulariser
pushes every ``h`` to 0 or 1; ``beta`` falls from 20 to 2 after a warm-up (20 % of the
steps, regulariser off) in which the output error alone moves ``V``. At the end each
weight is rounded up where ``h(V) >= 1/2`` (i.e. ``V >= 0``).

Where this differs from the paper: its final objective compares the outputs *after* the
layer's activation function, ``|| f_a(W x_fp) - f_a(W_soft x_q) ||^2``; the loss here stops
at the layer's output (convolution or linear, bias included, batch norm folded), so an
error on an output that a following ReLU sets to 0 in both models still counts. The names
follow the paper (``beta``, ``zeta``, ``gamma``); the book writes the exponent ``beta`` as
kappa and the rectified sigmoid with its numbers, ``clamp(1.2 sigmoid(V) - 0.1, 0, 1)``,
because it keeps beta and gamma for batch norm.

The result is never worse than rounding to nearest on this objective: after training,
both roundings are evaluated on all calibration inputs and the better one is kept
(:class:`LayerResult` says which). Training is seeded and deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from qlib._checks import as_float_tensor, check_bits, check_count
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity
from qlib.linear import integer_range
from qlib.folding import fold_every_batchnorm
from qlib.ptq import QUANTIZED_LAYERS, _layers_in_call_order, quantize_weight

ZETA = 1.1
GAMMA = -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` with ``zeta = 1.1``, ``gamma = -0.1``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """The ``V`` with ``h(V) = fraction`` (for ``0 <= fraction < 1``): ``-log((zeta - gamma) / (fraction - gamma) - 1)``."""
    fraction = torch.as_tensor(fraction)
    if bool(((fraction < 0) | (fraction >= 1)).any()):
        raise ValueError("fraction must lie in [0, 1): it is w/scale - floor(w/scale)")
    return -torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1.0)


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum(1 - |2 h(V) - 1|^beta)``: 0 when every ``h`` is 0 or 1, largest when ``h = 1/2``.

    A large ``beta`` leaves ``h`` free except very near 0 and 1; a small one pulls
    every ``h`` towards 0 or 1.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return (1.0 - (2.0 * rectified_sigmoid(v) - 1.0).abs().pow(beta)).sum()


def beta_schedule(step: int, n_steps: int, warmup: float = 0.2, beta_start: float = 20.0,
                  beta_end: float = 2.0) -> float | None:
    """``beta`` at ``step`` of ``n_steps``: ``None`` during the warm-up (no regulariser), then linear.

    After ``warmup * n_steps`` steps: ``beta = beta_end + (beta_start - beta_end) * (1 - t)``,
    ``t`` going from 0 to 1 over the remaining steps.
    """
    start = int(warmup * n_steps)
    if step < start:
        return None
    t = (step - start) / max(1, n_steps - start)
    return beta_end + (beta_start - beta_end) * max(0.0, 1.0 - t)


def layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed with ``weight`` in place of the layer's own (Conv2d or Linear)."""
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x, weight, layer.bias)
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    raise TypeError(f"AdaRound handles Conv2d and Linear layers, got {type(layer).__name__}")


def output_mse(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> float:
    """The objective without its regulariser: ``mean((layer(x; weight) - target)^2)``, in float64."""
    with torch.no_grad():
        err = (layer_forward(layer, x, weight) - target).to(torch.float64)
        return float((err * err).mean())


@dataclass
class LayerResult:
    """What AdaRound did to one layer."""

    name: str
    q: torch.Tensor            # the integers, int64, shape of the weight
    scale: torch.Tensor        # per tensor (shape []) or per output channel (shape [C_out, 1, ...])
    nearest_mse: float         # output MSE of rounding to nearest
    adaround_mse: float        # output MSE of the learned rounding (before choosing)
    flipped: float             # share of weights rounded differently from nearest
    kept: str                  # "adaround" or "nearest", whichever has the smaller output MSE

    @property
    def weight(self) -> torch.Tensor:
        """The fake-quantized weight ``scale * q``."""
        return self.q.to(torch.float32) * self.scale


def adaround_layer(layer: nn.Module, x_q: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                   qmin: int, qmax: int, n_steps: int = 300, batch_size: int = 32, lr: float = 1e-2,
                   reg_weight: float = 0.01, warmup: float = 0.2, beta: tuple[float, float] = (20.0, 2.0),
                   seed: int = 0, name: str = "") -> LayerResult:
    """Learn the rounding of ``layer.weight`` on the grid ``scale`` (zero point 0, ``[qmin, qmax]``).

    ``x_q``: the layer's inputs (earlier layers already quantized), ``target``: the float
    layer's outputs on the float inputs, both ``[N, ...]``. Each of ``n_steps`` Adam steps
    uses ``batch_size`` samples drawn with a generator seeded by ``seed``.
    See the module docstring for the objective and the schedule.
    """
    n_steps = check_count(n_steps, "n_steps", 1)
    batch_size = check_count(batch_size, "batch_size", 1)
    x_q = as_float_tensor(x_q, "x_q").to(torch.float32)
    target = as_float_tensor(target, "target").to(torch.float32)
    if x_q.shape[0] != target.shape[0]:
        raise ValueError(f"x_q and target must hold the same samples, got {x_q.shape[0]} and {target.shape[0]}")
    w = layer.weight.detach().to(torch.float32)
    scaled = w * torch.reciprocal(scale)
    w_floor = torch.floor(scaled)
    nearest = torch.clamp(torch.round(scaled), qmin, qmax)
    # w/scale - floor(w/scale), in [0, 1); a tiny negative w/scale gives 1 - tiny, which rounds to 1
    fraction = torch.clamp(scaled.to(torch.float64) - w_floor.to(torch.float64), max=1.0 - 2.0**-24)
    v = initial_v(fraction).to(torch.float32).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = x_q.shape[0]
    for step in range(n_steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        w_soft = scale * torch.clamp(w_floor + rectified_sigmoid(v), qmin, qmax)
        out = layer_forward(layer, x_q[idx], w_soft)
        loss = F.mse_loss(out, target[idx])
        b = beta_schedule(step, n_steps, warmup, *beta)
        if b is not None:
            loss = loss + reg_weight * rounding_regularizer(v, b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = torch.clamp(w_floor + (v.detach() >= 0).to(torch.float32), qmin, qmax)
    nearest_mse = output_mse(layer, x_q, nearest * scale, target)
    adaround_mse = output_mse(layer, x_q, learned * scale, target)
    kept = "adaround" if adaround_mse <= nearest_mse else "nearest"
    q = (learned if kept == "adaround" else nearest).to(torch.int64)
    return LayerResult(name, q, scale, nearest_mse, adaround_mse,
                       float((learned != nearest).to(torch.float64).mean()), kept)


@torch.no_grad()
def _inputs_and_outputs(model: nn.Module, name: str, images: torch.Tensor):
    """The input and output of layer ``name`` when ``model`` runs on ``images``."""
    seen = {}

    def hook(module, inputs, output):
        seen["x"], seen["y"] = inputs[0].detach(), output.detach()

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        model(images)
    finally:
        handle.remove()
    return seen["x"], seen["y"]


def adaround_model(model: nn.Module, calibration_images: torch.Tensor, bits: int = 4,
                   granularity: str = "channel", weight_calibrator="minmax", n_steps: int = 300,
                   batch_size: int = 32, lr: float = 1e-2, reg_weight: float = 0.01, seed: int = 0,
                   verbose: bool = False):
    """``(model, results)``: a copy of ``model`` (batch norms folded) with AdaRounded weights.

    Layer by layer in forward order: the grid is the symmetric signed ``bits``-bit grid of
    :func:`qlib.ptq.quantize_weight` (threshold by ``weight_calibrator``; ``granularity``
    ``"channel"``: one scale per output channel, ``"tensor"``: one per weight); inputs ``x_q``
    come from the copy in which the earlier layers are already rounded, targets from the float
    model. Activations stay in float32.
    ``results`` lists one :class:`LayerResult` per layer. ``verbose`` prints a line per layer.
    """
    bits = check_bits(bits)
    check_granularity(granularity, TENSOR_OR_CHANNEL, "adaround_model")
    images = as_float_tensor(calibration_images, "calibration_images").to(torch.float32)
    float_model = fold_every_batchnorm(model)
    quantized = fold_every_batchnorm(model).requires_grad_(False)
    qmin, qmax = integer_range.unguarded(bits, signed=True)
    results = []
    for k, name in enumerate(_layers_in_call_order(quantized, images)):
        layer = quantized.get_submodule(name)
        if not isinstance(layer, QUANTIZED_LAYERS):
            continue
        _, target = _inputs_and_outputs(float_model, name, images)
        x_q, _ = _inputs_and_outputs(quantized, name, images)
        _, scale = quantize_weight(layer.weight, bits, granularity, weight_calibrator)
        result = adaround_layer(layer, x_q, target, scale, qmin, qmax, n_steps, batch_size, lr,
                                reg_weight, seed=seed + k, name=name)
        with torch.no_grad():
            layer.weight.copy_(result.weight)
        results.append(result)
        if verbose:
            print(f"{name}: output MSE nearest {result.nearest_mse:.3g}, AdaRound {result.adaround_mse:.3g} "
                  f"({100 * result.flipped:.1f} % of weights flipped), kept {result.kept}", flush=True)
    return quantized.eval(), results


def nearest_model(model: nn.Module, bits: int = 4, granularity: str = "channel",
                  weight_calibrator="minmax") -> nn.Module:
    """The same grid as :func:`adaround_model`, every weight rounded to nearest (the baseline)."""
    check_granularity(granularity, TENSOR_OR_CHANNEL, "nearest_model")
    quantized = fold_every_batchnorm(model)
    with torch.no_grad():
        for _, layer in [(n, m) for n, m in quantized.named_modules() if isinstance(m, QUANTIZED_LAYERS)]:
            layer.weight.copy_(quantize_weight(layer.weight, bits, granularity, weight_calibrator)[0])
    return quantized.eval()
