"""Tests of qlib.granularity: per-tensor, per-channel, per-group quantization and MX-style integer blocks.

Oracles: ``torch.fake_quantize_per_channel_affine`` and ``torch.fake_quantize_per_tensor_affine``
(PyTorch's C++ kernels), ``torch.ao.quantization`` observers for the scale and zero point, and
small examples worked by hand. MX integer blocks: the OCP MXINT8 of ``qlib.microscaling``
(tested against its own independent construction), a plain-Python transcription with
``math.frexp`` and Python's ``round``, and torch's fake quantization given the power-of-two scales.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from qlib.granularity import (
    GRANULARITIES,
    dequantize_per_channel,
    dequantize_per_group,
    fake_quantize_tensor,
    mxint_dequantize,
    mxint_fake_quantize,
    mxint_quantize,
    quantize_per_channel,
    quantize_per_group,
)
from qlib.linear import integer_range


def _tensor(shape, seed):
    """Random float32 tensor whose channels along every axis differ in range and sign."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    # a different spread and offset for every element index, so channels are not alike
    return x * (0.1 + 3 * torch.rand(shape, generator=gen)) + torch.randn(shape, generator=gen)


def _special_channels(x, axis):
    """Make channel 0 all zero, channel 1 all positive, channel 2 all negative (along ``axis``)."""
    x = x.clone()
    x.select(axis, 0).zero_()
    x.select(axis, 1).abs_()
    x.select(axis, 2).abs_().neg_()
    return x


def torch_qparams(ao, x, qmin, qmax, symmetric, axis=None):
    """(scale, zero_point) of PyTorch's min-max observer on [qmin, qmax]: per tensor, or per channel along ``axis``.

    The observer's integer type is the smallest that holds the range (quint8, qint8, else qint32).
    """
    dtype = torch.quint8 if qmin >= 0 else torch.qint8 if qmin >= -128 and qmax <= 127 else torch.qint32
    if axis is None:
        obs = ao.MinMaxObserver(dtype=dtype, quant_min=qmin, quant_max=qmax,
                                qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine)
    else:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        obs = ao.PerChannelMinMaxObserver(ch_axis=axis % x.ndim, dtype=dtype, quant_min=qmin, quant_max=qmax,
                                          qscheme=qscheme)
    obs(x)
    return obs.calculate_qparams()


def torch_fake_quantize(ao, x, qmin, qmax, symmetric, axis=None, observed=None):
    """PyTorch's fake quantization of ``x`` on [qmin, qmax] with its observer's scale and zero point.

    ``observed``: the range the observer sets the scale on, if not [qmin, qmax] (a symmetric scheme
    observes [-qmax, qmax] and rounds onto [-qmax - 1, qmax]).
    """
    s, z = torch_qparams(ao, x, *(observed or (qmin, qmax)), symmetric, axis)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, s, z, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, s, z.to(torch.int32), axis % x.ndim, qmin, qmax)


CASES = [  # (shape, axis)
    ((6, 10), 0),
    ((6, 10), 1),
    ((6, 10), -1),
    ((8, 3, 3, 3), 0),
    ((8, 3, 3, 3), 1),
    ((8, 3, 3, 3), -1),
    ((4, 5, 6, 7), -3),
]


# --- per-channel ------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits, signed", [(2, True), (4, True), (4, False), (8, True), (8, False), (16, True)])
@pytest.mark.parametrize("shape, axis", CASES)
def test_per_channel_bit_exact_vs_torch(shape, axis, bits, signed, symmetric):
    qmin, qmax = integer_range(bits, signed=signed)
    x = _special_channels(_tensor(shape, seed=len(shape) * 100 + axis + bits), axis)
    q, scale, zero_point = quantize_per_channel(x, axis, qmin, qmax, symmetric=symmetric)
    assert q.shape == x.shape and q.dtype == torch.int64
    assert scale.shape == zero_point.shape == (x.shape[axis],)
    assert scale.dtype == torch.float32

    expected = torch.fake_quantize_per_channel_affine(
        x, scale, zero_point.to(torch.int32), axis % x.ndim, qmin, qmax)  # torch wants axis >= 0
    got = dequantize_per_channel(q, scale, zero_point, axis)
    assert torch.equal(got, expected), f"{int((got != expected).sum())} values differ"
    assert torch.equal(fake_quantize_tensor(x, bits, "channel", axis=axis, symmetric=symmetric, signed=signed),
                       expected)

    # integers recovered from torch's output: q = round(out / scale) + zero_point
    shape_c = [1] * x.ndim
    shape_c[axis] = -1
    s, z = scale.reshape(shape_c).double(), zero_point.reshape(shape_c)
    assert torch.equal(q, torch.round(expected.double() / s).to(torch.int64) + z)


