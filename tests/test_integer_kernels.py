"""Tests of qlib.integer_kernels: the fast kernels give the readable layers' integers, bit for bit.

Each layer of qlib.integer_layers hands 8-bit work to qlib.integer_kernels in one dispatch line.
Here every case runs twice: through the kernel, and through the readable route with the kernel
switched off (``monkeypatch``: the dispatch then finds ``None`` and the function computes its
formula in int64). The two must be equal, on random shapes and on the extremes: inputs at
qmin/qmax, zero points at the ends of their range, every shift 0 ... 31, the multipliers 2^30 and
2^31 - 1 (ties), outputs clamped at both ends, accumulators within a hair of the int32 limits.
Both are also held to the plain-Python transcription of gemmlowp/TFLite (tests/test_requantize.py)
where the shapes are small enough for it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qlib import integer_kernels
from qlib.integer_kernels import Requantizer, as_signed_bytes, exact_matmul, multiply_by_quantized_multiplier_in_place
from qlib.integer_layers import quantized_conv2d, quantized_linear
from qlib.requantize import INT32_MAX, multiply_by_quantized_multiplier
from tests.test_integer_layers import oracle_requantize


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def readable(monkeypatch):
    """``readable(layer, *args, **kwargs)``: the layer computed by its readable route only."""
    def run(layer, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(integer_kernels, "quantized_linear_int8", lambda *a: None)
            m.setattr(integer_kernels, "quantized_conv2d_int8", lambda *a: None)
            return layer(*args, **kwargs)
    return run


def _multipliers(g: torch.Generator, c_out: int, per_channel: bool, every_shift: bool):
    """(m0, shift): ties (m0 = 2^30), the largest m0, shifts from 0 to 31 or typical ones."""
    count = c_out if per_channel else 1
    m0 = torch.randint(2**30, 2**31, (count,), generator=g)
    m0[::3] = 2**30
    m0[-1] = 2**31 - 1
    shift = (torch.arange(count) % 32) if every_shift else torch.randint(6, 14, (count,), generator=g)
    return m0, shift


# --- the layers, fast against readable ------------------------------------------------------------

LINEAR_CASES = [  # input (lo, hi, dtype), Z_X, per-channel, every shift, relu, (qmin, qmax), Z_Y
    ((0, 255, torch.uint8), 128, False, False, False, (0, 255), 128),
    ((0, 255, torch.uint8), 0, True, True, False, (0, 255), 255),
    ((0, 255, torch.uint8), 255, True, False, True, (0, 255), 0),
    ((-128, 127, torch.int8), -128, True, True, False, (-128, 127), -128),
    ((-128, 127, torch.int8), 127, False, False, True, (-128, 127), 127),
    ((-128, 127, torch.int64), 5, True, False, False, (-32768, 32767), -7),   # int8 values in int64
    ((0, 100, torch.int64), 300, True, True, False, (-128, 127), 0),        # Z_X beyond uint8
    ((0, 255, torch.int32), 17, False, True, True, (-(2**20), 2**20), 2**19),
]


@pytest.mark.parametrize("case", range(len(LINEAR_CASES)))
@pytest.mark.parametrize("seed", range(3))
def test_linear_kernel_equals_the_readable_route(case, seed, readable):
    (x_lo, x_hi, dtype), z_x, per_channel, every_shift, relu, (qmin, qmax), z_y = LINEAR_CASES[case]
    g = gen(100 * case + seed)
    n, c_in, c_out = (int(torch.randint(1, 70, (1,), generator=g)) for _ in range(3))
    c_in += 1                                                         # K >= 2 for torch._int_mm
    q_x = torch.randint(x_lo, x_hi + 1, (n, c_in), generator=g)
    q_x[0, :] = x_lo                                                  # the extremes occur
    q_x[-1, : c_in // 2] = x_hi
    q_w = torch.randint(-128, 128, (c_out, c_in), generator=g)
    q_w[0, 0], q_w[-1, -1] = -128, 127
    q_b = torch.randint(-(2**20), 2**20, (c_out,), generator=g)
    m0, shift = _multipliers(g, c_out, per_channel, every_shift)
    args = (q_x.to(dtype), q_w.to(torch.int8), q_b, z_x, m0, shift, z_y, qmin, qmax, relu)
    signed_x = as_signed_bytes(args[0], z_x)
    assert integer_kernels.quantized_linear_int8(args[0], args[1], q_b, z_x, torch.zeros(1, dtype=torch.int64), m0,
                                                 shift, z_y, max(qmin, z_y) if relu else qmin, qmax) is not None \
        or signed_x is None
    fast, slow = quantized_linear(*args), readable(quantized_linear, *args)
    assert fast.dtype == slow.dtype == torch.int64
    assert torch.equal(fast, slow)


CONV_CASES = [  # C_in, C_out, kernel, stride, padding, input (lo, hi, dtype), Z_X, per-channel, relu, Z_Y
    (1, 16, 3, 1, 1, (0, 255, torch.uint8), 0, True, True, 0),           # the digits CNN's conv1
    (16, 32, 3, 1, 1, (0, 255, torch.uint8), 0, True, True, 0),          # and conv2
    (3, 5, (3, 2), (2, 1), (1, 2), (0, 255, torch.uint8), 255, True, False, 255),
    (4, 6, 1, 1, 0, (-128, 127, torch.int8), -128, False, False, -128),
    (2, 3, 5, 3, 2, (-128, 127, torch.int8), 127, True, False, 3),
    (3, 4, 2, 1, 0, (0, 255, torch.int64), 200, False, True, 10),
    (2, 4, 3, 2, 1, (-128, 127, torch.int64), 300, True, False, 0),      # Z_X does not fit int8: no padding value
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("every_shift", [False, True])
def test_conv_kernel_equals_the_readable_route(case, every_shift, readable):
    c_in, c_out, k, stride, padding, (x_lo, x_hi, dtype), z_x, per_channel, relu, z_y = CONV_CASES[case]
    g = gen(200 + case + 50 * every_shift)
    kh, kw = (k, k) if isinstance(k, int) else k
    n = int(torch.randint(1, 6, (1,), generator=g))
    h, w = (int(torch.randint(max(kh, kw), 11, (1,), generator=g)) for _ in range(2))
    q_x = torch.randint(x_lo, x_hi + 1, (n, c_in, h, w), generator=g)
    q_x[0, 0, 0, :] = x_lo
    q_x[-1, -1, -1, :] = x_hi
    q_w = torch.randint(-128, 128, (c_out, c_in, kh, kw), generator=g).to(torch.int8)
    q_b = torch.randint(-(2**18), 2**18, (c_out,), generator=g).to(torch.int32)
    m0, shift = _multipliers(g, c_out, per_channel, every_shift)
    args = (q_x.to(dtype), q_w, q_b, z_x, m0, shift, z_y, 0 if x_lo == 0 else -128, 255 if x_lo == 0 else 127)
    kwargs = dict(stride=stride, padding=padding, relu=relu)
    fast, slow = quantized_conv2d(*args, **kwargs), readable(quantized_conv2d, *args, **kwargs)
    assert torch.equal(fast, slow)
    # and both are the convolution: F.conv2d in float64 on small integers is exact
    acc = F.conv2d(q_x.double() - z_x, q_w.double(), stride=stride, padding=padding).round().long()
    expected = oracle_requantize(acc + q_b.long().reshape(1, -1, 1, 1), m0, shift, z_y,
                                 max(args[7], z_y) if relu else args[7], args[8], channel_axis=1)
    assert torch.equal(fast, expected)


@pytest.mark.parametrize("relu, z_y, out_range", [(True, 0, (0, 255)), (False, 100, (0, 255)),
                                                  (False, -128, (-128, 127)), (True, -20, (-128, 127))])
def test_large_layers_clamp_in_int32_and_agree(relu, z_y, out_range, readable):
    """Layers with many outputs clamp the int32 accumulator to each channel's input bounds first."""
    g = gen(900 + z_y)
    m0, shift = _multipliers(g, 48, per_channel=True, every_shift=False)
    q_x = torch.randint(0, 256, (1400, 64), generator=g, dtype=torch.uint8)
    q_w = torch.randint(-127, 128, (48, 64), generator=g, dtype=torch.int8)
    q_b = torch.randint(-(2**17), 2**17, (48,), generator=g)
    args = (q_x, q_w, q_b, 3, m0, shift, z_y, *out_range, relu)
    assert 40 * 48 * 81 >= 1400 * 48 >= integer_kernels.CLAMP_FIRST_OUTPUTS
    assert torch.equal(quantized_linear(*args), readable(quantized_linear, *args))
    q_img = torch.randint(0, 256, (40, 8, 9, 9), generator=g, dtype=torch.uint8)
    q_k = torch.randint(-127, 128, (48, 8, 3, 3), generator=g, dtype=torch.int8)
    args = (q_img, q_k, q_b, 7, m0, shift, z_y, *out_range)
    fast = quantized_conv2d(*args, padding=1, relu=relu)
    assert torch.equal(fast, readable(quantized_conv2d, *args, padding=1, relu=relu))
    assert fast.unique().numel() > 50


