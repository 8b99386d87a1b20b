"""Checks for lab08_binary_mixed, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab03`: visible cases explained in full (input, expected,
got, a hint); hidden cases (``seed``) name the kind of input and the likely mistake, never the
input or the number of cases. Expected values come from :mod:`qlib.binary`,
:mod:`qlib.ternary` and :mod:`qlib.mixed_precision`, computed before the student's function runs;
while it runs, those references are blocked.

Exact where the math is exact: the codes b and t must match bit for bit; the float32 means
alpha and delta to a relative 1e-5 (a mean summed in another order, or in float64, is right
too). Hidden ternary inputs keep every weight clear of the threshold, except the cases built so
that a weight sits on it exactly. Sensitivity drops may differ by one image (a batch size other
than the reference's can flip one argmax).

The questions and the design task have no hidden cases: their checks take no ``seed``. The design
(Task 4, a bit width per layer under a size budget) is rebuilt and measured here, in the grader,
with :func:`qlib.mixed_precision.fake_quantize_any_width` and
:func:`qlib.mixed_precision.model_size_bits`, never with the student's functions.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qlib import binary as ref_binary
from qlib import mixed_precision as ref_mixed
from qlib import ternary as ref_ternary
from qlib.grading.answers import (Field, Limit, Tier, check_choice, check_number,
                                  config_of, measured_design, measured_once)
from qlib.grading.checks_common import HIDDEN, hidden_case, passed, task_runner, with_hint
from qlib.grading.harness import as_array, as_integers, check_shape, fail, fmt, time_limit  # noqa: F401

#: The qlib functions that this lab asks students to write; unavailable while their code runs.
REFERENCES = ("binarize", "ternarize", "quantization_sensitivity")
RTOL = 1e-5
_run = task_runner(REFERENCES)


def _tuple(value, n, names, task):
    if not isinstance(value, (tuple, list)) or len(value) != n:
        got = type(value).__name__ + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
        fail(f"{task}: should return {n} values ({', '.join(names)}), got {got}.")
    return value


def _scale_shape(w: torch.Tensor, granularity: str) -> tuple:
    return (w.shape[0],) if granularity == "channel" else ()


def _as_scale(value, what, task, w, granularity, seed, hint=""):
    """The student's alpha or delta as an array of the expected shape ([C] per channel, () per tensor)."""
    arr = as_array(value, what, task, nan_hint=hint)
    expected = _scale_shape(w, granularity)
    if granularity == "channel" and arr.size == 1 and w.shape[0] > 1:
        where = "" if seed is not None else f" ({w.shape[0]} for a weight of shape {tuple(w.shape)})"
        fail(f'{task}: {what} is one number, but granularity="channel" asks for one {what} per output channel'
             f"{where}: take the mean over each w[c].")
    if granularity == "tensor" and arr.size != 1:
        fail(f'{task}: granularity="tensor" asks for a single {what} for the whole tensor, got {arr.size} values. '
             'Hint: compare the string (granularity == "channel"); `if granularity:` is true for any '
             'non-empty string, "tensor" included.')
    if arr.size != int(np.prod(expected)):
        fail(f"{task}: expected one {what} per output channel (w.shape[0] values), got {arr.size}"
             + (f" for a weight of shape {tuple(w.shape)}." if seed is None else "."))
    return arr.reshape(expected)


def _codes(value, what, task, w, seed):
    """The student's codes b or t as int64, of w's shape."""
    arr = as_integers(value, what, task)
    if tuple(arr.shape) != tuple(w.shape):
        if seed is None:
            check_shape(arr, tuple(w.shape), what, task)
        fail(f"{HIDDEN} for {task}: {what} does not have the shape of w.")
    return arr


def _mismatch(task, kind, w, granularity, seed, expected: dict, got: dict, hint: str):
    """Fail with the input, the expected and the returned values (visible case) or only the hint (hidden)."""
    def values(d):
        return ", ".join(f"{name} = {fmt(v)}" for name, v in d.items())

    fail(with_hint(f"{task}({_where(w, granularity)}) on {kind}, w = {fmt(w.numpy())}:\n"
                   f"expected {values(expected)}\ngot      {values(got)}", hint)
         if seed is None else hidden_case(f'{task} on {kind} (granularity="{granularity}")', hint))


