"""Tests of qlib.microscaling against an independent MX construction and blocks worked by hand.

torchao (the usual MX reference) is not installed. The oracle here builds the OCP MX
conversion from other parts: the shared exponent from the float32 exponent field
(``bits >> 23``, no logarithm and no frexp), the element maxima and emax typed in
from the spec's tables, element rounding by torch's float8 casts (FP8) and
ml_dtypes' casts (FP6, FP4), and MXINT8 by torch.round on 64 * x.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from qlib._reference import ReferenceUnavailable, blocked
from qlib.microscaling import (
    MX_BLOCK,
    MX_ELEMENTS,
    MXFP4_E2M1,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    bits_per_element,
    mx_dequantize,
    mx_fake_quantize,
    mx_quantize,
    mx_shared_exponent,
)

# From the OCP MX spec v1.0 tables: (emax of the element, largest element magnitude)
SPEC = {
    "mxfp8_e4m3": (8, 448.0),
    "mxfp8_e5m2": (15, 57344.0),
    "mxfp6_e2m3": (2, 7.5),
    "mxfp6_e3m2": (4, 28.0),
    "mxfp4_e2m1": (2, 6.0),
    "mxint8": (0, 127 / 64),
}
TORCH_FP8 = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2}
ML_FP = {"mxfp6_e2m3": ml_dtypes.float6_e2m3fn, "mxfp6_e3m2": ml_dtypes.float6_e3m2fn,
         "mxfp4_e2m1": ml_dtypes.float4_e2m1fn}


def oracle_mx(x: np.ndarray, name: str, block: int = 32):
    """(shared exponents, element codes, dequantized values) for float32 ``x`` (normal numbers or 0)."""
    emax, max_elem = SPEC[name]
    blocks = torch.from_numpy(x).reshape(*x.shape[:-1], -1, block)
    amax = blocks.abs().amax(dim=-1)
    biased = (amax.view(torch.int32) >> 23) & 0xFF  # float32 exponent field: floor(log2 amax) + 127
    s = torch.clamp(biased - 127 - emax, -127, 127)
    s = torch.where(amax == 0, torch.full_like(s, -127), s)
    scaled = blocks.double() * torch.pow(2.0, -s.double()).unsqueeze(-1)
    clamped = scaled.clamp(-max_elem, max_elem)
    if name in TORCH_FP8:
        fp8 = clamped.float().to(TORCH_FP8[name])
        codes, values = fp8.view(torch.uint8).to(torch.int64), fp8.double()
    elif name in ML_FP:
        small = clamped.numpy().astype(ML_FP[name])
        codes, values = torch.from_numpy(small.view(np.uint8).astype(np.int64)), torch.from_numpy(small.astype(np.float64))
    else:
        q = torch.round(clamped * 64).clamp(-127, 127).to(torch.int8)
        codes, values = q.view(torch.uint8).to(torch.int64), q.double() / 64
    dequantized = values * torch.pow(2.0, s.double()).unsqueeze(-1)
    return s.numpy(), codes.reshape(x.shape).numpy(), dequantized.reshape(x.shape).numpy()


def mixed_blocks(seed: int, n_blocks: int = 2000, block: int = 32) -> np.ndarray:
    """float32 blocks of very different magnitudes, with exact powers of two and values just below them."""
    rng = np.random.default_rng(seed)
    magnitude = 10.0 ** rng.uniform(-30, 30, size=(n_blocks, 1))
    x = rng.standard_normal((n_blocks, block)) * magnitude
    x[::7, 0] *= 1000.0  # an outlier in some blocks
    x[1::11, 3] = 2.0 ** rng.integers(-100, 100, size=x[1::11].shape[0])  # amax exactly 2^k, often
    x[1::11] = np.clip(x[1::11], -x[1::11, 3:4], x[1::11, 3:4])
    x[2::13] = 0.0  # all-zero blocks
    x[3::17, 5] = 1e-3  # tiny values beside larger ones: subnormal elements
    x = x.astype(np.float32)
    below = np.nextafter(np.float32(2.0**20), np.float32(0))
    x[4::19, 0] = below  # amax just under a power of two: floor(log2) must not round up
    x[4::19, 1:] = np.clip(x[4::19, 1:], -below, below)
    return x.reshape(-1, 8 * block)  # 8 blocks per row


@pytest.mark.parametrize("name", sorted(SPEC))
def test_element_constants_match_the_spec(name):
    element = MX_ELEMENTS[name]
    assert (element.emax, element.max_value) == SPEC[name]
    if name in TORCH_FP8:
        assert element.max_value == torch.finfo(TORCH_FP8[name]).max
    if name in ML_FP:
        assert element.max_value == float(ml_dtypes.finfo(ML_FP[name]).max)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_quantize_matches_independent_construction(name):
    element = MX_ELEMENTS[name]
    x = mixed_blocks(seed=len(name))
    s, codes = mx_quantize(x, element)
    s_ref, codes_ref, deq_ref = oracle_mx(x, name)
    assert s.shape == (x.shape[0], 8) and codes.shape == x.shape
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(codes, codes_ref)
    deq = mx_dequantize(s, codes, element)
    np.testing.assert_array_equal(deq, deq_ref)
    np.testing.assert_array_equal(np.signbit(deq), np.signbit(deq_ref))
    np.testing.assert_array_equal(mx_fake_quantize(x, element), deq_ref)


def test_bits_per_element():
    assert [bits_per_element(e) for e in (MXFP8_E4M3, MXFP8_E5M2, MXFP6_E2M3, MXFP6_E3M2, MXFP4_E2M1, MXINT8)] \
        == [8.25, 8.25, 6.25, 6.25, 4.25, 8.25]
    assert bits_per_element(MXFP4_E2M1, block_size=16) == 4.5
    assert MX_BLOCK == 32


def test_hand_block_mxfp8_e4m3():
    x = np.zeros(32)
    x[:3] = [100.0, -3.0, 0.001]
    # floor(log2 100) = 6, emax 8: s = -2, so elements are 4x: 400 is a tie between 384 and 416
    # (1.100 and 1.101 x 2^8): even mantissa, 384. -12 is exact. 0.004 = 2.048 subnormal steps of 2^-9: 2 steps.
    s, codes = mx_quantize(x, MXFP8_E4M3)
    assert s.tolist() == [-2]
    assert codes[:3].tolist() == [0b0_1111_100, 0b1_1010_100, 0b0_0000_010]
    assert mx_dequantize(s, codes, MXFP8_E4M3)[:3].tolist() == [96.0, -3.0, 2 * 2.0**-9 / 4]


def test_hand_block_mxfp4_e2m1():
    x = np.zeros(32)
    x[:4] = [7.0, 5.0, -1.25, 0.3]
    # floor(log2 7) = 2 = emax: s = 0. 7 saturates to 6; 5 is a tie (4, 6): 4; -1.25 a tie (1, 1.5): -1; 0.3 -> 0.5
    s, codes = mx_quantize(x, MXFP4_E2M1)
    assert s.tolist() == [0]
    assert codes[:4].tolist() == [0b0111, 0b0110, 0b1010, 0b0001]
    assert mx_fake_quantize(x, MXFP4_E2M1)[:4].tolist() == [6.0, 4.0, -1.0, 0.5]


def test_hand_block_mxint8():
    x = np.zeros(32)
    x[:5] = [1.0, -1 / 128, 0.75, -0.3, 1.99]
    # amax 1.99: floor(log2) = 0 = s. Codes are round(64 x): 64, -0.5 -> 0 (tie to even), 48, -19.2 -> -19,
    # 127.36 -> 127. Codes are two's-complement bit patterns: -19 is 237.
    s, codes = mx_quantize(x, MXINT8)
    assert s.tolist() == [0]
    assert codes[:5].tolist() == [64, 0, 48, 237, 127]
    assert mx_dequantize(s, codes, MXINT8)[:5].tolist() == [1.0, 0.0, 0.75, -19 / 64, 127 / 64]


def test_mxint8_never_produces_minus_128():
    x = np.full(32, -1.0)
    x[0] = -2.0 + 2.0**-20  # floor(log2) = 0, so s = 0 and -127.99... clamps to -127 (symmetric, as the spec's max)
    s, codes = mx_quantize(x, MXINT8)
    assert s.tolist() == [0] and codes[0] == 256 - 127
    assert mx_dequantize(np.array([0]), np.array([128] + [0] * 31), MXINT8)[0] == -2.0  # but 0x80 decodes to -2


def test_e5m2_elements_saturate_instead_of_overflowing_to_inf():
    # amax = 2^16 - 1: floor(log2) = 15 = emax, s = 0, and 65535 lies beyond E5M2's max 57344 + ulp/2
    x = np.zeros(32)
    x[0] = 65535.0
    assert mx_fake_quantize(x, MXFP8_E5M2)[0] == 57344.0


def test_shared_exponent_boundaries():
    block = np.zeros(32)
    for amax, expected in [(448.0, 0), (512.0, 1), (float(np.nextafter(512.0, 0)), 0), (1.0, -8), (2.0**-130, -127)]:
        block[7] = -amax
        assert mx_shared_exponent(block, MXFP8_E4M3) == expected
    assert mx_shared_exponent(np.zeros(32), MXFP4_E2M1) == -127  # all-zero block
    block[7] = 2.0**200  # float64 beyond float32: s = 198 clamps to 127 and elements saturate
    assert mx_shared_exponent(block, MXFP4_E2M1) == 127
    assert mx_fake_quantize(block, MXFP4_E2M1)[7] == 6.0 * 2.0**127


def test_tiny_blocks_clamp_the_exponent_and_flush_elements():
    x = np.zeros(32)
    x[0] = 2.0**-140
    s, codes = mx_quantize(x, MXFP8_E4M3)
    assert s.tolist() == [-127]  # floor(log2) - 8 = -148, clamped
    assert codes[0] == 0  # 2^-13 is below half of E4M3's smallest subnormal 2^-9


def test_all_zero_block():
    s, codes = mx_quantize(np.zeros((2, 64)), MXFP6_E3M2)
    assert s.tolist() == [[-127, -127], [-127, -127]] and not codes.any()
    assert not mx_dequantize(s, codes, MXFP6_E3M2).any()


def test_representable_values_round_trip():
    rng = np.random.default_rng(1)
    for element in MX_ELEMENTS.values():
        codes = rng.integers(0, 2**element.bits, size=(4, 64))
        if element.float_format is not None and element.float_format.special != "finite":
            codes[codes % 2**(element.bits - 1) >= 2**(element.bits - 1) - 4] = 0  # avoid NaN/inf/top codes
        if element is MXINT8:
            codes[codes == 128] = 0  # -2 lies beyond the symmetric range +-127/64 that conversion produces
        s = rng.integers(-20, 20, size=(4, 2))
        x = mx_dequantize(s, codes, element)
        # put each block's largest value in the element's top binade, so the block gets the same s back
        # (otherwise a block max such as 1.875 * 2^7 in E4M3 would move up to 480 > 448 and saturate)
        x[:, 0], x[:, 32] = element.max_value * 2.0 ** s[:, 0], element.max_value * 2.0 ** s[:, 1]
        s_back, codes_back = mx_quantize(x, element)
        np.testing.assert_array_equal(s_back, s)
        np.testing.assert_array_equal(mx_dequantize(s_back, codes_back, element), x)


def test_errors():
    with pytest.raises(ValueError, match="block_size=32"):
        mx_quantize(np.zeros(33), MXFP8_E4M3)
    with pytest.raises(ValueError, match="block_size=16"):
        mx_quantize(np.zeros((2, 40)), MXFP8_E4M3, block_size=16)
    with pytest.raises(ValueError, match="NaN"):
        mx_quantize(np.full(32, np.nan), MXFP8_E4M3)
    with pytest.raises(ValueError, match="infinite"):
        mx_shared_exponent(np.full(32, np.inf), MXFP8_E4M3)
    with pytest.raises(TypeError, match="MXElement"):
        mx_quantize(np.zeros(32), "mxfp8")
    with pytest.raises(ValueError, match="shape"):
        mx_dequantize(np.zeros(2, dtype=np.int64), np.zeros(32, dtype=np.int64), MXFP8_E4M3)
    with pytest.raises(ValueError, match="E8M0 range"):
        mx_dequantize(np.array([128]), np.zeros(32, dtype=np.int64), MXFP8_E4M3)
    with pytest.raises(ValueError, match="0, 255"):
        mx_dequantize(np.array([0]), np.full(32, 256), MXINT8)


@pytest.mark.parametrize("name, call", [
    ("mx_quantize", lambda: mx_quantize(np.ones(32), MXFP8_E4M3)),
    ("mx_dequantize", lambda: mx_dequantize(np.array([0]), np.zeros(32, dtype=np.int64), MXFP8_E4M3)),
    ("mx_shared_exponent", lambda: mx_shared_exponent(np.ones(32), MXFP8_E4M3)),
    ("mx_fake_quantize", lambda: mx_fake_quantize(np.ones(32), MXFP8_E4M3)),
])
def test_references_refuse_while_blocked(name, call):
    call()
    with blocked([name]), pytest.raises(ReferenceUnavailable, match=name):
        call()
