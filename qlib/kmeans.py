"""K-means (codebook) quantization: every weight becomes an index into a small table of centroids.

Chapter: Deep Compression (chapter 2, lab02). Han, Mao and Dally, "Deep Compression: Compressing
Deep Neural Networks with Pruning, Trained Quantization and Huffman Coding", ICLR 2016,
arXiv:1510.00149, section 3.

A layer's weights ``x`` (any shape) are stored as

    codebook: k float32 centroids c_0 .. c_{k-1}       (32 bits each, shared by the whole layer)
    indices:  one integer in [0, k) per weight          (log2(k) bits each)
    x_hat = codebook[indices]                           (reconstruct)

The centroids come from 1-D Lloyd's K-means on the flattened values, started from a linear
initialisation (k points evenly spaced between min(x) and max(x)), which the paper found best
because it keeps centroids on the few large weights that matter most (section 3.2, figure 4).

Conventions, stated once and used everywhere:

* Assignment: each value goes to its nearest centroid; a value exactly half-way between two
  centroids goes to the one with the LOWER INDEX (as ``argmin`` does). Values are compared with
  the midpoints (c_j + c_{j+1}) / 2 in float64, where the midpoint of two float32 centroids is
  exact (unless their magnitudes differ by more than 2**29), so no rounding decides a tie.
* Update: each centroid becomes the mean of the values assigned to it, accumulated in float64 and
  stored as float32. A centroid with no values keeps its previous position (never NaN).
* Stop when an iteration changes no assignment, or after ``max_iter`` updates.
* Fine-tuning (section 3.3): the gradient of a centroid is the SUM of the gradients of the weights
  assigned to it, dL/dc_k = sum_{i: idx_i = k} dL/dW_i (the chain rule through W = codebook[idx]).
"""
from __future__ import annotations


import torch
from torch import nn

from qlib._checks import as_float_tensor, check_bits, check_count
from qlib._reference import reference
from qlib.weights import quantized_layers

#: Largest codebook ``kmeans_quantize_bits`` builds: 2**16 centroids.
MAX_CODEBOOK_BITS = 16


def _check_centroids(centroids) -> torch.Tensor:
    c = as_float_tensor(centroids, "centroids")
    if c.ndim != 1:
        raise ValueError(f"centroids must be a 1-D tensor of length k, got shape {tuple(c.shape)}")
    return c.to(torch.float32)


def _check_indices(indices, n_clusters: int) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got dtype {idx.dtype}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_clusters):
        raise ValueError(f"indices must lie in [0, {n_clusters}), got values in [{int(idx.min())}, {int(idx.max())}]")
    return idx.to(torch.int64)


@reference
def linear_init(x, n_clusters: int) -> torch.Tensor:
    """``n_clusters`` float32 centroids evenly spaced from min(x) to max(x) (both included).

    ``torch.linspace(min(x), max(x), n_clusters)``: the initialisation Deep Compression found best
    (section 3.2). With ``n_clusters = 1`` the single centroid is min(x).
    """
    x = as_float_tensor(x)
    n_clusters = check_count(n_clusters, "n_clusters", 1)
    return torch.linspace(float(x.min()), float(x.max()), n_clusters, dtype=torch.float32)


