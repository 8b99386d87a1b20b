"""Tests of qlib.linear: integer ranges, scale and zero point, quantize, dequantize.

Every expected value comes from outside qlib: PyTorch's fake-quantize kernels and
observers (C++ code written independently of qlib), torch.iinfo, numpy, or a value
worked by hand (the lecture's examples). See TOOLCHAIN.md, "PyTorch 2.13 as an
independent oracle", for the formulas of the torch calls used here.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlib.granularity import fake_quantize_tensor, quantize_per_channel
from qlib.linear import (
    MIN_SCALE,
    asymmetric_qparams,
    dequantize,
    fake_quantize,
    integer_range,
    quantize,
    symmetric_qparams,
)

BIT_WIDTHS = [2, 3, 4, 5, 6, 7, 8, 16]


def torch_fake_quant(x, scale, zero_point, qmin, qmax):
    """PyTorch's per-tensor fake quantization with a float32 scale (the oracle)."""
    return torch.fake_quantize_per_tensor_affine(
        x,
        torch.tensor([scale], dtype=torch.float32),
        torch.tensor([zero_point], dtype=torch.int32),
        qmin,
        qmax,
    )


def observer_qparams(ao, x, dtype, qscheme, qmin=None, qmax=None):
    """(scale, zero_point) of a MinMaxObserver that has seen ``x``."""
    kwargs = {} if qmin is None else {"quant_min": qmin, "quant_max": qmax}
    obs = ao.MinMaxObserver(dtype=dtype, qscheme=qscheme, **kwargs)
    obs(x)
    scale, zero_point = obs.calculate_qparams()
    return scale, zero_point.to(torch.int64)


# --- integer_range ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "bits, signed, narrow, expected",
    [
        (8, True, False, (-128, 127)),
        (8, False, False, (0, 255)),
        (8, True, True, (-127, 127)),
        (8, False, True, (1, 255)),
        (1, True, False, (-1, 0)),
        (1, False, False, (0, 1)),
        (2, True, False, (-2, 1)),
        (2, True, True, (-1, 1)),
        (4, True, False, (-8, 7)),
        (4, False, False, (0, 15)),
        (16, True, False, (-32768, 32767)),
        (16, False, False, (0, 65535)),
        (32, True, False, (-2147483648, 2147483647)),
        (32, False, False, (0, 4294967295)),
    ],
)
def test_integer_range_hand_values(bits, signed, narrow, expected):
    assert integer_range(bits, signed=signed, narrow=narrow) == expected


@pytest.mark.parametrize(
    "bits, signed, dtype",
    [
        (8, True, torch.int8),
        (8, False, torch.uint8),
        (16, True, torch.int16),
        (16, False, torch.uint16),
        (32, True, torch.int32),
        (32, False, torch.uint32),
    ],
)
def test_integer_range_matches_torch_iinfo(bits, signed, dtype):
    info = torch.iinfo(dtype)
    assert integer_range(bits, signed=signed) == (info.min, info.max)


@pytest.mark.parametrize("bits", range(1, 33))
def test_integer_range_level_counts(bits):
    qmin, qmax = integer_range(bits, signed=True)
    assert qmax - qmin + 1 == 2**bits and qmin == -(qmax + 1)
    qmin, qmax = integer_range(bits, signed=False)
    assert (qmin, qmax + 1) == (0, 2**bits)
    if bits > 1:
        qmin, qmax = integer_range(bits, signed=True, narrow=True)
        assert qmax - qmin + 1 == 2**bits - 1 and qmin == -qmax


@pytest.mark.parametrize("signed", [True, False])
def test_integer_range_narrow_one_bit_has_a_single_level(signed):
    with pytest.raises(ValueError, match="single level"):
        integer_range(1, signed=signed, narrow=True)


@pytest.mark.parametrize("bits, error", [(0, ValueError), (33, ValueError), (-8, ValueError),
                                         (2.5, TypeError), (8.0, TypeError), (True, TypeError),
                                         ("8", TypeError), (None, TypeError)])
