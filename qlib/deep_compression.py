"""Deep Compression, end to end, on the digits CNN: prune, cluster, Huffman-code, count every bit.

Chapter: Deep Compression (chapter 2). Han, Mao and Dally, ICLR 2016, arXiv:1510.00149:

    1. prune each layer by magnitude to its sparsity        (qlib.pruning)
    2. retrain the kept weights, the pruned ones held at 0
    3. cluster each layer's kept weights with K-means       (qlib.kmeans; 2**bits centroids)
    4. retrain the centroids (the shared weights)
    5. Huffman-code the cluster indices and the relative-index gaps of every layer  (qlib.huffman)

``deep_compression()`` returns one row per stage: test accuracy and the size in bits of the
whole model (every component of :mod:`qlib.storage`, biases and batch norm at 32 bits), and the
compression ratio against FP32. The last stage's accuracy is measured on a model rebuilt from the
decoded Huffman streams alone, so the size is that of what a reader would really need.
``pruning_sweep`` and ``quantization_sweep`` give the two single-method curves of the paper's
figure 6 (accuracy versus compression ratio).

Deterministic: fixed seeds, one thread, fixed data order. The pipeline takes a few seconds on
one core; ``python -m qlib.deep_compression`` prints its table and both sweeps (about 15 s).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qlib.data import load_digits
from qlib.huffman import huffman_code_lengths, huffman_decode, huffman_encode
from qlib.kmeans import CodebookQuantizer
from qlib.models import accuracy, load_pretrained
from qlib.pruning import apply_masks, prune_model, sparsity
from qlib.storage import (
    compression_ratio,
    huffman_table_bits,
    layer_storage_bits,
    model_storage_bits,
    relative_index_decode,
    relative_index_stream,
)
from qlib.weights import quantized_layers

SEED = 0
BATCH_SIZE = 64


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is compressed: its sparsity, 2**bits centroids, index_bits per relative index."""

    sparsity: float
    bits: int
    index_bits: int


#: The plan for the digits CNN. conv1 is the most sensitive layer (qlib.pruning.sensitivity_scan)
#: and small, so it is pruned least; fc1 holds 86% of the weights and tolerates 97% sparsity.
#: 2**index_bits - 1 is well above the mean gap 1 / (1 - sparsity) (1.4, 5, 33, 2.5): few fillers.
PLAN = {
    "conv1": LayerPlan(sparsity=0.3, bits=4, index_bits=3),
    "conv2": LayerPlan(sparsity=0.8, bits=4, index_bits=4),
    "fc1": LayerPlan(sparsity=0.97, bits=4, index_bits=6),
    "fc2": LayerPlan(sparsity=0.6, bits=4, index_bits=4),
}
PRUNE_EPOCHS, PRUNE_LR = 8, 1e-3          # retraining the pruned network (Adam)
CODEBOOK_EPOCHS, CODEBOOK_LR = 5, 1e-4    # retraining the centroids, biases and batch norm (Adam)


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, params, epochs: int, lr: float, step) -> None:
    """Adam on ``params`` over the training split in a seeded order.

    ``step(optimizer)`` is called where a plain loop calls ``optimizer.step()``.
    """
    train = load_digits("train")
    torch.manual_seed(SEED)
    order_gen = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=order_gen)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(train.images[batch]), train.labels[batch])
            optimizer.zero_grad()
            loss.backward()
            step(optimizer)
    model.eval()


def _masked_step(model: nn.Module, masks: dict):
    """A ``step`` for :func:`_train`: the optimizer's step, then the pruned weights back to 0."""
    def step(optimizer):
        optimizer.step()
        apply_masks(model, masks)
    return step


def _not_layer_weights(model: nn.Module) -> list[nn.Parameter]:
    """Biases and batch-norm parameters: everything but the Linear/Conv2d weights."""
    weights = {id(layer.weight) for _, layer in quantized_layers(model)}
    return [p for p in model.parameters() if id(p) not in weights]


def _row(stage: str, model: nn.Module, sizes: dict[str, int], fp32_bits: int) -> dict:
    """A table row: test accuracy and sparsity of ``model``, its size components and compression ratio."""
    return {"stage": stage, "accuracy": accuracy(model, load_digits("test")), "sparsity": sparsity(model),
            **sizes, "ratio": compression_ratio(fp32_bits, sizes["total"])}


