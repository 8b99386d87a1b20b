"""Tests of qlib.deep_compression: the full pipeline on the digits CNN and the two sweeps.

The target of the chapter: at least 20x smaller than FP32 counting every bit, at most one point
of test accuracy lost. Sizes are checked against counts made here from the state dict, and the
last stage's accuracy comes from a model rebuilt out of the decoded Huffman streams.
"""
from __future__ import annotations

import pytest

from qlib._reference import blocked
from qlib.deep_compression import PLAN, LayerPlan, deep_compression, format_table, pruning_sweep, quantization_sweep
from qlib.models import load_pretrained
from qlib.storage import TABLE_LENGTH_BITS

STAGES = ["fp32", "pruned", "pruned, retrained", "clustered", "codebooks retrained", "huffman coded"]
COMPONENTS = ["weights", "codebook", "sparse_index", "huffman_table", "other_fp32"]
FP32_BITS = 32 * 38_426          # 38,330 parameters + 96 batch-norm running statistics
FP32_ACCURACY = 357 / 360
REFERENCES = {"kmeans_quantize", "codebook_gradient", "huffman_code_lengths", "canonical_code", "huffman_encode",
              "huffman_decode", "layer_storage_bits", "magnitude_mask", "relative_index_entries", "linear_init"}


@pytest.fixture(scope="module")
def rows():
    return deep_compression(verbose=False)


def test_target_reached(rows):
    """At least 20x smaller counting everything, at most one point of accuracy lost."""
    first, last = rows[0], rows[-1]
    assert first["total"] == FP32_BITS and first["accuracy"] == pytest.approx(FP32_ACCURACY)
    assert last["ratio"] >= 20, format_table(rows)
    assert last["accuracy"] >= first["accuracy"] - 0.01, format_table(rows)


def test_stages_and_accounting(rows):
    assert [r["stage"] for r in rows] == STAGES
    for r in rows:
        assert r["total"] == sum(r[c] for c in COMPONENTS), r["stage"]
        assert r["ratio"] == pytest.approx(FP32_BITS / r["total"])
        assert r["other_fp32"] == 32 * (74 + 96 + 96), r["stage"]   # biases, BN weight/bias, BN statistics
    by_stage = {r["stage"]: r for r in rows}
    totals = [r["total"] for r in rows]
    assert totals == sorted(totals, reverse=True)
    final = by_stage["huffman coded"]
    assert all(final[c] > 0 for c in COMPONENTS), "every component is counted"
    assert final["codebook"] == 32 * 16 * 4
    # one table per stream: 16 cluster indices, and 2**index_bits gap values for a pruned layer
    tables = sum(2**p.bits + (2**p.index_bits if p.sparsity > 0 else 0) for p in PLAN.values())
    assert final["huffman_table"] == TABLE_LENGTH_BITS * tables
    assert final["weights"] < by_stage["clustered"]["weights"]
    assert final["sparse_index"] < by_stage["clustered"]["sparse_index"]


def test_sparsity_follows_the_plan(rows):
    model = load_pretrained("cnn")
    sizes = {name: module.weight.numel() for name, module in model.named_modules() if name in PLAN}
    expected = sum(round(PLAN[n].sparsity * sizes[n]) for n in PLAN) / sum(sizes.values())
    for r in rows[1:]:
        assert r["sparsity"] == pytest.approx(expected), r["stage"]


def test_huffman_coding_is_lossless_and_retraining_recovers(rows):
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["huffman coded"]["accuracy"] == by_stage["codebooks retrained"]["accuracy"]
    assert by_stage["pruned"]["accuracy"] < by_stage["pruned, retrained"]["accuracy"] - 0.05


def test_deterministic_and_independent_of_the_references(rows, capsys):
    """A second run, with every guarded reference blocked, prints progress and gives the same table."""
    with blocked(REFERENCES):
        again = deep_compression(verbose=True)
    assert again == rows
    printed = capsys.readouterr().out
    assert all(stage in printed for stage in STAGES)


def test_plan_must_name_every_layer():
    with pytest.raises(ValueError, match="every Linear/Conv2d layer"):
        deep_compression({"fc1": LayerPlan(0.9, 4, 5)}, verbose=False)


def test_sweeps():
    pruning = pruning_sweep((0.5, 0.9), retrain_epochs=1, verbose=False)
    assert [r["sparsity"] for r in pruning] == [0.5, 0.9]
    assert pruning[0]["ratio"] < pruning[1]["ratio"]
    assert all(r["codebook"] == 0 and r["sparse_index"] > 0 for r in pruning)
    assert all(r["accuracy"] >= r["accuracy_before_retraining"] for r in pruning)
    quantized = quantization_sweep((2, 4), retrain_epochs=1, verbose=False)
    assert [r["bits"] for r in quantized] == [2, 4]
    for r in quantized:
        assert r["weights"] == r["bits"] * 38_160 and r["codebook"] == 4 * 32 * 2 ** r["bits"]
        assert r["sparse_index"] == 0 and r["sparsity"] == 0
    assert quantized[0]["ratio"] > quantized[1]["ratio"]
    assert "2-bit k-means" in format_table(quantized)