def test_integer_range_rejects_bad_bits(bits, error):
    with pytest.raises(error, match="bits"):
        integer_range(bits)


def test_integer_range_accepts_numpy_integers():
    assert integer_range(np.int64(8)) == (-128, 127)


# --- quantize / fake_quantize against torch.fake_quantize_per_tensor_affine -------------------

def _scale(kind: str, gen: torch.Generator) -> float:
    """A float32 scale: a power of two (every tie is exact) or a random value over 5 decades."""
    if kind == "pow2":
        return 2.0 ** int(torch.randint(-12, 3, (1,), generator=gen))
    u = float(torch.rand(1, generator=gen, dtype=torch.float64))
    return float(torch.tensor(10.0 ** (-4 + 5 * u), dtype=torch.float32))  # 1e-4 .. 10


def _inputs(scale, zero_point, qmin, qmax, gen, n=1000):
    """Float32 values in, around and far outside the range, plus grid points and exact halves."""
    lo, hi = (qmin - zero_point) * scale, (qmax - zero_point) * scale
    width = hi - lo
    u = lambda: torch.rand(n, generator=gen, dtype=torch.float64)  # noqa: E731
    k = torch.randint(qmin - zero_point - 3, qmax - zero_point + 4, (n,), generator=gen).to(torch.float64)
    parts = [
        lo + width * u(),                        # inside the range
        lo - width + 3 * width * u(),            # around it, a third clamped
        k * scale,                               # on the grid
        (k + 0.5) * scale,                       # halfway between two grid points
        (k - 0.5) * scale,
        torch.tensor([0.0, -0.0, 1e-30, -1e-30, lo, hi, lo - scale / 2, hi + scale / 2,
                      1e6 * width, -1e6 * width, 3e38, -3e38, 3.4028234e38, -3.4028234e38],
                     dtype=torch.float64),
    ]
    return torch.cat(parts).to(torch.float32)


def _zero_points(qmin, qmax, gen):
    mid = (qmin + qmax) // 2
    rand = int(torch.randint(qmin, qmax + 1, (1,), generator=gen))
    return sorted({qmin, qmax, mid, rand} | ({0} if qmin <= 0 <= qmax else set()))


@pytest.mark.parametrize("scale_kind", ["pow2", "random"])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_fake_quantize_bit_exact_vs_torch(bits, signed, scale_kind):
    gen = torch.Generator().manual_seed(1000 * bits + 10 * signed + (scale_kind == "pow2"))
    qmin, qmax = integer_range(bits, signed=signed)
    n_ties = 0
    for _ in range(2):
        scale = _scale(scale_kind, gen)
        for zero_point in _zero_points(qmin, qmax, gen):
            x = _inputs(scale, zero_point, qmin, qmax, gen)
            expected = torch_fake_quant(x, scale, zero_point, qmin, qmax)

            got = fake_quantize(x, scale, zero_point, qmin, qmax)
            assert got.dtype == torch.float32
            assert torch.equal(got, expected), (
                f"bits={bits} signed={signed} scale={scale!r} zp={zero_point}: "
                f"{int((got != expected).sum())} of {x.numel()} values differ, e.g. x={x[got != expected][:3]}"
            )

            # The integers: q = round(out / scale) + zp is exact, as |q - zp| <= 2**16.
            q = quantize(x, scale, zero_point, qmin, qmax)
            assert q.dtype == torch.int64
            q_torch = torch.round(expected.to(torch.float64) / scale).to(torch.int64) + zero_point
            assert torch.equal(q, q_torch)
            assert int(q.min()) >= qmin and int(q.max()) <= qmax

            # How many inputs are exact ties for torch's float32 product x * (1/scale)?
            prod = x * torch.reciprocal(torch.tensor(scale, dtype=torch.float32))
            n_ties += int((prod - torch.floor(prod) == 0.5).sum())
    if scale_kind == "pow2":
        assert n_ties >= 1000, "the inputs must contain many exact .5 ties"


