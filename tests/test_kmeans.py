"""Tests of qlib.kmeans: linear initialisation, Lloyd's K-means, codebook gradients, trained quantization.

Oracles: scikit-learn's KMeans (Lloyd, float64, started from the same centroids), a plain
Lloyd's written here with a full distance matrix and np.argmin, PyTorch autograd through
W = codebook[indices], and the lecture's 4x4 example worked by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from torch import nn

from qlib._reference import ReferenceUnavailable, blocked
from qlib.kmeans import (
    CodebookQuantizer,
    codebook_gradient,
    kmeans_quantize,
    kmeans_quantize_bits,
    linear_init,
    reconstruct,
)
from qlib.models import load_pretrained
from qlib.pruning import prune_model
from qlib.weights import quantized_layers

LECTURE_W = [[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12], [-0.91, 1.92, 0, -1.03], [1.87, 0, 1.53, 1.49]]
LECTURE_INDICES = [[3, 0, 2, 1], [1, 1, 0, 3], [0, 3, 1, 0], [3, 1, 2, 2]]


def sklearn_kmeans(x: torch.Tensor, centroids: torch.Tensor, max_iter: int):
    """scikit-learn's Lloyd's K-means in float64 from the given centroids, to strict convergence (tol=0)."""
    km = KMeans(n_clusters=len(centroids), init=centroids.double().numpy().reshape(-1, 1), n_init=1,
                algorithm="lloyd", tol=0, max_iter=max_iter)
    km.fit(x.double().numpy().reshape(-1, 1))
    return km.cluster_centers_.ravel(), km.labels_


def plain_lloyd(x, centroids, max_iter):
    """Lloyd's K-means as the docstring states it, with no tricks: argmin of |x - c| (first index
    wins ties), float64 means stored as float32, empty clusters kept, stop when nothing changes."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    c = np.asarray(centroids, dtype=np.float32).copy()
    labels = np.argmin(np.abs(v[:, None] - c.astype(np.float64)[None, :]), axis=1)
    for _ in range(max_iter):
        for k in range(len(c)):
            if (labels == k).any():
                c[k] = np.float32(v[labels == k].sum() / (labels == k).sum())
        new = np.argmin(np.abs(v[:, None] - c.astype(np.float64)[None, :]), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    return c, labels.reshape(np.shape(x))


def mixture(seed: int, n: int = 4000) -> torch.Tensor:
    """Weights-like data: a narrow Gaussian, a wider one, a few large values (float32)."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([0.05 * torch.randn(n, generator=g), 0.3 * torch.randn(n // 4, generator=g) + 0.2,
                      torch.rand(n // 20, generator=g) * 2 - 1])


# --- linear_init -----------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_linear_init_is_linspace_from_min_to_max(k):
    x = mixture(0)
    c = linear_init(x, k)
    assert c.dtype == torch.float32 and c.shape == (k,)
    assert torch.equal(c, torch.linspace(x.min().item(), x.max().item(), k))
    assert c[0] == x.min() and (k == 1 or c[-1] == x.max())


def test_linear_init_refuses_bad_arguments():
    with pytest.raises(ValueError, match="n_clusters must be at least 1"):
        linear_init(torch.ones(3), 0)
    with pytest.raises(TypeError, match="n_clusters must be an integer"):
        linear_init(torch.ones(3), 2.0)
    with pytest.raises(ValueError, match="NaN"):
        linear_init(torch.tensor([1.0, float("nan")]), 2)


# --- the lecture's example --------------------------------------------------------------------

def test_lecture_4x4_example():
    """2-bit K-means of the lecture's 4x4 matrix from a linear start: the lecture's codebook and indices."""
    w = torch.tensor(LECTURE_W)
    codebook, indices = kmeans_quantize_bits(w, 2)
    assert codebook.dtype == torch.float32 and indices.dtype == torch.int64 and indices.shape == (4, 4)
    torch.testing.assert_close(codebook, torch.tensor([-1.0, 0.0, 1.5, 2.0]), atol=1e-6, rtol=0)
    assert indices.tolist() == LECTURE_INDICES
    # the largest reconstruction error is 0.14 (-0.14 -> 0.00; 2.12 -> 2.00 is off by 0.12)
    assert (reconstruct(codebook, indices) - w).abs().max().item() == pytest.approx(0.14, abs=1e-6)
    # ... and scikit-learn agrees
    centers, labels = sklearn_kmeans(w.reshape(-1), linear_init(w, 4), 100)
    np.testing.assert_allclose(codebook.numpy(), centers, atol=1e-6)
    assert labels.tolist() == indices.reshape(-1).tolist()


# --- against scikit-learn -------------------------------------------------------------------

@pytest.mark.parametrize("max_iter", [1, 2, 5, 300])
@pytest.mark.parametrize("k", [2, 4, 8, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn_lloyd(seed, k, max_iter):
    x = mixture(seed)
    start = linear_init(x, k)
    codebook, indices = kmeans_quantize(x, start, max_iter=max_iter)
    centers, labels = sklearn_kmeans(x, start, max_iter)
    assert np.all(np.bincount(labels, minlength=k) > 0), "no empty cluster (sklearn would relocate it)"
    np.testing.assert_allclose(codebook.numpy(), centers, rtol=1e-6, atol=1e-7)
    mismatch = np.flatnonzero(indices.numpy() != labels)
    assert mismatch.size == 0, f"{mismatch.size} assignments differ, e.g. value {x[mismatch[:3]].tolist()}"


def test_matches_sklearn_on_float64_and_2d_input():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 48, generator=g, dtype=torch.float64)
    codebook, indices = kmeans_quantize(x, linear_init(x, 8))
    assert indices.shape == (64, 48) and codebook.dtype == torch.float32
    centers, labels = sklearn_kmeans(x.reshape(-1), linear_init(x, 8), 100)
    np.testing.assert_allclose(codebook.numpy(), centers, rtol=1e-6, atol=1e-7)
    assert np.array_equal(indices.reshape(-1).numpy(), labels)


# --- against a plain Lloyd's (cases sklearn handles differently) -------------------------------

@pytest.mark.parametrize("case", ["empty cluster", "unsorted", "duplicates", "far centroid", "integers"])
def test_matches_plain_lloyd(case):
    g = torch.Generator().manual_seed(7)
    x = 0.1 * torch.randn(3000, generator=g)
    start = {
        "empty cluster": torch.tensor([-0.3, -0.01, 0.0, 0.01, 0.3]),   # 0.0 sits between two close ones
        "unsorted": torch.tensor([0.2, -0.2, 0.0, 0.1, -0.1]),
        "duplicates": torch.tensor([-0.1, 0.0, 0.0, 0.1]),
        "far centroid": torch.tensor([-0.1, 0.1, 50.0]),
        "integers": torch.tensor([0.0, 1.0, 2.0, 3.0]),
    }[case]
    if case == "integers":  # many exact ties on the midpoints 0.5, 1.5, 2.5
        x = torch.randint(0, 7, (500,), generator=g).float() / 2
    codebook, indices = kmeans_quantize(x, start)
    c_plain, labels_plain = plain_lloyd(x.numpy(), start.numpy(), 100)
    assert np.array_equal(indices.numpy(), labels_plain)
    np.testing.assert_allclose(codebook.numpy(), c_plain, rtol=1e-6, atol=0)
    assert torch.isfinite(codebook).all()


def test_empty_cluster_keeps_its_centroid():
    x = torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1])
    codebook, indices = kmeans_quantize(x, torch.tensor([0.0, 1.0, 100.0]))
    assert codebook[2].item() == 100.0 and not (indices == 2).any()
    torch.testing.assert_close(codebook[:2], torch.tensor([0.1, 1.05]))


def test_ties_go_to_the_lower_index():
    x = torch.tensor([0.5])
    assert kmeans_quantize(x, torch.tensor([0.0, 1.0]), max_iter=0)[1].item() == 0
    assert kmeans_quantize(x, torch.tensor([1.0, 0.0]), max_iter=0)[1].item() == 0  # lower index, not lower value
    assert kmeans_quantize(torch.tensor([2.0]), torch.tensor([3.0, 1.0, 2.0, 2.0]), max_iter=0)[1].item() == 2


def test_constant_input_gives_no_nan():
    codebook, indices = kmeans_quantize_bits(torch.full((10,), 0.25), 2)
    assert torch.equal(codebook, torch.full((4,), 0.25)) and torch.equal(indices, torch.zeros(10, dtype=torch.int64))


def test_result_is_a_fixed_point_of_lloyd():
    """After convergence, one more plain Lloyd step from the codebook changes nothing."""
    x = mixture(2)
    codebook, indices = kmeans_quantize(x, linear_init(x, 8), max_iter=1000)
    c_again, labels_again = plain_lloyd(x.numpy(), codebook.numpy(), 1)
    assert np.array_equal(labels_again, indices.numpy())
    np.testing.assert_allclose(c_again, codebook.numpy(), rtol=1e-6)


def test_max_iter_zero_only_assigns():
    x = mixture(4)
    start = linear_init(x, 4)
    codebook, indices = kmeans_quantize(x, start, max_iter=0)
    assert torch.equal(codebook, start)
    assert np.array_equal(indices.numpy(), plain_lloyd(x.numpy(), start.numpy(), 0)[1])


def test_kmeans_quantize_bits_is_kmeans_from_linear_init():
    x = mixture(5)
    for bits in (1, 3, 5):
        a = kmeans_quantize_bits(x, bits, max_iter=20)
        b = kmeans_quantize(x, linear_init(x, 2**bits), max_iter=20)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_kmeans_refuses_bad_arguments():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_quantize(torch.tensor([1.0, float("nan")]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        kmeans_quantize(torch.zeros(0), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        kmeans_quantize(x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="infinite"):
        kmeans_quantize(x, torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="max_iter"):
        kmeans_quantize(x, torch.tensor([0.0, 1.0]), max_iter=-1)
    with pytest.raises(TypeError, match="max_iter"):
        kmeans_quantize(x, torch.tensor([0.0, 1.0]), max_iter=2.5)
    with pytest.raises(ValueError, match="bits"):
        kmeans_quantize_bits(x, 0)
    with pytest.raises(ValueError, match="at most 16"):
        kmeans_quantize_bits(x, 17)
    with pytest.raises(TypeError, match="bits"):
        kmeans_quantize_bits(x, 2.0)
    with pytest.raises(TypeError, match="real numbers"):
        kmeans_quantize(torch.ones(3, dtype=torch.bool), torch.tensor([0.0, 1.0]))


# --- reconstruct and codebook_gradient ---------------------------------------------------------

def test_reconstruct_is_a_table_lookup():
    codebook = torch.tensor([-1.0, 0.0, 1.5, 2.0])
    assert reconstruct(codebook, torch.tensor(LECTURE_INDICES)).tolist() == [
        [2.0, -1.0, 1.5, 0.0], [0.0, 0.0, -1.0, 2.0], [-1.0, 2.0, 0.0, -1.0], [2.0, 0.0, 1.5, 1.5]]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        reconstruct(codebook, torch.tensor([4]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        reconstruct(codebook, torch.tensor([-1]))
    with pytest.raises(TypeError, match="integer"):
        reconstruct(codebook, torch.tensor([1.0]))


def test_codebook_gradient_by_hand():
    grad = torch.tensor([[0.1, -0.2], [0.3, 0.4]])
    indices = torch.tensor([[0, 2], [0, 2]])
    torch.testing.assert_close(codebook_gradient(grad, indices, 3), torch.tensor([0.4, 0.0, 0.2]))


def test_codebook_gradient_is_autograd_through_the_lookup():
    """dL/dc from torch autograd on W = codebook[indices] equals the summed weight gradients."""
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(16, generator=g).requires_grad_()
    indices = torch.randint(0, 16, (32, 64), generator=g)
    x = torch.randn(64, 8, generator=g)
    w = codebook[indices]
    w.retain_grad()
    loss = ((w @ x) ** 2).sum().sin()
    loss.backward()
    torch.testing.assert_close(codebook_gradient(w.grad, indices, 16), codebook.grad, rtol=1e-5, atol=1e-5)


def test_codebook_gradient_refuses_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        codebook_gradient(torch.zeros(2, 3), torch.zeros(3, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        codebook_gradient(torch.zeros(3), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="NaN"):
        codebook_gradient(torch.tensor([float("nan")]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="n_clusters"):
        codebook_gradient(torch.zeros(1), torch.tensor([0]), 0)


# --- CodebookQuantizer --------------------------------------------------------------------------

def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)


def _assert_on_codebooks(cq, model):
    for name, layer in quantized_layers(model):
        w = layer.weight.detach()
        expected = cq.codebooks[name].detach()[cq.indices[name]]
        if cq.masks[name] is not None:
            expected = expected * cq.masks[name]
            assert (w[~cq.masks[name]] == 0).all(), name
        assert torch.equal(w, expected), name
        assert torch.unique(w).numel() <= len(cq.codebooks[name]) + 1, name


@pytest.mark.parametrize("pruned", [False, True])
def test_weights_stay_on_the_codebook_while_training(pruned):
    model = load_pretrained("cnn")
    masks = prune_model(model, 0.5) if pruned else None
    cq = CodebookQuantizer(model, 3, masks)
    _assert_on_codebooks(cq, model)
    start = {name: c.detach().clone() for name, c in cq.codebooks.items()}
    optimizer = torch.optim.Adam(cq.parameters(), lr=1e-2)
    images, labels = _batch()
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        model.zero_grad()
        loss.backward()
        cq.step(optimizer)
        _assert_on_codebooks(cq, model)
    assert all(not torch.equal(start[name], c.detach()) for name, c in cq.codebooks.items()), "codebooks trained"


def test_sgd_step_moves_each_centroid_by_its_summed_gradient():
    model = load_pretrained("cnn")
    masks = prune_model(model, {"fc1": 0.8})
    cq = CodebookQuantizer(model, {"fc1": 2, "conv2": 4}, masks)
    assert set(cq.codebooks) == {"fc1", "conv2"} and len(cq.codebooks["fc1"]) == 4
    before = {name: c.detach().clone() for name, c in cq.codebooks.items()}
    images, labels = _batch()
    nn.functional.cross_entropy(model(images), labels).backward()
    lr = 0.01
    cq.step(torch.optim.SGD(cq.parameters(), lr=lr))
    for name, layer in cq.layers.items():
        grad = layer.weight.grad
        kept = cq.masks[name] if cq.masks[name] is not None else torch.ones_like(grad, dtype=torch.bool)
        for k in range(len(before[name])):
            summed = grad[(cq.indices[name] == k) & kept].double().sum().float()
            assert cq.codebooks[name][k].item() == pytest.approx((before[name][k] - lr * summed).item(), abs=1e-6)


def test_codebook_quantizer_refuses_bad_arguments():
    model = load_pretrained("cnn")
    with pytest.raises(ValueError, match="no Linear/Conv2d layer named"):
        CodebookQuantizer(model, {"fc3": 4})
    with pytest.raises(ValueError, match="at most 16"):
        CodebookQuantizer(model, 20)
    cq = CodebookQuantizer(model, 2)
    with pytest.raises(RuntimeError, match="loss.backward"):
        cq.set_codebook_grads()


# --- the grader can block the references one by one -------------------------------------------

def test_blocking_one_reference_leaves_the_others_working():
    x = mixture(0)
    with blocked({"kmeans_quantize", "codebook_gradient"}):
        with pytest.raises(ReferenceUnavailable, match="kmeans_quantize"):
            kmeans_quantize(x, linear_init(x, 4))
        with pytest.raises(ReferenceUnavailable, match="codebook_gradient"):
            codebook_gradient(torch.zeros(2), torch.tensor([0, 1]), 2)
        kmeans_quantize_bits(x, 2)
        model = load_pretrained("cnn")
        cq = CodebookQuantizer(model, 2)
        images, labels = _batch()
        nn.functional.cross_entropy(model(images), labels).backward()
        cq.step(torch.optim.SGD(cq.parameters(), lr=0.01))
    kmeans_quantize(x, linear_init(x, 4))  # unblocked again