def _where(w, granularity):
    return f'w of shape {tuple(w.shape)}, granularity="{granularity}"'


def _random_weight(gen: torch.Generator, shape, i):
    """Weights whose output channels differ in spread; some exact zeros (+0.0 and -0.0)."""
    w = torch.randn(shape, generator=gen)
    spread = 10.0 ** (torch.rand(shape[0], generator=gen) * 3 - 2)
    w = w * spread.reshape((-1,) + (1,) * (len(shape) - 1))
    flat = w.reshape(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 10)]] = 0.0
    if i % 2:
        flat[0] = -0.0
    return w


SHAPES = [(16, 1, 3, 3), (8, 12), (5, 4, 3, 3), (10, 64), (6, 1), (3, 2, 5)]


# --- Task 1: binarize ------------------------------------------------------------------------------

def _binarize_cases(seed):
    if seed is None:
        return [("the example above", torch.tensor([0.8, -0.3, 0.0, -1.3]), "tensor"),
                ("a small matrix, one row per output channel",
                 torch.tensor([[1.0, -3.0, 0.5], [0.0, 0.0, 0.0], [-0.5, 0.25, -0.75]]), "channel"),
                ("a convolution weight", torch.randn((4, 2, 3, 3), generator=torch.Generator().manual_seed(8)),
                 "channel")]
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(24):
        w = _random_weight(gen, SHAPES[i % len(SHAPES)], i)
        if i % 5 == 3:
            w[0] = 0.0  # an all-zero output channel
        kind = "with exact zeros" + (" and an all-zero channel" if i % 5 == 3 else "")
        cases.append((f"random weights {kind}", w, "channel" if i % 3 else "tensor"))
    return cases


def _binarize_hint(w, granularity, b, alpha, b_ref, alpha_ref) -> str:
    if not np.array_equal(b, b_ref):
        if (b == 0).any():
            return ("b holds 0 where w is 0: one bit has only +1 and -1, and sign(0) is +1 here "
                    "(torch.sign(0) is 0; use torch.where(w >= 0, 1, -1)).")
        if np.array_equal(b, -b_ref):
            return "b has the opposite sign: +1 where w >= 0, -1 where w < 0."
        return "b = +1 where w >= 0 and -1 where w < 0."
    wn = w.numpy().astype(np.float64)
    rows = wn.reshape(wn.shape[0], -1) if granularity == "channel" else wn.reshape(1, -1)
    variants = {
        "alpha is the largest |w|: the best scale is the MEAN of |w| (see the derivation above).":
            np.abs(rows).max(axis=1),
        "alpha is the mean of w, not of |w|: take the absolute values first.": rows.mean(axis=1),
        "alpha looks like the root mean square; the best scale is the mean of |w|.":
            np.sqrt((rows ** 2).mean(axis=1)),
    }
    for hint, v in variants.items():
        if v.size == alpha.size and np.allclose(alpha.reshape(-1), v.reshape(-1), rtol=RTOL, atol=1e-12):
            return hint
    return 'alpha = mean |w| over each output channel (granularity="channel") or over the whole tensor ("tensor").'


def check_binarize(binarize, seed=None):
    """Task 1: b = sign(w) with sign(0) = +1, alpha = mean |w| per output channel or per tensor."""
    task = "binarize"
    cases = _binarize_cases(seed)
    for kind, w, granularity in cases:
        b_ref, alpha_ref = (t.numpy() for t in ref_binary.binarize(w, granularity))
        got = _tuple(_run(task, binarize, w.clone(), granularity), 2, ("b", "alpha"), task)
        b = _codes(got[0], "b", task, w, seed)
        alpha = _as_scale(got[1], "alpha", task, w, granularity, seed,
                          hint="an all-zero channel has mean |w| = 0: alpha 0, no division needed.")
        ok = np.array_equal(b, b_ref) and np.allclose(alpha, alpha_ref, rtol=RTOL, atol=1e-30)
        if not ok:
            _mismatch(task, kind, w, granularity, seed, {"b": b_ref, "alpha": alpha_ref}, {"b": b, "alpha": alpha},
                      _binarize_hint(w, granularity, b, alpha, b_ref, alpha_ref))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 2: ternarize -----------------------------------------------------------------------------