def _sparse_fp32_sizes(model: nn.Module, masks: dict, index_bits: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per layer: FP32 kept weights plus relative indices, or dense FP32 if that is smaller."""
    sizes = {}
    for name, layer in quantized_layers(model):
        n = layer.weight.numel()
        sizes[name] = layer_storage_bits.unguarded(n, 32, None, None, None, None, None)
        if name in masks:
            sparse = layer_storage_bits.unguarded(n, 32, None, masks[name].reshape(-1).numpy(), index_bits[name], None,
                                                  None)
            sizes[name] = min(sizes[name], sparse, key=lambda s: s["total"])
    return sizes


def _index_width(codebook: torch.Tensor) -> int:
    """Bits of a fixed-width cluster index: log2 of the codebook length (always a power of 2 here)."""
    return (len(codebook) - 1).bit_length()


def _codebook_sizes(cq: CodebookQuantizer, index_bits: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per layer: fixed-width cluster indices, the codebook and fixed-width relative indices."""
    sizes = {}
    for name, layer in cq.layers.items():
        mask = cq.masks[name]
        sparse = (None, None) if mask is None else (mask.reshape(-1).numpy(), index_bits[name])
        codebook = cq.codebooks[name]
        sizes[name] = layer_storage_bits.unguarded(layer.weight.numel(), _index_width(codebook), len(codebook),
                                                   *sparse, None, None)
    return sizes


def _streams(cq: CodebookQuantizer, name: str, index_bits: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A layer's two symbol streams, one symbol per entry: cluster indices, relative-index fields.

    A filler entry (index field 0) carries weight symbol 0, which the decoder skips.
    """
    indices = cq.indices[name].reshape(-1).numpy()
    mask = cq.masks[name]
    if mask is None:
        return indices, None
    mask = mask.reshape(-1).numpy()
    gaps = relative_index_stream(mask, index_bits)
    weights = np.zeros(len(gaps), dtype=np.int64)
    weights[gaps > 0] = indices[mask]
    return weights, gaps


def _huffman(symbols: np.ndarray, n_symbols: int) -> dict:
    lengths = huffman_code_lengths.unguarded(np.bincount(symbols, minlength=n_symbols))
    packed, n_bits = huffman_encode.unguarded(symbols, lengths)
    return {"packed": packed, "n_bits": n_bits, "lengths": lengths, "n_symbols": len(symbols)}


def _decode(stream: dict) -> np.ndarray:
    return huffman_decode.unguarded(stream["packed"], stream["n_bits"], stream["lengths"], stream["n_symbols"])


def _huffman_stage(cq: CodebookQuantizer, index_bits: dict[str, int], model: nn.Module):
    """Huffman-code every layer, then rebuild ``model``'s weights from the decoded streams alone.

    Returns the per-layer sizes and a copy of ``model`` whose layer weights come from decoding.
    """
    sizes = {}
    rebuilt = copy.deepcopy(model)
    rebuilt_layers = dict(quantized_layers(rebuilt))
    for name, layer in cq.layers.items():
        codebook = cq.codebooks[name]
        weights, gaps = _streams(cq, name, index_bits[name])
        w_code = _huffman(weights, len(codebook))
        huffman_bits, table = {"weights": w_code["n_bits"]}, huffman_table_bits(w_code["lengths"])
        # --- what a reader does: decode, place, look up ---
        symbols = _decode(w_code)
        n = layer.weight.numel()
        if gaps is None:
            mask, kept_symbols = np.ones(n, dtype=bool), symbols
        else:
            i_code = _huffman(gaps, 2 ** index_bits[name])
            huffman_bits["sparse_index"] = i_code["n_bits"]
            table += huffman_table_bits(i_code["lengths"])
            decoded_gaps = _decode(i_code)
            mask, kept_symbols = relative_index_decode(decoded_gaps, n, index_bits[name]), symbols[decoded_gaps > 0]
        flat = torch.zeros(n, dtype=torch.float32)
        flat[torch.from_numpy(mask)] = codebook.detach()[torch.from_numpy(kept_symbols)]
        with torch.no_grad():
            rebuilt_layers[name].weight.copy_(flat.reshape(layer.weight.shape))
        sparse = (None, None) if gaps is None else (mask, index_bits[name])
        sizes[name] = layer_storage_bits.unguarded(n, _index_width(codebook), len(codebook), *sparse, huffman_bits,
                                                   table)
    return sizes, rebuilt


def _check_plan(model: nn.Module, plan: dict) -> None:
    layers = {name for name, _ in quantized_layers(model)}
    if set(plan) != layers:
        raise ValueError(f"the plan must name every Linear/Conv2d layer {sorted(layers)}, got {sorted(plan)}")


def deep_compression(plan: dict[str, LayerPlan] = PLAN, verbose: bool = True) -> list[dict]:
    """Run the five stages on the pretrained digits CNN; one row per stage.

    Each row: ``stage``, test ``accuracy``, the size components of
    :func:`qlib.storage.model_storage_bits` (``weights``, ``codebook``, ``sparse_index``,
    ``huffman_table``, ``other_fp32``, ``total``, all in bits) and ``ratio`` = FP32 bits / total.
    Pruned FP32 layers are stored sparse (32-bit weights plus relative indices) unless dense is
    smaller. A layer of sparsity 0 is stored dense (no index) once clustered.
    """
    with _one_thread():
        return _deep_compression(plan, verbose)


def _deep_compression(plan: dict[str, LayerPlan], verbose: bool) -> list[dict]:
    model = load_pretrained("cnn")
    _check_plan(model, plan)
    fp32_bits = model_storage_bits(model)["total"]
    rows = []

    def record(stage: str, layer_sizes: dict, measured: nn.Module = model) -> None:
        rows.append(_row(stage, measured, model_storage_bits(model, layer_sizes), fp32_bits))
        if verbose:
            r = rows[-1]
            print(f"{stage:<20} accuracy {r['accuracy']:.4f}  {r['total']:>9,} bits  {r['ratio']:5.1f}x", flush=True)

    index_bits = {name: p.index_bits for name, p in plan.items()}
    record("fp32", {})
    masks = prune_model(model, {name: p.sparsity for name, p in plan.items() if p.sparsity > 0})
    record("pruned", _sparse_fp32_sizes(model, masks, index_bits))
    _train(model, model.parameters(), PRUNE_EPOCHS, PRUNE_LR, _masked_step(model, masks))
    record("pruned, retrained", _sparse_fp32_sizes(model, masks, index_bits))

    cq = CodebookQuantizer(model, {name: p.bits for name, p in plan.items()}, masks)
    record("clustered", _codebook_sizes(cq, index_bits))
    _train(model, cq.parameters() + _not_layer_weights(model), CODEBOOK_EPOCHS, CODEBOOK_LR, cq.step)
    record("codebooks retrained", _codebook_sizes(cq, index_bits))

    sizes, rebuilt = _huffman_stage(cq, index_bits, model)
    record("huffman coded", sizes, measured=rebuilt)
    return rows


def pruning_sweep(sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.97), index_bits: int = 5,
                  retrain_epochs: int = PRUNE_EPOCHS, verbose: bool = True) -> list[dict]:
    """Pruning alone: every layer at the same sparsity, retrained with masks; FP32 kept weights.

    One row per sparsity, as in :func:`deep_compression`, plus ``accuracy_before_retraining``.
    Layers are stored sparse (``index_bits`` per relative index) unless dense is smaller.
    """
    def prune_and_retrain(model: nn.Module, s: float) -> tuple[str, dict, dict]:
        masks = prune_model(model, s)
        before = accuracy(model, load_digits("test"))
        _train(model, model.parameters(), retrain_epochs, PRUNE_LR, _masked_step(model, masks))
        sizes = model_storage_bits(model, _sparse_fp32_sizes(model, masks, dict.fromkeys(masks, index_bits)))
        return f"pruned {s:.0%}", sizes, {"accuracy_before_retraining": before}

    return _sweep(sparsities, prune_and_retrain, verbose)


def quantization_sweep(bit_widths=(1, 2, 3, 4, 5, 6, 8), retrain_epochs: int = CODEBOOK_EPOCHS,
                       verbose: bool = True) -> list[dict]:
    """K-means quantization alone: every layer dense with 2**bits centroids, codebooks retrained.

    One row per bit width, as in :func:`deep_compression`, plus ``bits`` and
    ``accuracy_before_retraining``.
    """
    def cluster_and_retrain(model: nn.Module, bits: int) -> tuple[str, dict, dict]:
        cq = CodebookQuantizer(model, bits)
        before = accuracy(model, load_digits("test"))
        _train(model, cq.parameters() + _not_layer_weights(model), retrain_epochs, CODEBOOK_LR, cq.step)
        sizes = model_storage_bits(model, _codebook_sizes(cq, {}))
        return f"{bits}-bit k-means", sizes, {"bits": bits, "accuracy_before_retraining": before}

    return _sweep(bit_widths, cluster_and_retrain, verbose)


def _sweep(values, compress, verbose: bool) -> list[dict]:
    """One row per value: a fresh pretrained CNN, ``compress(model, value) -> (stage, sizes, extra)``, its row."""
    fp32_bits = model_storage_bits(load_pretrained("cnn"))["total"]
    with _one_thread():
        rows = []
        for value in values:
            model = load_pretrained("cnn")
            stage, sizes, extra = compress(model, value)
            rows.append(_row(stage, model, sizes, fp32_bits) | extra)
            if verbose:
                print(f"{stage}: accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['ratio']:.1f}x", flush=True)
        return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table (sizes in bits)."""
    sizes = ["weights", "codebook", "sparse_index", "huffman_table", "other_fp32", "total"]
    lines = [f"{'stage':<20}{'accuracy':>9}{'sparsity':>9}" + "".join(f"{c:>14}" for c in sizes) + f"{'ratio':>8}"]
    for r in rows:
        lines.append(f"{r['stage']:<20}{r['accuracy']:>9.4f}{r['sparsity']:>9.3f}"
                     + "".join(f"{r[c]:>14,}" for c in sizes) + f"{r['ratio']:>7.1f}x")
    return "\n".join(lines)


def main() -> None:
    """``python -m qlib.deep_compression``: print the pipeline's table, then the pruning and quantization sweeps."""
    rows = deep_compression()
    print(format_table(rows))
    print(format_table(pruning_sweep(verbose=False)))
    print(format_table(quantization_sweep(verbose=False)))


if __name__ == "__main__":
    main()
