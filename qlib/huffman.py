"""Huffman coding of integer symbols: frequent symbols get short codewords, rare ones long.

Chapter: Deep Compression (chapter 2), section "Huffman coding". Deep Compression (Han et al.,
arXiv:1510.00149, section 4) Huffman-codes the cluster indices and the sparse-index gaps of
every layer, saving a further 20-30% of storage.

Symbols are the integers 0 .. n-1 (cluster indices, index gaps); ``counts[s]`` is how often s
occurs. The code is described by its lengths alone and made canonical, so a decoder needs only
the lengths (that is what a stored Huffman table holds):

* ``huffman_code_lengths``: optimal (Huffman) lengths. Average length L satisfies
  H <= L < H + 1, with H the entropy of the counts, and sum 2**-length = 1 (Kraft equality).
* ``canonical_code``: codewords assigned in order of (length, symbol), each the previous plus 1,
  shifted left when the length grows (as in DEFLATE, RFC 1951, section 3.2.2).
* ``huffman_encode`` / ``huffman_decode``: MSB-first bit packing, vectorised with numpy.

A codeword is held as an integer: symbol s's codeword is the binary number of ``lengths[s]``
bits, first bit most significant, e.g. codeword "110" is 6 (leading zeros count: "01" is 1 of
length 2). Codes longer than ``MAX_CODE_LENGTH`` bits are refused.
"""
from __future__ import annotations

import heapq
import numbers

import numpy as np

from qlib._reference import reference

#: Longest codeword supported: a 57-bit codeword starting anywhere in a byte fits in 64 bits.
MAX_CODE_LENGTH = 57


