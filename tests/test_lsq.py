"""Tests of qlib.lsq: learned step size quantization.

Oracle: PyTorch's ``_fake_quantize_learnable_per_tensor_affine`` and
``_fake_quantize_learnable_per_channel_affine`` (C++ kernels with their own backward), with
zero point 0 and ``grad_factor`` = LSQ's gradient scale g. Everything is compared exactly:

* forward and input gradient: the same float32 rounding and the same 0/1 mask;
* the step's gradient of every element (per-channel oracle with one element per channel):
  the same float32 operations, the rounding error ``clamp(q) * s - v`` rounded once;
* the step's gradient summed over a tensor: the same elements summed by the same
  ``torch.sum`` reduction over the same shape, hence the same float32 result.

The 1-bit (binary) case has no PyTorch counterpart; it is checked against the formulas
transcribed element by element in plain Python.
"""
from __future__ import annotations

import math

import pytest
import torch

from qlib.lsq import (
    LSQBinarize,
    LSQQuantizer,
    lsq_fake_quantize,
    lsq_grad_scale,
    lsq_init_step,
)

RANGES = [(-2, 1), (-4, 3), (-8, 7), (-128, 127), (0, 3), (0, 15), (0, 255)]


def _values(shape, seed, spread=3.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * spread, torch.randn(shape, generator=gen)


def _ours(v, step, qmin, qmax, g, upstream):
    v, step = v.clone().requires_grad_(), step.clone().requires_grad_()
    out = lsq_fake_quantize(v, step, qmin, qmax, g)
    return (out, *torch.autograd.grad(out, (v, step), upstream))


def _torch_per_tensor(v, step, qmin, qmax, g, upstream):
    v, step = v.clone().requires_grad_(), step.clone().reshape(1).requires_grad_()
    out = torch._fake_quantize_learnable_per_tensor_affine(v, step, torch.zeros(1), qmin, qmax, g)
    return (out, *torch.autograd.grad(out, (v, step), upstream))


def _torch_per_channel(v, step, qmin, qmax, g, upstream):
    v, step = v.clone().requires_grad_(), step.clone().reshape(-1).requires_grad_()
    out = torch._fake_quantize_learnable_per_channel_affine(v, step, torch.zeros(step.numel()), 0, qmin, qmax, g)
    return (out, *torch.autograd.grad(out, (v, step), upstream))


@pytest.mark.parametrize("qmin, qmax", RANGES)
def test_every_element_equals_torch(qmin, qmax):
    # one step per element (per-channel oracle, shape [n, 1]): each step gradient is one element's
    n = 4000
    v, upstream = _values((n, 1), seed=qmax - qmin)
    step = (0.2 + torch.rand(n, 1, generator=torch.Generator().manual_seed(1))) * 6 / (qmax - qmin)
    g = lsq_grad_scale(n, qmax)
    ours, theirs = _ours(v, step, qmin, qmax, g, upstream), _torch_per_channel(v, step, qmin, qmax, g, upstream)
    for a, b in zip(ours, theirs):
        assert torch.equal(a.reshape(-1), b.reshape(-1))
    grad_step = ours[2].reshape(-1)
    # the test can fail: values were clamped below, above, and kept inside
    q = torch.round(v * (1 / step)).reshape(-1)
    assert bool((q < qmin).any() or qmin == 0) and bool((q > qmax).any()) and bool(((q >= qmin) & (q <= qmax)).any())
    assert int((grad_step != 0).sum()) > n // 3  # below an unsigned range the step gradient is Q_N = 0


@pytest.mark.parametrize("shape", [(5000,), (64, 40), (16, 8, 3, 3)])
@pytest.mark.parametrize("qmin, qmax", RANGES)
def test_per_tensor_step_equals_torch(shape, qmin, qmax):
    v, upstream = _values(shape, seed=len(shape) + qmax)
    step = torch.tensor(6.0 / (qmax - qmin))
    g = lsq_grad_scale(v.numel(), qmax)
    ours, theirs = _ours(v, step, qmin, qmax, g, upstream), _torch_per_tensor(v, step, qmin, qmax, g, upstream)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert torch.equal(ours[2].reshape(1), theirs[2])


@pytest.mark.parametrize("qmin, qmax", [(-8, 7), (-2, 1), (-128, 127)])
def test_per_channel_step_equals_torch(qmin, qmax):
    v, upstream = _values((12, 6, 3, 3), seed=qmax)
    step = lsq_init_step(v, qmax, axis=0)
    assert step.shape == (12, 1, 1, 1)
    g = lsq_grad_scale(6 * 3 * 3, qmax)
    ours, theirs = _ours(v, step, qmin, qmax, g, upstream), _torch_per_channel(v, step, qmin, qmax, g, upstream)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert torch.equal(ours[2].reshape(-1), theirs[2])


def test_step_gradient_formula_by_hand():
    # s = 1, [-2, 1] (2-bit signed), g = 1: inside the gradient is round(v) - v; clamped: -Q_N or Q_P
    v = torch.tensor([0.3, -0.7, 1.2, 1.6, -2.4, -2.6, 5.0])
    per_element = [0.0 - 0.3, -1.0 + 0.7, 1.0 - 1.2, 1.0, -2.0 + 2.4, -2.0, 1.0]
    grad_v = [1, 1, 1, 0, 1, 0, 0]   # 1.6 rounds to 2 > Q_P = 1; -2.4 rounds to -2 (inside); -2.6 to -3
    for i, x in enumerate(v.tolist()):
        t, s = torch.tensor([x], requires_grad=True), torch.tensor(1.0, requires_grad=True)
        gv, gs = torch.autograd.grad(lsq_fake_quantize(t, s, -2, 1, 1.0).sum(), (t, s))
        assert gv.item() == grad_v[i]
        assert gs.item() == pytest.approx(per_element[i], abs=1e-6)


@pytest.mark.parametrize("n, qmax, expected", [(1, 1, 1.0), (100, 1, 0.1), (400, 7, 1 / math.sqrt(2800)),
                                               (512, 255, 1 / math.sqrt(512 * 255))])
def test_grad_scale(n, qmax, expected):
    assert lsq_grad_scale(n, qmax) == pytest.approx(expected, rel=1e-15)


def test_init_step_by_hand():
    v = torch.tensor([[1.0, -3.0], [0.5, 0.5]])
    assert lsq_init_step(v, 4).item() == pytest.approx(2 * 1.25 / 2)
    assert lsq_init_step(v, 4, axis=0).reshape(-1).tolist() == pytest.approx([2.0, 0.5])
    assert lsq_init_step(torch.zeros(3), 7).item() == torch.finfo(torch.float32).eps


def _binary_by_hand(v, s, g, dy):
    """The binary LSQ formulas, element by element in plain Python."""
    out, gv, gs = [], [], 0.0
    for x, d in zip(v, dy):
        sign = 1.0 if x >= 0 else -1.0
        out.append(s * sign)
        inside = abs(x / s) <= 1
        gv.append(d if inside else 0.0)
        gs += d * ((sign - x / s) if inside else sign)
    return out, gv, gs * g


def test_binary_matches_plain_python():
    v, dy = _values(300, seed=5, spread=1.0)
    v[0] = 0.0  # sign(0) = +1
    s, g = 0.8, 0.05
    t, st = v.clone().requires_grad_(), torch.tensor(s, requires_grad=True)
    out = LSQBinarize.apply(t, st, g)
    gv, gs = torch.autograd.grad(out, (t, st), dy)
    e_out, e_gv, e_gs = _binary_by_hand(v.tolist(), s, g, dy.tolist())
    assert out.tolist() == pytest.approx(e_out, rel=1e-6) and out[0].item() == pytest.approx(s)
    assert gv.tolist() == e_gv
    assert gs.item() == pytest.approx(e_gs, rel=1e-4, abs=1e-6)


def test_quantizer_initializes_and_scales_like_the_paper():
    w, upstream = _values((16, 8, 3, 3), seed=9, spread=0.2)
    lsq = LSQQuantizer(4, signed=True)
    assert (lsq.qmin, lsq.qmax) == (-8, 7) and not lsq.initialized
    out = lsq(w)
    assert lsq.initialized and lsq.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-6)
    (gs_ours,) = torch.autograd.grad(out, lsq.step, upstream)
    theirs = _torch_per_tensor(w, lsq.step.detach(), -8, 7, 1 / math.sqrt(w.numel() * 7), upstream)
    assert torch.equal(out.detach(), theirs[0]) and torch.equal(gs_ours.reshape(1), theirs[2])