def test_fake_quantize_exact_ties_by_hand():
    # scale 0.25: x / scale = -2.5, -1.5, -0.5, 0.5, 1.5, 2.5 exactly; ties go to the even integer.
    x = torch.tensor([-0.625, -0.375, -0.125, 0.125, 0.375, 0.625])
    assert quantize(x, 0.25, 0, -128, 127).tolist() == [-2, -2, 0, 0, 2, 2]
    assert quantize(x, 0.25, 3, -128, 127).tolist() == [1, 1, 3, 3, 5, 5]
    assert fake_quantize(x, 0.25, 3, -128, 127).tolist() == [-0.5, -0.5, 0.0, 0.0, 0.5, 0.5]


def test_quantize_clamps_far_outside_values():
    x = torch.tensor([-3e38, -1e9, -129.0, 200.0, 1e9, 3.4028234e38])
    assert quantize(x, 1.0, 0, -128, 127).tolist() == [-128, -128, -128, 127, 127, 127]
    assert quantize(x, 1e-3, 10, 0, 15).tolist() == [0, 0, 0, 15, 15, 15]


def torch_built_with_fbgemm() -> bool:
    """Whether this PyTorch was compiled with FBGEMM (its build flags say so; nothing is run)."""
    return "-DUSE_FBGEMM" in torch.__config__.show()


@pytest.mark.silence_ao
def test_tie_convention_differs_from_quantize_per_tensor():
    """qlib rounds x/scale and then adds the zero point, like torch's fake quantization.

    ``torch.quantize_per_tensor`` follows the build, not ``torch.backends.quantized.engine``: a
    PyTorch compiled with FBGEMM (the x86-64 packages) quantizes with FBGEMM's routine, which
    rounds x/scale + zp, so with an odd zero point its ties land on the other neighbour:
    x / scale + zp = 1.5, 2.5, 3.5 -> 2, 2, 4, whereas rne(x / scale) + zp = 0+1, 2+1, 2+1 = 1, 3, 3.
    A build without FBGEMM (ARM) rounds first and agrees with qlib. Every supported engine is
    tried, and each must give the build's answer.
    """
    x = torch.tensor([0.5, 1.5, 2.5])
    assert quantize(x, 1.0, 1, 0, 255).tolist() == [1, 3, 3]
    fq = torch_fake_quant(x, 1.0, 1, 0, 255)
    assert (fq + 1).tolist() == [1, 3, 3]          # fake-quant output is q - zp for scale 1
    assert fake_quantize(x, 1.0, 1, 0, 255).tolist() == fq.tolist()
    if not hasattr(torch, "quantize_per_tensor"):
        pytest.skip("torch.quantize_per_tensor is gone")
    fbgemm = torch_built_with_fbgemm()
    expected = [2, 2, 4] if fbgemm else [1, 3, 3]
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    assert engines, "no quantized engine to try"
    default = torch.backends.quantized.engine
    try:
        for engine in engines:
            torch.backends.quantized.engine = engine
            q_torch = torch.quantize_per_tensor(x, 1.0, 1, torch.quint8).int_repr()
            assert q_torch.tolist() == expected, (
                f"engine {engine!r} on a build {'with' if fbgemm else 'without'} FBGEMM: expected "
                f"{expected} (zero point added {'before' if fbgemm else 'after'} rounding), got {q_torch.tolist()}")
    finally:
        torch.backends.quantized.engine = default


# --- scale and zero point against torch's MinMaxObserver ---------------------------------------

def _range_cases():
    gen = torch.Generator().manual_seed(7)
    return {
        "randn": torch.randn(1000, generator=gen) * 0.3 + 0.1,
        "uniform": torch.rand(777, generator=gen) * 5 - 1,
        "outlier": torch.cat([torch.randn(500, generator=gen), torch.tensor([40.0])]),
        "all_positive": torch.rand(300, generator=gen) * 2 + 0.5,
        "all_negative": -(torch.rand(300, generator=gen) * 3 + 0.25),
        "single": torch.tensor([0.7]),
        "tiny": torch.randn(64, generator=gen) * 1e-9,
        "all_zero": torch.zeros(10),
        "lecture": torch.tensor([-1.08, 2.12]),
        "zp_tie_u8": torch.tensor([-2.5, 252.5]),   # scale 1, -rmin/scale = 2.5
        "zp_tie_2bit": torch.tensor([-1.5, 7.5]),   # 2-bit: scale 3, -rmin/scale = 0.5
        "zp_tie_scale7": torch.tensor([-45.5, 1739.5]),  # 8-bit: scale 7, -rmin/scale = 6.5
    }


