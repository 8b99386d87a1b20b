"""Checks for lab02_kmeans_huffman, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab03`: visible cases explained in full;
hidden cases (``seed``) name the kind of input and the likely mistake, never
the input. Where several answers are equally right (Huffman codes with tied
counts), the checks test the property that defines a right answer (optimal
total length, Kraft sum), not one particular tie-break.

The questions (a number, two letters) and Task 6 (a design under a storage cap) are graded with
:mod:`qlib.grading.answers`. Task 6's design is rebuilt here with qlib's references (magnitude
pruning, K-means on the kept weights, the storage count), without retraining, and its test accuracy
earns points in tiers.
"""
from __future__ import annotations

import numpy as np
import torch

from qlib import huffman as ref_huffman
from qlib import kmeans as ref_kmeans
from qlib import storage as ref_storage
from qlib.grading.answers import (Field, Limit, Tier, check_choice, check_number,
                                  config_of, measured_design, measured_once)
from qlib.grading.checks_common import hidden_case, passed, task_runner, with_hint
from qlib.grading.harness import as_array, as_integers, as_pair, fail, fmt, time_limit  # noqa: F401

REFERENCES = (
    "kmeans_quantize", "codebook_gradient", "huffman_code_lengths", "huffman_encode",
    "layer_storage_bits", "relative_index_entries", "linear_init",
)
_run = task_runner(REFERENCES)

LECTURE_W = torch.tensor([[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12],
                          [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]])


# --- Task 1: K-means ---------------------------------------------------------------------------

def _kmeans_cases(seed):
    if seed is None:
        return [("the lecture's 4x4 weights", LECTURE_W, torch.linspace(-1.08, 2.12, 4), 100)]
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(12):
        n, k = [(500, 4), (1000, 16), (64, 8), (300, 2)][i % 4]
        x = torch.randn(n, generator=gen) * (1 + i)
        if i % 3 == 1:
            x = torch.cat([x, torch.randn(5, generator=gen) * 20])  # outliers: some clusters end up empty
        init = torch.linspace(float(x.min()), float(x.max()), k)
        if i % 4 == 2:
            init = init + 0.5 * (init[1] - init[0])  # the top centroid starts above every value: empty at first
        cases.append(("random weights" + (" with outliers" if i % 3 == 1 else ""), x, init, [100, 1, 0, 5][i % 4]))
    return cases