def _cluster_ranges(v_sorted: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, count)`` per centroid: centroid i owns ``v_sorted[start[i]:start[i] + count[i]]``.

    In 1-D the values nearest one centroid form a contiguous run of the sorted values, so the
    assignment is k - 1 binary searches for the midpoints instead of n distance computations.
    Empty clusters get ``start = -1``, so two assignments are equal exactly when these are.
    """
    k = len(c)
    cs, order = torch.sort(c.to(torch.float64), stable=True)
    # of equal centroids only the first (lowest index, thanks to the stable sort) can win
    distinct = torch.ones(k, dtype=torch.bool)
    distinct[1:] = cs[1:] != cs[:-1]
    cs, owner = cs[distinct], order[distinct]
    mid = (cs[:-1] + cs[1:]) / 2                                   # float64: exact for float32 centroids
    below = torch.searchsorted(v_sorted, mid, side="left")         # values < mid
    upto = torch.searchsorted(v_sorted, mid, side="right")         # values <= mid
    # a value exactly on a midpoint joins the neighbour with the lower index
    ends = torch.where(owner[:-1] < owner[1:], upto, below)
    bounds = torch.cat([torch.zeros(1, dtype=torch.int64), ends, torch.tensor([len(v_sorted)])])
    count = torch.zeros(k, dtype=torch.int64)
    count[owner] = bounds[1:] - bounds[:-1]
    start = torch.full((k,), -1, dtype=torch.int64)
    start[owner] = torch.where(count[owner] > 0, bounds[:-1], -1)
    return start, count


def _kmeans(x: torch.Tensor, centroids: torch.Tensor, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations on the sorted values; see the module docstring for the rules."""
    v_sorted, order = torch.sort(x.reshape(-1).to(torch.float64))
    prefix = torch.zeros(len(v_sorted) + 1, dtype=torch.float64)   # prefix[j] = sum of the j smallest
    torch.cumsum(v_sorted, 0, out=prefix[1:])
    c = centroids.clone()
    start, count = _cluster_ranges(v_sorted, c)
    for _ in range(max_iter):
        full = count > 0
        s = start[full]
        sums = prefix[s + count[full]] - prefix[s]                  # float64 sums of each cluster
        c[full] = (sums / count[full]).to(torch.float32)           # empty clusters keep their centroid
        new_start, new_count = _cluster_ranges(v_sorted, c)
        changed = not (torch.equal(new_start, start) and torch.equal(new_count, count))
        start, count = new_start, new_count
        if not changed:
            break
    # label of every sorted value, then back to the original positions
    full = torch.nonzero(count > 0).flatten()
    full = full[torch.argsort(start[full])]
    labels_sorted = torch.repeat_interleave(full, count[full])
    indices = torch.empty_like(labels_sorted)
    indices[order] = labels_sorted
    return c, indices.reshape(x.shape)