RANGE_CASES = _range_cases()

# (observer dtype, qmin, qmax): None means the dtype's default range
AFFINE_CONFIGS = [
    ("quint8", None, None, 0, 255),
    ("qint8", None, None, -128, 127),
    ("qint8", -2, 1, -2, 1),
    ("quint8", 0, 3, 0, 3),
    ("qint8", -8, 7, -8, 7),
    ("quint8", 0, 15, 0, 15),
    ("qint8", -64, 63, -64, 63),
    ("qint32", -32768, 32767, -32768, 32767),
    ("qint32", 0, 65535, 0, 65535),
]


@pytest.mark.silence_ao
@pytest.mark.parametrize("case", sorted(RANGE_CASES))
@pytest.mark.parametrize("dtype, obs_qmin, obs_qmax, qmin, qmax", AFFINE_CONFIGS)
def test_asymmetric_qparams_bit_exact_vs_minmax_observer(ao, case, dtype, obs_qmin, obs_qmax, qmin, qmax):
    x = RANGE_CASES[case]
    exp_scale, exp_zp = observer_qparams(ao, x, getattr(torch, dtype), torch.per_tensor_affine, obs_qmin, obs_qmax)
    scale, zero_point = asymmetric_qparams(x.min(), x.max(), qmin, qmax)
    assert scale.dtype == torch.float32 and zero_point.dtype == torch.int64
    assert torch.equal(scale.reshape(1), exp_scale), f"scale {scale.item()!r} != observer {exp_scale.item()!r}"
    assert torch.equal(zero_point.reshape(1), exp_zp), f"zero_point {zero_point.item()} != observer {exp_zp.item()}"


@pytest.mark.silence_ao
@pytest.mark.parametrize("case", sorted(RANGE_CASES))
@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_symmetric_qparams_bit_exact_vs_minmax_observer(ao, case, bits):
    # torch: scale = amax / ((qmax - qmin) / 2); with the narrow range [-qmax, qmax] that is amax / qmax.
    qmin, qmax = integer_range(bits, signed=True, narrow=True)
    dtype = torch.qint8 if bits <= 8 else torch.qint32
    x = RANGE_CASES[case]
    exp_scale, exp_zp = observer_qparams(ao, x, dtype, torch.per_tensor_symmetric, qmin, qmax)
    assert int(exp_zp) == 0
    for lo in (qmin, qmin - 1):  # qlib's scale only depends on qmax: the full signed range gives the same
        scale, zero_point = symmetric_qparams(x.min(), x.max(), lo, qmax)
        assert torch.equal(scale.reshape(1), exp_scale), f"scale {scale.item()!r} != observer {exp_scale.item()!r}"
        assert int(zero_point) == 0 and zero_point.dtype == torch.int64


@pytest.mark.silence_ao
def test_symmetric_scale_differs_from_full_int8_observer(ao):
    """Default qint8 symmetric observers divide by 127.5, qlib by qmax = 127 (documented difference)."""
    x = torch.tensor([-0.3, 2.55])
    torch_scale, _ = observer_qparams(ao, x, torch.qint8, torch.per_tensor_symmetric)
    amax = np.float32(2.55)
    assert torch_scale.item() == amax / np.float32(127.5)  # numpy float32 division, correctly rounded
    scale, _ = symmetric_qparams(x.min(), x.max(), -128, 127)
    assert scale.item() == amax / np.float32(127)
    assert scale.item() != torch_scale.item()