def check_kmeans_quantize(kmeans_quantize, seed=None):
    """Task 1: Lloyd's K-means from given centroids; empty clusters keep their centroid."""
    task = "kmeans_quantize"
    cases = _kmeans_cases(seed)
    for kind, x, init, max_iter in cases:
        c_ref, idx_ref = ref_kmeans.kmeans_quantize(x, init, max_iter)
        got = as_pair(_run(task, kmeans_quantize, x.clone(), init.clone(), max_iter), task, task)
        codebook = as_array(got[0], "codebook", task, nan_hint="a cluster with no values must keep its previous "
                            "centroid, not become NaN (the mean of nothing is 0 / 0).").reshape(-1)
        indices = as_integers(got[1], "indices", task)
        if codebook.shape != (len(init),):
            fail(f"{task}: the codebook should have one entry per initial centroid ({len(init)}), "
                 f"got shape {codebook.shape}.")
        if indices.shape != tuple(x.shape):
            fail(f"{task}: indices should have the shape of x {tuple(x.shape)}, got {indices.shape}.")
        c_ref, idx_ref = c_ref.numpy(), idx_ref.numpy()
        where = f"{kind}, k = {len(init)}, max_iter = {max_iter}"
        if not np.allclose(codebook, c_ref, rtol=1e-4, atol=1e-5 * float(np.abs(c_ref).max())):
            if max_iter == 0 and not np.allclose(codebook, init.numpy()):
                hint = "max_iter = 0 means no update at all: return the initial centroids and their assignment."
            elif np.allclose(np.sort(codebook), np.sort(c_ref), rtol=1e-4):
                hint = "keep the codebook in the order of the initial centroids (do not sort it)."
            else:
                hint = ("repeat: assign each value to its nearest centroid, then move every centroid to the mean "
                        "of its values, at most max_iter times (stop early when no assignment changes).")
            fail(with_hint(f"{task} ({where}): expected codebook {fmt(c_ref)}, got {fmt(codebook)}.", hint)
                 if seed is None else hidden_case(f"{task} ({where}): the codebook differs", hint))
        differ = indices != idx_ref
        if differ.mean() > 0.005:
            hint = "indices[i] is the position in the codebook of the centroid nearest to x[i] (ties: the lower one)."
            fail(with_hint(f"{task} ({where}): expected indices\n{fmt(idx_ref)}\ngot\n{fmt(indices)}", hint)
                 if seed is None else hidden_case(f"{task} ({where}): {int(differ.sum())} indices differ", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 2: codebook gradient -----------------------------------------------------------------

def check_codebook_gradient(codebook_gradient, seed=None):
    """Task 2: the summed gradient of each cluster."""
    task = "codebook_gradient"
    gen = torch.Generator().manual_seed(7 if seed is None else seed)
    shapes = [(4, 4)] if seed is None else [(16, 9), (8, 3, 3, 3), (100,), (5, 7)]
    cases = []
    for shape in shapes:
        k = 4 if seed is None else int(torch.randint(2, 17, (1,), generator=gen))
        cases.append((torch.randn(shape, generator=gen), torch.randint(0, k - (k > 2), shape, generator=gen), k))
    for grad, indices, k in cases:
        expected = ref_kmeans.codebook_gradient(grad, indices, k).numpy()
        got = as_array(_run(task, codebook_gradient, grad.clone(), indices.clone(), k), "the gradient", task).reshape(-1)
        if got.shape != (k,):
            fail(f"{task}: should return one value per centroid ({k}), got shape {got.shape}.")
        if np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            continue
        counts = np.bincount(indices.reshape(-1).numpy(), minlength=k)
        if np.allclose(got[counts > 0], expected[counts > 0] / counts[counts > 0], rtol=1e-5, atol=1e-6):
            hint = "sum the gradients of each cluster (Deep Compression sums them), do not average."
        elif np.isnan(got).any():
            hint = "a cluster with no weights gets gradient 0."
        else:
            hint = "gradient of centroid k = sum of grad[i] over the weights i with indices[i] == k."
        fail(with_hint(f"{task}: expected {fmt(expected)}, got {fmt(got)}.", hint)
             if seed is None else hidden_case(task, hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 3: Huffman code lengths ----------------------------------------------------------------

def _count_cases(seed):
    if seed is None:
        return [np.array([5, 1, 1]), np.array([45, 13, 12, 16, 9, 5])]
    gen = np.random.default_rng(seed)
    cases = [np.array([0, 7, 0]), np.array([3, 3, 3, 3]), np.array([1, 1]), np.array([10, 0, 0, 1, 0])]
    for _ in range(40):
        n = int(gen.integers(2, 64))
        counts = np.floor(gen.pareto(1.2, n) * 10).astype(np.int64)
        counts[gen.random(n) < 0.1] = 0
        if (counts > 0).sum() == 0:
            counts[0] = 1
        cases.append(counts)
    return cases


def check_huffman_code_lengths(huffman_code_lengths, seed=None):
    """Task 3: optimal prefix-code lengths (any optimal tie-break earns full marks)."""
    task = "huffman_code_lengths"
    cases = _count_cases(seed)
    for counts in cases:
        expected = ref_huffman.huffman_code_lengths(counts)
        got = as_integers(_run(task, huffman_code_lengths, counts.copy()), "lengths", task).reshape(-1)
        if got.shape != counts.shape:
            fail(f"{task}: should return one length per symbol ({len(counts)}), got shape {got.shape}.")
        used = counts > 0
        problem = None
        if (got[~used] != 0).any():
            problem = "a symbol that never occurs gets length 0 (it needs no codeword)."
        elif (got[used] <= 0).any():
            problem = "every symbol that occurs needs a codeword of length at least 1 (a lone symbol: length 1)."
        elif np.sum(2.0 ** -got[used]) > 1 + 1e-12:
            problem = "these lengths break the Kraft inequality (sum of 2^-length > 1): no prefix code has them."
        elif int(np.sum(counts * got)) != int(np.sum(counts * expected)):
            problem = ("the code is not optimal: repeatedly merge the two least frequent nodes (a heap); "
                       "a symbol's length is its depth in the tree.")
        if problem:
            fail(with_hint(f"{task}({counts.tolist()}): got lengths {got.tolist()}; an optimal code has lengths "
                           f"like {expected.tolist()} ({int(np.sum(counts * expected))} bits in all).", problem)
                 if seed is None else hidden_case(task, problem))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 4: encode (canonical_code and huffman_decode are given) -----------------------------------

def _stream_cases(seed):
    if seed is None:
        return [(np.array([0, 1, 2, 0, 0]), np.array([1, 2, 2]))]
    gen = np.random.default_rng(seed)
    cases = []
    for _ in range(10):
        counts = _count_cases(int(gen.integers(0, 10**6)))[-1]
        lengths = ref_huffman.huffman_code_lengths(counts)
        symbols = gen.choice(len(counts), size=int(gen.integers(1, 3000)), p=counts / counts.sum())
        cases.append((symbols, lengths))
    return cases


def check_huffman_encode(huffman_encode, seed=None):
    """Task 4: pack the canonical codewords MSB-first, 8 to a byte."""
    task = "huffman_encode"
    cases = _stream_cases(seed)
    for symbols, lengths in cases:
        packed_ref, n_ref = ref_huffman.huffman_encode(symbols, lengths)
        got = as_pair(_run(task, huffman_encode, symbols.copy(), lengths.copy()), task, task)
        packed = as_integers(got[0], "packed", task).reshape(-1)
        n_bits = int(as_integers(got[1], "n_bits", task).reshape(()))
        if n_bits == n_ref and np.array_equal(packed, packed_ref):
            continue
        if n_bits != n_ref:
            hint = f"n_bits is the sum of the codeword lengths of the symbols ({n_ref} here)."
        elif len(packed) != len(packed_ref):
            hint = "pack into ceil(n_bits / 8) bytes, padding the last byte with zeros."
        else:
            hint = ("write each codeword's bits from its most significant bit, and pack them "
                    "8 to a byte, first bit in the byte's top bit (np.packbits does this).")
        fail(with_hint(f"{task}(symbols={symbols.tolist()}, lengths={lengths.tolist()}): expected "
                       f"({packed_ref.tolist()}, {n_ref}), got ({packed.tolist()}, {n_bits}).", hint)
             if seed is None else hidden_case(task, hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 5: bit accounting ---------------------------------------------------------------------

def _storage_cases(seed):
    if seed is None:
        mask = np.zeros(16, dtype=bool)
        mask[[1, 4, 15]] = True
        return [dict(n_weights=16, bits=2, n_clusters=4),
                dict(n_weights=16, bits=2, n_clusters=4, mask=mask, index_bits=3)]
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(30):
        n = int(gen.integers(10, 5000))
        bits = int(gen.integers(1, 9))
        case = dict(n_weights=n, bits=bits, n_clusters=int(gen.integers(1, 2**bits + 1)) if i % 3 else None)
        if i % 2:
            case["mask"] = gen.random(n) < gen.uniform(0.02, 0.5)
            case["index_bits"] = int(gen.integers(2, 9))
        cases.append(case)
    return cases


def check_layer_storage_bits(layer_storage_bits, seed=None):
    """Task 5: every component of a compressed layer, in bits."""
    task = "layer_storage_bits"
    cases = _storage_cases(seed)
    for case in cases:
        expected = ref_storage.layer_storage_bits(**case)
        args = [case["n_weights"], case["bits"], case.get("n_clusters"), case.get("mask"), case.get("index_bits")]
        got = _run(task, layer_storage_bits, *args)
        if not isinstance(got, dict):
            fail(f"{task}: should return a dict of sizes in bits, got {type(got).__name__}.")
        for key in ("weights", "codebook", "sparse_index", "total"):
            if key not in got:
                fail(f"{task}: the result has no {key!r} entry.")
            value = int(as_integers(got[key], key, task).reshape(()))
            if value != expected[key]:
                hints = {
                    "weights": "one weight field per stored entry: with a mask, kept weights plus filler entries.",
                    "codebook": "32 bits per centroid (0 without a codebook).",
                    "sparse_index": ("index_bits per entry (kept weights plus fillers); a gap g from the previous "
                                     "kept position (the first from position -1) needs (g - 1) // (2^index_bits - 1) "
                                     "fillers."),
                    "total": "the total is the sum of all the components.",
                }
                desc = {k: (v if not isinstance(v, np.ndarray) else f"mask with {int(v.sum())} of {v.size} kept")
                        for k, v in case.items()}
                fail(with_hint(f"{task}({desc}): {key} should be {expected[key]} bits, got {value}.", hints[key])
                     if seed is None else
                     hidden_case(f"{task} ({'pruned' if 'mask' in case else 'dense'} layer): the {key} entry differs",
                                 hints[key]))
    passed(task, len(cases), hidden=seed is not None)


# --- Questions: reasoning about the experiment -----------------------------------------------------

def check_index_bits_for_gap(answer):
    """Question 1: the smallest index_bits whose field stores a gap of 32 without a filler (course convention)."""
    gap = 32
    expected = next(b for b in range(1, 17) if gap <= 2**b - 1)  # code 0 is the filler: gaps 1 .. 2**b - 1
    check_number("Question 1", answer, expected, rel_tol=0.0, abs_tol=1e-9, unit="bits", mistakes=[
        (expected - 1, "A b-bit field holds 2^b numbers, and the course's convention reserves one of them (0) "
                       "for the filler: list the gaps a kept weight can still store with that many bits."),
        (gap, "The question asks for the width of the field in bits, not for the gap."),
        (gap - 1, "The question asks for the width of the field in bits, not for the gap."),
    ], hint="A kept weight stores its gap in the field; find the largest gap a b-bit field can store in the "
            "course's convention (Task 5), then the smallest b for which that reaches 32.")


def check_why_huffman_helps(answer):
    """Question 2: Huffman gains because the clusters are used very unevenly."""
    check_choice("Question 2", answer, "b", hints={
        "a": "Huffman coding is lossless: decoding gives back every index exactly, so no centroid is merged "
             "or dropped.",
        "c": "A Huffman code gives each symbol its own codeword whatever its neighbours are; it does not look "
             "at runs of equal indices.",
        "d": "Look at the bar chart of the experiment: are the 16 clusters used equally often?",
    })


def check_what_retraining_changes(answer):
    """Question 3: codebook retraining moves the centroids only; indices, zeros and storage stay."""
    check_choice("Question 3", answer, "b", hints={
        "a": "The indices are fixed when the layer is clustered; only the codebooks are given to the optimizer.",
        "c": "Each weight is overwritten by its centroid after every step (write_weights): count the distinct "
             "values a layer holds.",
        "d": "The pruned weights are multiplied by their mask at every step, so they stay exactly 0.",
    })


# --- Task 6: prune and cluster the digits CNN under a storage cap ----------------------------------

#: The cap of Task 6, in bytes (1 kB = 1000 bytes), for every stored bit of the model.
DESIGN_CAP_BYTES = 5000
#: Task 6's cap, and what a design over it is told.
DESIGN_CAP = Limit("bytes", DESIGN_CAP_BYTES, lambda m: (
    f"this design takes {m['bytes']:,.0f} bytes, over the cap of {DESIGN_CAP_BYTES:,} bytes. "
    "Task 5 tells you what each part of a layer costs: find the layer whose bits dominate."))
DESIGN_LAYERS = ("conv1", "conv2", "fc1", "fc2")
#: Task 6's configuration: one entry per layer, each a dict with these keys.
DESIGN_FIELDS = {name: Field(dict) for name in DESIGN_LAYERS}
LAYER_FIELDS = {
    "sparsity": Field((int, float), low=0.0, high=0.99),
    "bits": Field(int, choices=(1, 2, 3, 4, 5, 6, 7, 8)),
    "index_bits": Field(object, choices=(None, 1, 2, 3, 4, 5, 6, 7, 8)),
}
#: The reference design (conv1 and fc2 dense, conv2 pruned to 0.5, fc1 to 0.95 at 2 bits) takes 4,976 bytes
#: and classifies 99.44% of the test digits without retraining (FP32: 99.17%).
DESIGN_TIERS = [
    Tier(1.0, "test accuracy at least 97.5% (within 2 points of the reference design)",
         lambda m: m["accuracy"] >= 0.975),
    Tier(0.75, "test accuracy at least 95%", lambda m: m["accuracy"] >= 0.95),
    Tier(0.5, "test accuracy at least 90%", lambda m: m["accuracy"] >= 0.90),
    Tier(0.25, "test accuracy at least 70%", lambda m: m["accuracy"] >= 0.70),
]


def design_of(design, task: str = "Task 6") -> dict:
    """``design`` checked key by key: ``{layer: {"sparsity", "bits", "index_bits"}}`` for the four layers."""
    design = config_of(task, design, DESIGN_FIELDS, what="design")
    plan = {}
    for name in DESIGN_LAYERS:
        layer = config_of(task, design[name], LAYER_FIELDS, what=f"design[{name!r}]")
        if layer["sparsity"] == 0 and layer["index_bits"] is not None:
            fail(f"{task}: design[{name!r}] keeps every weight (sparsity 0): a dense layer stores no relative "
                 f"index, so set its index_bits to None.")
        if layer["sparsity"] > 0 and layer["index_bits"] is None:
            fail(f"{task}: design[{name!r}] is pruned (sparsity {layer['sparsity']:g}): it needs index_bits, the "
                 f"width of its relative-index field (1 to 8).")
        plan[name] = {"sparsity": float(layer["sparsity"]), "bits": layer["bits"], "index_bits": layer["index_bits"]}
    return plan


def build_design(design):
    """The pretrained digits CNN pruned and clustered as ``design`` says, with qlib's references.

    Returns ``(model, cq)``: ``cq`` is the :class:`qlib.kmeans.CodebookQuantizer` whose codebooks,
    indices and masks now hold the model's layer weights (``2**bits`` linearly initialised
    centroids per layer, fitted to its kept weights only).
    """
    from qlib.kmeans import CodebookQuantizer
    from qlib.models import load_pretrained
    from qlib.pruning import prune_model

    plan = design_of(design)
    model = load_pretrained("cnn")
    masks = prune_model(model, {n: p["sparsity"] for n, p in plan.items() if p["sparsity"] > 0})
    cq = CodebookQuantizer(model, {n: p["bits"] for n, p in plan.items()}, masks=masks)
    return model, cq


def design_bytes(model, cq, design) -> float:
    """Bytes of every stored bit: fixed-width cluster indices, codebooks, relative indices, the rest at FP32."""
    plan = design_of(design)
    sizes = {}
    for name, layer in cq.layers.items():
        mask = cq.masks[name]
        sparse = (None, None) if mask is None else (mask.reshape(-1).numpy(), plan[name]["index_bits"])
        bits = plan[name]["bits"]
        sizes[name] = ref_storage.layer_storage_bits.unguarded(layer.weight.numel(), bits, 2**bits, *sparse,
                                                               None, None)
    return ref_storage.model_storage_bits(model, sizes)["total"] / 8


@measured_once
def design_measures(design) -> dict:
    """Size in bytes and test accuracy of ``design`` (no retraining), measured with qlib's references."""
    from qlib.data import load_digits
    from qlib.models import accuracy

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    try:
        with torch.no_grad():
            model, cq = build_design(design)
            return {"bytes": design_bytes(model, cq, design), "accuracy": accuracy(model, load_digits("test"))}
    finally:
        torch.set_num_threads(torch_threads)


def check_design(design):
    """Task 6: the grader prunes, clusters and counts the student's design itself, then grades it in tiers."""
    task = "Task 6"
    return measured_design(task, design_of(design, task), design_measures, DESIGN_TIERS,
                           report=lambda m: f"{m['bytes']:,.0f} bytes, test accuracy {m['accuracy']:.2%}",
                           limit=DESIGN_CAP)