def test_accumulators_at_the_int32_limits(readable):
    """K = 2^17 - 1 products of -128 * -128 plus a bias: |acc| within 2^14 of 2^31, the kernel's edge."""
    k = 2**17 - 1
    q_x = torch.full((3, k), -128, dtype=torch.int8)
    q_x[1] = 127
    q_x[2, ::2] = 127
    q_w = torch.full((4, k), -128, dtype=torch.int8)
    q_w[1] = 127
    q_w[3, 1::2] = 127
    bias = torch.tensor([2**14 - 1, -(2**14) + 1, 0, 12345])                 # K 2^14 + |bias| < 2^31
    m0, shift = torch.tensor([2**30, 2**31 - 1, 2**30, 1 << 30]), torch.tensor([31, 31, 23, 0])
    for z_y, lo, hi in ((0, -(2**31), 2**31 - 1), (0, -128, 127), (-5, -1000, 1000)):
        fast = quantized_linear(q_x, q_w, bias, 0, m0, shift, z_y, lo, hi)
        assert torch.equal(fast, readable(quantized_linear, q_x, q_w, bias, 0, m0, shift, z_y, lo, hi))
        acc = q_x.long() @ q_w.long().t() + bias
        assert int(acc.abs().max()) > 2**31 - 2**15
        assert torch.equal(fast, oracle_requantize(acc, m0, shift, z_y, lo, hi, channel_axis=1))
    # one more unit of bias and the worst case no longer fits: the kernel steps aside
    bias[0] = 2**14
    assert integer_kernels.quantized_linear_int8(q_x, q_w, bias, 0, torch.zeros(1, dtype=torch.int64), m0, shift,
                                                 0, -128, 127) is None


