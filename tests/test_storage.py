"""Tests of qlib.storage: relative index encoding and the bit count of layers and models.

Oracles: the lecture's 4x4 example and the paper's figure 2 worked by hand, a relative-index
encoder written here as a plain loop over the weights, and parameter counts read from the
models' state dicts.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qlib._reference import ReferenceUnavailable, blocked
from qlib.models import load_pretrained
from qlib.storage import (
    CODEBOOK_ENTRY_BITS,
    TABLE_LENGTH_BITS,
    compression_ratio,
    huffman_table_bits,
    layer_storage_bits,
    model_storage_bits,
    relative_index_decode,
    relative_index_entries,
    relative_index_stream,
)


def loop_encoder(mask, index_bits):
    """Walk the weights one by one: emit a filler (0) after M = 2**b - 1 steps without a kept weight."""
    top = 2**index_bits - 1
    stream, since = [], 0  # positions advanced since the last entry (the first entry counts from -1)
    for kept in mask:
        since += 1
        if kept:
            stream.append(since)
            since = 0
        elif since == top:
            stream.append(0)
            since = 0
    # fillers after the last kept weight are not needed
    while stream and stream[-1] == 0:
        stream.pop()
    return stream


def random_mask(seed, n, density):
    return np.random.default_rng(seed).random(n) < density


# --- relative index -------------------------------------------------------------------------

def test_paper_figure_2_example():
    """Kept weights at 1, 4 and 15 of 16, 3-bit gaps: one filler, four entries."""
    mask = np.zeros(16, dtype=bool)
    mask[[1, 4, 15]] = True
    assert relative_index_entries(mask, 3) == (4, 1)
    assert relative_index_stream(mask, 3).tolist() == [2, 3, 0, 4]
    assert np.array_equal(relative_index_decode([2, 3, 0, 4], 16, 3), mask)


@pytest.mark.parametrize("index_bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.3, 0.9, 1.0])
def test_relative_index_matches_a_loop(index_bits, density):
    mask = random_mask(index_bits, 3000, density)
    expected = loop_encoder(mask.tolist(), index_bits)
    stream = relative_index_stream(mask, index_bits)
    assert stream.tolist() == expected
    assert relative_index_entries(mask, index_bits) == (len(expected), expected.count(0))
    assert np.array_equal(relative_index_decode(stream, len(mask), index_bits), mask)


def test_relative_index_edge_cases():
    assert relative_index_entries(np.zeros(10, dtype=bool), 3) == (0, 0)
    assert relative_index_entries(np.ones(10, dtype=bool), 1) == (10, 0)
    first_only = np.zeros(100, dtype=bool)
    first_only[0] = True
    assert relative_index_entries(first_only, 2) == (1, 0)      # trailing zeros need no filler
    last_only = np.zeros(100, dtype=bool)
    last_only[99] = True
    assert relative_index_entries(last_only, 2) == (34, 33)     # gap 100 = 33 fillers of 3, then 1
    assert relative_index_entries(torch.tensor([[False, True], [True, False]]), 2) == (2, 0)  # any shape, flat order


def test_relative_index_refuses_bad_input():
    with pytest.raises(TypeError, match="boolean"):
        relative_index_entries(np.array([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="bits"):
        relative_index_entries(np.array([True]), 0)
    with pytest.raises(ValueError, match="past the 5 weights"):
        relative_index_decode([3, 3], 5, 2)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        relative_index_decode([4], 10, 2)


# --- layer_storage_bits --------------------------------------------------------------------

def test_lecture_example_20_bytes():
    """4x4 FP32 = 64 bytes; 2-bit indices (4 bytes) + 4 FP32 centroids (16 bytes) = 20 bytes, 3.2x smaller."""
    dense = layer_storage_bits(16, 32)
    assert dense == {"weights": 512, "codebook": 0, "sparse_index": 0, "huffman_table": 0, "total": 512}
    clustered = layer_storage_bits(16, 2, n_clusters=4)
    assert clustered == {"weights": 32, "codebook": 128, "sparse_index": 0, "huffman_table": 0, "total": 160}
    assert clustered["total"] // 8 == 20 and compression_ratio(512, 160) == pytest.approx(3.2)


@pytest.mark.parametrize("index_bits", [3, 5, 8])
def test_pruned_layer_counts_every_entry(index_bits):
    mask = random_mask(0, 4096, 0.04)
    n_entries = len(loop_encoder(mask.tolist(), index_bits))
    sizes = layer_storage_bits(4096, 4, n_clusters=16, mask=mask, index_bits=index_bits)
    assert sizes == {"weights": 4 * n_entries, "codebook": 16 * CODEBOOK_ENTRY_BITS,
                     "sparse_index": index_bits * n_entries, "huffman_table": 0,
                     "total": (4 + index_bits) * n_entries + 512}
    assert n_entries > mask.sum() or index_bits == 8  # fillers appear with short fields at 4% density


def test_huffman_bits_replace_the_fixed_width_streams():
    mask = random_mask(1, 1000, 0.1)
    sizes = layer_storage_bits(1000, 4, 16, mask, 5, huffman_bits={"weights": 300, "sparse_index": 250},
                               table_bits=200)
    assert sizes == {"weights": 300, "codebook": 512, "sparse_index": 250, "huffman_table": 200,
                     "total": 1262}
    dense = layer_storage_bits(1000, 4, 16, huffman_bits=3100, table_bits=96)   # an int: the weights stream
    assert dense == {"weights": 3100, "codebook": 512, "sparse_index": 0, "huffman_table": 96, "total": 3708}
    assert huffman_table_bits(np.zeros(16, dtype=int)) == 16 * TABLE_LENGTH_BITS


def test_layer_storage_bits_refuses_incomplete_descriptions():
    mask = np.ones(10, dtype=bool)
    with pytest.raises(ValueError, match="both mask and index_bits"):
        layer_storage_bits(10, 4, 16, mask=mask)
    with pytest.raises(ValueError, match="both mask and index_bits"):
        layer_storage_bits(10, 4, 16, index_bits=3)
    with pytest.raises(ValueError, match="give huffman_bits and table_bits together"):
        layer_storage_bits(10, 4, 16, huffman_bits=30)
    with pytest.raises(ValueError, match="give huffman_bits and table_bits together"):
        layer_storage_bits(10, 4, 16, table_bits=30)
    with pytest.raises(ValueError, match="cannot address 17 centroids"):
        layer_storage_bits(10, 4, 17)
    with pytest.raises(ValueError, match="11 entries for 10 weights"):
        layer_storage_bits(10, 4, 16, mask=np.ones(11, dtype=bool), index_bits=3)
    with pytest.raises(ValueError, match="dense layer"):
        layer_storage_bits(10, 4, 16, huffman_bits={"sparse_index": 3}, table_bits=0)
    with pytest.raises(ValueError, match="keys"):
        layer_storage_bits(10, 4, 16, huffman_bits={"codebook": 3}, table_bits=0)
    with pytest.raises(ValueError, match="bits must be between 1 and 32"):
        layer_storage_bits(10, 0)
    with pytest.raises(ValueError, match="n_weights"):
        layer_storage_bits(0, 4)


# --- whole models -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_fp32_model_size_counts_parameters_and_float_buffers(name):
    model = load_pretrained(name)
    state = model.state_dict()
    n = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
    sizes = model_storage_bits(model)
    assert sizes["total"] == 32 * n
    assert sizes["weights"] == 32 * sum(v.numel() for k, v in state.items()
                                        if k.endswith("weight") and v.ndim >= 2)
    if name == "cnn":  # 38,330 parameters + 96 batch-norm running statistics
        assert n == 38_426 and sizes["total"] == 1_229_632
        assert sizes["other_fp32"] == 32 * (64 + 10 + 2 * 16 + 2 * 32 + 2 * 16 + 2 * 32)


def test_model_size_with_one_compressed_layer():
    model = load_pretrained("cnn")
    fp32 = model_storage_bits(model)
    fc1 = layer_storage_bits(512 * 64, 4, 16)
    sizes = model_storage_bits(model, {"fc1": fc1})
    assert sizes["total"] == fp32["total"] - 32 * 512 * 64 + fc1["total"]
    assert sizes["codebook"] == 512 and sizes["other_fp32"] == fp32["other_fp32"]
    assert sizes["total"] == sum(v for k, v in sizes.items() if k != "total")
    with pytest.raises(ValueError, match="no Linear/Conv2d layer named"):
        model_storage_bits(model, {"bn1": fc1})


def test_compression_ratio():
    assert compression_ratio(1_229_632, 30_000) == pytest.approx(40.9877, abs=1e-4)
    for bad in (0, -5, float("nan"), True):
        with pytest.raises(ValueError, match="positive number of bits"):
            compression_ratio(100, bad)


def test_blocking_layer_storage_bits_leaves_models_working():
    model = load_pretrained("cnn")
    with blocked({"layer_storage_bits", "relative_index_entries"}):
        with pytest.raises(ReferenceUnavailable):
            layer_storage_bits(16, 2, 4)
        with pytest.raises(ReferenceUnavailable):
            relative_index_entries(np.ones(3, dtype=bool), 2)
        assert model_storage_bits(model)["total"] == 1_229_632
        assert relative_index_stream(np.ones(3, dtype=bool), 2).tolist() == [1, 1, 1]