def test_activation_quantizer_counts_features_of_one_sample():
    x, upstream = _values((32, 10), seed=3)
    x = x.abs()
    lsq = LSQQuantizer(3, signed=False, activation=True)
    out = lsq(x)
    assert (lsq.qmin, lsq.qmax) == (0, 7)
    (gs,) = torch.autograd.grad(out, lsq.step, upstream)
    theirs = _torch_per_tensor(x, lsq.step.detach(), 0, 7, 1 / math.sqrt(10 * 7), upstream)
    assert torch.equal(gs.reshape(1), theirs[2])


def test_per_channel_quantizer_has_one_step_per_output_channel():
    w, upstream = _values((6, 4), seed=4)
    lsq = LSQQuantizer(2, signed=True, granularity="channel")
    out = lsq(w)
    assert lsq.step.shape == (6, 1)
    (gs,) = torch.autograd.grad(out, lsq.step, upstream)
    theirs = _torch_per_channel(w, lsq.step.detach(), -2, 1, 1 / math.sqrt(4 * 1), upstream)
    assert torch.equal(gs.reshape(-1), theirs[2])


def test_one_bit_quantizer_is_binary():
    w = torch.tensor([[0.5, -0.1, 0.0, -2.0]])
    lsq = LSQQuantizer(1, signed=True)
    out = lsq(w)
    s = lsq.step.item()
    assert s == pytest.approx(w.abs().mean().item())  # binary: mean |w|, the least-squares scale
    assert out.tolist() == [[s, -s, s, -s]]