def test_qparams_hand_values():
    # [-2.5, 252.5] onto [0, 255]: scale 1, zero point round(2.5) = 2 (half to even, not 3).
    scale, zp = asymmetric_qparams(-2.5, 252.5, 0, 255)
    assert scale.item() == 1.0 and zp.item() == 2
    # [-1.5, 7.5] onto 2-bit signed [-2, 1]: scale 3, zero point -2 - round(-0.5) = -2.
    scale, zp = asymmetric_qparams(-1.5, 7.5, -2, 1)
    assert scale.item() == 3.0 and zp.item() == -2
    # [-45.5, 1739.5] onto [0, 255]: scale 7, -rmin / scale = 6.5 exactly, zero point 6.
    # (rmin * (1/scale) in float32 is -6.5000005 and would give 7: torch's observers divide, and so does qlib.)
    scale, zp = asymmetric_qparams(-45.5, 1739.5, 0, 255)
    assert scale.item() == 7.0 and zp.item() == 6
    # All positive: the range widens to [0, rmax], so zero point = qmin.
    scale, zp = asymmetric_qparams(1.0, 2.55, 0, 255)
    assert scale.item() == pytest.approx(0.01) and zp.item() == 0
    # All negative: widened to [rmin, 0], zero point = qmax.
    scale, zp = asymmetric_qparams(-5.1, -1.0, -128, 127)
    assert scale.item() == pytest.approx(0.02) and zp.item() == 127
    # Symmetric: scale = max|r| / qmax.
    scale, zp = symmetric_qparams(-4.0, 1.0, -8, 7)
    assert scale.item() == pytest.approx(4 / 7) and zp.item() == 0


def test_qparams_per_channel_tensors():
    rmin = torch.tensor([-1.0, 0.0, -0.5, -2.5])
    rmax = torch.tensor([3.0, 2.55, 2.05, -1.0])
    scale, zp = asymmetric_qparams(rmin, rmax, 0, 255)
    assert scale.shape == (4,) and zp.shape == (4,)
    assert scale.tolist() == pytest.approx([4 / 255, 0.01, 0.01, 2.5 / 255])
    assert zp.tolist() == [64, 0, 50, 255]  # round(63.75), qmin (all positive), round(50), qmax (all negative)


# --- lecture worked examples -------------------------------------------------------------------

def test_lecture_asymmetric_two_bit_example():
    """r in [-1.08, 2.12] on 2-bit signed [-2, 1]: scale 3.2/3, zero point round(-2 + 1.0125) = -1.

    One version of the notes wrote +1 here: a sign slip (zero_point = qmin - rmin/scale).
    """
    qmin, qmax = integer_range(2, signed=True)
    scale, zero_point = asymmetric_qparams(-1.08, 2.12, qmin, qmax)
    assert scale.item() == pytest.approx(3.2 / 3, rel=1e-6)
    assert round(scale.item(), 2) == 1.07
    assert zero_point.item() == -1
    # The range ends land on qmin and qmax, and real 0 on the zero point.
    assert quantize(torch.tensor([-1.08, 0.0, 2.12]), scale, zero_point, qmin, qmax).tolist() == [-2, -1, 1]


LECTURE_W = torch.tensor([[2.09, -0.98, 1.48, 0.09],
                          [0.05, -0.14, -1.08, 2.12],
                          [-0.91, 1.92, 0.0, -1.03],
                          [1.87, 0.0, 1.53, 1.49]])
LECTURE_Q_TENSOR = [[1, 0, 1, 0], [0, 0, -1, 1], [0, 1, 0, 0], [1, 0, 1, 1]]
LECTURE_Q_CHANNEL = [[1, 0, 1, 0], [0, 0, -1, 1], [0, 1, 0, -1], [1, 0, 1, 1]]