@pytest.mark.parametrize("shape, axis", CASES)
def test_per_channel_uses_each_channels_own_range(shape, axis):
    x = _tensor(shape, seed=5)
    q, scale, zero_point = quantize_per_channel(x, axis, 0, 255)
    for c in range(x.shape[axis]):
        xc = x.select(axis, c)
        lo, hi = min(xc.min().item(), 0.0), max(xc.max().item(), 0.0)
        assert scale[c].item() == pytest.approx((hi - lo) / 255, rel=1e-6)
        # the channel's extremes reach the ends of the integer range
        assert q.select(axis, c).min().item() == 0 or xc.min().item() > 0
        assert q.select(axis, c).max().item() == 255 or xc.max().item() < 0


@pytest.mark.silence_ao
@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("qmin, qmax", [(0, 255), (-128, 127), (-8, 7), (0, 3), (-32768, 32767)])
def test_per_channel_asymmetric_qparams_vs_observer(ao, shape, axis, qmin, qmax):
    x = _special_channels(_tensor(shape, seed=11), axis)
    exp_scale, exp_zp = torch_qparams(ao, x, qmin, qmax, symmetric=False, axis=axis)
    _, scale, zero_point = quantize_per_channel(x, axis, qmin, qmax, symmetric=False)
    assert torch.equal(scale, exp_scale)
    assert torch.equal(zero_point, exp_zp.to(torch.int64))


@pytest.mark.silence_ao
@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_per_channel_symmetric_qparams_vs_observer(ao, shape, axis, bits):
    # torch's symmetric scale is amax / ((qmax - qmin) / 2): equal to qlib's amax / qmax on [-qmax, qmax]
    qmin, qmax = integer_range(bits, signed=True, narrow=True)
    x = _special_channels(_tensor(shape, seed=12), axis)
    exp_scale, exp_zp = torch_qparams(ao, x, qmin, qmax, symmetric=True, axis=axis)
    _, scale, zero_point = quantize_per_channel(x, axis, qmin - 1, qmax, symmetric=True)
    assert torch.equal(scale, exp_scale)
    assert torch.equal(zero_point, exp_zp.to(torch.int64)) and not bool(zero_point.any())


def test_per_channel_of_the_lecture_matrix_along_columns():
    # axis=1: one scale per column, max |w| of each column
    w = torch.tensor([[2.09, -0.98, 1.48, 0.09],
                      [0.05, -0.14, -1.08, 2.12],
                      [-0.91, 1.92, 0.0, -1.03],
                      [1.87, 0.0, 1.53, 1.49]])
    q, scale, _ = quantize_per_channel(w, 1, -2, 1, symmetric=True)
    assert scale.tolist() == pytest.approx([2.09, 1.92, 1.53, 2.12])
    assert q.tolist() == [[1, -1, 1, 0], [0, 0, -1, 1], [0, 1, 0, 0], [1, 0, 1, 1]]


# --- per-group --------------------------------------------------------------------------------

def test_per_group_symmetric_hand_example():
    # 3-bit signed [-4, 3], groups of 2 along axis 1; group scale = max|x| / 3, all powers of two.
    x = torch.tensor([[1.5, -0.75, 0.375, 0.1],
                      [6.0, 5.0, -0.75, 0.0]])
    q, scale, zero_point = quantize_per_group(x, 1, 2, -4, 3, symmetric=True)
    assert scale.tolist() == [[0.5, 0.125], [2.0, 0.25]]
    assert zero_point.tolist() == [[0, 0], [0, 0]]
    # -0.75 / 0.5 = -1.5 -> -2 and 5.0 / 2.0 = 2.5 -> 2: ties to even; 0.1 / 0.125 = 0.8 -> 1
    assert q.tolist() == [[3, -2, 3, 1], [3, 2, -3, 0]]
    assert dequantize_per_group(q, scale, zero_point, 1, 2).tolist() == [[1.5, -1.0, 0.375, 0.125],
                                                                         [6.0, 4.0, -0.75, 0.0]]


