"""Batch-norm folding: merge an inference-time batch norm into the layer before it.

Chapter 6: Integer-only inference (section "Batch-norm folding").

In eval mode a batch norm is a fixed affine map per channel ``c``:

    BN(y)_c = gamma_c * (y_c - mean_c) / sqrt(var_c + eps) + beta_c

If ``y = W x + b`` (a convolution or a linear layer, output channel ``c`` on axis 0 of
``W``), then ``BN(y)`` is again a layer of the same shape, with

    a_c  = gamma_c / sqrt(var_c + eps)
    W'_c = a_c * W_c                       (every weight of output channel c)
    b'_c = a_c * (b_c - mean_c) + beta_c    (b = 0 if the layer had no bias)

so the batch norm costs nothing at inference, and an integer model never needs it.
The arithmetic is done in float64 and the results are cast to the layer's dtype.

Folding uses the *running* statistics: a batch norm in training mode normalizes with
the statistics of each batch, which no fixed weight can reproduce, so both modules must
be in eval mode (as in ``torch.nn.utils.fusion.fuse_conv_bn_eval``).

Which batch norm belongs to which layer is read from the model once, here
(:func:`batchnorm_pairs`): every pipeline of the course (post-training quantization, QAT,
the integer model) folds through it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm_parameters(weight, bias, running_mean, running_var, eps: float,
                              gamma=None, beta=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` of a layer with weight ``weight`` (output channels on axis 0) followed by a batch norm.

        a  = gamma / sqrt(running_var + eps)
        W' = W * a          (a broadcast along axis 0 of W)
        b' = (b - running_mean) * a + beta

    ``bias=None`` means a layer without bias (b = 0); ``gamma=None`` / ``beta=None`` mean a
    batch norm without affine parameters (gamma = 1, beta = 0). Computed in float64; ``W'``
    and ``b'`` are returned in the dtype of ``weight``. Raises ``ValueError`` if a statistic
    does not have one entry per output channel, if a value is NaN or infinite, or if
    ``running_var + eps`` is not positive.
    """
    weight = torch.as_tensor(weight)
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got dtype {weight.dtype}")
    if weight.ndim < 2:
        raise ValueError(f"weight must have an output-channel axis and at least one input axis, "
                         f"got shape {tuple(weight.shape)}")
    channels = weight.shape[0]
    dtype = weight.dtype

    def channel_vector(value, name: str, default: float) -> torch.Tensor:
        if value is None:
            return torch.full((channels,), default, dtype=torch.float64)
        v = torch.as_tensor(value).detach().to(torch.float64)
        if v.shape != (channels,):
            raise ValueError(f"{name} has shape {tuple(v.shape)}, but the layer has {channels} output "
                             f"channels: a batch norm must follow the layer whose channels it normalizes")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} holds NaN or infinite values")
        return v

    mean = channel_vector(running_mean, "running_mean", 0.0)
    var = channel_vector(running_var, "running_var", 1.0)
    gamma = channel_vector(gamma, "gamma", 1.0)
    beta = channel_vector(beta, "beta", 0.0)
    b = channel_vector(bias, "bias", 0.0)
    w = weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight holds NaN or infinite values")
    if not bool((var + eps > 0).all()):
        raise ValueError("running_var + eps must be positive")

    a = gamma / torch.sqrt(var + eps)                  # [C_out]
    folded_weight = w * a.reshape(-1, *([1] * (w.ndim - 1)))
    folded_bias = (b - mean) * a + beta
    return folded_weight.to(dtype), folded_bias.to(dtype)


def _check_pair(layer: nn.Module, bn: nn.Module, layer_type, bn_type) -> None:
    if not isinstance(layer, layer_type):
        raise TypeError(f"expected a {layer_type.__name__} before the batch norm, got {type(layer).__name__}")
    if not isinstance(bn, bn_type):
        raise TypeError(f"expected a {bn_type.__name__} after the {layer_type.__name__}, got {type(bn).__name__}")
    if layer.training or bn.training:
        raise ValueError("folding needs both modules in eval mode (call model.eval()): in training mode a "
                         "batch norm uses each batch's statistics, which fixed weights cannot reproduce")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("this batch norm keeps no running statistics (track_running_stats=False): "
                         "there is no fixed affine map to fold")


def _folded_copy(layer: nn.Module, bn: nn.Module) -> nn.Module:
    weight, bias = fold_batchnorm_parameters(
        layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps,
        bn.weight if bn.affine else None, bn.bias if bn.affine else None)
    folded = copy.deepcopy(layer)
    folded.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
    folded.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
    return folded


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` equal to ``bn(conv(x))`` in eval mode (see the module for the formula).

    Stride, padding, dilation and groups are kept; the result always has a bias.
    The input modules are not changed.
    """
    _check_pair(conv, bn, nn.Conv2d, nn.BatchNorm2d)
    return _folded_copy(conv, bn)


def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """A new ``Linear`` equal to ``bn(linear(x))`` in eval mode (see the module for the formula)."""
    _check_pair(linear, bn, nn.Linear, nn.BatchNorm1d)
    return _folded_copy(linear, bn)


def fold_batchnorms(model: nn.Module, pairs) -> nn.Module:
    """A copy of ``model`` in which each ``(layer_name, bn_name)`` of ``pairs`` is folded.

    The layer is replaced by its folded version and the batch norm by ``nn.Identity``, so the
    model's ``forward`` is unchanged. Example: ``fold_batchnorms(cnn, [("conv1", "bn1"),
    ("conv2", "bn2")])`` for :class:`qlib.models.DigitsCNN`. ``model`` itself is not changed.
    """
    folded = copy.deepcopy(model)
    for layer_name, bn_name in pairs:
        layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
        if isinstance(layer, nn.Conv2d):
            new_layer = fold_conv_bn(layer, bn)
        elif isinstance(layer, nn.Linear):
            new_layer = fold_linear_bn(layer, bn)
        else:
            raise TypeError(f"{layer_name} is a {type(layer).__name__}: only Conv2d and Linear layers can "
                            "absorb a batch norm")
        folded.set_submodule(layer_name, new_layer)
        folded.set_submodule(bn_name, nn.Identity())
    return folded


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer_name, bn_name)``: each batch norm with the Conv2d or Linear registered just before it.

    Assumes the model's ``forward`` applies every batch norm right after that layer, in the order
    the modules are registered (true of :class:`qlib.models.DigitsCNN`, ``conv1, bn1, conv2, bn2``,
    and of :class:`qlib.models.DepthwiseDigitsCNN`). Raises ``ValueError`` if a batch norm does not
    follow such a layer, or if its channel count differs from the layer's outputs: then the model
    needs its pairs written out for :func:`fold_batchnorms`.
    """
    pairs, previous = [], None
    for name, module in model.named_modules():
        if isinstance(module, _BATCHNORMS):
            if previous is None:
                raise ValueError(f"batch norm {name} does not follow a Conv2d or Linear layer: cannot fold it")
            layer_name, layer = previous
            channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            if channels != module.num_features:
                raise ValueError(f"batch norm {name} has {module.num_features} channels but {layer_name} "
                                 f"has {channels} outputs: they do not belong together")
            pairs.append((layer_name, name))
            previous = None
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            previous = (name, module)
    return pairs


def fold_every_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every batch norm folded into the layer before it (:func:`batchnorm_pairs`)."""
    model = copy.deepcopy(model).eval()
    return fold_batchnorms(model, batchnorm_pairs(model)).eval()
