"""Power-of-two (logarithmic) quantization: every magnitude becomes the nearest ``S * 2^-k``.

Chapter: Linear quantization (chapter 3, section "A non-uniform grid: powers of two").
The idea is Miyashita, Lee and Murmann, "Convolutional Neural Networks using Logarithmic Data
Representation", arXiv:1603.01025 (2016).

A ``b``-bit code is one sign bit and ``b - 1`` magnitude bits, the magnitude 0 standing for the
value 0. Read as a signed integer, the code ``q`` lies in the narrow range ``[-qmax, qmax]``,
``qmax = 2^(b-1) - 1`` (``qlib.linear.integer_range(b, narrow=True)``), and means

    x_hat = 0                                  if q == 0
    x_hat = sign(q) * S * 2^(|q| - qmax)       otherwise

with a float32 scale ``S > 0``: the largest level is ``S`` itself (``|q| = qmax``), each smaller
code halves it, the smallest nonzero level is ``S * 2^-(qmax-1)``. At 3 bits the levels are
0, +-S/4, +-S/2, +-S. Compare a uniform grid of the same 2^b - 1 values, whose step is constant:
this one is dense near zero and coarse near ``S``, and its relative precision is the same at
every level.

Rounding (where "nearest" is decided): in the LINEAR domain. ``x`` goes to the level with the
smallest ``|x - x_hat|``:

* between the neighbours ``S 2^(p-1)`` and ``S 2^p`` the boundary is their midpoint
  ``0.75 * S * 2^p``;
* between 0 and the smallest level ``L = S 2^-(qmax-1)`` it is ``L / 2 = S * 2^-qmax``;
* a tie (``|x|`` exactly on a boundary) goes to the LARGER magnitude (away from zero);
* ``|x| > S`` saturates to ``S`` (the clipping of this grid).

This is not ``round(log2|x|)``, the rounding of Miyashita et al.: rounding the exponent puts the
boundary between ``S 2^(p-1)`` and ``S 2^p`` at their geometric mean ``2^-0.5 * S 2^p``, about
``0.707 * S 2^p`` instead of ``0.75 * S 2^p``, so it sends the values in between up, to the level
that is farther away. (There it has no ties: the geometric mean is irrational.)

Exactness: no rounding of ``x / S`` decides a level. The boundaries ``0.75 * S * 2^p`` and
``S * 2^-qmax`` are exact float64 numbers (``S`` is float32), and ``|x|`` is compared with them
in float64, so every decision is exact for float32 and float64 inputs. Levels are float32: ``S``
times a power of two, exact as long as the smallest level is a normal float32 number, which is
checked (``S * 2^-(qmax-1) >= 2^-126``). ``bits`` lies in 2..7: at 8 bits the 127 exponents would
reach below float32's normal range for any scale under 1.

Multiplication becomes a shift: for integer activations ``x_i`` and codes ``q_i`` of one scale S,

    sum_i x_i w_i = S * 2^(1 - qmax) * sum_{q_i != 0} sign(q_i) * (x_i << (|q_i| - 1))

an integer sum of shifted activations, rescaled once (per output channel, like a per-channel
linear scale).

At ``bits = 2`` the grid is 0 and +-S with boundary S/2: a ternary quantizer (chapter 8).
"""
from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

from qlib._checks import as_float_tensor, check_axis

#: Smallest and largest bit width (sign bit included) of a power-of-two code.
POW2_MIN_BITS = 2
POW2_MAX_BITS = 7
#: float32's smallest normal number, 2^-126: every level must be at least this.
FLOAT32_TINY = 2.0 ** -126


def pow2_qmax(bits: int) -> int:
    """The largest code ``qmax = 2^(bits-1) - 1``: also the number of nonzero magnitudes."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an integer, got {bits!r}")
    if not POW2_MIN_BITS <= int(bits) <= POW2_MAX_BITS:
        raise ValueError(f"a power-of-two code needs {POW2_MIN_BITS} to {POW2_MAX_BITS} bits "
                         f"(a sign bit and at least one magnitude bit), got {bits}")
    return 2 ** (int(bits) - 1) - 1


def _times_pow2(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``v * 2^p`` in float64, exact (``exp2`` of an integer is an exact power of two), broadcasting."""
    return v.double() * torch.exp2(p.to(torch.float64))


def _scale_tensor(scale, qmax: int) -> torch.Tensor:
    """``scale`` as float32, checked positive, finite and large enough for exact float32 levels."""
    s = as_float_tensor(scale, "scale").to(torch.float32)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scale overflows float32")
    if bool((s <= 0).any()):
        raise ValueError("scale must be positive")
    smallest = s.double() * 2.0 ** (1 - qmax)
    if bool((smallest < FLOAT32_TINY).any()):
        raise ValueError(f"scale {float(s.min()):.3g} is too small for {qmax} powers of two: the smallest level "
                         f"scale * 2^-{qmax - 1} falls below float32's normal range (2^-126)")
    return s