def test_per_group_asymmetric_hand_example():
    # 2-bit unsigned [0, 3], groups of 2 along axis 0 (the only axis).
    # group [-1, 2]:    scale 3/3 = 1,     zero point 0 - round(-1) = 1, q = [-1+1, 2+1] = [0, 3]
    # group [0.75, 1.5]: range widened to [0, 1.5], scale 0.5, zero point 0, q = [round(1.5), 3] = [2, 3]
    x = torch.tensor([-1.0, 2.0, 0.75, 1.5])
    q, scale, zero_point = quantize_per_group(x, 0, 2, 0, 3, symmetric=False)
    assert scale.tolist() == [1.0, 0.5]
    assert zero_point.tolist() == [1, 0]
    assert q.tolist() == [0, 3, 2, 3]
    assert dequantize_per_group(q, scale, zero_point, 0, 2).tolist() == [-1.0, 2.0, 1.0, 1.5]


def _groups(shape, axis, group_size):
    """Index tuples of every group: one position in the other dimensions, a slice along ``axis``."""
    axis %= len(shape)
    others = [range(n) for i, n in enumerate(shape) if i != axis]
    for pos in itertools.product(*others):
        for g in range(shape[axis] // group_size):
            index = list(pos)
            index.insert(axis, slice(g * group_size, (g + 1) * group_size))
            yield g, tuple(index)


@pytest.mark.silence_ao
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shape, axis, group_size", [((8, 32), 1, 8), ((32, 5), 0, 4), ((3, 12, 4), 1, 3),
                                                     ((3, 4, 12), -1, 6), ((2, 6), 1, 6), ((2, 6), 1, 1)])
def test_per_group_equals_per_tensor_torch_on_each_group(ao, shape, axis, group_size, symmetric):
    """Each group, cut out by hand, quantized by torch's per-tensor observer and fake-quant kernel."""
    bits = 4
    qmin, qmax = integer_range(bits, signed=True, narrow=symmetric)
    x = _tensor(shape, seed=21 + group_size)
    q, scale, zero_point = quantize_per_group(x, axis, group_size, qmin, qmax, symmetric=symmetric)
    got = dequantize_per_group(q, scale, zero_point, axis, group_size)
    assert torch.equal(got, fake_quantize_tensor(x, bits, "group", axis=axis, group_size=group_size,
                                                 symmetric=symmetric, narrow=symmetric))
    expected_shape = list(shape)
    expected_shape[axis] //= group_size
    assert list(scale.shape) == list(zero_point.shape) == expected_shape

    expected = torch.empty_like(x)
    n_groups = 0
    for g, index in _groups(shape, axis, group_size):
        piece = x[index]
        s, z = torch_qparams(ao, piece, qmin, qmax, symmetric)
        expected[index] = torch_fake_quantize(ao, piece, qmin, qmax, symmetric)
        group_index = list(index)
        group_index[axis % len(shape)] = g
        assert torch.equal(scale[tuple(group_index)], s[0])
        assert zero_point[tuple(group_index)].item() == z.item()
        n_groups += 1
    assert n_groups == x.numel() // group_size
    assert torch.equal(got, expected), f"{int((got != expected).sum())} values differ"


def test_per_group_with_one_group_per_slice_is_per_channel_of_the_other_axis():
    # Groups spanning the whole of axis 1 of a 2-D tensor are the rows: per-channel along axis 0.
    x = _tensor((5, 12), seed=3)
    q_g, s_g, z_g = quantize_per_group(x, 1, 12, -8, 7)
    q_c, s_c, z_c = quantize_per_channel(x, 0, -8, 7)
    assert torch.equal(q_g, q_c)
    assert torch.equal(s_g.squeeze(1), s_c) and torch.equal(z_g.squeeze(1), z_c)


@pytest.mark.parametrize("group_size", [5, 7, 13, 24])
def test_group_size_not_dividing_the_axis_is_refused(group_size):
    with pytest.raises(ValueError, match=f"group_size {group_size} does not divide"):
        quantize_per_group(torch.ones(3, 12), 1, group_size, -8, 7)
    with pytest.raises(ValueError, match="group_size"):
        fake_quantize_tensor(torch.ones(3, 12), 4, "group", axis=1, group_size=group_size)