def test_lecture_matrix_per_tensor_two_bit_symmetric():
    qmin, qmax = integer_range(2, signed=True)
    scale, zero_point = symmetric_qparams(LECTURE_W.min(), LECTURE_W.max(), qmin, qmax)
    assert scale.item() == pytest.approx(2.12) and zero_point.item() == 0
    assert quantize(LECTURE_W, scale, zero_point, qmin, qmax).tolist() == LECTURE_Q_TENSOR
    w_hat = fake_quantize_tensor(LECTURE_W, bits=2, granularity="tensor", symmetric=True)
    error = torch.linalg.norm(LECTURE_W - w_hat).item()
    assert round(error, 2) == 2.28
    # The same error from the lecture's integers, in float64 numpy.
    w = LECTURE_W.double().numpy()
    assert np.linalg.norm(w - 2.12 * np.array(LECTURE_Q_TENSOR)) == pytest.approx(error, abs=1e-5)


def test_lecture_matrix_per_channel_two_bit_symmetric():
    qmin, qmax = integer_range(2, signed=True)
    q, scale, zero_point = quantize_per_channel(LECTURE_W, 0, qmin, qmax, symmetric=True)
    assert q.tolist() == LECTURE_Q_CHANNEL
    assert scale.tolist() == pytest.approx([2.09, 2.12, 1.92, 1.87])
    assert zero_point.tolist() == [0, 0, 0, 0]
    w_hat = fake_quantize_tensor(LECTURE_W, bits=2, granularity="channel", axis=0, symmetric=True)
    error = torch.linalg.norm(LECTURE_W - w_hat).item()
    assert round(error, 2) == 2.08
    w = LECTURE_W.double().numpy()
    row_scale = np.abs(w).max(axis=1, keepdims=True)
    assert np.linalg.norm(w - row_scale * np.array(LECTURE_Q_CHANNEL)) == pytest.approx(error, abs=1e-5)


# --- dequantize and the round trip -------------------------------------------------------------

def test_dequantize_hand_values():
    q = torch.tensor([0, 1, -3, 127, -128])
    assert dequantize(q, 0.5, 1).tolist() == [-0.5, 0.0, -2.0, 63.0, -64.5]
    u8 = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert dequantize(u8, 0.25, 128).tolist() == [-32.0, 0.0, 31.75]
    # Broadcast: one scale and zero point per row.
    q2 = torch.tensor([[1, 2], [3, 4]])
    out = dequantize(q2, torch.tensor([[0.5], [2.0]]), torch.tensor([[1], [4]]))
    assert out.dtype == torch.float32 and out.tolist() == [[0.0, 0.5], [-2.0, 0.0]]
    # Integer-valued floats are accepted as q.
    assert dequantize(torch.tensor([2.0, -1.0]), 0.5, 0).tolist() == [1.0, -0.5]


def test_dequantize_rejects_non_integer_q():
    with pytest.raises(ValueError, match="integers"):
        dequantize(torch.tensor([0.5]), 1.0, 0)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", BIT_WIDTHS)
def test_round_trip_error_at_most_half_a_step(bits, signed):
    gen = torch.Generator().manual_seed(bits + 100 * signed)
    qmin, qmax = integer_range(bits, signed=signed)
    x = torch.randn(4000, generator=gen) * 2 + 0.3
    for scale, zero_point in (asymmetric_qparams(x.min(), x.max(), qmin, qmax),
                              symmetric_qparams(x.min(), x.max(), qmin, qmax)):
        lo = (qmin - zero_point) * scale
        hi = (qmax - zero_point) * scale
        inside = x[(x >= lo) & (x <= hi)]
        assert inside.numel() > 1000
        err = (inside - fake_quantize(inside, scale, zero_point, qmin, qmax)).abs().double()
        # Half a step, plus float32 rounding of x * (1/scale) and of the output.
        bound = scale.double() / 2 + 4 * torch.finfo(torch.float32).eps * inside.abs().double()
        assert bool((err <= bound).all()), f"max error {err.max().item()} > scale/2 = {scale.item() / 2}"
        assert err.max().item() > 0.25 * scale.item()  # the bound is tight, not vacuous


def test_grid_points_round_trip_exactly():
    scale = 2.0**-5
    x = torch.arange(-128, 128, dtype=torch.float32) * scale
    assert torch.equal(fake_quantize(x, scale, 0, -128, 127), x)
    assert quantize(x, scale, 0, -128, 127).tolist() == list(range(-128, 128))