def _clear_of_threshold(w: torch.Tensor, granularity: str) -> bool:
    """True if no |w| lies within a relative 1e-4 of its threshold (float32 and float64 agree there)."""
    _, _, delta = ref_ternary.ternarize(w, granularity)
    d = delta.reshape((-1,) + (1,) * (w.ndim - 1)) if granularity == "channel" else delta
    gap = (w.abs() - d).abs()
    return bool(((gap > 1e-4 * d) | (d == 0)).all())   # an all-zero channel has delta 0 and t 0: no doubt


def _on_threshold(gen: torch.Generator, granularity: str):
    """Weights of which some sit exactly on the threshold: each channel is 2^k * (7, -13, -7, 13, ...)."""
    rows = []
    for c in range(3 if granularity == "channel" else 1):
        k = int(torch.randint(-6, 6, (1,), generator=gen))
        base = torch.tensor([7.0, -13.0, -7.0, 13.0, 7.0, -13.0])[torch.randperm(6, generator=gen)]
        rows.append(base * 2.0**k)   # mean |w| = 10 * 2^k; float32(0.7) * 10 * 2^k = 7 * 2^k exactly
    w = torch.stack(rows)
    return w if granularity == "channel" else w.reshape(-1)


def _ternarize_cases(seed):
    if seed is None:
        return [("the example above", torch.tensor([1.0, -0.2, 0.5, -2.0, 0.05, 0.3]), "tensor"),
                ("weights on the threshold: mean |w| = 10, so delta = 7 exactly",
                 torch.tensor([7.0, -13.0, -7.0, 13.0]), "tensor"),
                ("a matrix with an all-zero output channel",
                 torch.tensor([[7.0, -13.0], [0.0, 0.0], [1.0, -0.25]]), "channel")]
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(200):
        if len(cases) == 24:
            break
        granularity = "channel" if i % 3 else "tensor"
        w = _random_weight(gen, SHAPES[i % len(SHAPES)], i)
        zero_channel = i % 5 == 3
        if zero_channel:
            w[0] = 0.0
        if _clear_of_threshold(w, granularity):
            cases.append(("random weights" + (" with an all-zero channel" if zero_channel else ""), w, granularity))
    for granularity in ("tensor", "channel"):
        cases.append(("weights exactly on the threshold |w| = delta", _on_threshold(gen, granularity), granularity))
    return cases


def _ternarize_hint(w, granularity, t, alpha, delta, refs) -> str:
    t_ref, alpha_ref, delta_ref = refs
    wn = w.numpy().astype(np.float64)
    rows = np.abs(wn.reshape(wn.shape[0], -1) if granularity == "channel" else wn.reshape(1, -1))
    mean = rows.mean(axis=1)
    if not np.allclose(delta.reshape(-1), delta_ref.reshape(-1), rtol=RTOL, atol=1e-30):
        if np.allclose(delta.reshape(-1), 0.7 * rows.max(axis=1), rtol=RTOL):
            return "delta uses the largest |w|; TWN's threshold is 0.7 times the MEAN of |w|."
        if np.allclose(delta.reshape(-1), 0.7 * (wn.reshape(rows.shape)).mean(axis=1), rtol=RTOL):
            return "delta uses the mean of w; take the mean of |w|."
        return "delta = 0.7 * mean |w| over each output channel (or the whole tensor)."
    d = delta_ref.reshape((-1,) + (1,) * (wn.ndim - 1)) if granularity == "channel" else delta_ref
    if not np.array_equal(t, t_ref):
        at = np.abs(wn) == d
        if at.any() and np.array_equal(t[~at], t_ref[~at]):
            return "a weight exactly at the threshold, |w| = delta, must become 0: keep only |w| > delta (strict)."
        if np.array_equal(t, -t_ref):
            return "t has the opposite sign: +1 where w > delta, -1 where w < -delta."
        return "t = +1 where w > delta, -1 where w < -delta, 0 otherwise."
    kept = np.abs(t_ref.reshape(rows.shape)).astype(bool)
    if np.allclose(alpha.reshape(-1), mean, rtol=RTOL):
        return "alpha is the mean of all |w|; TWN's alpha is the mean of |w| over the weights ABOVE delta only."
    if np.allclose(alpha.reshape(-1), (rows * kept).sum(axis=1) / rows.shape[1], rtol=RTOL):
        return "alpha divides by the number of all weights; divide by the number of weights above delta."
    return "alpha = mean of |w| over the weights with |w| > delta (0 if there is none)."


