"""Stochastic rounding: round up with probability equal to the distance from the floor.

Chapter 5: Range clipping, calibration and rounding (lab05_calibration).

    round_stochastic(x) = floor(x) + 1   with probability  x - floor(x)
                        = floor(x)       otherwise

Only the two integers around ``x`` are ever chosen, integers stay where they are, and
the result is unbiased: ``E[round_stochastic(x)] = floor(x) + (x - floor(x)) = x``.
Its variance is ``f (1 - f)`` with ``f = x - floor(x)`` (at most 1/4, at ``f = 1/2``).
Round-to-nearest has no variance but a bias that does not average out: adding 0.3 to a
value ten times with rounding to the nearest integer after each addition adds nothing.

The random numbers come from the ``torch.Generator`` passed in, so a fixed seed gives
the same result on every run: ``u = torch.rand(x.shape, generator=generator,
dtype=torch.float64)``, one uniform number in [0, 1) per element in row-major order, and
the value rounds up where ``u < x - floor(x)`` (both in float64: 53 random bits, and
``x - floor(x)`` exact for every float32 ``x`` except negative ones closer to 0 than
about 1e-9, whose ``1 - |x|`` rounds to 1).
"""
from __future__ import annotations

import torch

from qlib._checks import as_float_tensor, check_integer_range
from qlib._reference import reference
from qlib.linear import _scale_tensor, _zero_point_tensor


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError("stochastic rounding needs a torch.Generator (e.g. torch.Generator().manual_seed(0)) "
                        f"so that results can be reproduced, got {type(generator).__name__}")
    return generator


def _round_stochastic(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x64 = x.to(torch.float64)
    floor = torch.floor(x64)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return (floor + (u < x64 - floor).to(torch.float64)).to(x.dtype)


@reference
def round_stochastic(x, generator: torch.Generator) -> torch.Tensor:
    """Round every element of ``x`` to ``floor(x)`` or ``floor(x) + 1``, up with probability ``x - floor(x)``.

    ``generator`` (a ``torch.Generator``) supplies one uniform ``u`` in [0, 1) per element
    (``torch.rand(x.shape, generator=generator, dtype=torch.float64)``); the element rounds
    up where ``u < x - floor(x)``. Returns a float tensor of the dtype of ``x`` (float32 or
    float64) holding integers. Unbiased: the mean over many draws tends to ``x``.

    Raises ``TypeError`` without a generator, ``ValueError`` for NaN/inf or empty input.
    """
    x = as_float_tensor(x)
    return _round_stochastic(x, _check_generator(generator))


def quantize_stochastic(x, scale, zero_point, qmin: int, qmax: int, generator: torch.Generator) -> torch.Tensor:
    """``q = clamp(round_stochastic(x * (1/scale)) + zero_point, qmin, qmax)`` as int64.

    As :func:`qlib.linear.quantize` (float32 ``x * (1/scale)``), with stochastic rounding in
    place of round half to even. Unbiased inside the range; clamping is not.
    """
    check_integer_range(qmin, qmax)
    x = as_float_tensor(x).to(torch.float32)
    inv_scale = torch.reciprocal(_scale_tensor(scale))
    zp = _zero_point_tensor(zero_point)
    rounded = _round_stochastic(x * inv_scale, _check_generator(generator)).to(torch.float64)
    return torch.clamp(rounded + zp.to(torch.float64), qmin, qmax).to(torch.int64)


def fake_quantize_stochastic(x, scale, zero_point, qmin: int, qmax: int, generator: torch.Generator) -> torch.Tensor:
    """``scale * (quantize_stochastic(x, ...) - zero_point)`` in float32: one random draw of the quantized ``x``."""
    q = quantize_stochastic(x, scale, zero_point, qmin, qmax, generator)
    zp = _zero_point_tensor(zero_point)
    return (q - zp).to(torch.float32) * _scale_tensor(scale)
