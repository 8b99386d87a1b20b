"""Tests of qlib.ternary: TWN's threshold and scale, the exact optimum, storage and base-3 packing.

Oracles: values worked by hand; brute force over alpha (a dense grid) for TWN's scale and over
all 3^n ternary patterns for the optimum; the closed forms of the optimal threshold for uniform
and normal weights (computed here with math.erf); Python's int(digits, 3) for the packing;
autograd of ``w + (w_hat - w).detach()`` for the straight-through gradient.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from qlib._reference import ReferenceUnavailable, blocked
from qlib.ternary import (
    fake_ternarize,
    optimal_ternary,
    pack_ternary,
    ternarize,
    ternarize_ste,
    ternary_storage_bits,
    unpack_ternary,
)


def _randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _error(w, t, alpha) -> float:
    w = np.asarray(w, dtype=np.float64)
    return float(((w - float(alpha) * np.asarray(t, dtype=np.float64)) ** 2).sum())


def _brute_force_min_error(w: np.ndarray) -> float:
    """Least ||w - alpha t||^2 over every t in {-1, 0, 1}^n and every real alpha (least squares per t)."""
    w = w.astype(np.float64)
    patterns = np.array(list(itertools.product((-1.0, 0.0, 1.0), repeat=w.size)))
    dots, norms = patterns @ w, (patterns**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gains = np.where(norms > 0, dots**2 / norms, 0.0)  # best alpha = dot / norm removes dot^2 / norm
    return float((w**2).sum() - gains.max())


# --- TWN by hand -----------------------------------------------------------------------------

def test_ternarize_by_hand():
    w = torch.tensor([1.0, -0.2, 0.5, -2.0, 0.05, 0.3])
    t, alpha, delta = ternarize(w, granularity="tensor")
    # mean |w| = 4.05 / 6 = 0.675, delta = 0.4725; kept: 1, 0.5, -2; alpha = 3.5 / 3
    assert delta.item() == pytest.approx(0.4725, rel=1e-6)
    assert t.tolist() == [1, 0, 1, -1, 0, 0] and t.dtype == torch.int8
    assert alpha.item() == pytest.approx(3.5 / 3, rel=1e-6)
    assert torch.allclose(fake_ternarize(w, granularity="tensor"), alpha * t.float())


def test_weight_exactly_at_the_threshold_becomes_zero():
    # mean |w| = 10 and float32(0.7) * 10 rounds to exactly 7.0: the weights of magnitude 7 sit on it
    w = torch.tensor([7.0, -13.0, -7.0, 13.0])
    t, alpha, delta = ternarize(w, granularity="tensor")
    assert delta.item() == 7.0
    assert t.tolist() == [0, -1, 0, 1] and alpha.item() == 13.0


def test_per_channel_by_hand_with_an_all_zero_channel():
    w = torch.tensor([[7.0, -13.0], [0.0, 0.0], [1.0, -0.25]])
    t, alpha, delta = ternarize(w)
    # channel 2: mean 0.625, delta 0.4375, keeps 1.0 only
    assert t.tolist() == [[0, -1], [0, 0], [1, 0]]
    assert alpha.tolist() == [13.0, 0.0, 1.0]
    assert delta.tolist() == pytest.approx([7.0, 0.0, 0.4375], rel=1e-6)


@pytest.mark.parametrize("shape", [(16, 1, 3, 3), (64, 512), (10, 64)])
def test_per_channel_equals_per_tensor_on_each_channel(shape):
    w = _randn(shape, 2)
    t, alpha, delta = ternarize(w)
    for c in range(shape[0]):
        tc, ac, dc = ternarize(w[c], granularity="tensor")
        assert torch.equal(t[c], tc) and alpha[c] == ac and delta[c] == dc
    # and against float64 numpy: delta = 0.7 mean|w|, alpha = mean of the kept magnitudes
    rows = np.abs(w.numpy().astype(np.float64)).reshape(shape[0], -1)
    np.testing.assert_allclose(delta.numpy(), 0.7 * rows.mean(axis=1), rtol=2e-6)
    kept = np.abs(t.numpy()).reshape(shape[0], -1).astype(bool)
    np.testing.assert_allclose(alpha.numpy(), (rows * kept).sum(axis=1) / kept.sum(axis=1), rtol=2e-6)


# --- brute force: TWN's alpha, the exact optimum --------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_twn_alpha_is_the_best_scale_for_its_pattern(seed):
    w = (_randn((41,), 20 + seed) * (1 + seed)).numpy()
    t, alpha, _ = ternarize(torch.from_numpy(w), granularity="tensor")
    grid = np.linspace(0.0, 2 * np.abs(w).max(), 40001)
    tt = t.numpy().astype(np.float64)
    errors = ((w[None, :].astype(np.float64) - grid[:, None] * tt[None, :]) ** 2).sum(axis=1)
    assert abs(grid[errors.argmin()] - alpha.item()) <= grid[1] - grid[0]
    assert _error(w, tt, alpha) <= errors.min() * (1 + 1e-9)


def _small_tensors():
    cases = [np.array([3.0, 1.0, -1.0]), np.array([2.0, -2.0, 2.0, 1.0, 0.0, 0.0]),
             np.array([0.0, 0.0, 5.0]), np.array([1.0, 1.0, 1.0, 1.0]), np.array([4.0, -1.0, 1.0, -1.0, 1.0, 1.0])]
    gen = np.random.default_rng(7)
    for n in (5, 7, 8):
        for _ in range(4):
            cases.append(gen.standard_normal(n).astype(np.float32))
    cases.append(np.round(gen.standard_normal(8) * 2).astype(np.float32))  # many ties in |w|
    return cases


@pytest.mark.parametrize("w", _small_tensors(), ids=lambda w: f"n{w.size}")
def test_optimal_ternary_matches_brute_force_over_all_patterns(w):
    best = _brute_force_min_error(w)
    t, alpha, delta = optimal_ternary(torch.from_numpy(w.astype(np.float32)), granularity="tensor")
    assert _error(w, t.numpy(), alpha) == pytest.approx(best, rel=1e-6, abs=1e-9)
    # the support is cut by the threshold: |w| > delta
    assert torch.equal(t, (torch.sign(torch.from_numpy(w)) * (torch.from_numpy(np.abs(w)) > delta)).to(torch.int8))
    # and TWN's rule of thumb is never better than the optimum
    tw, aw, _ = ternarize(torch.from_numpy(w.astype(np.float32)), granularity="tensor")
    assert _error(w, tw.numpy(), aw) >= best - 1e-6 * max(best, 1.0)


def test_optimal_ternary_by_hand_prefers_the_smaller_support():
    # sorted magnitudes 3, 1, 1: S_k^2 / k = 9, 8, 25/3; k = 1 wins; delta = 1 leaves both 1s out
    t, alpha, delta = optimal_ternary(torch.tensor([3.0, 1.0, -1.0]), granularity="tensor")
    assert t.tolist() == [1, 0, 0] and alpha.item() == 3.0 and delta.item() == 1.0
    # 2, 2 and 1: S_k^2/k = 4, 8, 25/3: keep all three, delta 0
    t, alpha, delta = optimal_ternary(torch.tensor([2.0, -2.0, 1.0]), granularity="tensor")
    assert t.tolist() == [1, -1, 1] and alpha.item() == pytest.approx(5 / 3) and delta.item() == 0.0


def test_twn_rule_of_thumb_against_the_closed_form_optima():
    """TWN's 0.7 lies between the exact optima: (2/3) E|w| (uniform) and about 0.767 E|w| (normal)."""
    gen = torch.Generator().manual_seed(0)
    uniform = torch.rand(200_000, generator=gen) * 2 - 1
    _, _, delta = optimal_ternary(uniform, granularity="tensor")
    assert delta.item() / uniform.abs().mean().item() == pytest.approx(2 / 3, abs=0.01)

    # normal: maximize E[|w|; |w| > d]^2 / P(|w| > d) = (2 phi(d))^2 / erfc(d / sqrt 2) over d (sigma = 1)
    def gain(d):
        return (2 * math.exp(-d * d / 2) / math.sqrt(2 * math.pi)) ** 2 / math.erfc(d / math.sqrt(2))

    d_star = max((i / 10_000 for i in range(1, 30_000)), key=gain)
    ratio = d_star / math.sqrt(2 / math.pi)  # E|w| = sigma sqrt(2/pi)
    assert ratio == pytest.approx(0.767, abs=0.002)
    normal = torch.randn(200_000, generator=gen)
    _, _, delta = optimal_ternary(normal, granularity="tensor")
    assert delta.item() / normal.abs().mean().item() == pytest.approx(ratio, abs=0.01)