def check_ternarize(ternarize, seed=None):
    """Task 2: TWN: delta = 0.7 mean|w|, t in {-1, 0, 1} with a strict threshold, alpha = mean |w| above it."""
    task = "ternarize"
    cases = _ternarize_cases(seed)
    for kind, w, granularity in cases:
        refs = tuple(t.numpy() for t in ref_ternary.ternarize(w, granularity))
        t_ref, alpha_ref, delta_ref = refs
        got = _tuple(_run(task, ternarize, w.clone(), granularity), 3, ("t", "alpha", "delta"), task)
        t = _codes(got[0], "t", task, w, seed)
        zero_hint = "a channel with no weight above delta gets alpha = 0 (do not divide 0 by 0)."
        alpha = _as_scale(got[1], "alpha", task, w, granularity, seed, hint=zero_hint)
        delta = _as_scale(got[2], "delta", task, w, granularity, seed)
        ok = (np.array_equal(t, t_ref) and np.allclose(alpha, alpha_ref, rtol=RTOL, atol=1e-30)
              and np.allclose(delta, delta_ref, rtol=RTOL, atol=1e-30))
        if not ok:
            _mismatch(task, kind, w, granularity, seed, {"t": t_ref, "alpha": alpha_ref, "delta": delta_ref},
                      {"t": t, "alpha": alpha, "delta": delta}, _ternarize_hint(w, granularity, t, alpha, delta, refs))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 3: the sensitivity scan ----------------------------------------------------------------

def _linear_per_tensor(w, bits):
    from qlib.granularity import fake_quantize_tensor

    return fake_quantize_tensor(w, bits, "tensor")


def _keep_large(w, bits):
    """Keep the largest 2^-bits share of the weights (by magnitude), zero the rest: bits-dependent, not a quantizer."""
    k = max(1, int(w.numel() * 2.0 ** -bits))
    threshold = w.detach().abs().reshape(-1).kthvalue(w.numel() - k + 1).values
    return w * (w.abs() >= threshold)


def _sensitivity_cases(seed):
    from qlib.data import Digits, load_digits

    test = load_digits("test")
    if seed is None:
        return [("cnn", test, "the 360 test images", [1, 2, 4], ref_mixed.fake_quantize_any_width,
                 "fake_quantize_any_width (1 bit binary, 2 bits ternary, more bits linear)")]
    train = load_digits("train")
    subset = Digits(train.images[:400], train.labels[:400])
    return [
        ("cnn", test, "the test images", [8, 2, 1], ref_mixed.fake_quantize_any_width, "the chapter's quantizers"),
        ("mlp", test, "the test images", [2, 3], _linear_per_tensor, "linear per-tensor quantization"),
        ("cnn", subset, "400 training images", [1, 3], _keep_large, "a quantizer that keeps the largest weights"),
    ]


def _scan_variants(model, data, bit_widths, fake_quant):
    """What common mistakes would return, to name the one a submission made."""
    import copy

    from qlib.models import accuracy
    from qlib.weights import quantized_layers

    def train_mode_accuracy(m):
        m.train()
        with torch.no_grad():
            return sum(int((m(x).argmax(dim=1) == y).sum()) for x, y in data.batches()) / len(data)

    reference = accuracy(model, data)
    accs, cumulative, train_mode = {}, {}, {}
    one_copy = copy.deepcopy(model)  # the mistake: a single copy for the whole scan
    for name, _ in quantized_layers(model):
        accs[name], cumulative[name], train_mode[name] = [], [], []
        for bits in bit_widths:
            fresh = copy.deepcopy(model)
            with torch.no_grad():
                for m in (fresh, one_copy):
                    weight = dict(quantized_layers(m))[name].weight
                    weight.copy_(torch.as_tensor(fake_quant(weight.detach().clone(), bits)))
            accs[name].append(accuracy(fresh, data))
            cumulative[name].append(reference - accuracy(one_copy, data))
            train_mode[name].append(reference - train_mode_accuracy(fresh))
    return {
        "the quantized copies seem to be evaluated in training mode, where batch norm uses the statistics "
        "of the batch: call model.eval() (the accuracy function of the set-up cell does).": train_mode,
        "these are accuracies; return the DROP, accuracy(FP32) - accuracy(quantized).": accs,
        "the drop has the wrong sign: accuracy(FP32 model) - accuracy(quantized copy).":
            {n: [a - reference for a in v] for n, v in accs.items()},
        "quantized layers stay quantized from one point to the next: quantize a fresh copy of the model "
        "for every (layer, bits) point, so that only ONE layer is quantized at a time.": cumulative,
    }


