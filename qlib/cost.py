"""What a number costs: energy per operation, bytes per model, tokens per second of bandwidth.

Chapter: Number formats (chapter 1), section "Why precision matters for cost".

The energy figures are the ones the course lectures quote, from M. Horowitz,
"Computing's energy problem (and what we can do about it)", IEEE International Solid-State
Circuits Conference (ISSCC) 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323. They are estimates
for a 45 nm process at 0.9 V: newer processes are cheaper per operation, but the ratios (a DRAM
read costs thousands of additions) have stayed of the same order.

Sizes are in bytes; 1 GB here is 10**9 bytes (not 2**30), as memory bandwidths are quoted.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction

HOROWITZ_2014 = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", "
                 "ISSCC 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V)")


@dataclass(frozen=True)
class EnergyCost:
    """The energy of one operation: ``value`` in ``unit``, as measured or estimated by ``source``."""

    description: str
    kind: str  # "add", "mult" or "memory"
    value: float
    unit: str = "pJ"
    source: str = HOROWITZ_2014


# Energy of one operation at 45 nm (Horowitz 2014), in picojoules (1 pJ = 1e-12 J).
ENERGY_45NM: dict[str, EnergyCost] = {
    "int8_add": EnergyCost("8-bit int add", "add", 0.03),
    "int32_add": EnergyCost("32-bit int add", "add", 0.1),
    "fp16_add": EnergyCost("16-bit float add", "add", 0.4),
    "fp32_add": EnergyCost("32-bit float add", "add", 0.9),
    "int8_mult": EnergyCost("8-bit int mult", "mult", 0.2),
    "int32_mult": EnergyCost("32-bit int mult", "mult", 3.1),
    "fp16_mult": EnergyCost("16-bit float mult", "mult", 1.1),
    "fp32_mult": EnergyCost("32-bit float mult", "mult", 3.7),
    "sram_read_32bit": EnergyCost("32-bit SRAM read (8 KB)", "memory", 5.0),
    "dram_read_32bit": EnergyCost("32-bit DRAM read", "memory", 640.0),
}


def energy_ratio(numerator: str, denominator: str) -> float:
    """How many times more energy operation ``numerator`` takes than ``denominator``.

    Both are keys of :data:`ENERGY_45NM`, e.g. ``energy_ratio("dram_read_32bit", "int8_add")``
    = 640 / 0.03, about 21,000.
    """
    for name in (numerator, denominator):
        if name not in ENERGY_45NM:
            raise KeyError(f"unknown operation {name!r}; choose one of {sorted(ENERGY_45NM)}")
    return ENERGY_45NM[numerator].value / ENERGY_45NM[denominator].value


def _count(n_params, name: str = "n_params") -> int:
    """``n_params`` as an int: a non-negative whole number (7e9 is accepted, 7.5 is not)."""
    if isinstance(n_params, bool) or not isinstance(n_params, numbers.Real):
        raise TypeError(f"{name} must be a number, got {n_params!r}")
    if not math.isfinite(n_params) or n_params != int(n_params):
        raise ValueError(f"{name} must be a whole number of parameters, got {n_params!r}")
    if n_params < 0:
        raise ValueError(f"{name} must be >= 0, got {n_params!r}")
    return int(n_params)


def _positive(value, name: str) -> Fraction:
    """``value`` as an exact Fraction after checking it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return Fraction(value)


def model_size_bytes(n_params, bits) -> float:
    """Bytes to store ``n_params`` numbers of ``bits`` bits each: n_params * bits / 8.

    ``bits`` may be fractional: an MX format with 4-bit elements and one 8-bit scale per block
    of 32 costs 4 + 8/32 = 4.25 bits per element. The product is computed exactly (with
    fractions) and returned as the nearest float; for 7e9 parameters at 4 bits it is exactly
    3.5e9. No padding to whole bytes or to memory pages is added.
    """
    n = _count(n_params)
    return float(n * _positive(bits, "bits") / 8)


def tokens_per_second_upper_bound(n_params, bits, bandwidth_bytes_per_s) -> float:
    """Most tokens per second a memory-bound decoder can generate: bandwidth / model bytes.

    Generating one token of a language model (batch size 1) reads every weight once, so at
    best it takes model_size_bytes(n_params, bits) / bandwidth seconds. The bound ignores
    the activations and the KV cache (more bytes, so fewer tokens) and assumes the arithmetic
    keeps up with memory; halving the bits per weight doubles it.
    """
    n = _count(n_params)
    if n == 0:
        raise ValueError("n_params must be > 0: a model without weights has no bound")
    size = n * _positive(bits, "bits") / 8
    return float(_positive(bandwidth_bytes_per_s, "bandwidth_bytes_per_s") / size)