# --- bad input -----------------------------------------------------------------------------------

X = torch.tensor([0.1, -0.2, 0.3])


@pytest.mark.parametrize("value, match", [(float("nan"), "NaN"), (float("inf"), "infinite"),
                                          (float("-inf"), "infinite")])
def test_non_finite_x_is_refused(value, match):
    bad = torch.tensor([0.1, value, 0.3])
    with pytest.raises(ValueError, match=match):
        quantize(bad, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=match):
        fake_quantize(bad, 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match=match):
        asymmetric_qparams(torch.tensor(value), torch.tensor(1.0), -128, 127)
    with pytest.raises(ValueError, match=match):
        symmetric_qparams(torch.tensor(-1.0), torch.tensor(value), -128, 127)
    with pytest.raises(ValueError, match=match):
        fake_quantize_tensor(bad, bits=8)


def test_nan_message_counts_the_bad_values():
    with pytest.raises(ValueError, match="2 NaN and 1 infinite"):
        quantize(torch.tensor([float("nan"), 1.0, float("nan"), float("inf")]), 0.1, 0, -128, 127)


def test_empty_tensor_is_refused():
    with pytest.raises(ValueError, match="empty"):
        quantize(torch.tensor([]), 0.1, 0, -128, 127)
    with pytest.raises(ValueError, match="empty"):
        asymmetric_qparams(torch.tensor([]), torch.tensor([]), -128, 127)
    with pytest.raises(ValueError, match="empty"):
        fake_quantize_tensor(torch.zeros(0, 3), bits=8)


def test_non_numeric_x_is_refused():
    with pytest.raises(TypeError, match="x must"):
        quantize("0.5", 0.1, 0, -128, 127)
    with pytest.raises(TypeError, match="real numbers"):
        quantize(torch.tensor([True, False]), 0.1, 0, -128, 127)


