"""Tests of qlib.huffman: optimal code lengths, canonical codewords, bit packing, decoding.

Oracles: a Huffman tree built here with heapq and Python lists (an independent construction),
Shannon's entropy bound, the Kraft sum in exact fractions, the canonical code example of
RFC 1951 (DEFLATE), codewords concatenated as strings of '0' and '1', and the lecture's example.
"""
from __future__ import annotations

import heapq
import itertools
from fractions import Fraction

import numpy as np
import pytest

from qlib._reference import ReferenceUnavailable, blocked
from qlib.huffman import (
    MAX_CODE_LENGTH,
    canonical_code,
    huffman_code_lengths,
    huffman_decode,
    huffman_encode,
)


def heapq_huffman_lengths(counts):
    """Code lengths from a Huffman tree of nested lists: each merge makes every leaf below one bit longer."""
    tie = itertools.count()
    heap = [(c, next(tie), [s]) for s, c in enumerate(counts) if c > 0]
    heapq.heapify(heap)
    lengths = [0] * len(counts)
    if len(heap) == 1:
        lengths[heap[0][2][0]] = 1
        return lengths
    while len(heap) > 1:
        c1, _, leaves1 = heapq.heappop(heap)
        c2, _, leaves2 = heapq.heappop(heap)
        for s in leaves1 + leaves2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, next(tie), leaves1 + leaves2))
    return lengths


def random_counts(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    counts = rng.geometric(rng.uniform(0.01, 0.5), size=n) * rng.integers(0, 2, size=n)
    counts[rng.integers(0, n, size=2)] += 1  # at least one used symbol
    return counts


def bitstring(symbols, lengths, codes) -> str:
    return "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in symbols)


def pack(bits: str) -> np.ndarray:
    bits += "0" * (-len(bits) % 8)
    return np.array([int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)], dtype=np.uint8)


# --- code lengths --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_total_bits_equal_an_independent_huffman_code(seed):
    counts = random_counts(seed)
    lengths = huffman_code_lengths(counts)
    assert lengths.dtype == np.int64 and lengths.shape == counts.shape
    assert int((counts * lengths).sum()) == int((counts * np.array(heapq_huffman_lengths(counts))).sum())
    assert np.array_equal(lengths == 0, counts == 0)


@pytest.mark.parametrize("seed", range(40))
def test_entropy_bound_and_kraft_equality(seed):
    counts = random_counts(seed)
    lengths = huffman_code_lengths(counts)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    average = float((counts * lengths).sum() / counts.sum())
    assert entropy - 1e-12 <= average < entropy + 1
    if (counts > 0).sum() >= 2:
        assert sum(Fraction(1, 2 ** int(l)) for l in lengths if l > 0) == 1


def test_small_cases_and_the_stated_tie_rule():
    assert huffman_code_lengths([5]).tolist() == [1]            # a lone symbol still takes one bit
    assert huffman_code_lengths([0, 7, 0]).tolist() == [0, 1, 0]
    assert huffman_code_lengths([3, 9]).tolist() == [1, 1]
    assert huffman_code_lengths([2, 1, 1]).tolist() == [1, 2, 2]
    # ties: leaves before merged nodes, leaves in symbol order -> a, b merge first, c is left shortest
    assert huffman_code_lengths([1, 1, 1]).tolist() == [2, 2, 1]
    assert huffman_code_lengths([1, 1, 1, 1]).tolist() == [2, 2, 2, 2]
    assert huffman_code_lengths([1, 1, 2]).tolist() == [2, 2, 1]
    # the merged a+b (count 2) waits behind the leaves c, d (count 2): c+d, then (a+b)+(c+d)
    assert huffman_code_lengths([1, 1, 2, 2]).tolist() == [2, 2, 2, 2]
    # Fibonacci counts give the deepest tree: lengths 1, 2, ..., n-1, n-1
    fib = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
    assert sorted(huffman_code_lengths(fib).tolist()) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 9]


def test_lecture_example_a_b_c():
    """Lecture: a, b, c once each. ASCII takes 24 bits, the lecture's prefix code 01/10/111 takes 7."""
    lengths = huffman_code_lengths([1, 1, 1])
    codes = canonical_code(lengths)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths)]
    assert words == ["10", "11", "0"]
    packed, n_bits = huffman_encode([0, 1, 2], lengths)
    assert n_bits == 5 < 7 < 24
    assert packed.tolist() == [0b10110000]
    assert huffman_decode(packed, n_bits, lengths, 3).tolist() == [0, 1, 2]


