"""Honest bit accounting: what a compressed layer and model really cost to store.

Chapter: Deep Compression (chapter 2). Every component is counted, in bits:

* ``weights``: one field per stored entry: ``bits`` each (a cluster index or a plain number),
  or the size of its Huffman-coded stream;
* ``codebook``: ``CODEBOOK_ENTRY_BITS`` = 32 per centroid (float32);
* ``sparse_index``: the positions of the kept weights of a pruned layer, relative-index encoded
  (below): ``index_bits`` per stored entry, or the size of its Huffman-coded stream;
* ``huffman_table``: the code lengths that rebuild each canonical Huffman code;
* at model level, ``other_fp32``: every other parameter and floating-point buffer (biases,
  batch-norm weight, bias, running mean and variance) at 32 bits.

Not counted, here or in the FP32 baseline: the architecture (layer shapes, which layers are
pruned, their bit widths) and the lengths of the streams, a few bytes of framing per layer.

Relative index encoding, the course's convention (after Deep Compression, section 2), with
``index_bits`` = b and M = 2**b - 1 the largest b-bit number. The kept weights sit at flat
(row-major) positions p_1 < p_2 < ...; with p_0 = -1, each gap g_i = p_i - p_{i-1} is at least 1.
An entry stores:

* a kept weight whose gap from the previous entry is g <= M: the number g (1 .. M);
* a filler, when the gap is larger: the reserved number 0, meaning "M positions further, no weight".

A gap g needs (g - 1) // M fillers before its weight. A filler also occupies a weight field (a
decoder skips it), so both streams have one field per entry: n_entries = n_kept + n_fillers.
Example (b = 3, M = 7): kept positions 1, 4, 15 of 16 give gaps 2, 3, 11 and the stream 2, 3, 0, 4:
four entries, one filler. The paper's own filler is different: it stores an explicit zero weight
as an ordinary entry at the largest reachable position, so its example reads 1, 3, 8, 3 (chapter 2
sets the two conventions side by side).
The paper uses b = 8 for convolutions and b = 5 for fully connected layers (AlexNet).
"""
from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from qlib._checks import check_bits, check_count
from qlib._reference import reference
from qlib.weights import quantized_layers

#: Bits of one codebook entry (a float32 centroid).
CODEBOOK_ENTRY_BITS = 32
#: Bits of every parameter that is not compressed (biases, batch norm), and of FP32 weights.
FP32_BITS = 32
#: Bits per symbol of a stored Huffman table: the symbol's code length, 0 .. 63 (>= the longest, 57).
TABLE_LENGTH_BITS = 6
#: The components of a layer's size, in the order they are reported.
COMPONENTS = ("weights", "codebook", "sparse_index", "huffman_table")


def _check_mask(mask) -> np.ndarray:
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be boolean (True = weight kept), got dtype {m.dtype}")
    return m.reshape(-1)


