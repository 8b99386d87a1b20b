"""Checks for lab09_capstone, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab04`: without ``seed`` the visible cases are explained in
full (input, expected, got, a hint); with ``seed`` the hidden cases name the kind of input and the
likely mistake, never the input itself or how many cases ran.

Expected values come from :mod:`qlib.integer_storage`, computed before the student's function
runs; while it runs, that reference is blocked. Bit counts are integers and must match exactly.
The design is rebuilt here, in the grader, with :func:`qlib.integer_model.convert_digits_cnn`
on the training images, after chapter 7's QAT when the design asks for it (deterministic: one
thread, fixed seed), counted with :func:`qlib.integer_storage.integer_model_bits` and measured on
the 360 test images.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qlib import integer_storage as ref
from qlib.grading.answers import Field, Tier, check_choice, check_number, config_of, measured_design, measured_once
from qlib.grading.checks_common import hidden_case, passed, task_runner, with_hint
from qlib.grading.harness import as_array, fail, time_limit  # noqa: F401  (the lab's cells use grader.time_limit)

#: The qlib function this lab asks students to write.
REFERENCES = ("integer_model_bits",)

_run = task_runner(REFERENCES)

#: The layers of the digits CNN and their weight shapes.
DIGITS_CNN_SHAPES = {"conv1": (16, 1, 3, 3), "conv2": (32, 16, 3, 3), "fc1": (64, 512), "fc2": (10, 64)}


# --- Task 1: integer_model_bits ---------------------------------------------------------------------

def _by_hand(layers, a, weights=True, bias=32, m0=32, shift=8, scales=2, zero_points=None) -> int:
    """The count with one of its parts changed: what a typical mistake computes."""
    total = sum((b * math.prod(s) if weights else 0) + (bias + m0 + shift) * s[0] for s, b in layers)
    n_zero_points = len(layers) + 1 if zero_points is None else zero_points
    return total + 32 * scales + n_zero_points * a


def _storage_hint(layers, a, got) -> str:
    mistakes = [
        (_by_hand(layers, a, shift=0), "every output channel also stores its shift n (8 bits) beside M0."),
        (_by_hand(layers, a, m0=0), "every output channel stores its multiplier M0 (32 bits): count it."),
        (_by_hand(layers, a, m0=0, shift=0), "count the requantization of every output channel: M0 (32 bits) and "
                                             "its shift (8 bits)."),
        (_by_hand(layers, a, bias=0), "every output channel stores an int32 bias (32 bits)."),
        (_by_hand(layers, a, zero_points=len(layers)), "count one zero point per activation tensor: the input "
                                                      "and every layer's output, len(layers) + 1 of them."),
        (_by_hand(layers, a, zero_points=2), "every activation tensor keeps its zero point (the kernels add and "
                                             "subtract them), not only the input and the output."),
        (_by_hand(layers, a, zero_points=0), "add one zero point per activation tensor, at activation_bits bits."),
        (_by_hand(layers, a, scales=0), "the model keeps two FP32 scales: the input's (to quantize the images) "
                                        "and the output's (to dequantize the logits)."),
        (_by_hand(layers, a, scales=len(layers) + 1), "only the input's and the output's scales are stored: the "
                                                      "others live inside the multipliers M."),
        (_by_hand(layers, a) + 32 * sum(s[0] for s, _ in layers), "the per-channel weight scales are not stored: "
                                                                  "they are folded into the biases and the M0s."),
        (_by_hand(layers, a) + 32 * len(layers), "the per-channel weight scales are not stored: they are folded "
                                                 "into the biases and the M0s."),
        (sum(b * math.prod(s) for s, b in layers), "the weights are not all: add what each output channel and the "
                                                    "model as a whole keep."),
        (_by_hand([(s, 8) for s, _ in layers], a), "count every weight at its own layer's bit width, not 8 bits."),
        (_by_hand(layers, a) / 8, "return bits, not bytes."),
    ]
    for value, hint in mistakes:
        if math.isclose(got, value, rel_tol=0, abs_tol=1e-9):
            return hint
    return ("per layer b * N + (32 + 32 + 8) * C_out; once: 2 * 32 for the input's and output's scales and "
            "(len(layers) + 1) * activation_bits for the zero points.")


def _storage_cases(seed):
    if seed is None:
        cases = [([((10, 64), 4)], 8),
                 ([(shape, 2) for shape in DIGITS_CNN_SHAPES.values()], 8),
                 ([((16, 1, 3, 3), 4), ((32, 16, 3, 3), 3), ((64, 512), 2), ((10, 64), 4)], 6)]
    else:
        cases = _hidden_storage_cases(seed)
    return cases


def _hidden_layer(gen) -> tuple[tuple[int, ...], int]:
    """One random layer: a fully connected layer, a k x k convolution, or a 1 x k / k x 1 one."""
    c_out = int(gen.integers(1, 200))
    kind = int(gen.integers(0, 3))
    if kind == 0:
        shape = (c_out, int(gen.integers(1, 1100)))
    elif kind == 1:
        k = int(gen.choice([1, 3, 5, 7]))
        shape = (c_out, int(gen.integers(1, 64)), k, k)
    else:
        k = int(gen.choice([3, 5]))
        shape = (c_out, int(gen.integers(1, 32))) + ((1, k) if gen.random() < 0.5 else (k, 1))
    return shape, int(gen.integers(2, 17))


def _hidden_storage_cases(seed):
    """Random models of one to five layers, and the corners a count can get wrong."""
    gen = np.random.default_rng(seed)
    cases = [([_hidden_layer(gen) for _ in range(int(gen.integers(1, 6)))], int(gen.integers(2, 17)))
             for _ in range(40)]
    corners = [
        ([((1, 1), 2)], 2),                                    # the smallest layer: one weight, one channel
        ([((1, 1000), 16)], 16),                               # one channel, 16-bit weights and activations
        ([((1000, 1), 3)], 4),                                 # a thousand channels of one weight each
        ([((8, 8), b) for b in (2, 3, 4, 5, 6)], 8),           # five layers, each at its own width
        ([((64, 512), 2), ((10, 64), 8)], 3),                  # a mixed-precision pair, low activation bits
        ([((32, 16, 3, 3), 5)] * 3, 7),                        # the same layer three times
    ]
    order = gen.permutation(len(cases) + len(corners))
    every = cases + corners
    return [every[i] for i in order]


def check_integer_model_bits(integer_model_bits, seed=None):
    """Task 1: every bit an integer-only model stores."""
    task = "integer_model_bits"
    cases = _storage_cases(seed)
    for layers, a in cases:
        expected = ref.integer_model_bits(layers, a)
        got = as_array(_run(task, integer_model_bits, [(list(s), b) for s, b in layers], activation_bits=a),
                       "the result", task)
        if got.size != 1:
            fail(f"{task}: should return one number (bits), got an array of shape {got.shape}.")
        got = float(got.reshape(()))
        if got == expected:
            continue
        hint = _storage_hint(layers, a, got)
        fail(with_hint(f"{task}({[(tuple(s), b) for s, b in layers]}, activation_bits={a}): expected {expected}, "
                       f"got {got:.10g}.", hint)
             if seed is None else hidden_case(f"integer_model_bits on {len(layers)} layer(s)", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Questions ----------------------------------------------------------------------------------------

def check_overhead_share(answer):
    """Question 1: the share of biases, multipliers and shifts in the digits CNN at 2-bit weights."""
    layers = [(s, 2) for s in DIGITS_CNN_SHAPES.values()]
    total = ref.integer_model_bits(layers, 8)
    channels = sum(s[0] for s in DIGITS_CNN_SHAPES.values())
    weights = sum(2 * math.prod(s) for s in DIGITS_CNN_SHAPES.values())
    per_channel = 72 * channels
    check_number("Question 1", answer, per_channel / total, rel_tol=5e-3, mistakes=[
        (100 * per_channel / total, "Give the share as a fraction between 0 and 1, not in percent."),
        (per_channel / weights, "Divide by everything the model stores, not by the weights alone."),
        (64 * channels / (total - 8 * channels), "The shift of every output channel (8 bits) is part of it too."),
        (32 * channels / total, "Count the multipliers M0 and the shifts as well as the biases."),
        (104 * channels / (total + 32 * channels), "The weight scales are not stored: they are folded into the "
                                                  "biases and the multipliers."),
        (1 - per_channel / total, "That is the share of everything else; the question asks for the biases, "
                                  "multipliers and shifts."),
    ], hint="Count, for the four layers at 2 bits and 8-bit activations, what every output channel stores "
            "(Task 1), and divide by the whole model's bits.")


def check_least_tolerant_layer(answer):
    """Question 2: by the scan on the training images, fc2 is the one layer that cannot go to 2 bits."""
    check_choice("Question 2", answer, "d", hints={
        "a": "conv1 loses some accuracy at 2 bits; compare its drop with every other layer's in the scan.",
        "b": "conv2 loses less than a point at 2 bits; look for the layer whose drop is largest.",
        "c": "fc1 holds most of the weights, but the scan shows what 2 bits cost it: read its row again.",
    })


# --- Task 2: the design -----------------------------------------------------------------------------

#: Task 2's configuration: key -> allowed values; "weight_bits" is a dict checked by WEIGHT_BITS_FIELDS.
DESIGN_FIELDS = {
    "weight_bits": Field(dict),
    "activation_bits": Field(int, choices=(2, 3, 4, 5, 6, 7, 8)),
    "observer": Field(str, choices=("minmax", "moving_average")),
    "qat_epochs": Field(int, choices=(0, 1, 2, 3)),
}
WEIGHT_BITS_FIELDS = {name: Field(int, choices=(2, 3, 4, 5, 6, 7, 8)) for name in DIGITS_CNN_SHAPES}

#: The reference design (conv1 4, conv2 3, fc1 2, fc2 4 bits; 8-bit activations, moving average, no QAT)
#: stores 11,423 bytes and classifies 98.61% of the test images; every weight at 4 bits takes 20,191
#: bytes. QAT takes conv1 3, conv2 2, fc1 2, fc2 3 (10,749 bytes) from 96.11% to 98.89% in two epochs.
DESIGN_TIERS = [
    Tier(1.0, "at most 12,000 bytes and at least 98.0% test accuracy (within 5% of the reference design's size)",
         lambda m: m["bytes"] <= 12_000 and m["accuracy"] >= 0.98),
    Tier(0.75, "at most 12,000 bytes and at least 96.0%, or at most 16,000 bytes and at least 98.0%",
         lambda m: m["bytes"] <= 12_000 and m["accuracy"] >= 0.96 or m["bytes"] <= 16_000 and m["accuracy"] >= 0.98),
    Tier(0.5, "at most 16,000 bytes and at least 95.0%, or at most 21,000 bytes and at least 98.0%",
         lambda m: m["bytes"] <= 16_000 and m["accuracy"] >= 0.95 or m["bytes"] <= 21_000 and m["accuracy"] >= 0.98),
    Tier(0.25, "at most 21,000 bytes (every weight at 4 bits) and at least 90.0% test accuracy",
         lambda m: m["bytes"] <= 21_000 and m["accuracy"] >= 0.90),
]


#: The fine-tuning of a design with ``qat_epochs`` > 0: chapter 7's STE QAT with per-channel weights
#: at the design's bits, its activation bits and observer; Adam, this learning rate, batches of this
#: size in an order drawn from this seed.
QAT_LR, QAT_BATCH_SIZE, QAT_SEED = 1e-3, 64, 0


def design_of(design, task: str = "Task 2") -> dict:
    """``design`` checked key by key, its ``weight_bits`` too."""
    design = config_of(task, design, DESIGN_FIELDS, what="design")
    design["weight_bits"] = config_of(task, design["weight_bits"], WEIGHT_BITS_FIELDS, what="design['weight_bits']")
    return design


def _integer_model(design: dict, train):
    """The integer-only digits CNN of ``design``: converted from the pretrained CNN, or after QAT."""
    from qlib.integer_model import convert_digits_cnn
    from qlib.models import load_pretrained
    from qlib.observers import MinMaxObserver, MovingAverageMinMaxObserver
    from qlib.qat import prepare_qat, to_integer_model
    from qlib.qat_training import train_qat

    bits = dict(design["weight_bits"])
    if not design["qat_epochs"]:
        with torch.no_grad():
            return convert_digits_cnn(load_pretrained("cnn"), train.images, observer=design["observer"],
                                      activation_bits=design["activation_bits"], weight_bits=bits)
    observer = MinMaxObserver if design["observer"] == "minmax" else MovingAverageMinMaxObserver
    qat = prepare_qat(load_pretrained("cnn"), bits, design["activation_bits"], "ste", observer=observer)
    train_qat(qat, train, train, epochs=design["qat_epochs"], lr=QAT_LR, seed=QAT_SEED,
              batch_size=QAT_BATCH_SIZE, log=None)
    with torch.no_grad():
        return to_integer_model(qat, train.images)


@measured_once
def design_measures(design) -> dict:
    """Bits, bytes and test accuracy of ``design``, rebuilt and measured with qlib's reference functions.

    The pretrained digits CNN converted by :func:`qlib.integer_model.convert_digits_cnn`, calibrated
    on the training images; or, with ``qat_epochs`` > 0, first fine-tuned by chapter 7's QAT
    (:func:`qlib.qat.prepare_qat`, :func:`qlib.qat_training.train_qat` on the training images, the
    settings of :data:`QAT_LR`) and converted by :func:`qlib.qat.to_integer_model` with the ranges it
    learned. Counted by :func:`qlib.integer_storage.integer_model_bits`; the accuracy is the share
    of the 360 test images the integer-only model classifies correctly. One thread (restored
    afterwards), so the numbers do not depend on the machine's cores.
    """
    from qlib.data import load_digits

    design = design_of(design)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order on every machine
    try:
        model = _integer_model(design, load_digits("train"))
        test = load_digits("test")
        accuracy = float((model.predict(test.images) == test.labels).double().mean())
    finally:
        torch.set_num_threads(torch_threads)
    bits = design["weight_bits"]
    layers = [(tuple(layer.q_weight.shape), bits[layer.name]) for layer in model.layers]
    n_bits = ref.integer_model_bits.unguarded(layers, design["activation_bits"])
    return {"bits": n_bits, "bytes": n_bits / 8, "accuracy": accuracy}


def check_design(design):
    """Task 2: the grader converts, counts and measures the student's design itself, then grades it in tiers."""
    task = "Task 2"
    return measured_design(task, design_of(design, task), design_measures, DESIGN_TIERS,
                           report=lambda m: f"{m['bytes']:,.0f} bytes, test accuracy {m['accuracy']:.2%}")
