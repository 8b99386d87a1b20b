"""Lab 2 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab02_kmeans_huffman"
POINTS = {"test_kmeans_quantize": 5, "test_codebook_gradient": 2, "test_huffman_code_lengths": 4,
          "test_huffman_coding": 4, "test_layer_storage_bits": 3, "test_index_bits_for_gap": 2,
          "test_why_huffman_helps": 2, "test_design": 5, "test_what_retraining_changes": 2}
WRITTEN = {"design_reasoning": 3}


def design(conv1, conv2, fc1, fc2):
    """The source of an answer to Task 6: (sparsity, bits, index_bits) per layer."""
    layers = {"conv1": conv1, "conv2": conv2, "fc1": fc1, "fc2": fc2}
    return "design = " + repr({name: {"sparsity": s, "bits": b, "index_bits": i}
                                for name, (s, b, i) in layers.items()}) + "\n"


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
    "bits_packed_lsb_first": Wrong("huffman_coding", "test_huffman_coding", "first bit in the byte's top bit", '''
def huffman_encode(symbols, lengths):
    codes = canonical_code(lengths)
    bits = []
    for s in np.asarray(symbols).reshape(-1):
        bits.extend((int(codes[s]) >> (int(lengths[s]) - 1 - i)) & 1 for i in range(int(lengths[s])))
    return np.packbits(np.array(bits, dtype=np.uint8), bitorder="little"), len(bits)
'''),
    "no_fillers": Wrong("layer_storage_bits", "test_layer_storage_bits", "filler", '''
def layer_storage_bits(n_weights, bits, n_clusters=None, mask=None, index_bits=None):
    entries = n_weights if mask is None else int(np.asarray(mask).sum())
    index = 0 if mask is None else index_bits * entries
    sizes = {"weights": bits * entries, "codebook": 32 * (n_clusters or 0), "sparse_index": index}
    sizes["total"] = sum(sizes.values())
    return sizes
'''),
    "paper_index_convention": Wrong("index_bits_for_gap", "test_index_bits_for_gap", "reserves one of them",
                                    "index_bits_for_gap = 5\n"),
    "gap_not_bits": Wrong("index_bits_for_gap", "test_index_bits_for_gap", "width of the field",
                          "index_bits_for_gap = 32\n"),
    "huffman_merges_centroids": Wrong("why_huffman_helps", "test_why_huffman_helps", "lossless",
                                      'why_huffman_helps = "a"\n'),
    "retraining_moves_indices": Wrong("what_retraining_changes", "test_what_retraining_changes",
                                      "indices are fixed", 'what_retraining_changes = "a"\n'),
    "design_over_cap": Wrong("design", "test_design", "over the cap of 5,000 bytes",
                             design((0.0, 4, None), (0.5, 3, 2), (0.95, 2, 5), (0.0, 3, None))),
    "design_dense_with_index": Wrong("design", "test_design", "set its index_bits to None",
                                     design((0.0, 4, 3), (0.5, 3, 2), (0.95, 2, 6), (0.0, 3, None))),
    "design_pruned_without_index": Wrong("design", "test_design", "it needs index_bits",
                                         design((0.0, 4, None), (0.5, 3, None), (0.95, 2, 6), (0.0, 3, None))),
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
# a bit-string encoder.
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
''',
}


# The answers to the questions and Task 6 written otherwise: other types, another design as good.
OTHER_SPELLINGS = {
    "index_bits_for_gap": "import numpy\nindex_bits_for_gap = numpy.float64(6.0)\n",
    "why_huffman_helps": 'why_huffman_helps = " (B) "\n',
    "what_retraining_changes": 'what_retraining_changes = "B."\n',
    # conv1 at 3 bits, sparsities written as ints and floats: 4,926 bytes, 98.89% of the test digits
    "design": "design = dict(conv1=dict(sparsity=0, bits=3, index_bits=None),\n"
              "              conv2=dict(sparsity=0.50, bits=3, index_bits=2),\n"
              "              fc1=dict(bits=2, sparsity=0.95, index_bits=6),\n"
              "              fc2=dict(index_bits=None, sparsity=0, bits=3))\n",
}

# --- designs that fall short of the target: the tier they reach ---------------------------------------

PARTIAL = {
    # fc1 pruned to 0.97 and conv2 to 0.7: 4,174 bytes, 94.72%
    "fc1_pruned_too_far": Partial({"design": design((0.0, 4, None), (0.7, 3, 3), (0.97, 4, 7), (0.0, 3, None))},
                                  "test_design", 2.5),
    # the chapter's plan, made for a pipeline that retrains: 4,158 bytes, 74.17%
    "chapter_plan_without_retraining": Partial({"design": design((0.3, 4, 3), (0.8, 4, 4), (0.97, 4, 6),
                                                                 (0.6, 4, 4))}, "test_design", 1.25),
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = design_cheats("design", "test_design", {"conv1": {"sparsity": 0.0, "bits": 4, "index_bits": None},
                                                "conv2": {"sparsity": 0.5, "bits": 3, "index_bits": 2},
                                                "fc1": {"sparsity": 0.95, "bits": 2, "index_bits": 6},
                                                "fc2": {"sparsity": 0.0, "bits": 3, "index_bits": None}},
                      "must be one of None, 1, 2")


class TestLab02Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 9, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**DIFFERENT, **OTHER_SPELLINGS}, "ignores_max_iter"
    CHOICE = Choice("why_huffman_helps", "test_why_huffman_helps", "why_huffman_helps")
    PARTIAL = PARTIAL
    CHEAT_TARGET = Target("codebook_gradient", "test_codebook_gradient", "qlib.kmeans.codebook_gradient")
    CHEATS = CHEATS
    ANSWER_LINES = ("codebook[k] = members.mean()", "fillers = int(((gaps - 1) // (2**index_bits - 1)).sum())",
                    "heapq.heappush(heap, (c1 + c2, tie_break, group1 + group2))",
                    'what_retraining_changes = "b"', "index_bits_for_gap = 6",
                    "**Rubric (3 points).** 1 point: names `fc1` as the layer pruned most")
    CELL_SECONDS = 10  # the slowest cell of a correct submission (retraining the chapter's plan) takes about 1.2 s