def test_code_lengths_refuse_bad_counts():
    with pytest.raises(ValueError, match="non-negative"):
        huffman_code_lengths([3, -1])
    with pytest.raises(TypeError, match="integers"):
        huffman_code_lengths([0.5, 1.0])
    with pytest.raises(TypeError, match="integers"):
        huffman_code_lengths(np.array([True, False]))
    with pytest.raises(ValueError, match="1-D"):
        huffman_code_lengths([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="empty"):
        huffman_code_lengths([])
    with pytest.raises(ValueError, match="every count is 0"):
        huffman_code_lengths([0, 0])


# --- canonical codes -------------------------------------------------------------------------

def test_canonical_code_rfc1951_example():
    """RFC 1951 section 3.2.2: lengths (3, 3, 3, 3, 3, 2, 4, 4) for A..H."""
    codes = canonical_code([3, 3, 3, 3, 3, 2, 4, 4])
    assert [format(int(c), f"0{l}b") for c, l in zip(codes, [3, 3, 3, 3, 3, 2, 4, 4])] == [
        "010", "011", "100", "101", "110", "00", "1110", "1111"]
    assert canonical_code([2, 1, 3, 3]).tolist() == [2, 0, 6, 7]
    assert canonical_code([0, 2, 0, 1, 2]).tolist() == [0, 2, 0, 0, 3]


@pytest.mark.parametrize("seed", range(20))
def test_canonical_code_is_prefix_free_and_ordered(seed):
    lengths = huffman_code_lengths(random_counts(seed))
    codes = canonical_code(lengths)
    words = {s: format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}
    for a, b in itertools.permutations(words.values(), 2):
        assert not b.startswith(a), (a, b)
    # canonical: in order of (length, symbol) the codewords, left-aligned, increase
    ordered = sorted(words, key=lambda s: (lengths[s], s))
    aligned = [int(words[s].ljust(int(lengths.max()), "0"), 2) for s in ordered]
    assert aligned == sorted(aligned) and len(set(aligned)) == len(aligned)
    assert int(words[ordered[0]], 2) == 0


def test_canonical_code_refuses_impossible_lengths():
    with pytest.raises(ValueError, match="Kraft"):
        canonical_code([1, 1, 1])
    with pytest.raises(ValueError, match="every length is 0"):
        canonical_code([0, 0])
    with pytest.raises(ValueError, match=f"longer than {MAX_CODE_LENGTH}"):
        canonical_code([1, MAX_CODE_LENGTH + 1])
    canonical_code([1, 2])  # incomplete (Kraft sum 3/4) is allowed


# --- encode and decode -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(20))
def test_encode_is_the_concatenated_codewords(seed):
    counts = random_counts(seed)
    lengths = huffman_code_lengths(counts)
    rng = np.random.default_rng(seed)
    symbols = rng.choice(len(counts), size=int(rng.integers(1, 500)), p=counts / counts.sum())
    packed, n_bits = huffman_encode(symbols, lengths)
    expected = bitstring(symbols, lengths, canonical_code(lengths))
    assert n_bits == len(expected) == int(lengths[symbols].sum())
    assert packed.dtype == np.uint8 and np.array_equal(packed, pack(expected))
    assert np.array_equal(huffman_decode(packed, n_bits, lengths, len(symbols)), symbols)


def test_round_trip_a_million_skewed_symbols():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(32, 0.3))
    symbols = rng.choice(32, size=10**6, p=p)
    counts = np.bincount(symbols, minlength=32)
    lengths = huffman_code_lengths(counts)
    packed, n_bits = huffman_encode(symbols, lengths)
    assert n_bits == int((counts * lengths).sum())
    assert len(packed) == (n_bits + 7) // 8
    decoded = huffman_decode(packed, n_bits, lengths, len(symbols))
    assert decoded.dtype == np.int64 and np.array_equal(decoded, symbols)


def test_round_trip_long_codewords_and_a_single_symbol():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman_code_lengths(fib)
    assert lengths.max() == 39
    symbols = np.repeat(np.arange(40), 3)[::-1].copy()
    packed, n_bits = huffman_encode(symbols, lengths)
    assert np.array_equal(huffman_decode(packed, n_bits, lengths, len(symbols)), symbols)
    lone = huffman_code_lengths([0, 0, 9])
    packed, n_bits = huffman_encode([2] * 9, lone)
    assert n_bits == 9 and huffman_decode(packed, n_bits, lone, 9).tolist() == [2] * 9
    assert huffman_decode(np.zeros(0, dtype=np.uint8), 0, lone, 0).tolist() == []


def test_decode_refuses_bits_that_do_not_fit():
    lengths = np.array([1, 2, 2])
    packed, n_bits = huffman_encode([0, 1, 2, 0], lengths)   # 0 10 11 0
    with pytest.raises(ValueError, match="do not decode"):
        huffman_decode(packed, n_bits, lengths, 3)           # 3 symbols end at bit 5, not 6
    with pytest.raises(ValueError, match="do not decode"):
        huffman_decode(packed, n_bits - 1, lengths, 4)
    with pytest.raises(ValueError, match="packed holds only"):
        huffman_decode(packed, 9, lengths, 4)
    incomplete = np.array([1, 2, 0])                          # codewords 0 and 10; 11 is no codeword
    with pytest.raises(ValueError, match="not a sequence of codewords"):
        huffman_decode(np.array([0b11000000], dtype=np.uint8), 2, incomplete, 1)
    with pytest.raises(TypeError, match="uint8"):
        huffman_decode(packed.astype(np.int64), n_bits, lengths, 4)
    with pytest.raises(ValueError, match="n_symbols"):
        huffman_decode(packed, n_bits, lengths, -1)


def test_encode_refuses_symbols_without_codewords():
    with pytest.raises(ValueError, match="no codeword"):
        huffman_encode([0, 1], [1, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        huffman_encode([3], [1, 2, 2])
    with pytest.raises(TypeError, match="integers"):
        huffman_encode([0.0], [1, 2, 2])


def test_blocking_one_reference_leaves_the_others_working():
    lengths = huffman_code_lengths([5, 1, 1])
    with blocked({"huffman_code_lengths", "canonical_code"}):
        for name, call in (("huffman_code_lengths", lambda: huffman_code_lengths([1, 2])),
                           ("canonical_code", lambda: canonical_code([1, 1]))):
            with pytest.raises(ReferenceUnavailable, match=name):
                call()
        packed, n_bits = huffman_encode([0, 1, 2, 0], lengths)
        assert huffman_decode(packed, n_bits, lengths, 4).tolist() == [0, 1, 2, 0]
    with blocked({"huffman_encode"}):
        with pytest.raises(ReferenceUnavailable):
            huffman_encode([0], lengths)
        assert huffman_decode(packed, n_bits, lengths, 4).tolist() == [0, 1, 2, 0]
