"""Tests of qlib.integer_layers: integer-only fully connected, convolution and pooling layers.

Oracles:

* brute force: the accumulators written as the formula in int64
  (``(q_X - Z_X) @ (q_W - Z_W)^T + q_b``), or from ``torch.nn.functional.conv2d``
  in float64 on small integers (exact: every partial sum is a small integer),
  requantized by the plain-Python transcription of gemmlowp in test_requantize;
* PyTorch's quantized ``Linear`` and ``Conv2d`` (fbgemm/x86), which accumulate in
  int32 but requantize with a float32 multiplier and add a float bias: they
  agree within 1 LSB, and the share of exact matches is printed and checked;
* ``torch.nn.functional.max_pool2d``, exact fractions, and values worked by hand.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlib.integer_layers import (
    fold_zero_points,
    integer_avg_pool2d,
    integer_matmul,
    integer_max_pool2d,
    quantize_bias,
    quantized_conv2d,
    quantized_linear,
)
from qlib.requantize import quantize_multiplier, real_multiplier
from tests.test_requantize import tflite_mbqm


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def oracle_requantize(acc: torch.Tensor, m0, shift, z_y: int, lo: int, hi: int, channel_axis: int) -> torch.Tensor:
    """The transcription of TFLite's MultiplyByQuantizedMultiplier, element by element, + Z_Y, clamp."""
    m0 = torch.as_tensor(m0).reshape(-1)
    shift = torch.as_tensor(shift).reshape(-1)
    out = []
    moved = acc.movedim(channel_axis, -1)
    for row in moved.reshape(-1, moved.shape[-1]).tolist():
        for c, a in enumerate(row):
            m, s = int(m0[c % m0.numel()]), int(shift[c % shift.numel()])
            out.append(min(max(tflite_mbqm(a, m, -s) + z_y, lo), hi))
    return torch.tensor(out, dtype=torch.int64).reshape(moved.shape).movedim(-1, channel_axis)


# --- integer_matmul ----------------------------------------------------------------------------

@pytest.mark.parametrize("a_range, b_range", [
    ((-128, 127), (-128, 127)),      # torch._int_mm
    ((0, 255), (-128, 127)),         # uint8 activations, shifted by 128
    ((-128, 127), (0, 255)),
    ((0, 255), (0, 255)),
    ((-5, 200), (-7, 7)),            # neither int8 nor uint8: float64
    ((-(2**15), 2**15), (-(2**15), 2**15)),
    ((-(2**24), 2**24), (-(2**20), 2**20)),  # beyond 2^53: int64
])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (64, 300, 17)])
def test_integer_matmul_is_exact_on_every_route(a_range, b_range, shape):
    m, k, n = shape
    g = gen(m * 1000 + k)
    a = torch.randint(a_range[0], a_range[1] + 1, (m, k), generator=g)
    b = torch.randint(b_range[0], b_range[1] + 1, (n, k), generator=g).t()  # a transposed view
    a[0, 0], b[0, 0] = a_range[1], b_range[1]  # the extremes occur
    assert torch.equal(integer_matmul(a, b), a @ b)
    if a_range == (0, 255):
        assert torch.equal(integer_matmul(a.to(torch.uint8), b), a @ b)
    if a_range == b_range == (-128, 127):
        assert torch.equal(integer_matmul(a.to(torch.int8), b.to(torch.int8)), a @ b)


def test_integer_matmul_refuses_bad_operands():
    with pytest.raises(TypeError, match="integers"):
        integer_matmul(torch.ones(2, 3), torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="inner dimensions"):
        integer_matmul(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        integer_matmul(torch.ones(3, dtype=torch.int64), torch.ones(3, 2, dtype=torch.int64))
    big = torch.full((4, 4), 2**31 - 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="overflow int64"):
        integer_matmul(big, big)


# --- bias --------------------------------------------------------------------------------------

def test_quantize_bias_hand_values():
    # S_b = 0.5 * 0.25 = 0.125: 1.0 -> 8, -0.3 -> -2.4 -> -2, 0.0625 -> 0.5 -> 0 (tie to even), 0.1875 -> 1.5 -> 2
    q_b = quantize_bias(torch.tensor([1.0, -0.3, 0.0625, 0.1875]), 0.5, 0.25)
    assert q_b.tolist() == [8, -2, 0, 2] and q_b.dtype == torch.int64
    # one weight scale per output channel
    assert quantize_bias(torch.tensor([1.0, 1.0]), 0.5, torch.tensor([0.25, 0.5])).tolist() == [8, 4]


def test_quantize_bias_of_the_lecture_example_scale():
    # W and X in [0, 1] at scale 1/255: the bias scale is 1/255^2; b = 0.1 -> 6502.5 -> 6502 (even)
    s = torch.tensor(1 / 255, dtype=torch.float32)
    expected = [round(Fraction(v) / (Fraction(float(s)) ** 2)) for v in (0.1, 0.2, 0.3, 0.4)]
    got = quantize_bias(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), s, s)
    assert got.tolist() == expected


