"""Tests of qlib.cost: the Horowitz (ISSCC 2014) table and model-size arithmetic, against hand-worked values."""
from __future__ import annotations

import numpy as np
import pytest

from qlib.cost import ENERGY_45NM, energy_ratio, model_size_bytes, tokens_per_second_upper_bound

# Horowitz 2014, 45 nm, typed in from the paper's table (pJ per operation).
PAPER = {
    "int8_add": 0.03, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
    "int8_mult": 0.2, "int32_mult": 3.1, "fp16_mult": 1.1, "fp32_mult": 3.7,
    "sram_read_32bit": 5.0, "dram_read_32bit": 640.0,
}


def test_energy_table_matches_the_paper():
    assert set(ENERGY_45NM) == set(PAPER)
    for name, pj in PAPER.items():
        entry = ENERGY_45NM[name]
        assert entry.value == pj, f"{name}: expected {pj} pJ, got {entry.value}"
        assert entry.unit == "pJ"
        assert "Horowitz" in entry.source and "ISSCC 2014" in entry.source
        assert entry.kind in {"add", "mult", "memory"}


def test_energy_table_ordering_the_chapter_relies_on():
    e = {name: entry.value for name, entry in ENERGY_45NM.items()}
    # fewer bits is cheaper, integer is cheaper than float at equal width
    assert e["int8_add"] < e["int32_add"] < e["fp32_add"]
    assert e["int8_mult"] < e["fp16_mult"] < e["int32_mult"] < e["fp32_mult"]
    # memory dwarfs arithmetic
    assert e["dram_read_32bit"] > 100 * e["sram_read_32bit"] > 100 * e["fp32_mult"]


def test_dram_read_over_int8_add_is_about_21000():
    # 640 / 0.03 = 21,333.3...
    assert energy_ratio("dram_read_32bit", "int8_add") == pytest.approx(64000 / 3, rel=1e-12)
    assert round(energy_ratio("dram_read_32bit", "int8_add"), -3) == 21000
    # the lectures' "about 200x": a DRAM read against a 32-bit int multiply, 640 / 3.1
    assert energy_ratio("dram_read_32bit", "int32_mult") == pytest.approx(206.45, abs=0.01)


def test_energy_ratio_unknown_name():
    with pytest.raises(KeyError, match="unknown operation 'int4_add'"):
        energy_ratio("int4_add", "int8_add")


@pytest.mark.parametrize("bits, gigabytes", [(32, 28), (16, 14), (8, 7), (4, 3.5)])
def test_7b_model_sizes(bits, gigabytes):
    # 7e9 * bits / 8 bytes, in decimal GB
    assert model_size_bytes(7e9, bits) == gigabytes * 10**9
    assert model_size_bytes(7_000_000_000, bits) == gigabytes * 10**9


def test_fractional_bits_mx():
    # MXFP4: 4-bit elements + one 8-bit scale per 32 elements = 4.25 bits
    assert model_size_bytes(7e9, 4 + 8 / 32) == 3_718_750_000
    assert model_size_bytes(32, 4.25) == 17.0  # one MX block: 16 bytes of elements + 1 byte scale
    assert model_size_bytes(3, 3) == 1.125  # no padding to whole bytes
    assert model_size_bytes(0, 8) == 0.0
    assert model_size_bytes(np.int64(1000), np.float64(6.25)) == 781.25


def test_tokens_per_second_hand_values():
    # 7e9 weights at 16 bits = 14 GB; at 1 TB/s that is 1e12 / 14e9 = 71.43 tokens/s
    assert tokens_per_second_upper_bound(7e9, 16, 1e12) == pytest.approx(1e12 / 14e9, rel=1e-15)
    assert tokens_per_second_upper_bound(7e9, 4, 1e12) == pytest.approx(1000 / 3.5, rel=1e-15)
    # halving the bits doubles the bound
    assert tokens_per_second_upper_bound(7e9, 8, 100e9) == 2 * tokens_per_second_upper_bound(7e9, 16, 100e9)


@pytest.mark.parametrize("args, error, message", [
    ((7.5e0, 8), ValueError, "whole number"),
    ((-1, 8), ValueError, ">= 0"),
    ((float("nan"), 8), ValueError, "whole number"),
    ((True, 8), TypeError, "must be a number"),
    (("7e9", 8), TypeError, "must be a number"),
    ((7e9, 0), ValueError, "bits must be a finite number > 0"),
    ((7e9, -4), ValueError, "bits must be a finite number > 0"),
    ((7e9, float("inf")), ValueError, "bits must be a finite number > 0"),
    ((7e9, "4"), TypeError, "bits must be a number"),
])
def test_model_size_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        model_size_bytes(*args)


@pytest.mark.parametrize("args, error, message", [
    ((0, 8, 1e12), ValueError, "n_params must be > 0"),
    ((7e9, 8, 0), ValueError, "bandwidth_bytes_per_s must be a finite number > 0"),
    ((7e9, 8, -1e9), ValueError, "bandwidth_bytes_per_s must be a finite number > 0"),
    ((7e9, 8, None), TypeError, "bandwidth_bytes_per_s must be a number"),
    ((7e9, 0, 1e12), ValueError, "bits must be a finite number > 0"),
])
def test_tokens_per_second_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        tokens_per_second_upper_bound(*args)