def test_the_kernels_step_aside_where_they_do_not_apply():
    q_x = torch.ones(2, 4, dtype=torch.int8)
    q_w = torch.ones(3, 4, dtype=torch.int8)
    zero = torch.zeros(3, dtype=torch.int64)
    m0, shift = torch.full((3,), 2**30), torch.zeros(3, dtype=torch.int64)
    run = integer_kernels.quantized_linear_int8
    assert run(q_x, q_w, zero, 0, zero, m0, shift, 0, -128, 127) is not None
    assert run(q_x, q_w, torch.full((3,), 2**31 - 1), 0, zero, m0, shift, 0, -128, 127) is None   # bias: overflow
    assert run(q_x, q_w, zero, 0, zero, m0, shift - 1, 0, -128, 127) is None           # a left shift
    assert run(q_x, q_w, zero, 0, zero + 1, m0, shift, 0, -128, 127) is None           # asymmetric weights
    assert run(q_x.long() * 300, q_w, zero, 0, zero, m0, shift, 0, -128, 127) is None  # not 8-bit values
    assert run(q_x[:, :1], q_w[:, :1], zero, 0, zero, m0, shift, 0, -128, 127) is None  # K = 1: _int_mm is wrong
    conv = integer_kernels.quantized_conv2d_int8
    x4, w4 = torch.ones(1, 4, 3, 3, dtype=torch.int8), torch.ones(4, 2, 1, 1, dtype=torch.int8)
    assert conv(x4, w4, zero[:1].expand(4), 0, zero, m0[:1], shift[:1], 0, -128, 127, (1, 1), (0, 0), 2) is None
    # the accumulator that would overflow int32 still gets the readable route's error
    with pytest.raises(ValueError, match="overflows int32"):
        quantized_linear(q_x, q_w, torch.full((3,), 2**31 - 2), 0, m0, shift, 0, -128, 127)