def _as_int_array(values, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array of non-negative integers, or a clear error."""
    a = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.min() < 0:
        raise ValueError(f"{name} must be non-negative, got {a.min()}")
    return a.astype(np.int64)


@reference
def huffman_code_lengths(counts) -> np.ndarray:
    """Optimal prefix-code length of every symbol 0 .. n-1 for the given counts (int64 array).

    Huffman's algorithm: repeatedly merge the two nodes of smallest count; a symbol's length is
    its depth in the final tree. Ties are broken deterministically: among equal counts a leaf
    goes before a merged node, leaves in symbol order, merged nodes in order of creation.
    Symbols with count 0 get length 0 (no codeword); if only one symbol occurs it gets length 1.
    """
    counts = _as_int_array(counts, "counts")
    if not counts.any():
        raise ValueError("every count is 0: there is nothing to code")
    n = len(counts)
    used = np.flatnonzero(counts)
    lengths = np.zeros(n, dtype=np.int64)
    if len(used) == 1:
        lengths[used] = 1  # a lone symbol still needs one bit per occurrence
        return lengths
    # heap of (count, order, node): leaves have order = symbol, merged nodes order = n + t
    heap = [(int(counts[s]), int(s), int(s)) for s in used]
    heapq.heapify(heap)
    parent = {}
    t = 0
    while len(heap) > 1:
        c1, _, a = heapq.heappop(heap)
        c2, _, b = heapq.heappop(heap)
        node = n + t
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node, node))
        t += 1
    # every node's parent was created after it, so walk from the root down by decreasing id
    depth = {heap[0][2]: 0}
    for node in sorted(parent, reverse=True):
        depth[node] = depth[parent[node]] + 1
    lengths[used] = [depth[s] for s in used]
    return lengths


def _check_lengths(lengths) -> np.ndarray:
    lengths = _as_int_array(lengths, "lengths")
    if not lengths.any():
        raise ValueError("every length is 0: the code has no codewords")
    if lengths.max() > MAX_CODE_LENGTH:
        raise ValueError(f"codewords longer than {MAX_CODE_LENGTH} bits are not supported, got {lengths.max()}")
    longest = int(lengths.max())
    used = lengths[lengths > 0]
    if sum(1 << (longest - int(l)) for l in used) > 1 << longest:  # exact Kraft sum
        raise ValueError("the lengths break the Kraft inequality sum 2**-length <= 1: no prefix code has them")
    return lengths


@reference
def canonical_code(lengths) -> np.ndarray:
    """Canonical codewords for the given lengths (int64 array; 0 where the length is 0).

    Symbols are taken in order of (length, symbol); the first codeword is all zeros, each next
    one is the previous plus 1, shifted left by the growth in length:

        lengths [2, 1, 3, 3] -> symbol 1: "0", 0: "10", 2: "110", 3: "111" -> [2, 0, 6, 7]

    ``lengths`` must satisfy the Kraft inequality; shorter codewords are numerically smaller
    once left-aligned, which is what lets the decoder find a codeword by binary search.
    """
    lengths = _check_lengths(lengths)
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for s in np.lexsort((np.arange(len(lengths)), lengths)):  # by length, then symbol
        length = int(lengths[s])
        if length == 0:
            continue
        code <<= length - previous
        codes[s] = code
        code, previous = code + 1, length
    return codes


def _check_symbols(symbols, lengths: np.ndarray) -> np.ndarray:
    symbols = np.asarray(symbols.detach().cpu() if hasattr(symbols, "detach") else symbols)
    if symbols.size == 0:
        return np.zeros(0, dtype=np.int64)
    if symbols.dtype == np.bool_ or not np.issubdtype(symbols.dtype, np.integer):
        raise TypeError(f"symbols must hold integers, got dtype {symbols.dtype}")
    symbols = symbols.reshape(-1).astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= len(lengths)):
        raise ValueError(f"symbols must lie in [0, {len(lengths)}), got values in [{symbols.min()}, {symbols.max()}]")
    if symbols.size and (lengths[symbols] == 0).any():
        missing = np.unique(symbols[lengths[symbols] == 0])
        raise ValueError(f"symbols {missing[:10].tolist()} have no codeword (length 0)")
    return symbols


@reference
def huffman_encode(symbols, lengths) -> tuple[np.ndarray, int]:
    """Concatenate the canonical codewords of ``symbols``: ``(packed, n_bits)``.

    Bits are written first bit of the first codeword first and packed MSB-first into bytes
    (``np.packbits`` order); the last byte is padded with zeros. ``n_bits`` = sum of the
    lengths of the symbols. ``symbols`` may have any shape; it is read in flat (row-major) order.
    """
    lengths = _check_lengths(lengths)
    symbols = _check_symbols(symbols, lengths)
    codes = canonical_code.unguarded(lengths)
    size, code = lengths[symbols], codes[symbols]
    ends = np.cumsum(size)
    n_bits = int(ends[-1]) if len(ends) else 0
    starts = ends - size
    bits = np.zeros(n_bits, dtype=np.uint8)
    for b in range(int(size.max()) if len(size) else 0):  # b-th bit of every codeword long enough
        has = size > b
        bits[starts[has] + b] = (code[has] >> (size[has] - 1 - b)) & 1
    return np.packbits(bits), n_bits


@reference
def huffman_decode(packed, n_bits: int, lengths, n_symbols: int) -> np.ndarray:
    """The ``n_symbols`` symbols (int64 array) whose canonical codewords fill the first ``n_bits`` of ``packed``.

    Canonical codewords, left-aligned to the longest length L, increase in canonical order (by
    length, then symbol); so the L bits starting at a codeword's first bit are at least its
    aligned value and below the next one's: one binary search decodes it. The L-bit window at
    every bit position is computed at once with numpy; only the walk from one codeword to the
    next is a Python loop (one step per symbol). Raises ``ValueError`` if the bits do not decode to exactly
    ``n_symbols`` symbols in exactly ``n_bits`` bits.
    """
    lengths = _check_lengths(lengths)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise TypeError(f"packed must be a 1-D uint8 array, got dtype {packed.dtype} and shape {packed.shape}")
    for name, v in (("n_bits", n_bits), ("n_symbols", n_symbols)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if n_bits > 8 * len(packed):
        raise ValueError(f"n_bits = {n_bits} but packed holds only {8 * len(packed)} bits")
    if n_bits == 0 or n_symbols == 0:
        if n_bits or n_symbols:
            raise ValueError(f"{n_bits} bits cannot hold {n_symbols} symbols")
        return np.zeros(0, dtype=np.int64)
    longest = int(lengths.max())
    # the 64 bits starting at every byte, then the L-bit window starting at every bit
    padded = np.concatenate([packed[: (n_bits + 7) // 8], np.zeros(8, dtype=np.uint8)])
    words = np.zeros((n_bits + 7) // 8, dtype=np.uint64)
    for k in range(8):
        words = (words << np.uint64(8)) | padded[k: k + len(words)].astype(np.uint64)
    pos = np.arange(n_bits, dtype=np.uint64)
    windows = ((words[pos >> np.uint64(3)] << (pos & np.uint64(7))) >> np.uint64(64 - longest)).astype(np.int64)
    # the used symbols in canonical order and their left-aligned codewords (increasing)
    codes = canonical_code.unguarded(lengths)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    order = order[lengths[order] > 0]
    aligned = codes[order] << (longest - lengths[order])
    symbol_at = order[np.searchsorted(aligned, windows, side="right") - 1]  # -1 only if invalid, checked below
    # where the next codeword starts if one starts at each bit; any position past the end leads to `beyond`
    beyond = n_bits + longest
    next_start = (np.arange(n_bits) + lengths[symbol_at]).tolist() + [beyond] * (longest + 1)
    starts = [0] * n_symbols
    p = 0
    for i in range(n_symbols):
        starts[i] = p
        p = next_start[p]
    if p != n_bits:
        raise ValueError(f"the bits do not decode to exactly {n_symbols} symbols in {n_bits} bits")
    starts = np.asarray(starts, dtype=np.int64)
    symbols = symbol_at[starts]
    # a window below the first codeword, or not starting with its symbol's codeword, is corrupt
    size = lengths[symbols]
    if (windows[starts] >> (longest - size) != codes[symbols]).any():
        raise ValueError("the bits are not a sequence of codewords of this code")
    return symbols