@pytest.mark.parametrize("group_size", [0, -2, 2.0, True, None])
def test_bad_group_size_is_refused(group_size):
    with pytest.raises(ValueError, match="group_size"):
        quantize_per_group(torch.ones(3, 12), 1, group_size, -8, 7)


def test_group_granularity_needs_a_group_size():
    with pytest.raises(ValueError, match="needs a group_size"):
        fake_quantize_tensor(torch.ones(3, 12), 4, "group", axis=1)


# --- axes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [2, -3, 10])
def test_axis_out_of_range_is_refused(axis):
    x = torch.ones(3, 4)
    with pytest.raises(ValueError, match=f"axis {axis} is out of range"):
        quantize_per_channel(x, axis, -8, 7)
    with pytest.raises(ValueError, match="axis"):
        quantize_per_group(x, axis, 1, -8, 7)
    with pytest.raises(ValueError, match="axis"):
        fake_quantize_tensor(x, 4, "channel", axis=axis)
    with pytest.raises(ValueError, match="axis"):
        dequantize_per_channel(torch.ones(3, 4, dtype=torch.int64), torch.ones(4), torch.zeros(4), axis)


@pytest.mark.parametrize("axis", [1.0, True, "0", None])
def test_non_integer_axis_is_refused(axis):
    with pytest.raises(TypeError, match="axis must be an integer"):
        quantize_per_channel(torch.ones(3, 4), axis, -8, 7)


def test_negative_axis_equals_positive_axis():
    x = _tensor((4, 5, 6), seed=8)
    for neg, pos in ((-1, 2), (-2, 1), (-3, 0)):
        for a, b in zip(quantize_per_channel(x, neg, -8, 7), quantize_per_channel(x, pos, -8, 7)):
            assert torch.equal(a, b)


# --- fake_quantize_tensor: granularity names --------------------------------------------------

def test_granularity_names():
    assert GRANULARITIES == ("tensor", "channel", "group")


@pytest.mark.silence_ao
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantize_tensor_per_tensor_vs_torch(ao, bits):
    x = _tensor((16, 9), seed=bits)
    qmin, qmax = integer_range(bits, signed=True)
    # symmetric (the default): torch observer on the narrow range, fake-quant kernel on the full range
    expected = torch_fake_quantize(ao, x, qmin, qmax, symmetric=True, observed=(qmin + 1, qmax))
    assert torch.equal(fake_quantize_tensor(x, bits, "tensor"), expected)
    # asymmetric, unsigned
    expected = torch_fake_quantize(ao, x, 0, 2**bits - 1, symmetric=False)
    assert torch.equal(fake_quantize_tensor(x, bits, "tensor", symmetric=False, signed=False), expected)


def test_fake_quantize_tensor_granularities_differ_as_expected():
    x = _tensor((4, 8), seed=2)
    per_tensor = fake_quantize_tensor(x, 3, "tensor")
    per_channel = fake_quantize_tensor(x, 3, "channel", axis=0)
    per_group = fake_quantize_tensor(x, 3, "group", axis=1, group_size=2)
    err = [torch.linalg.norm(x - y).item() for y in (per_tensor, per_channel, per_group)]
    assert err[0] > err[1] > err[2] > 0  # finer granularity, smaller error on this tensor
    assert len(torch.unique(per_tensor)) <= 2**3


@pytest.mark.parametrize("name", ["per_tensor", "Tensor", "channels", "row", ""])
def test_unknown_granularity_is_refused(name):
    with pytest.raises(ValueError, match="granularity must be one of"):
        fake_quantize_tensor(torch.ones(2, 2), 4, name)


# --- per-group, as PyTorch's per-channel quantization of the reshaped tensor -------------------

@pytest.mark.silence_ao
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape, group_size", [((16, 64), 32), ((8, 96), 8), ((5, 12), 12), ((3, 40), 1)])
def test_per_group_equals_torch_per_channel_on_the_reshaped_matrix(ao, shape, group_size, bits, symmetric):
    """Rows cut into groups: [rows, K] -> [rows * K / g, g]; every new row is one group."""
    qmin, qmax = integer_range(bits, signed=True, narrow=symmetric)
    x = _tensor(shape, seed=40 + bits + group_size)
    rows = x.reshape(-1, group_size)
    s, z = torch_qparams(ao, rows, qmin, qmax, symmetric, axis=0)
    expected = torch_fake_quantize(ao, rows, qmin, qmax, symmetric, axis=0).reshape(shape)
    q, scale, zero_point = quantize_per_group(x, 1, group_size, qmin, qmax, symmetric=symmetric)
    assert torch.equal(scale.reshape(-1), s)
    assert torch.equal(zero_point.reshape(-1), z.to(torch.int64))
    assert torch.equal(dequantize_per_group(q, scale, zero_point, 1, group_size), expected)