@pytest.mark.parametrize("step, qmin, qmax, g, error, words", [
    (torch.tensor(0.0), -8, 7, 0.1, ValueError, "positive"),
    (torch.tensor(-0.1), -8, 7, 0.1, ValueError, "positive"),
    (torch.tensor(0.1, dtype=torch.float64), -8, 7, 0.1, TypeError, "float32"),
    (torch.ones(3) * 0.1, -8, 7, 0.1, ValueError, "broadcast"),
    (torch.tensor(0.1), 1, 7, 0.1, ValueError, "qmin <= 0 < qmax"),
    (torch.tensor(0.1), 7, -8, 0.1, ValueError, "qmin < qmax"),
    (torch.tensor(0.1), -8, 7, 0.0, ValueError, "grad_scale"),
    (torch.tensor(0.1), -8, 7, float("nan"), ValueError, "grad_scale"),
])
def test_bad_arguments_are_refused(step, qmin, qmax, g, error, words):
    with pytest.raises(error, match=words):
        lsq_fake_quantize(torch.ones(4, 5), step, qmin, qmax, g)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        lsq_fake_quantize(torch.tensor([1.0, float("nan")]), torch.tensor(0.1), -8, 7, 0.1)
    with pytest.raises(ValueError, match="n must be at least 1"):
        lsq_grad_scale(0, 7)
    with pytest.raises(ValueError, match="Q_P"):
        lsq_grad_scale(10, 0)
    with pytest.raises(ValueError, match="axis"):
        lsq_init_step(torch.ones(3, 3), 7, axis=1)
    with pytest.raises(ValueError, match="1-bit unsigned"):
        LSQQuantizer(1, signed=False)