def check_quantization_sensitivity(quantization_sensitivity, seed=None):
    """Task 3: accuracy drop with one layer at a time fake-quantized, for each bit width."""
    from qlib.models import load_pretrained

    task = "quantization_sensitivity"
    cases = _sensitivity_cases(seed)
    for name, data, data_kind, bit_widths, fake_quant, quant_kind in cases:
        model = load_pretrained(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        expected = ref_mixed.quantization_sensitivity(model, data, bit_widths, fake_quant)
        got = _run(task, quantization_sensitivity, model, data, list(bit_widths), fake_quant, seconds=60.0)
        where = (f"the digits {name.upper()} on {data_kind}, bit_widths={bit_widths}, fake_quant={quant_kind}")
        prefix = f"{task} ({where})" if seed is None else f"{HIDDEN} for {task} ({where})"
        if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            fail(f"{prefix}: the model passed in was changed. Quantize a copy (copy.deepcopy(model)).")
        if not isinstance(got, dict):
            fail(f"{task}: should return a dict {{layer name: [drop at each bit width]}}, got {type(got).__name__}.")
        if list(got) != list(expected):
            fail(f"{prefix}: expected the layers {list(expected)} in model order, got {list(got)}. "
                 "Hint: the Linear and Conv2d layers of model.named_modules().")
        n = len(data)
        for layer, exp in expected.items():
            g = as_array(got[layer], f"the drops of {layer}", task).astype(np.float64).reshape(-1)
            check_shape(g, (len(bit_widths),), f"the drops of {layer}", task)
            if np.all(np.abs(g - np.asarray(exp)) <= 1.0 / n + 1e-9):
                continue
            hint = "drop = accuracy(model) - accuracy(copy with only this layer's weight replaced by fake_quant)."
            for h, variant in _scan_variants(model, data, bit_widths, fake_quant).items():
                v = np.asarray(variant[layer])
                if np.all(np.abs(g - v) <= 1.0 / n + 1e-9):
                    hint = h
                    break
            if seed is None:
                fail(f"{prefix}: layer {layer}: expected drops {fmt(np.asarray(exp))}, got {fmt(g)}. Hint: {hint}")
            fail(f"{prefix}: the drops of layer {layer} differ. Hint: {hint}")
    passed(task, len(cases), hidden=seed is not None)


# --- Questions 1 and 2: what binary and ternary weights cost and what their scale minimizes ----------

#: Question 1's layer: conv2 of the digits CNN, [out, in, kh, kw].
CONV2_SHAPE = (32, 16, 3, 3)


def check_ternary_conv2_bits(answer):
    """Question 1: conv2 ternary in 2-bit fields with one float32 scale per output channel: 2 n + 32 c bits."""
    c, n = CONV2_SHAPE[0], math.prod(CONV2_SHAPE)
    check_number("Question 1", answer, 2 * n + 32 * c, rel_tol=0.0, abs_tol=0.5, unit="bits", mistakes=[
        (2 * n, "That counts the codes only: each output channel also stores its scale S, a float32."),
        (2 * n + 32, "One scale for the whole tensor? The scales here are per output channel."),
        (math.log2(3) * n + 32 * c, "log2(3) bits per weight is the information in a ternary digit, but a "
                                    "fixed-width field holds a whole number of bits."),
        (1.6 * n + 32 * c, "That is the packed layout (five digits per byte); the question asks for 2-bit fields."),
        (n + 32 * c, "One bit per weight is a binary layer; three values need more than one bit."),
        (2 * n + 2 * 32 * c, "Inference stores t and S only: the threshold delta is not kept."),
        (32 * n, "That is the FP32 size of the weights."),
        (2 * n / 8 + 32 * c / 8, "The answer is in bits, not bytes."),
    ], hint="Count the weights of conv2 and its output channels; each weight takes a 2-bit field and each "
            "output channel one float32 scale.")


def check_what_the_scale_minimizes(answer):
    """Question 2: S = mean|w| minimizes the squared error ||w - S sign(w)||^2 of the channel."""
    check_choice("Question 2", answer, "a", hints={
        "b": "The largest error max_i |w_i - S sign(w_i)| is smallest when S sits halfway between the smallest "
             "and the largest |w|, which is not mean|w| in general. Write the error as a function of S.",
        "c": "Take w = (3, -1, -1, -1): mean|w| = 1.5, and S sign(w) has mean -0.75 while w has mean 0.",
        "d": "Making the largest weight exact needs S = max|w|; mean|w| is smaller than that whenever the "
             "|w| differ.",
    })


# --- Task 4: a bit width per layer under a size budget ---------------------------------------------------

#: Task 4's budget: bits of the weights and their scales (biases and batch norm stay FP32, not counted).
BUDGET_BITS = 48_000
#: The layers of the digits CNN, each of which gets a bit width.
DESIGN_LAYERS = ("conv1", "conv2", "fc1", "fc2")
DESIGN_FIELDS = {name: Field(int, choices=ref_mixed.BIT_WIDTHS) for name in DESIGN_LAYERS}
#: The reference allocation, 4 / 2 / 1 / 2 bits (least training-accuracy drop within the budget, the
#: budget used as fully as possible), reaches 97.8% on the 360 test images (FP32: 99.2%); 3 / 2 / 1 / 2,
#: as good on the training images, reaches 97.2%.
DESIGN_TIERS = [
    Tier(1.0, "test accuracy at least 97.0% (within a point of the reference allocation)",
         lambda m: m["accuracy"] >= 0.970),
    Tier(0.75, "test accuracy at least 95.0%", lambda m: m["accuracy"] >= 0.950),
    Tier(0.5, "test accuracy at least 90.0%", lambda m: m["accuracy"] >= 0.900),
    Tier(0.25, "test accuracy at least 80.0% (all-binary weights reach 63%)", lambda m: m["accuracy"] >= 0.800),
]


@measured_once
def design_measures(allocation: dict) -> dict:
    """Size (weights and scales, in bits) and test accuracy of the CNN at ``allocation``, with qlib's references."""
    import copy

    from qlib.data import load_digits
    from qlib.models import accuracy, load_pretrained

    model = load_pretrained("cnn")
    sizes = ref_mixed.model_size_bits(model, allocation)
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name, bits in allocation.items():
            weight = quantized.get_submodule(name).weight
            weight.copy_(ref_mixed.fake_quantize_any_width(weight.detach().clone(), bits))
    return {"size": sizes["weights"] + sizes["scales"], "weights": sizes["weights"],
            "accuracy": accuracy(quantized, load_digits("test"))}


def check_allocation(allocation):
    """Task 4: the grader quantizes the CNN at the student's bit widths itself, checks the size, grades in tiers."""
    task = "Task 4"
    allocation = config_of(task, allocation, DESIGN_FIELDS, what="allocation")
    return measured_design(task, allocation, design_measures, DESIGN_TIERS,
                           report=lambda m: f"{m['size']:,} bits of weights and scales, test accuracy "
                                            f"{100 * m['accuracy']:.1f}%",
                           limit=Limit("size", BUDGET_BITS, _over_the_budget))


def _over_the_budget(measured: dict) -> str:
    also = (" Without the scales it would fit: every layer also stores one float32 scale per output channel."
            if measured["weights"] <= BUDGET_BITS else "")
    return (f"this allocation takes {measured['size']:,} bits for the weights and their scales, over the "
            f"budget of {BUDGET_BITS:,}.{also} A layer at b bits takes b bits per weight plus 32 per output "
            "channel.")


# --- Question 3: why the first layer keeps more bits --------------------------------------------------

def check_why_the_first_layer(answer):
    """Question 3: conv1 has 9 weights per output channel, feeds every later layer, and its bits are cheap."""
    check_choice("Question 3", answer, "c", hints={
        "a": "Count them: fc1 holds 86% of the weights of the CNN, conv1 well under 1%.",
        "b": "conv1 has 9 weights per output channel, fc1 512: compare the weights per channel in the "
             "experiment's table.",
        "d": "XNOR-Net binarizes convolutions too (Chapter 8), and the experiment above binarized conv1: it ran, "
             "only with a large drop.",
    })