@pytest.mark.parametrize("bits, error", [(0, ValueError), (33, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_bits_are_refused_by_fake_quantize_tensor(bits, error):
    with pytest.raises(error, match="bits"):
        fake_quantize_tensor(X, bits=bits)


@pytest.mark.parametrize("fn", [asymmetric_qparams, symmetric_qparams])
def test_rmin_greater_than_rmax_is_refused(fn):
    with pytest.raises(ValueError, match="rmin is greater than rmax"):
        fn(1.0, -1.0, -128, 127)
    with pytest.raises(ValueError, match="rmin is greater than rmax"):
        fn(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), -128, 127)


@pytest.mark.parametrize("qmin, qmax", [(5, 5), (6, 5), (127, -128)])
def test_empty_integer_range_is_refused(qmin, qmax):
    for call in (lambda: quantize(X, 0.1, 0, qmin, qmax),
                 lambda: fake_quantize(X, 0.1, 0, qmin, qmax),
                 lambda: asymmetric_qparams(-1.0, 1.0, qmin, qmax),
                 lambda: symmetric_qparams(-1.0, 1.0, qmin, qmax)):
        with pytest.raises(ValueError, match="qmin < qmax"):
            call()


@pytest.mark.parametrize("qmin, qmax, name", [(-128.0, 127, "qmin"), (0, 2.5, "qmax"), (False, 1, "qmin")])
def test_non_integer_range_is_refused(qmin, qmax, name):
    with pytest.raises(TypeError, match=name):
        quantize(X, 0.1, 0, qmin, qmax)


def test_symmetric_needs_zero_inside_the_range():
    with pytest.raises(ValueError, match="symmetric"):
        symmetric_qparams(-1.0, 1.0, 1, 255)


@pytest.mark.parametrize("zero_point", [0.5, torch.tensor([1.0, 2.5])])
def test_non_integer_zero_point_is_refused(zero_point):
    with pytest.raises(ValueError, match="zero_point must hold integers"):
        quantize(torch.tensor([0.1, 0.2]), 0.1, zero_point, -128, 127)
    with pytest.raises(ValueError, match="zero_point must hold integers"):
        dequantize(torch.tensor([1, 2]), 0.1, zero_point)


def test_boolean_zero_point_is_refused():
    with pytest.raises(TypeError, match="zero_point"):
        quantize(X, 0.1, torch.tensor(True), -128, 127)


def test_integer_valued_float_zero_point_is_accepted():
    assert quantize(torch.tensor([1.0]), 1.0, 3.0, -128, 127).tolist() == [4]


@pytest.mark.parametrize("scale", [0.0, -0.0, -0.1, torch.tensor([0.1, 0.0, 0.2])])
def test_non_positive_scale_is_refused(scale):
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize(X, scale, 0, -128, 127)
    with pytest.raises(ValueError, match="scale must be positive"):
        dequantize(torch.tensor([1, 2, 3]), scale, 0)


@pytest.mark.parametrize("scale, match", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_non_finite_scale_is_refused(scale, match):
    with pytest.raises(ValueError, match=f"scale holds.*{match}"):
        quantize(X, scale, 0, -128, 127)


def test_unknown_rounding_mode_is_refused():
    with pytest.raises(ValueError, match="unknown rounding mode 'banker'"):
        quantize(X, 0.1, 0, -128, 127, rounding="banker")


# --- the all-zero tensor --------------------------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False])
def test_all_zero_tensor(signed):
    """Documented: a zero range gives scale = float32 eps; every value maps to the zero point."""
    qmin, qmax = integer_range(8, signed=signed)
    x = torch.zeros(5)
    assert MIN_SCALE == torch.finfo(torch.float32).eps == 2.0**-23
    for fn, expected_zp in ((asymmetric_qparams, qmin), (symmetric_qparams, 0)):
        scale, zero_point = fn(x.min(), x.max(), qmin, qmax)
        assert scale.item() == 2.0**-23
        assert zero_point.item() == expected_zp  # asymmetric: qmin - round(0 / eps) = qmin
        q = quantize(x, scale, zero_point, qmin, qmax)
        assert q.tolist() == [expected_zp] * 5
        x_hat = dequantize(q, scale, zero_point)
        assert not bool(torch.isnan(x_hat).any()) and x_hat.tolist() == [0.0] * 5
    for granularity in ("tensor", "channel"):
        out = fake_quantize_tensor(torch.zeros(2, 3), bits=4, granularity=granularity, symmetric=False)
        assert out.tolist() == [[0.0] * 3] * 2


# --- float32 limits: a clear error, never an integer outside [qmin, qmax] ---

def test_tiny_scale_is_refused_with_a_clear_error():
    # 1 / 1e-39 overflows float32; 0 * inf would be NaN and q would leave [qmin, qmax]
    with pytest.raises(ValueError, match="scale is too small"):
        quantize(torch.tensor([0.0, 1.0]), 1e-39, 3, -128, 127)
    assert quantize(torch.tensor([0.0]), 1e-37, 3, -128, 127).tolist() == [3]


def test_range_wider_than_float32_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="range is too wide"):
        asymmetric_qparams(-3e38, 3e38, 0, 255)
    scale, _ = asymmetric_qparams(-1e38, 1e38, 0, 255)
    assert math.isfinite(scale.item())


def test_chapter6_229_comes_from_the_float32_scale_not_from_0_9():
    """0.9 x 255 is the tie 229.5 in float32 and float64; qlib's 229 is float32(1/255) being too large."""
    assert np.float32(0.9) * np.float32(255) == np.float32(229.5) and 0.9 * 255 == 229.5
    assert round(229.5) == 230  # half to even
    s, z = asymmetric_qparams(0.0, 1.0, 0, 255)
    assert float(s) > 1 / 255 and 1 / float(s) < 255
    assert int(quantize(torch.tensor([0.9]), s, z, 0, 255)) == 229


def test_chapter6_int32_worst_case_overflows_at_66312_products():
    k = 66312  # hand-worked: 2**31 / (127 * 255) = 66311.06
    assert (k - 1) * 127 * 255 <= 2**31 - 1 < k * 127 * 255