def test_optimal_ternary_per_channel_equals_each_channel_alone():
    w = _randn((6, 3, 3), 9)
    t, alpha, delta = optimal_ternary(w)
    for c in range(6):
        tc, ac, dc = optimal_ternary(w[c], granularity="tensor")
        assert torch.equal(t[c], tc) and alpha[c] == ac and delta[c] == dc


# --- straight-through gradient ---------------------------------------------------------------

def test_ternarize_ste_gradient_equals_the_detach_expression():
    w = _randn((5, 7), 11).requires_grad_()
    upstream = _randn((5, 7), 12)
    y = ternarize_ste(w)
    (y * upstream).sum().backward()
    w2 = w.detach().clone().requires_grad_()
    y2 = w2 + (fake_ternarize(w2.detach()) - w2).detach()
    (y2 * upstream).sum().backward()
    assert torch.equal(y, fake_ternarize(w.detach()))
    assert torch.equal(w.grad, w2.grad) and torch.equal(w.grad, upstream)


# --- storage and packing ---------------------------------------------------------------------

def test_ternary_storage_by_hand():
    assert ternary_storage_bits((16, 1, 3, 3)) == 2 * 144 + 32 * 16 == 800
    assert ternary_storage_bits((16, 1, 3, 3), packing="base3") == 8 * 29 + 32 * 16 == 744
    assert ternary_storage_bits((64, 512), granularity="tensor", packing="base3") == 8 * math.ceil(32768 / 5) + 32
    assert ternary_storage_bits((5,), granularity="tensor", packing="base3") == 8 + 32