def test_quantize_bias_refuses_overflow_and_nan():
    with pytest.raises(ValueError, match="overflows int32"):
        quantize_bias(torch.tensor([0.0, 100.0]), 1e-4, 1e-4)
    with pytest.raises(ValueError, match="NaN"):
        quantize_bias(torch.tensor([float("nan")]), 0.1, 0.1)
    with pytest.raises(ValueError, match="positive"):
        quantize_bias(torch.tensor([1.0]), 0.0, 0.1)


def test_fold_zero_points_hand_value():
    q_w = torch.tensor([[1, 2, 3], [-1, 0, 4]])
    # Z_W = 0: q_b - Z_X * rowsum = [10 - 5*6, 0 - 5*3]
    assert fold_zero_points(torch.tensor([10, 0]), q_w, 5).tolist() == [-20, -15]
    # Z_W = 2: + K Z_W Z_X = 3 * 2 * 5 = 30
    assert fold_zero_points(torch.tensor([10, 0]), q_w, 5, 2).tolist() == [10, 15]
    assert fold_zero_points(None, q_w, 0).tolist() == [0, 0]


# --- fully connected against the formula -------------------------------------------------------

def brute_force_linear(q_x, q_w, q_b, z_x, z_w, m0, shift, z_y, lo, hi):
    acc = (q_x.long() - z_x) @ (q_w.long() - torch.as_tensor(z_w).reshape(-1, 1)).t() + q_b
    return oracle_requantize(acc, m0, shift, z_y, lo, hi, channel_axis=1)


LINEAR_CASES = [  # x range, x zero point, w zero point, per-channel, relu, output range and zero point
    ((0, 255), 128, 0, False, False, (0, 255), 120),
    ((-128, 127), -3, 0, True, False, (-128, 127), 5),
    ((-128, 127), 0, 0, False, True, (-128, 127), -10),
    ((0, 255), 37, 3, False, False, (0, 255), 0),             # asymmetric weights
    ((0, 255), 37, "vector", True, True, (-128, 127), -128),  # one weight zero point per channel
    ((-8, 7), 1, 0, False, False, (-8, 7), 0),                # 4-bit
    ((-1000, 1000), 10, 0, True, False, (-32768, 32767), 7),  # 16-bit output, float64 route
]


@pytest.mark.parametrize("case", range(len(LINEAR_CASES)))
def test_quantized_linear_equals_the_formula(case):
    (x_lo, x_hi), z_x, z_w, per_channel, relu, (lo, hi), z_y = LINEAR_CASES[case]
    g = gen(case)
    n, c_in, c_out = 9, 40, 6
    q_x = torch.randint(x_lo, x_hi + 1, (n, c_in), generator=g)
    q_w = torch.randint(-127, 128, (c_out, c_in), generator=g)
    if z_w == "vector":
        z_w = torch.randint(-5, 6, (c_out,), generator=g)
    q_b = torch.randint(-(2**14), 2**14, (c_out,), generator=g)
    mult = torch.rand(c_out, generator=g, dtype=torch.float64) * 1e-3 + 1e-4 if per_channel else 3e-4
    m0, shift = quantize_multiplier(mult)
    ours = quantized_linear(q_x, q_w, q_b, z_x, m0, shift, z_y, lo, hi, relu=relu, weight_zero_point=z_w)
    expected = brute_force_linear(q_x, q_w, q_b, z_x, z_w, m0, shift, z_y, max(lo, z_y) if relu else lo, hi)
    assert torch.equal(ours, expected)
    assert ours.dtype == torch.int64 and ours.shape == (n, c_out)
    assert ours.unique().numel() > 5, "the case is degenerate: almost every output is clamped"