def test_lab_references_are_blocked_while_grading():
    from qlib._reference import ReferenceUnavailable, blocked

    x = _tensor((4, 8), seed=1)
    names = ["quantize_per_group", "dequantize_per_group", "mxint_quantize", "mxint_dequantize"]
    with blocked(names):
        for call in (lambda: quantize_per_group(x, 1, 4, -8, 7),
                     lambda: dequantize_per_group(torch.zeros(4, 8, dtype=torch.int64), torch.ones(4, 2),
                                                  torch.zeros(4, 2), 1, 4),
                     lambda: mxint_quantize(x, 4, 4),
                     lambda: mxint_dequantize(torch.zeros(4, 2, dtype=torch.int64),
                                              torch.zeros(4, 8, dtype=torch.int64), 4, 4)):
            with pytest.raises(ReferenceUnavailable):
                call()
        # the functions that other modules call keep working
        assert torch.equal(fake_quantize_tensor(x, 4, "group", axis=1, group_size=4, symmetric=False),
                           fake_quantize_tensor(x, 4, "group", axis=1, group_size=4, symmetric=False))
        assert mxint_fake_quantize(x, 4, 4).shape == x.shape


# --- MX-style integer blocks ------------------------------------------------------------------

def test_mxint_hand_example():
    # 4-bit elements in [-7, 7] with 2 fraction bits; blocks of 4.
    # block 1: max 1.5 -> s = floor(log2 1.5) = 0, step 2^(0 - 2) = 0.25
    #   x * 4 = [6, -3, 1.5, 0.4] -> [6, -3, 2 (tie to even), 0]
    # block 2: max 7.9 -> s = 2, step 2^(2 - 2) = 1: [7.9, 1, -2, 0.5] -> [8 -> clamped to 7, 1, -2, 0 (tie)]
    x = torch.tensor([[1.5, -0.75, 0.375, 0.1, 7.9, 1.0, -2.0, 0.5]])
    s, q = mxint_quantize(x, 4, 4)
    assert s.tolist() == [[0, 2]]
    assert q.tolist() == [[6, -3, 2, 0, 7, 1, -2, 0]]
    assert mxint_dequantize(s, q, 4, 4).tolist() == [[1.5, -0.75, 0.5, 0.0, 7.0, 1.0, -2.0, 0.0]]
    assert s.dtype == q.dtype == torch.int64


def test_mxint_zero_and_tiny_blocks_use_the_smallest_exponent():
    x = torch.tensor([0.0, 0.0, 0.0, 0.0, 1e-40, -1e-41, 0.0, 0.0])  # 1e-40 is a float32 subnormal (< 2^-127)
    s, q = mxint_quantize(x, 8, 4)
    assert s.tolist() == [-127, -127]
    # with s clamped at -127: 1e-40 * 2^(6 + 127) = 1.09 -> 1 and -1e-41 * 2^133 = -0.109 -> 0
    assert q.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]