def test_pack_ternary_by_hand_and_against_python_base3():
    assert pack_ternary([1, 0, -1, 1, 1]).tolist() == [221]  # digits 2, 1, 0, 2, 2 (lowest first)
    gen = np.random.default_rng(3)
    t = gen.integers(-1, 2, size=1003)
    packed = pack_ternary(t)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(1003 / 5)
    padded = np.concatenate([t, -np.ones(-t.size % 5, dtype=t.dtype)]) + 1
    expected = [int("".join(str(d) for d in group[::-1]), 3) for group in padded.reshape(-1, 5)]
    assert packed.tolist() == expected
    assert np.array_equal(unpack_ternary(packed, 1003), t)
    assert ternary_storage_bits((1003,), granularity="tensor", packing="base3") - 32 == 8 * packed.size


def test_packing_a_ternarized_layer_round_trips():
    t, _, _ = ternarize(_randn((32, 16, 3, 3), 13))
    packed = pack_ternary(t)
    assert torch.equal(torch.from_numpy(unpack_ternary(packed, t.numel())).reshape(t.shape), t)


# --- bad input -------------------------------------------------------------------------------

def test_ternary_refuses_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        ternarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="infinite"):
        optimal_ternary(torch.tensor([[1.0, -float("inf")]]))
    with pytest.raises(ValueError, match="empty"):
        ternarize(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="axis 0 is out of range"):
        ternarize(torch.tensor(2.0))
    with pytest.raises(ValueError, match="axis 0 is out of range"):
        optimal_ternary(torch.tensor(2.0))
    with pytest.raises(ValueError, match="packing"):
        ternary_storage_bits((3, 3), packing="huffman")
    with pytest.raises(ValueError, match="positive integers"):
        ternary_storage_bits((3, 0))
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        pack_ternary([0, 2, 1])
    with pytest.raises(TypeError, match="integer"):
        pack_ternary(np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="non-empty"):
        pack_ternary(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="at most 242"):
        unpack_ternary(np.array([243], dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="n must be between"):
        unpack_ternary(np.array([0, 1], dtype=np.uint8), 11)
    with pytest.raises(TypeError, match="uint8"):
        unpack_ternary(np.array([1, 2]), 2)


def test_ternarize_is_blocked_while_a_lab_is_graded():
    with blocked(["ternarize"]):
        with pytest.raises(ReferenceUnavailable):
            ternarize(torch.ones(3))
        assert torch.equal(fake_ternarize(torch.ones(3), granularity="tensor"), torch.ones(3))
