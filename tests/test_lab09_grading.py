"""Lab 9 (capstone) graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab09_capstone"
POINTS = {"test_integer_model_bits": 4, "test_overhead_share": 2, "test_least_tolerant_layer": 2, "test_design": 6}
WRITTEN = {"capstone_report": 4}


def _design(conv1, conv2, fc1, fc2, activation_bits=8, observer="minmax", qat_epochs=0):
    return (f'design = {{"weight_bits": {{"conv1": {conv1}, "conv2": {conv2}, "fc1": {fc1}, "fc2": {fc2}}}, '
            f'"activation_bits": {activation_bits}, "observer": "{observer}", "qat_epochs": {qat_epochs}}}\n')


# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "forgets_the_shift": Wrong("integer_model_bits", "test_integer_model_bits", "its shift n (8 bits)", '''
def integer_model_bits(layers, activation_bits=8):
    total = 0
    for shape, bits in layers:
        total += bits * math.prod(shape) + (32 + 32) * shape[0]
    return total + 2 * 32 + (len(layers) + 1) * activation_bits
'''),
    "one_zero_point_per_layer": Wrong("integer_model_bits", "test_integer_model_bits", "len(layers) + 1 of them", '''
def integer_model_bits(layers, activation_bits=8):
    total = 0
    for shape, bits in layers:
        total += bits * math.prod(shape) + 72 * shape[0]
    return total + 2 * 32 + len(layers) * activation_bits
'''),
    "stores_the_weight_scales": Wrong("integer_model_bits", "test_integer_model_bits", "are not stored", '''
def integer_model_bits(layers, activation_bits=8):
    total = 0
    for shape, bits in layers:
        total += bits * math.prod(shape) + (32 + 32 + 32 + 8) * shape[0]
    return total + 2 * 32 + (len(layers) + 1) * activation_bits
'''),
    "share_in_percent": Wrong("overhead_share", "test_overhead_share", "not in percent",
                              "overhead_share = 100 * 8784 / 85208\n"),
    "share_of_the_weights": Wrong("overhead_share", "test_overhead_share", "not by the weights alone",
                                  "overhead_share = 8784 / 76320\n"),
    "biggest_layer_least_tolerant": Wrong("least_tolerant_layer", "test_least_tolerant_layer",
                                          "what 2 bits cost it", 'least_tolerant_layer = "c"\n'),
    "design_every_layer_at_2_bits": Wrong("design", "test_design", "target is not reached", _design(2, 2, 2, 2)),
    "design_layer_missing": Wrong("design", "test_design", "misses 'fc2'",
                                  'design = {"weight_bits": {"conv1": 4, "conv2": 3, "fc1": 2}, '
                                  '"activation_bits": 8, "observer": "minmax", "qat_epochs": 0}\n'),
    "design_one_bit": Wrong("design", "test_design", "must be one of",
                            _design(4, 3, 1, 4)),
    "design_qat_too_long": Wrong("design", "test_design", "must be one of 0, 1, 2, 3",
                                 _design(3, 2, 2, 3, qat_epochs=10)),
    "hard_coded_visible_cases": Wrong("integer_model_bits", "test_integer_model_bits", "A hidden check failed", '''
def integer_model_bits(layers, activation_bits=8):
    known = {(1, 8): 3360, (4, 8): 85208, (4, 6): 91374}
    return known.get((len(layers), activation_bits), 3360)
'''),
}

# --- correct answers written differently: full marks ------------------------------------------------

OTHER_SPELLINGS = {
    "integer_model_bits": '''
def integer_model_bits(layers, activation_bits=8):
    import numpy as np
    weights = sum(int(np.prod(shape)) * bits for shape, bits in layers)
    per_channel = sum(shape[0] for shape, _ in layers) * (32 + 32 + 8)
    zero_points = (len(layers) + 1) * activation_bits
    return float(weights + per_channel + 64 + zero_points)
''',
    "overhead_share": "import numpy\noverhead_share = numpy.float32(0.1031)\n",
    "least_tolerant_layer": "least_tolerant_layer = ' (D) '\n",
    "design": _design(3, 2, 2, 3, 8, "moving_average", qat_epochs=2),  # with QAT: 10,749 bytes, 98.89%
}

# --- designs that fall short of the target: the tier they reach ---------------------------------------

PARTIAL = {
    "fc1_at_3_bits": Partial({"design": _design(4, 3, 3, 4)}, "test_design", 4.5),  # 15,519 bytes, 99.72%
    "every_layer_at_4_bits": Partial({"design": _design(4, 4, 4, 4)}, "test_design", 3),  # 20,191 bytes, 99.44%
    # the design that QAT takes to full marks (see OTHER_SPELLINGS), without QAT: 10,749 bytes, 96.11%
    "small_design_without_qat": Partial({"design": _design(3, 2, 2, 3, 8, "moving_average")}, "test_design", 4.5),
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    **design_cheats("design", "test_design", {"weight_bits": {"conv1": 4, "conv2": 3, "fc1": 2, "fc2": 4},
                                              "activation_bits": 8, "observer": "moving_average", "qat_epochs": 0},
                    "must be one of 0, 1, 2, 3"),
    "calls_qlib_via_importlib": Cheat({"integer_model_bits": """
import importlib

storage = importlib.import_module("qlib.integer_storage")


def integer_model_bits(layers, activation_bits=8):
    return storage.integer_model_bits(layers, activation_bits)
"""}, "test_integer_model_bits", "reference answer"),
}


class TestLab09Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 4, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, OTHER_SPELLINGS, "hard_coded_visible_cases"
    CHOICE = Choice("least_tolerant_layer", "test_least_tolerant_layer", "least_tolerant_layer")
    PARTIAL = PARTIAL
    CHEAT_TARGET = Target("integer_model_bits", "test_integer_model_bits", "qlib.integer_storage.integer_model_bits")
    CHEATS = CHEATS
    ANSWER_LINES = ("(32 + 32 + 8) * out_channels", 'least_tolerant_layer = "d"',
                    '"fc1": 2, "fc2": 4}, "activation_bits": 8',
                    "**Rubric (4 points).** 1 point: states the design")
    CELL_SECONDS = 10  # the slowest cell of a correct submission (the design's measurement) takes under 1 s