def _mxint_by_hand(values, bits, block_size):
    """Plain-Python transcription: math.frexp for the exponent, Python's round (half to even)."""
    top = 2 ** (bits - 1) - 1
    exps, codes = [], []
    for start in range(0, len(values), block_size):
        block = values[start:start + block_size]
        amax = max(abs(v) for v in block)
        s = -127 if amax == 0 else max(-127, min(127, math.frexp(amax)[1] - 1))
        exps.append(s)
        codes += [max(-top, min(top, round(math.ldexp(v, bits - 2 - s)))) for v in block]
    return exps, codes


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8, 12])
@pytest.mark.parametrize("block_size", [4, 32])
def test_mxint_against_plain_python(bits, block_size):
    gen = torch.Generator().manual_seed(bits * 100 + block_size)
    x = torch.randn(6, 64, generator=gen) * torch.pow(10.0, torch.randint(-5, 5, (6, 1), generator=gen).float())
    x[1, :block_size] = 0.0                                      # an all-zero block
    x[2, :8] = torch.tensor([1.0, 0.5, -0.25, 2.0, 4.0, 0.99999994, -8.0, 3.0])  # powers of two and just below
    s, q = mxint_quantize(x, bits, block_size)
    for row in range(x.shape[0]):
        exps, codes = _mxint_by_hand(x[row].tolist(), bits, block_size)
        assert s[row].tolist() == exps
        assert q[row].tolist() == codes


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mxint_equals_torch_fake_quant_with_power_of_two_scales(bits):
    """Given the shared exponents, each block is torch's per-channel fake quantization with scale 2^(s - bits + 2)."""
    x = _tensor((8, 64), seed=bits)
    s, q = mxint_quantize(x, bits, 32)
    top = 2 ** (bits - 1) - 1
    step = torch.pow(2.0, (s - bits + 2).double()).float().reshape(-1)
    rows = x.reshape(-1, 32)
    expected = torch.fake_quantize_per_channel_affine(rows, step, torch.zeros_like(step, dtype=torch.int32),
                                                      0, -top, top)
    assert torch.equal(mxint_dequantize(s, q, bits, 32), expected.reshape(x.shape))
    # the block's largest magnitude sits in the top binade of the codes: [2^(bits-2), 2^(bits-1))
    amax = rows.abs().amax(dim=1)
    assert bool(((amax / step >= 2 ** (bits - 2)) & (amax / step < 2 ** (bits - 1))).all())


@pytest.mark.parametrize("shape", [(4, 32), (3, 5, 64), (96,)])
def test_mxint8_is_ocp_mxint8(shape):
    from qlib.microscaling import MXINT8, mx_dequantize, mx_quantize

    x = (_tensor(shape, seed=7) * 1e3).numpy()
    s, q = mxint_quantize(x, 8)
    s_ref, codes = mx_quantize(x, MXINT8)
    assert np.array_equal(s.numpy(), s_ref)
    assert np.array_equal(q.numpy() % 256, codes)          # two's complement bit patterns
    assert np.array_equal(mxint_dequantize(s, q, 8).double().numpy(), mx_dequantize(s_ref, codes, MXINT8))


def test_mxint_step_is_between_one_and_two_ideal_steps():
    """The power-of-two scale costs at most a factor 2 in step size against max|block| / qmax."""
    x = _tensor((64, 32), seed=3)
    for bits in (3, 4, 8):
        s, _ = mxint_quantize(x, bits, 32)
        mx_step = torch.pow(2.0, (s - bits + 2).double()).reshape(-1)
        ideal = x.abs().amax(dim=1).double() / (2 ** (bits - 1) - 1)
        ratio = mx_step / ideal
        assert bool((ratio > 1 - 2.0 ** (1 - bits)).all()) and bool((ratio <= 2 - 2.0 ** (2 - bits)).all())


@pytest.mark.parametrize("call, error, words", [
    (lambda: mxint_quantize(torch.ones(4, 32), 1), ValueError, "at least 2 bits"),
    (lambda: mxint_quantize(torch.ones(4, 32), 33), ValueError, "bits must be between"),
    (lambda: mxint_quantize(torch.ones(4, 30), 4), ValueError, "block_size 32 does not divide"),
    (lambda: mxint_quantize(torch.ones(4, 32), 4, 0), ValueError, "block_size must be a positive"),
    (lambda: mxint_quantize(torch.tensor([float("nan")] * 32), 4), ValueError, "NaN"),
    (lambda: mxint_quantize(torch.ones(0, 32), 4), ValueError, "empty"),
    (lambda: mxint_dequantize(torch.zeros(1, dtype=torch.int64), torch.full((32,), 8), 4), ValueError,
     r"lie in \[-7, 7\]"),
    (lambda: mxint_dequantize(torch.zeros(2, dtype=torch.int64), torch.zeros(32, dtype=torch.int64), 4),
     ValueError, "needs"),
    (lambda: mxint_dequantize(torch.tensor([200]), torch.zeros(32, dtype=torch.int64), 4), ValueError, "E8M0"),
    (lambda: mxint_dequantize(torch.zeros(1), torch.zeros(32), 4), TypeError, "must hold integers"),
])
def test_mxint_bad_input_is_refused(call, error, words):
    with pytest.raises(error, match=words):
        call()
