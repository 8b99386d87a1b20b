"""Lab 2 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import LabGradingTests, Target, Wrong

LAB = "lab02_kmeans_huffman"
POINTS = {"test_kmeans_quantize": 5, "test_codebook_gradient": 2, "test_huffman_code_lengths": 4,
          "test_canonical_code": 2, "test_huffman_coding": 4, "test_layer_storage_bits": 3}

WRONG = {
    "empty_cluster_becomes_nan": Wrong("kmeans_quantize", "test_kmeans_quantize", "keep its previous centroid", '''
def kmeans_quantize(x, centroids, max_iter=100):
    values = x.reshape(-1).double()
    codebook = centroids.clone().double()
    indices = torch.argmin((values[:, None] - codebook[None, :]).abs(), dim=1)
    for _ in range(max_iter):
        codebook = torch.stack([values[indices == k].mean() for k in range(len(codebook))])
        new = torch.argmin((values[:, None] - codebook[None, :]).abs(), dim=1)
        if torch.equal(new, indices):
            break
        indices = new
    return codebook.float(), indices.reshape(x.shape)
'''),
    "gradient_averaged": Wrong("codebook_gradient", "test_codebook_gradient", "do not average", '''
def codebook_gradient(grad, indices, n_clusters):
    sums = torch.zeros(n_clusters).index_add_(0, indices.reshape(-1), grad.reshape(-1).float())
    counts = torch.bincount(indices.reshape(-1), minlength=n_clusters).clamp(min=1)
    return sums / counts
'''),
    "fixed_length_code": Wrong("huffman_code_lengths", "test_huffman_code_lengths", "not optimal", '''
def huffman_code_lengths(counts):
    used = np.asarray(counts) > 0
    return np.where(used, max(1, math.ceil(math.log2(used.sum()))), 0)
'''),
    "canonical_without_shift": Wrong("canonical_code", "test_canonical_code",
                                     "shifted left by the increase in length", '''
def canonical_code(lengths):
    codes = [0] * len(lengths)
    code = 0
    for s in sorted(range(len(lengths)), key=lambda s: (lengths[s], s)):
        if lengths[s]:
            codes[s] = code
            code += 1
    return np.array(codes)
'''),
    "bits_packed_lsb_first": Wrong("huffman_coding", "test_huffman_coding", "first bit in the byte's top bit", '''
def huffman_encode(symbols, lengths):
    codes = canonical_code(lengths)
    bits = []
    for s in np.asarray(symbols).reshape(-1):
        bits.extend((int(codes[s]) >> (int(lengths[s]) - 1 - i)) & 1 for i in range(int(lengths[s])))
    return np.packbits(np.array(bits, dtype=np.uint8), bitorder="little"), len(bits)


def huffman_decode(packed, n_bits, lengths, n_symbols):
    codes = canonical_code(lengths)
    table = {(int(lengths[s]), int(codes[s])): s for s in range(len(lengths)) if lengths[s] > 0}
    out, code, length = [], 0, 0
    for bit in np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[:n_bits]:
        code, length = (code << 1) | int(bit), length + 1
        if (length, code) in table:
            out.append(table[(length, code)])
            code, length = 0, 0
    return np.array(out[:n_symbols])
'''),
    "no_fillers": Wrong("layer_storage_bits", "test_layer_storage_bits", "filler", '''
def layer_storage_bits(n_weights, bits, n_clusters=None, mask=None, index_bits=None):
    entries = n_weights if mask is None else int(np.asarray(mask).sum())
    index = 0 if mask is None else index_bits * entries
    sizes = {"weights": bits * entries, "codebook": 32 * (n_clusters or 0), "sparse_index": index}
    sizes["total"] = sum(sizes.values())
    return sizes
'''),
    "ignores_max_iter": Wrong("kmeans_quantize", "test_kmeans_quantize",
                              "A hidden check failed for kmeans_quantize", '''
def kmeans_quantize(x, centroids, max_iter=100):
    values = x.reshape(-1).double()
    codebook = centroids.clone().double()
    indices = torch.argmin((values[:, None] - codebook[None, :]).abs(), dim=1)
    while True:                                   # until nothing moves, whatever max_iter says
        for k in range(len(codebook)):
            if (indices == k).any():
                codebook[k] = values[indices == k].mean()
        new = torch.argmin((values[:, None] - codebook[None, :]).abs(), dim=1)
        if torch.equal(new, indices):
            break
        indices = new
    return codebook.float(), indices.reshape(x.shape)
'''),
}

# Correct, written differently: numpy K-means, a sorted-list Huffman with another tie-break,
# a bit-string encoder and a prefix-matching decoder.
DIFFERENT = {
    "kmeans_quantize": '''
def kmeans_quantize(x, centroids, max_iter=100):
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    c = np.asarray(centroids, dtype=np.float64).copy()
    idx = np.abs(v[:, None] - c[None, :]).argmin(axis=1)
    for _ in range(max_iter):
        sums = np.bincount(idx, weights=v, minlength=len(c))
        n = np.bincount(idx, minlength=len(c))
        c = np.where(n > 0, sums / np.maximum(n, 1), c)
        new = np.abs(v[:, None] - c[None, :]).argmin(axis=1)
        if (new == idx).all():
            break
        idx = new
    return c.astype(np.float32), idx.reshape(tuple(x.shape))
''',
    "huffman_code_lengths": '''
def huffman_code_lengths(counts):
    nodes = [(c, [s]) for s, c in enumerate(counts) if c > 0]
    lengths = np.zeros(len(counts), dtype=int)
    if len(nodes) == 1:
        lengths[nodes[0][1]] = 1
    while len(nodes) > 1:
        nodes.sort(key=lambda node: (node[0], -len(node[1])))   # another tie-break: bigger groups first
        (c1, a), (c2, b) = nodes[0], nodes[1]
        lengths[a + b] += 1
        nodes = nodes[2:] + [(c1 + c2, a + b)]
    return lengths
''',
    "huffman_coding": '''
def huffman_encode(symbols, lengths):
    codes = canonical_code(lengths)
    text = "".join(format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.asarray(symbols).reshape(-1))
    padded = text + "0" * (-len(text) % 8)
    return np.array([int(padded[i:i + 8], 2) for i in range(0, len(padded), 8)], dtype=np.uint8), len(text)


def huffman_decode(packed, n_bits, lengths, n_symbols):
    codes = canonical_code(lengths)
    words = {format(int(codes[s]), f"0{int(lengths[s])}b"): s for s in range(len(lengths)) if lengths[s]}
    text = "".join(format(int(b), "08b") for b in packed)[:n_bits]
    out, start = [], 0
    for end in range(1, len(text) + 1):
        if text[start:end] in words:
            out.append(words[text[start:end]])
            start = end
    return np.array(out[:n_symbols])
''',
}


class TestLab02Grading(LabGradingTests):
    LAB, POINTS, N_STUBS = LAB, POINTS, 7
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, DIFFERENT, "ignores_max_iter"
    CHEAT_TARGET = Target("codebook_gradient", "test_codebook_gradient", "qlib.kmeans.codebook_gradient")
    ANSWER_LINES = ("codebook[k] = members.mean()", "fillers = int(((gaps - 1) // (2**index_bits - 1)).sum())",
                    "heapq.heappush(heap, (c1 + c2, tie_break, group1 + group2))")
    CELL_SECONDS = 10  # the slowest cell of a correct submission takes under 3 s