def _check_broadcast(x: torch.Tensor, s: torch.Tensor, name: str) -> None:
    try:
        torch.broadcast_shapes(x.shape, s.shape)
    except RuntimeError as err:
        raise ValueError(f"scale of shape {tuple(s.shape)} does not broadcast against {name} of shape "
                         f"{tuple(x.shape)}") from err


def pow2_quantize(x, scale, bits: int) -> torch.Tensor:
    """Codes ``q`` in ``[-qmax, qmax]`` (int64) of the nearest power-of-two levels of ``x`` (see the module).

    ``scale`` (the largest level ``S``) is a number or a tensor that broadcasts against ``x``.
    Nearest in the linear domain; ties go to the larger magnitude; ``|x| > S`` gives ``+-qmax``.
    """
    qmax = pow2_qmax(bits)
    x = as_float_tensor(x)
    s = _scale_tensor(scale, qmax).double()
    _check_broadcast(x, s, "x")
    a = x.abs().double()
    # An estimate of the exponent p of the nearest power of two, from the binary exponent of a / s ...
    mantissa, exponent = torch.frexp(a / s)                       # a / s = mantissa * 2^exponent
    p = torch.where(mantissa >= 0.75, exponent, exponent - 1)
    # ... made exact: 2^p s is the nearest level iff 0.75 * 2^p s <= a < 1.5 * 2^p s (exact products).
    p = p + (a >= _times_pow2(1.5 * s, p)).long() - (a < _times_pow2(0.75 * s, p)).long()
    magnitude = torch.clamp(p + qmax, 1, qmax)                    # saturate above S, floor at the smallest level
    nonzero = a >= s * 2.0 ** -qmax                              # L/2 = S 2^-qmax; a tie goes up
    return (torch.sign(x).long() * torch.where(nonzero, magnitude, 0)).to(torch.int64)


def pow2_dequantize(q, scale, bits: int) -> torch.Tensor:
    """Float32 values ``sign(q) * S * 2^(|q| - qmax)`` (0 where ``q == 0``) of codes from :func:`pow2_quantize`."""
    qmax = pow2_qmax(bits)
    q = torch.as_tensor(q)
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor, got dtype {q.dtype}")
    if q.numel() and int(q.abs().max()) > qmax:
        raise ValueError(f"{bits}-bit power-of-two codes lie in [-{qmax}, {qmax}], got values in "
                         f"[{int(q.min())}, {int(q.max())}]")
    q = q.to(torch.int64)
    s = _scale_tensor(scale, qmax).double()
    _check_broadcast(q, s, "q")
    level = _times_pow2(s, q.abs() - qmax)                        # exact: S times a power of two
    return (torch.sign(q).double() * level).to(torch.float32)


def pow2_fake_quantize(x, scale, bits: int) -> torch.Tensor:
    """``pow2_dequantize(pow2_quantize(x, scale, bits), scale, bits)``: the nearest level itself, float32."""
    return pow2_dequantize(pow2_quantize(x, scale, bits), scale, bits)


def pow2_levels(bits: int, scale=1.0) -> torch.Tensor:
    """Every value a ``bits``-bit power-of-two code can take with one ``scale``, ascending (float32)."""
    qmax = pow2_qmax(bits)
    s = _scale_tensor(scale, qmax)
    if s.numel() != 1:
        raise ValueError(f"pow2_levels takes one scale, got {s.numel()}")
    return pow2_dequantize(torch.arange(-qmax, qmax + 1), float(s.reshape(())), bits)


def pow2_channel_scales(w, axis: int = 0) -> torch.Tensor:
    """Per-channel scales ``S_c = max |w|`` over everything but ``axis``, shaped to broadcast against ``w``.

    The largest magnitude of each channel is then exactly its top level. A channel of zeros gets
    ``S_c = 1`` (any positive scale gives it all-zero codes).
    """
    w = as_float_tensor(w, "w").to(torch.float32)
    axis = check_axis(w, axis)
    others = [d for d in range(w.ndim) if d != axis]
    absmax = w.abs().amax(dim=others, keepdim=True) if others else w.abs()
    return torch.where(absmax > 0, absmax, torch.ones_like(absmax))


def pow2_fake_quantize_weight(w, bits: int, axis: int = 0) -> torch.Tensor:
    """One weight tensor fake-quantized to ``bits``-bit powers of two, one scale per channel along ``axis``."""
    w = as_float_tensor(w, "w").to(torch.float32)
    return pow2_fake_quantize(w, pow2_channel_scales(w, axis), bits)


@torch.no_grad()
def pow2_fake_quantize_weights(model: nn.Module, bits: int) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv2d weights are power-of-two fake-quantized per output channel.

    Biases, batch-norm parameters and activations stay in float32; the original model is untouched.
    """
    from qlib.weights import quantized_layers

    pow2_qmax(bits)
    model = copy.deepcopy(model)
    for _, layer in quantized_layers(model):
        layer.weight.copy_(pow2_fake_quantize_weight(layer.weight, bits, axis=0))
    return model