def test_fused_relu_clamps_at_the_output_zero_point():
    q_x = torch.tensor([[10, -10]])
    q_w = torch.tensor([[1, 0], [0, 1]])
    m0, shift = quantize_multiplier(1.0)
    # acc = [10, -10], M = 1: plain [10 + 3, -10 + 3], with ReLU the negative one stops at Z_Y = 3
    assert quantized_linear(q_x, q_w, None, 0, m0, shift, 3, -128, 127).tolist() == [[13, -7]]
    assert quantized_linear(q_x, q_w, None, 0, m0, shift, 3, -128, 127, relu=True).tolist() == [[13, 3]]


# --- convolution against F.conv2d --------------------------------------------------------------

CONV_CASES = [  # C_in, C_out, kernel, stride, padding, groups, x zero point, w zero point, per-channel
    (1, 4, 3, 1, 1, 1, 128, 0, False),
    (4, 6, 3, 2, 0, 2, 100, 0, True),
    (6, 6, (3, 2), (1, 2), (2, 1), 6, 7, 0, False),   # depthwise, rectangular kernel
    (4, 8, 1, 1, 0, 1, 0, 0, True),
    (3, 3, 5, 3, 2, 1, 200, 2, False),               # asymmetric weights, padding with Z_X
    (4, 4, 3, 1, 1, 2, 50, "vector", True),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_quantized_conv2d_equals_conv2d_on_the_integers(case):
    c_in, c_out, k, stride, padding, groups, z_x, z_w, per_channel = CONV_CASES[case]
    g = gen(100 + case)
    kh, kw = (k, k) if isinstance(k, int) else k
    q_x = torch.randint(0, 256, (3, c_in, 9, 8), generator=g)
    q_w = torch.randint(-127, 128, (c_out, c_in // groups, kh, kw), generator=g)
    if z_w == "vector":
        z_w = torch.randint(-4, 5, (c_out,), generator=g)
    q_b = torch.randint(-5000, 5000, (c_out,), generator=g)
    mult = torch.rand(c_out, generator=g, dtype=torch.float64) * 2e-3 + 1e-4 if per_channel else 1e-3
    m0, shift = quantize_multiplier(mult)
    ours = quantized_conv2d(q_x, q_w, q_b, z_x, m0, shift, 128, 0, 255, stride=stride, padding=padding,
                            groups=groups, weight_zero_point=z_w)
    # oracle: padding with Z_X means padding (q_x - Z_X) with zeros; conv2d in float64 is exact here
    w_centered = q_w.double() - torch.as_tensor(z_w).double().reshape(-1, 1, 1, 1)
    acc = F.conv2d(q_x.double() - z_x, w_centered, stride=stride, padding=padding, groups=groups)
    acc = acc.round().long() + q_b.reshape(1, -1, 1, 1)
    expected = oracle_requantize(acc, m0, shift, 128, 0, 255, channel_axis=1)
    assert ours.shape == expected.shape
    assert torch.equal(ours, expected)


# Shapes where torch._int_mm on CPU returns wrong sums unless qlib steps around it: an inner
# dimension of 1 (a 1x1 kernel on one channel, a one-feature linear layer), and im2col patches
# whose rows overlap in memory (a 2-wide kernel sliding by 1 over a 2-wide image).
INT_MM_TRAPS = [
    # (input shape, weight shape, stride, padding, input dtype, Z_X)
    ((3, 1, 8, 4), (2, 1, 1, 1), 1, 1, torch.int64, 78),
    ((1, 4, 7, 2), (3, 4, 2, 2), 1, 0, torch.uint8, 224),
    ((2, 3, 5, 2), (4, 3, 2, 2), 1, 0, torch.int64, 17),
    ((2, 1, 6, 6), (5, 1, 1, 1), 2, 0, torch.uint8, 0),
]


@pytest.mark.parametrize("case", range(len(INT_MM_TRAPS)))
def test_conv_shapes_that_trip_int_mm_are_exact(case):
    x_shape, w_shape, stride, padding, dtype, z_x = INT_MM_TRAPS[case]
    g = gen(300 + case)
    q_x = torch.randint(2, 255, x_shape, generator=g).to(dtype)
    q_w = torch.randint(-127, 128, w_shape, generator=g).to(torch.int8)
    q_b = torch.randint(-30000, 30000, (w_shape[0],), generator=g).to(torch.int32)
    m0, shift = quantize_multiplier(2.0**-9)
    for _ in range(3):  # the wrong sums were not even repeatable
        ours = quantized_conv2d(q_x, q_w, q_b, z_x, m0, shift, 5, -128, 127, stride=stride, padding=padding)
        acc = F.conv2d(q_x.double() - z_x, q_w.double(), stride=stride, padding=padding)
        acc = acc.round().long() + q_b.long().reshape(1, -1, 1, 1)
        assert torch.equal(ours, oracle_requantize(acc, m0, shift, 5, -128, 127, channel_axis=1))


def test_one_feature_linear_layer_is_exact():
    g = gen(310)
    q_x = torch.randint(-128, 128, (7, 1), generator=g).to(torch.int8)
    q_w = torch.randint(-127, 128, (3, 1), generator=g).to(torch.int8)
    assert torch.equal(integer_matmul(q_x, q_w.t()), q_x.long() @ q_w.long().t())
    m0, shift = quantize_multiplier(2.0**-6)
    ours = quantized_linear(q_x, q_w, None, 0, m0, shift, 0, -128, 127)
    expected = oracle_requantize((q_x.long() @ q_w.long().t()), m0, shift, 0, -128, 127, channel_axis=1)
    assert torch.equal(ours, expected)


def test_conv_with_uint8_and_int8_tensors_matches_int64_tensors():
    g = gen(7)
    q_x = torch.randint(0, 256, (2, 4, 6, 6), generator=g)
    q_w = torch.randint(-127, 128, (5, 4, 3, 3), generator=g)
    m0, shift = quantize_multiplier(2e-3)
    a = quantized_conv2d(q_x, q_w, None, 255, m0, shift, 0, -128, 127, padding=1)
    b = quantized_conv2d(q_x.to(torch.uint8), q_w.to(torch.int8), None, 255, m0, shift, 0, -128, 127, padding=1)
    assert torch.equal(a, b)
    # Z_X = 255 does not fit int8: padding an int8 tensor must not wrap it to -1
    c = quantized_conv2d((q_x - 128).to(torch.int8), q_w.to(torch.int8), None, 127, m0, shift, 0, -128, 127,
                         padding=1)
    assert torch.equal(a, c)


# --- PyTorch's quantized layers (fbgemm / x86) --------------------------------------------------

@pytest.fixture(scope="module")
def nnq():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("torch.ao.nn.quantized")


def _match_stats(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[int, int, int]:
    diff = (ours - theirs).abs()
    return int((diff == 0).sum()), diff.numel(), int(diff.max())


@pytest.fixture(params=["fbgemm", "x86"])
def engine(request):
    """Run on one of PyTorch's server back-ends (skip if this build lacks it), then restore the default."""
    if request.param not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this PyTorch has no {request.param} quantized engine")
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    yield request.param
    torch.backends.quantized.engine = before


@pytest.mark.silence_ao
def test_agrees_with_pytorch_quantized_linear_and_conv2d(nnq, engine, capsys):
    g = gen(2024)
    exact = total = worst = 0
    for trial in range(24):
        per_channel = trial % 2 == 1
        conv = trial % 3 == 2
        c_in, c_out = int(torch.randint(3, 60, (1,), generator=g)), int(torch.randint(2, 40, (1,), generator=g))
        sx = float(torch.rand(1, generator=g)) * 0.05 + 0.005
        zx = int(torch.randint(0, 256, (1,), generator=g))
        so = float(torch.rand(1, generator=g)) * 0.2 + 0.02
        zo = int(torch.randint(0, 256, (1,), generator=g))
        wshape = (c_out, c_in, 3, 3) if conv else (c_out, c_in)
        w = torch.randn(wshape, generator=g) * 0.2
        b = torch.randn(c_out, generator=g)
        if per_channel:
            sw = (w.flatten(1).abs().amax(dim=1) / 127).float()
            qw = torch.quantize_per_channel(w, sw.double(), torch.zeros(c_out, dtype=torch.long), 0, torch.qint8)
        else:
            sw = torch.tensor(float(w.abs().max()) / 127)
            qw = torch.quantize_per_tensor(w, float(sw), 0, torch.qint8)
        xshape = (4, c_in, 7, 6) if conv else (16, c_in)
        x = torch.quantize_per_tensor(torch.randn(xshape, generator=g) * 1.5, sx, zx, torch.quint8)
        layer = nnq.Conv2d(c_in, c_out, 3, padding=1, stride=1 + trial % 2) if conv else nnq.Linear(c_in, c_out)
        layer.set_weight_bias(qw, b)
        layer.scale, layer.zero_point = so, zo
        theirs = layer(x).int_repr().long()

        sw_used = qw.q_per_channel_scales().float() if per_channel else torch.tensor(qw.q_scale()).float()
        m0, shift = quantize_multiplier(real_multiplier(x.q_scale(), sw_used, so))
        q_b = quantize_bias(b, x.q_scale(), sw_used)
        if conv:
            ours = quantized_conv2d(x.int_repr(), qw.int_repr(), q_b, zx, m0, shift, zo, 0, 255, padding=1,
                                    stride=1 + trial % 2)
        else:
            ours = quantized_linear(x.int_repr(), qw.int_repr(), q_b, zx, m0, shift, zo, 0, 255)
        e, t, d = _match_stats(ours, theirs)
        exact, total, worst = exact + e, total + t, max(worst, d)
    share = exact / total
    with capsys.disabled():
        print(f"\nqlib vs PyTorch quantized Linear/Conv2d ({engine}): "
              f"{share:.2%} of {total} outputs equal, largest difference {worst} LSB")
    assert worst <= 1
    assert share > 0.95


# --- pooling -----------------------------------------------------------------------------------

def test_integer_max_pool_matches_max_pool2d():
    q = torch.randint(-128, 128, (2, 3, 8, 7), generator=gen(3))
    for dtype in (torch.int64, torch.int8):
        for k, s in ((2, None), (3, 2), ((2, 3), (1, 2)), (1, 2), ((3, 1), (2, 1)), ((1, 3), 1)):
            expected = F.max_pool2d(q.double(), k, s).long()
            got = integer_max_pool2d(q.to(dtype), k, s)
            assert torch.equal(got, expected) and got.dtype == torch.int64
    one = integer_max_pool2d(q, 1)                  # a 1x1 window copies: the result is not the input
    one += 1
    assert torch.equal(one - 1, q)


def test_integer_avg_pool_rounds_half_away_from_zero():
    q = torch.tensor([[[[1, 2], [3, 4]], [[-1, -2], [-3, -4]], [[1, 1], [1, 2]], [[0, 0], [0, -2]]]])
    # 10/4 = 2.5 -> 3, -2.5 -> -3, 5/4 = 1.25 -> 1, -0.5 -> -1
    assert integer_avg_pool2d(q, 2).reshape(-1).tolist() == [3, -3, 1, -1]


def test_integer_avg_pool_against_exact_fractions():
    q = torch.randint(-128, 128, (2, 2, 9, 9), generator=gen(4))
    for k, s in ((2, None), (3, 3), (3, 2)):
        ours = integer_avg_pool2d(q, k, s)
        windows = q.unfold(2, k, s or k).unfold(3, k, s or k).flatten(4)
        for win, got in zip(windows.reshape(-1, k * k).tolist(), ours.reshape(-1).tolist()):
            mean = Fraction(sum(win), len(win))
            expected = int(math.copysign(math.floor(abs(mean) + Fraction(1, 2)), mean))
            assert got == expected


# --- bad input ---------------------------------------------------------------------------------

def _linear_args():
    return dict(q_x=torch.zeros(2, 3, dtype=torch.int64), q_weight=torch.zeros(4, 3, dtype=torch.int64),
                q_bias=torch.zeros(4, dtype=torch.int64), x_zero_point=0, m0=2**30, shift=1, y_zero_point=0,
                qmin=-128, qmax=127)


@pytest.mark.parametrize("change, error, words", [
    (dict(q_x=torch.zeros(2, 3)), TypeError, "integers"),
    (dict(q_x=torch.zeros(2, 5, dtype=torch.int64)), ValueError, "5 features"),
    (dict(q_x=torch.zeros(3, dtype=torch.int64)), ValueError, "2-D"),
    (dict(q_bias=torch.zeros(3, dtype=torch.int64)), ValueError, "3 values"),
    (dict(q_bias=torch.zeros(4)), TypeError, "q_bias"),
    (dict(y_zero_point=300), ValueError, "zero_point=300 is outside"),
    (dict(x_zero_point=2**20), ValueError, "x_zero_point"),
    (dict(x_zero_point=0.5), TypeError, "x_zero_point"),
    (dict(m0=torch.tensor([2**30, 2**30])), ValueError, "m0 has 2 values"),
    (dict(shift=40), ValueError, "shift"),
    (dict(qmin=5, qmax=5), ValueError, "qmin < qmax"),
    (dict(q_x=torch.full((2, 3), 2**20), q_weight=torch.full((4, 3), 2**20), m0=2**30), ValueError,
     "accumulator overflows int32"),
])
def test_quantized_linear_refuses(change, error, words):
    args = _linear_args()
    args.update(change)
    with pytest.raises(error, match=words):
        quantized_linear(**args)


@pytest.mark.parametrize("change, error, words", [
    (dict(groups=3), ValueError, "groups=3 must divide"),
    (dict(q_weight=torch.zeros(4, 2, 3, 3, dtype=torch.int64)), ValueError, "input channels per group"),
    (dict(stride=0), ValueError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(stride=(1, 2, 3)), ValueError, "pair"),
    (dict(q_x=torch.zeros(1, 4, 2, 2, dtype=torch.int64)), ValueError, "larger than the padded input"),
    (dict(q_x=torch.zeros(4, 5, 5, dtype=torch.int64)), ValueError, "4-D"),
])
def test_quantized_conv2d_refuses(change, error, words):
    args = dict(q_x=torch.zeros(1, 4, 5, 5, dtype=torch.int64), q_weight=torch.zeros(4, 4, 3, 3, dtype=torch.int64),
                q_bias=None, x_zero_point=0, m0=2**30, shift=1, y_zero_point=0, qmin=-128, qmax=127)
    args.update(change)
    with pytest.raises(error, match=words):
        quantized_conv2d(**args)


def test_pooling_refuses_bad_windows():
    q = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="larger than the input"):
        integer_max_pool2d(q, 5)
    with pytest.raises(ValueError, match="kernel_size"):
        integer_avg_pool2d(q, 0)
    with pytest.raises(TypeError, match="integers"):
        integer_avg_pool2d(q.float(), 2)


def test_numpy_inputs_are_accepted():
    g = np.random.default_rng(0)
    q_x = g.integers(0, 256, (3, 10))
    q_w = g.integers(-127, 128, (4, 10))
    m0, shift = quantize_multiplier(1e-3)
    a = quantized_linear(q_x, q_w, None, 128, m0, shift, 0, -128, 127)
    b = quantized_linear(torch.from_numpy(q_x), torch.from_numpy(q_w), None, 128, m0, shift, 0, -128, 127)
    assert torch.equal(a, b)


def test_inputs_are_never_modified():
    g = gen(9)
    q_x = torch.randint(0, 256, (2, 4, 6, 6), generator=g)
    q_w = torch.randint(-127, 128, (4, 4, 3, 3), generator=g)
    before = q_x.clone(), q_w.clone()
    m0, shift = quantize_multiplier(torch.tensor([1e-3, 2e-3, 3e-3, 4e-3]))
    quantized_conv2d(q_x, q_w, None, 3, m0, shift, 0, 0, 255, padding=1)
    quantized_linear(q_x.flatten(1)[:, :3], q_w[:, 0, 0], None, 3, m0, shift, 0, 0, 255)
    integer_max_pool2d(q_x, 2)
    integer_avg_pool2d(q_x, 2)
    assert torch.equal(q_x, before[0]) and torch.equal(q_w, before[1])


class _NoFloatTensors(torch.overrides.TorchFunctionMode):
    """Raises if any torch operation receives or returns a floating-point tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves = torch.utils._pytree.tree_flatten((args, kwargs, out))[0]
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in leaves):
            raise AssertionError(f"{getattr(func, '__name__', func)} touched a float tensor")
        return out


def test_eight_bit_layers_use_integer_tensors_only():
    g = gen(11)
    q_x = torch.randint(0, 256, (2, 4, 6, 6), generator=g).to(torch.uint8)
    q_w = torch.randint(-127, 128, (5, 4, 3, 3), generator=g).to(torch.int8)
    w_fc = torch.randint(-127, 128, (5, 45), generator=g).to(torch.int8)
    m0, shift = quantize_multiplier(torch.tensor([1e-3, 2e-3, 3e-3, 4e-3, 5e-3]))
    with _NoFloatTensors():
        y = quantized_conv2d(q_x, q_w, torch.arange(5), 3, m0, shift, 0, 0, 255, padding=1, relu=True)
        y = integer_max_pool2d(y, 2)
        quantized_linear(y.flatten(1), w_fc, None, 0, m0, shift, 0, -128, 127)
    # the check can fail: 16-bit activations take the float64 route of integer_matmul
    with pytest.raises(AssertionError, match="float"):
        with _NoFloatTensors():
            quantized_linear(torch.full((2, 45), 1000), w_fc, None, 0, m0, shift, 0, -128, 127)