# --- the requantizer against the transcription ------------------------------------------------------

def _requantized(requantize: Requantizer, acc: torch.Tensor) -> torch.Tensor:
    return requantize(acc.to(torch.int32), torch.empty(acc.shape, dtype=torch.int64))


@pytest.mark.parametrize("seed", range(6))
def test_requantizer_equals_the_transcription_on_ties_and_every_shift(seed):
    g = gen(500 + seed)
    rows, c_out = 64, 32
    acc = torch.randint(-(2**24), 2**24, (rows, c_out), generator=g)
    acc[:8] = torch.arange(-4, 4).reshape(-1, 1) << (torch.arange(c_out) % 24)   # ties of the shift
    bias = torch.randint(-(2**16), 2**16, (c_out,), generator=g)
    m0 = torch.randint(2**30, 2**31, (c_out,), generator=g)
    m0[::3] = 2**30
    m0[1] = 2**31 - 1
    shift = torch.arange(c_out) % 32 if seed % 2 else torch.randint(5, 12, (c_out,), generator=g)
    m0[shift <= 1] = torch.tensor([45000, 2**16, 2**14 + 1])[: int((shift <= 1).sum())]  # in range at n = 0, 1
    # exact negative ties of the shift: with m0 = 2^30, a = -(2j + 1) 2^n gives z = -(2j + 1) 2^(n-1)
    odd = -(2 * torch.arange(8).reshape(-1, 1) + 1)
    acc[8:16] = torch.where(m0 == 2**30, (odd << shift.clamp(max=20)) - bias, acc[8:16])
    z_y, lo, hi = [(-128, -128, 127), (5, -128, 127), (0, 0, 255), (100, 0, 255), (-127, -128, 127),
                   (255, 0, 255)][seed]
    expected = oracle_requantize(acc + bias, m0, shift, z_y, lo, hi, channel_axis=1)
    assert torch.equal(_requantized(Requantizer(bias, m0, shift, z_y, lo, hi), acc), expected)
    # channels first: acc (C_out, b, P) into an output (b, C_out, P), rows = (b, P)
    channels_first = Requantizer(bias, m0, shift, z_y, lo, hi, channels_first=True)
    acc_cf = acc.t().reshape(c_out, 4, rows // 4).to(torch.int32)
    out_cf = channels_first(acc_cf, torch.empty(4, c_out, rows // 4, dtype=torch.int64))
    assert torch.equal(out_cf, expected.reshape(4, rows // 4, c_out).transpose(1, 2))
    for c in (0, 1, 7, 31):                                   # one multiplier for the whole tensor
        one = Requantizer(bias, m0[c:c + 1], shift[c:c + 1], z_y, lo, hi)
        assert torch.equal(_requantized(one, acc), oracle_requantize(acc + bias, m0[c:c + 1], shift[c:c + 1], z_y,
                                                                     lo, hi, channel_axis=1))
    assert expected.unique().numel() > 10, "the case is degenerate: almost every output is clamped"


def test_requantizer_adds_a_large_zero_point_after_the_shift():
    # n = 31 with Z_Y = 2^20: Z_Y 2^62 cannot join the int64 sum, so it is added after the shift
    acc = torch.tensor([[-(2**31) + 5, -7, 0, 7, 2**31 - 5]]).t()
    m0, shift = torch.tensor([2**31 - 1, 2**30]), torch.tensor([31, 30])
    requantize = Requantizer(torch.zeros(2, dtype=torch.int64), m0, shift, 2**20, -(2**21), 2**21)
    assert requantize.z_y_after
    expected = oracle_requantize(acc.expand(-1, 2), m0, shift, 2**20, -(2**21), 2**21, channel_axis=1)
    assert torch.equal(_requantized(requantize, acc.expand(-1, 2)), expected)


@pytest.mark.parametrize("m0", [2**30, 2**30 + 1, 1288490189, 2**31 - 1, 3, 45000])
def test_smallest_input_reaching_each_output(m0):
    """Against the readable multiplier on every integer around each threshold."""
    for n in (0, 1, 2, 5, 13):
        for k in (-130, -3, -1, 0, 1, 2, 127, 300):
            a = integer_kernels.smallest_input_reaching(k, m0, n)
            if not -(2**31) < a < 2**31 - 1:
                continue                                  # no int32 input reaches k
            around = torch.tensor([a - 1, a, a + 1])
            r = multiply_by_quantized_multiplier(around, m0, n).tolist()
            assert r[0] < k <= r[1], (k, m0, n, a, r)
            assert r[1] == k or m0 * 2.0 ** (-31 - n) >= 1, "the rescaled value rises by at most one per step"
    assert integer_kernels.smallest_input_reaching(5, 0, 3) is None


def test_in_place_multiplier_equals_the_readable_one_for_any_m0():
    g = gen(7)
    x = torch.cat([torch.randint(-(2**31), 2**31, (4000,), generator=g), torch.tensor([-(2**31), -1, 0, 1, INT32_MAX])])
    for m0 in (0, 1, 3, 2**20 + 1, 2**30 - 1, 2**30, 2**31 - 1):
        for n in (0, 1, 2, 17, 31):
            ours = multiply_by_quantized_multiplier_in_place(x.clone(), torch.tensor(m0), torch.tensor(n))
            assert torch.equal(ours, multiply_by_quantized_multiplier(x, m0, n)), (m0, n)
    per_channel = x[:4000].reshape(-1, 8)
    m0, n = torch.randint(0, 2**31, (8,), generator=g), torch.tensor([0, 0, 1, 5, 9, 30, 31, 0])
    ours = multiply_by_quantized_multiplier_in_place(per_channel.clone(), m0, n)
    assert torch.equal(ours, multiply_by_quantized_multiplier(per_channel, m0, n, axis=1))


def test_channel_bounds_equal_the_bounds_of_each_channel():
    rng = np.random.default_rng(8)
    m0 = rng.integers(2**30, 2**31, 40)
    m0[:3] = [2**30, 2**31 - 1, 1288490189]
    shift = np.arange(40) % 20
    for lo, hi in ((0, 255), (-128, 127), (-255, 0), (3, 4)):
        a_lo, a_hi = integer_kernels.channel_input_bounds(m0, shift, lo, hi)
        for c in range(40):
            assert (int(a_lo[c]), int(a_hi[c])) == integer_kernels._input_bounds(int(m0[c]), int(shift[c]), lo, hi)
    assert integer_kernels.channel_input_bounds(np.array([0, 2**30]), np.array([3, 3]), 0, 255) is None
    assert integer_kernels.channel_input_bounds(m0[:2], np.array([31, 31]), -(2**20), 2**20) is None  # int64 limit


# --- the GEMM ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 2, 1), (5, 17, 3), (64, 300, 33)])
def test_exact_matmul_routes(shape):
    m, k, n = shape
    g = gen(m + k + n)
    for (a_lo, a_hi), (b_lo, b_hi) in [((-128, 127), (-128, 127)), ((0, 255), (-128, 127)), ((0, 255), (0, 255)),
                                       ((-(2**15), 2**15), (-(2**15), 2**15))]:
        a = torch.randint(a_lo, a_hi + 1, (m, k), generator=g)
        b = torch.randint(b_lo, b_hi + 1, (n, k), generator=g).t()
        a[0, 0], b[0, 0] = a_hi, b_lo
        assert torch.equal(exact_matmul(a, b), a @ b)
    big = torch.full((2, 2), 2**30)
    assert exact_matmul(big, big) is None                  # beyond 2^53: the int64 route, in integer_layers


def test_signed_bytes_keep_every_difference():
    q = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8)
    for z in (0, 128, 255):
        q8, z8 = as_signed_bytes(q, z)
        assert q8.dtype == torch.int8 and torch.equal(q8.long() - z8, q.long() - z)
    assert as_signed_bytes(q, 300) is None                  # the zero point would not fit int8
    assert as_signed_bytes(q.long() - 200, 0) is None       # neither int8 nor uint8 values
