"""Tests of qlib.binary: sign with sign(0) = +1, XNOR scales, straight-through gradients, storage.

Oracles: values worked by hand; brute force over the scale alpha (a dense grid) and over all
2^n sign patterns for the optimality of (sign(w), mean|w|); numpy float64 means; autograd of
equivalent expressions (``w + (w_hat - w).detach()``, ``clamp`` plus a detached offset) for the
straight-through gradients; numpy.packbits for the one-bit storage.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from qlib._reference import ReferenceUnavailable, blocked
from qlib.binary import (
    binarize,
    binarize_ste,
    binary_activation,
    binary_sign,
    binary_storage_bits,
    fake_binarize,
    straight_through,
)


def _randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _error(w: np.ndarray, w_hat: np.ndarray) -> float:
    return float(((w.astype(np.float64) - w_hat) ** 2).sum())


# --- sign and the codes -----------------------------------------------------------------------

def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0, -1e-45])
    assert binary_sign(x).tolist() == [-1, 1, 1, 1, -1, 1, -1]
    assert binary_sign(x).dtype == torch.int8
    nonzero = x != 0
    assert torch.equal(binary_sign(x)[nonzero].float(), torch.sign(x)[nonzero])  # torch.sign agrees off 0


def test_binarize_by_hand_per_tensor_and_per_channel():
    w = torch.tensor([1.0, -0.2, 0.5, -2.0, 0.05, 0.3])
    b, alpha = binarize(w, granularity="tensor")
    assert b.tolist() == [1, -1, 1, -1, 1, 1]
    assert alpha.shape == () and alpha.item() == pytest.approx(4.05 / 6, rel=1e-7)  # 0.675

    w = torch.tensor([[1.0, -3.0], [0.0, 0.0], [-0.5, 0.25]])
    b, alpha = binarize(w)
    assert b.tolist() == [[1, -1], [1, 1], [-1, 1]]
    assert alpha.tolist() == [2.0, 0.0, 0.375]
    assert fake_binarize(w).tolist() == [[2.0, -2.0], [0.0, 0.0], [-0.375, 0.375]]


@pytest.mark.parametrize("shape", [(16, 1, 3, 3), (32, 16, 3, 3), (64, 512), (10, 64), (7,)])
def test_per_channel_scale_is_the_float64_mean_of_each_output_channel(shape):
    w = _randn(shape, 1)
    b, alpha = binarize(w)
    rows = np.abs(w.numpy().astype(np.float64)).reshape(shape[0], -1)
    np.testing.assert_allclose(alpha.numpy(), rows.mean(axis=1), rtol=2e-6)
    assert alpha.dtype == torch.float32 and alpha.shape == (shape[0],)
    w_hat = fake_binarize(w)
    for c in range(shape[0]):  # two values per channel: +alpha and -alpha
        assert set(w_hat[c].reshape(-1).tolist()) <= {alpha[c].item(), -alpha[c].item()}
        assert torch.equal(w_hat[c], fake_binarize(w[c], granularity="tensor"))  # each channel on its own


# --- XNOR optimality by brute force --------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_mean_abs_is_the_best_alpha_on_a_dense_grid(seed):
    w = _randn((37,), seed).numpy() * (seed + 1)
    b = np.where(w >= 0, 1.0, -1.0)
    alpha = binarize(torch.from_numpy(w), granularity="tensor")[1].item()
    grid = np.linspace(0.0, 2 * np.abs(w).max(), 40001)
    errors = ((w[None, :].astype(np.float64) - grid[:, None] * b[None, :]) ** 2).sum(axis=1)
    step = grid[1] - grid[0]
    assert abs(grid[errors.argmin()] - alpha) <= step
    assert _error(w, alpha * b) <= errors.min() + 1e-9 * errors.min()


@pytest.mark.parametrize("seed", range(4))
def test_sign_and_mean_abs_beat_every_sign_pattern_and_alpha(seed):
    """All 2^10 patterns b, each with the alpha of a dense grid that suits it best."""
    w = _randn((10,), 10 + seed).numpy().astype(np.float64)
    w[seed] = 0.0  # a zero weight: either sign is optimal there
    patterns = np.array(list(itertools.product((-1.0, 1.0), repeat=w.size)))   # [1024, 10]
    grid = np.linspace(0.0, 2 * np.abs(w).max(), 2001)
    errors = ((w[None, None, :] - grid[None, :, None] * patterns[:, None, :]) ** 2).sum(axis=2)
    w_hat = fake_binarize(torch.from_numpy(w), granularity="tensor").numpy()
    ours = _error(w, w_hat)
    assert ours <= errors.min() + 1e-9
    # and the closed form of the error: ||w||^2 - n mean(|w|)^2
    assert ours == pytest.approx((w**2).sum() - w.size * np.abs(w).mean() ** 2, rel=1e-6)


# --- straight-through gradients ------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_binarize_ste_gradient_equals_the_detach_expression(granularity):
    w = _randn((8, 4, 3, 3), 3).requires_grad_()
    upstream = _randn((8, 4, 3, 3), 4)
    y = binarize_ste(w, granularity)
    (y * upstream).sum().backward()
    ours = w.grad.clone()

    w2 = w.detach().clone().requires_grad_()
    y2 = w2 + (fake_binarize(w2.detach(), granularity) - w2).detach()
    (y2 * upstream).sum().backward()
    assert torch.equal(y, fake_binarize(w.detach(), granularity))
    assert torch.equal(ours, w2.grad)
    assert torch.equal(ours, upstream)  # d w_hat / d w := 1


def test_straight_through_refuses_a_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        straight_through(torch.zeros(3), torch.zeros(4))


def test_binary_activation_forward_and_clipped_gradient_against_clamp():
    x = torch.tensor([-3.0, -1.0, -0.999, -0.25, -0.0, 0.0, 0.5, 1.0, 1.0001, 7.0]).requires_grad_()
    upstream = torch.arange(1.0, 11.0)
    y = binary_activation(x)
    (y * upstream).sum().backward()
    assert y.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1]
    assert x.grad.tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 0, 0]  # |x| <= 1 passes, endpoints included

    x2 = x.detach().clone().requires_grad_()
    clipped = x2.clamp(-1.0, 1.0)       # derivative 1 on [-1, 1], endpoints included
    y2 = clipped + (torch.where(x2 >= 0, 1.0, -1.0) - clipped).detach()
    (y2 * upstream).sum().backward()
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)


def test_binary_activation_random_against_clamp():
    x = (_randn((1000,), 5) * 1.5).requires_grad_()
    upstream = _randn((1000,), 6)
    (binary_activation(x) * upstream).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    c = x2.clamp(-1, 1)
    ((c + (torch.where(x2 >= 0, 1.0, -1.0) - c).detach()) * upstream).sum().backward()
    assert torch.equal(x.grad, x2.grad)


# --- storage ---------------------------------------------------------------------------------

def test_binary_storage_by_hand_and_against_packbits():
    assert binary_storage_bits((16, 1, 3, 3)) == 144 + 32 * 16 == 656
    assert binary_storage_bits((16, 1, 3, 3), granularity="tensor") == 144 + 32
    assert binary_storage_bits((64, 512)) == 32768 + 64 * 32
    for n in (1, 7, 8, 9, 144, 1001):
        codes = (binary_sign(_randn((n,), n)).numpy() > 0).astype(np.uint8)
        packed = np.packbits(codes)  # the stream itself, padded to whole bytes
        assert 8 * packed.size - 8 < binary_storage_bits((n,), granularity="tensor") - 32 <= 8 * packed.size
        assert np.array_equal(np.unpackbits(packed)[:n], codes)


# --- bad input -------------------------------------------------------------------------------

def test_binarize_refuses_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        binarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="infinite"):
        binarize(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="empty"):
        binarize(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="axis 0 is out of range"):
        binarize(torch.tensor(1.5), granularity="channel")
    assert binarize(torch.tensor(-1.5), granularity="tensor")[0].item() == -1
    with pytest.raises(TypeError, match="real numbers"):
        binarize(torch.tensor([True, False]))
    with pytest.raises(TypeError):
        binarize("weights")
    with pytest.raises(TypeError, match="floating-point"):
        binary_activation(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        binary_activation(torch.tensor([0.5, float("nan")]))
    for bad in ((0, 3), (2.5,), (-1, 4), (True, 3)):
        with pytest.raises(ValueError, match="positive integers"):
            binary_storage_bits(bad)
    with pytest.raises(ValueError, match="at least one dimension"):
        binary_storage_bits(())


def test_binarize_is_blocked_while_a_lab_is_graded():
    with blocked(["binarize"]):
        with pytest.raises(ReferenceUnavailable):
            binarize(torch.ones(3))
        assert torch.equal(fake_binarize(torch.ones(3)), torch.ones(3))  # qlib's own callers still work
    assert math.isclose(binarize(torch.ones(3), granularity="tensor")[1].item(), 1.0)