@reference
def kmeans_quantize(x, centroids, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D Lloyd's K-means on the values of ``x``, started from ``centroids``: ``(codebook, indices)``.

    Repeat at most ``max_iter`` times:

        assign:  idx_i = argmin_k |x_i - c_k|        (exact; ties to the lower index k)
        update:  c_k = mean{x_i : idx_i = k}         (float64 sum, stored float32;
                                                      a cluster with no values keeps c_k)

    and stop early when an update changes no assignment. ``codebook`` (float32, length k) keeps
    the order of ``centroids``, so with a sorted start (``linear_init``) it stays sorted;
    ``indices`` (int64, the shape of ``x``) are the assignment to the returned codebook.
    ``max_iter = 0`` only assigns. Runs in O(n log n) for the sort plus O(k log n) per iteration:
    a million values to 16 centroids in a small fraction of a second.
    """
    x = as_float_tensor(x)
    return _kmeans(x, _check_centroids(centroids), check_count(max_iter, "max_iter", 0))


def _check_codebook_bits(bits) -> int:
    bits = check_bits(bits)
    if bits > MAX_CODEBOOK_BITS:
        raise ValueError(f"bits must be at most {MAX_CODEBOOK_BITS} for a codebook (2**bits centroids), got {bits}")
    return bits


def kmeans_quantize_bits(x, bits: int, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """``kmeans_quantize`` with ``2**bits`` linearly initialised centroids (1 <= bits <= 16)."""
    x = as_float_tensor(x)
    bits = _check_codebook_bits(bits)
    return _kmeans(x, linear_init.unguarded(x, 2**bits), check_count(max_iter, "max_iter", 0))


def reconstruct(codebook, indices) -> torch.Tensor:
    """The quantized weights ``codebook[indices]`` (float32, the shape of ``indices``)."""
    codebook = _check_centroids(codebook)
    return codebook[_check_indices(indices, len(codebook))]


def _codebook_gradient(grad: torch.Tensor, indices: torch.Tensor, n_clusters: int) -> torch.Tensor:
    sums = torch.bincount(indices.reshape(-1), weights=grad.reshape(-1).to(torch.float64), minlength=n_clusters)
    return sums.to(grad.dtype)


@reference
def codebook_gradient(grad, indices, n_clusters: int) -> torch.Tensor:
    """Gradient of each centroid: the SUM of the gradients of the weights assigned to it.

        dL/dc_k = sum_{i : indices_i = k} dL/dW_i        (float64 sum, returned in grad's dtype)

    This is the chain rule through W = codebook[indices] (Deep Compression, equation 3): each
    centroid moves by the summed pull of all its weights, not their mean. A cluster with no
    weights gets 0. ``grad`` and ``indices`` have the same shape; the result has length n_clusters.
    """
    grad = as_float_tensor(grad, "grad")
    n_clusters = check_count(n_clusters, "n_clusters", 1)
    indices = _check_indices(indices, n_clusters)
    if indices.shape != grad.shape:
        raise ValueError(f"grad and indices must have the same shape, "
                         f"got {tuple(grad.shape)} and {tuple(indices.shape)}")
    return _codebook_gradient(grad, indices, n_clusters)


class CodebookQuantizer:
    """Shares every Linear/Conv2d weight of a model through a K-means codebook while training.

    Deep Compression's trained quantization (section 3.3). On construction each layer's weight
    is clustered (``2**bits`` linearly initialised centroids; only the kept weights if ``masks``
    from :mod:`qlib.pruning` are given) and overwritten IN PLACE by ``codebook[indices]``
    (pruned weights stay 0). The indices never change afterwards; only the centroids train:

        loss.backward()
        cq.step(optimizer)      # codebook.grad = codebook_gradient(weight.grad, indices, k) (masked),
                                # optimizer.step() on the codebooks, weight <- codebook[indices]

    ``optimizer`` is any torch optimizer over ``cq.parameters()`` (the codebooks). Train the other
    parameters (biases, batch norm) with it or another optimizer, but never the quantized weights:
    ``step`` overwrites them, so after every step each weight equals its centroid exactly.
    """

    def __init__(self, model: nn.Module, bits: int | dict[str, int], masks: dict[str, torch.Tensor] | None = None,
                 max_iter: int = 100) -> None:
        layers = dict(quantized_layers(model))
        bits_of = bits if isinstance(bits, dict) else {name: bits for name in layers}
        unknown = (set(bits_of) | set(masks or {})) - set(layers)
        if unknown:
            raise ValueError(f"no Linear/Conv2d layer named {sorted(unknown)}; the layers are {sorted(layers)}")
        max_iter = check_count(max_iter, "max_iter", 0)
        self.layers: dict[str, nn.Module] = {name: layers[name] for name in bits_of}
        self.codebooks: dict[str, nn.Parameter] = {}
        self.indices: dict[str, torch.Tensor] = {}  # weight-shaped int64; 0 at pruned positions
        self.masks: dict[str, torch.Tensor | None] = {}
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            mask = None if masks is None or name not in masks else masks[name].to(torch.bool)
            if mask is not None and mask.shape != w.shape:
                raise ValueError(f"mask of {name} has shape {tuple(mask.shape)}, its weight {tuple(w.shape)}")
            kept = w if mask is None else w[mask]
            if kept.numel() == 0:
                raise ValueError(f"layer {name} has no kept weights to cluster")
            b = _check_codebook_bits(bits_of[name])
            codebook, idx = _kmeans(kept, linear_init.unguarded(kept, 2**b), max_iter)
            if mask is None:
                full = idx
            else:
                full = torch.zeros(w.shape, dtype=torch.int64)
                full[mask] = idx
            self.codebooks[name] = nn.Parameter(codebook)
            self.indices[name] = full
            self.masks[name] = mask
        self.write_weights()

    def parameters(self) -> list[nn.Parameter]:
        """The codebooks, one float32 vector per layer (what the optimizer trains)."""
        return list(self.codebooks.values())

    def set_codebook_grads(self) -> None:
        """Set each codebook's ``.grad`` to the summed gradients of its weights (pruned ones excluded)."""
        for name, layer in self.layers.items():
            if layer.weight.grad is None:
                raise RuntimeError(f"layer {name} has no weight gradient: call loss.backward() first")
            grad = layer.weight.grad
            if self.masks[name] is not None:
                grad = grad * self.masks[name]
            codebook = self.codebooks[name]
            codebook.grad = _codebook_gradient(grad, self.indices[name], len(codebook))

    @torch.no_grad()
    def write_weights(self) -> None:
        """Overwrite each weight with ``codebook[indices]`` (and 0 where pruned)."""
        for name, layer in self.layers.items():
            w = self.codebooks[name].detach()[self.indices[name]]
            if self.masks[name] is not None:
                w = w * self.masks[name]
            layer.weight.copy_(w)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``set_codebook_grads``, ``optimizer.step()``, ``write_weights``: one step of trained quantization."""
        self.set_codebook_grads()
        optimizer.step()
        self.write_weights()