def _gaps_and_fillers(mask_flat: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """For each kept weight: its gap from the previous kept one (p_0 = -1) and the fillers it needs."""
    positions = np.flatnonzero(mask_flat)
    gaps = np.diff(positions, prepend=-1)
    return gaps, (gaps - 1) // (2**index_bits - 1)


@reference
def relative_index_entries(mask_flat, index_bits: int) -> tuple[int, int]:
    """``(n_entries, n_fillers)`` of the relative index encoding of the kept positions of ``mask_flat``.

    ``n_entries`` = kept weights + fillers; a gap g (from the previous kept position, the first
    one from position -1) needs (g - 1) // (2**index_bits - 1) fillers. See the module docstring.
    ``mask_flat`` is boolean, True where a weight is kept, read in flat (row-major) order.
    """
    mask_flat = _check_mask(mask_flat)
    _, fillers = _gaps_and_fillers(mask_flat, check_bits(index_bits))
    n_fillers = int(fillers.sum())
    return len(fillers) + n_fillers, n_fillers


def relative_index_stream(mask_flat, index_bits: int) -> np.ndarray:
    """The stored index fields, one per entry (int64): the gap 1 .. M for a kept weight, 0 for a filler."""
    mask_flat = _check_mask(mask_flat)
    index_bits = check_bits(index_bits)
    gaps, fillers = _gaps_and_fillers(mask_flat, index_bits)
    stream = np.zeros(len(gaps) + int(fillers.sum()), dtype=np.int64)
    stream[np.cumsum(fillers + 1) - 1] = gaps - fillers * (2**index_bits - 1)  # each weight after its fillers
    return stream


def relative_index_decode(stream, n_weights: int, index_bits: int) -> np.ndarray:
    """The boolean flat mask that ``relative_index_stream`` encoded (the decoder's side)."""
    stream = np.asarray(stream)
    if stream.ndim != 1 or not np.issubdtype(stream.dtype, np.integer):
        raise TypeError(f"stream must be a 1-D integer array, got dtype {stream.dtype} and shape {stream.shape}")
    index_bits = check_bits(index_bits)
    top = 2**index_bits - 1
    if stream.size and (stream.min() < 0 or stream.max() > top):
        raise ValueError(f"{index_bits}-bit index fields lie in [0, {top}], got [{stream.min()}, {stream.max()}]")
    advance = np.where(stream == 0, top, stream)
    positions = (np.cumsum(advance) - 1)[stream > 0]
    if positions.size and positions[-1] >= n_weights:
        raise ValueError(f"the stream points at position {positions[-1]}, past the {n_weights} weights")
    mask = np.zeros(n_weights, dtype=bool)
    mask[positions] = True
    return mask


def huffman_table_bits(lengths) -> int:
    """Bits to store a canonical Huffman code: ``TABLE_LENGTH_BITS`` per symbol of the alphabet.

    The code lengths alone rebuild a canonical code (:func:`qlib.huffman.canonical_code`).
    """
    return len(np.asarray(lengths)) * TABLE_LENGTH_BITS


@reference
def layer_storage_bits(n_weights: int, bits: int, n_clusters: int | None = None, mask=None,
                       index_bits: int | None = None, huffman_bits: int | dict[str, int] | None = None,
                       table_bits: int | None = None) -> dict[str, int]:
    """Size in bits of one layer's weights, by component, and their ``"total"``.

        entries       = n_weights                      if the layer is dense (mask is None)
                      = kept + fillers                 if pruned (relative index, index_bits bits)
        weights       = bits * entries                 (or huffman_bits["weights"])
        codebook      = 32 * n_clusters                (0 without a codebook)
        sparse_index  = index_bits * entries           (or huffman_bits["sparse_index"]; 0 if dense)
        huffman_table = table_bits                     (required with huffman_bits)

    ``bits`` is the width of one weight field: 32 for float32, log2(k) for k cluster indices.
    ``huffman_bits`` replaces the fixed-width size of the streams it names: an int stands for
    ``{"weights": n}``. Lecture example: a 4x4 layer with 2-bit indices into 4 centroids takes
    2 * 16 + 32 * 4 = 160 bits (20 bytes) instead of 512 (64 bytes), 3.2x smaller.
    """
    n_weights = check_count(n_weights, "n_weights", 1)
    bits = check_bits(bits)
    if n_clusters is not None:
        n_clusters = check_count(n_clusters, "n_clusters", 1)
        if n_clusters > 2**bits:
            raise ValueError(f"{bits}-bit indices cannot address {n_clusters} centroids (at most {2**bits})")
    if (mask is None) != (index_bits is None):
        raise ValueError("a pruned layer needs both mask and index_bits (a dense layer neither)")
    if mask is not None:
        mask = _check_mask(mask)
        if mask.size != n_weights:
            raise ValueError(f"mask has {mask.size} entries for {n_weights} weights")
        index_bits = check_bits(index_bits)
    if isinstance(huffman_bits, numbers.Integral) and not isinstance(huffman_bits, bool):
        huffman_bits = {"weights": huffman_bits}
    if huffman_bits is not None:
        if not isinstance(huffman_bits, dict) or not set(huffman_bits) <= {"weights", "sparse_index"}:
            raise ValueError(f"huffman_bits must be an int or a dict with keys 'weights' and/or 'sparse_index', "
                             f"got {huffman_bits!r}")
        if "sparse_index" in huffman_bits and mask is None:
            raise ValueError("huffman_bits['sparse_index'] given for a dense layer (no mask)")
        huffman_bits = {k: check_count(v, f"huffman_bits[{k!r}]", 0) for k, v in huffman_bits.items()}
    if (huffman_bits is None) != (table_bits is None):
        raise ValueError("Huffman-coded streams need their tables: give huffman_bits and table_bits together")
    if table_bits is not None:
        table_bits = check_count(table_bits, "table_bits", 0)
    huffman_bits = huffman_bits or {}
    if mask is None:
        entries, index = n_weights, 0
    else:
        gaps, fillers = _gaps_and_fillers(mask, index_bits)
        entries = len(gaps) + int(fillers.sum())
        index = index_bits * entries
    sizes = {
        "weights": huffman_bits.get("weights", bits * entries),
        "codebook": CODEBOOK_ENTRY_BITS * (n_clusters or 0),
        "sparse_index": huffman_bits.get("sparse_index", index),
        "huffman_table": table_bits or 0,
    }
    sizes["total"] = sum(sizes.values())
    return sizes


def model_storage_bits(model: nn.Module, layers: dict[str, dict[str, int]] | None = None) -> dict[str, int]:
    """Size in bits of a whole model: compressed layers plus everything else at 32 bits.

    ``layers`` maps a Linear/Conv2d layer name to its ``layer_storage_bits`` result; any such
    layer not listed is counted dense at 32 bits per weight. ``other_fp32`` is every remaining
    parameter and floating-point buffer (biases, batch-norm weight, bias, running mean and
    variance) at 32 bits; integer buffers (batch norm's ``num_batches_tracked``, a training
    counter) are not needed for inference and not counted. With ``layers=None`` this is the
    FP32 size of the model.
    """
    layers = layers or {}
    weights = {f"{name}.weight": name for name, _ in quantized_layers(model)}
    unknown = set(layers) - set(weights.values())
    if unknown:
        raise ValueError(f"no Linear/Conv2d layer named {sorted(unknown)}; the layers are {sorted(weights.values())}")
    sizes = dict.fromkeys(COMPONENTS, 0) | {"other_fp32": 0}
    for name, layer_sizes in layers.items():
        for component in COMPONENTS:
            sizes[component] += int(layer_sizes[component])
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    for name, tensor in tensors:
        if name in weights and weights[name] in layers:
            continue
        sizes["weights" if name in weights else "other_fp32"] += FP32_BITS * tensor.numel()
    sizes["total"] = sum(sizes.values())
    return sizes


def compression_ratio(fp32_bits, compressed_bits) -> float:
    """How many times smaller: ``fp32_bits / compressed_bits`` (both positive)."""
    for name, v in (("fp32_bits", fp32_bits), ("compressed_bits", compressed_bits)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"{name} must be a positive number of bits, got {v!r}")
    return fp32_bits / compressed_bits
