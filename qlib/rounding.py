"""Rounding to integers, with the tie rule stated by name.

Chapter: Linear quantization. Ties (values exactly halfway between two integers)
are where rounding modes differ; everywhere else they all give the nearest integer.

* ``half_to_even``: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2 (IEEE 754 default,
  ``torch.round``, ``numpy.round``, PyTorch's quantizers). Unbiased on average.
* ``half_away_from_zero``: 0.5 -> 1, 2.5 -> 3, -2.5 -> -3 (C's ``round``,
  gemmlowp's rounding right shift).
* ``floor`` and ``ceil`` are not nearest rounding; they appear only to show
  their bias.
"""
from __future__ import annotations

import torch


def round_half_to_even(x: torch.Tensor) -> torch.Tensor:
    """Nearest integer; ties go to the even neighbour."""
    return torch.round(x)


def round_half_away_from_zero(x: torch.Tensor) -> torch.Tensor:
    """Nearest integer; ties go away from zero: trunc(x) + sign(x) * [|x - trunc(x)| >= 1/2].

    Exact for every float input (``x - trunc(x)`` is exact in floating point,
    whereas ``floor(|x| + 0.5)`` rounds the sum first and gets 0.49999999999999994 wrong).
    """
    t = torch.trunc(x)
    return t + torch.sign(x) * ((x - t).abs() >= 0.5).to(x.dtype)


ROUNDING_MODES = {
    "half_to_even": round_half_to_even,
    "half_away_from_zero": round_half_away_from_zero,
    "floor": torch.floor,
    "ceil": torch.ceil,
}


def round_with(x: torch.Tensor, mode: str = "half_to_even") -> torch.Tensor:
    """Round ``x`` to integers (still a float tensor) with the named ``mode``."""
    try:
        fn = ROUNDING_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown rounding mode {mode!r}; choose one of {sorted(ROUNDING_MODES)}") from None
    return fn(x)
