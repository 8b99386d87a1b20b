"""Lab 8 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab08_binary_mixed"
POINTS = {"test_binarize": 4, "test_ternarize": 6, "test_ternary_conv2_bits": 2, "test_what_the_scale_minimizes": 2,
          "test_quantization_sensitivity": 5, "test_allocation": 4, "test_why_the_first_layer": 2}
WRITTEN = {"explain_the_allocation": 2}

# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "sign_of_zero_is_zero": Wrong("binarize", "test_binarize", "sign(0) is +1", '''
def binarize(w, granularity="channel"):
    alpha = w.abs().reshape(w.shape[0], -1).mean(dim=1) if granularity == "channel" else w.abs().mean()
    return torch.sign(w), alpha
'''),
    "granularity_read_as_a_flag": Wrong("binarize", "test_binarize", "true for any non-empty string", '''
def binarize(w, granularity="channel"):
    b = torch.where(w >= 0, 1, -1)
    alpha = w.abs().reshape(w.shape[0], -1).mean(dim=1) if granularity else w.abs().mean()
    return b, alpha
'''),
    "threshold_not_strict": Wrong("ternarize", "test_ternarize", "strict", '''
def ternarize(w, granularity="channel"):
    rows = (w.reshape(w.shape[0], -1) if granularity == "channel" else w.reshape(1, -1)).abs()
    delta = 0.7 * rows.mean(dim=1)
    kept = rows >= delta[:, None]
    alpha = (rows * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)
    t = (torch.sign(w).reshape(rows.shape) * kept).reshape(w.shape)
    return (t, alpha, delta) if granularity == "channel" else (t, alpha[0], delta[0])
'''),
    "alpha_over_all_weights": Wrong("ternarize", "test_ternarize", "ABOVE delta only", '''
def ternarize(w, granularity="channel"):
    rows = (w.reshape(w.shape[0], -1) if granularity == "channel" else w.reshape(1, -1)).abs()
    delta = 0.7 * rows.mean(dim=1)
    kept = rows > delta[:, None]
    alpha = rows.mean(dim=1)
    t = (torch.sign(w).reshape(rows.shape) * kept).reshape(w.shape)
    return (t, alpha, delta) if granularity == "channel" else (t, alpha[0], delta[0])
'''),
    "returns_accuracies": Wrong("quantization_sensitivity", "test_quantization_sensitivity", "return the DROP", '''
def quantization_sensitivity(model, data, bit_widths, fake_quant):
    result = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            result[name] = []
            for bits in bit_widths:
                quantized = copy.deepcopy(model)
                with torch.no_grad():
                    layer = quantized.get_submodule(name)
                    layer.weight.copy_(fake_quant(layer.weight, bits))
                result[name].append(accuracy(quantized, data))
    return result
'''),
    "ternary_without_scales": Wrong("ternary_conv2_bits", "test_ternary_conv2_bits", "also stores its scale",
                                    "ternary_conv2_bits = 2 * 32 * 16 * 3 * 3\n"),
    "ternary_log2_3_bits": Wrong("ternary_conv2_bits", "test_ternary_conv2_bits", "whole number of bits",
                                 "import math\nternary_conv2_bits = math.log2(3) * 4608 + 32 * 32\n"),
    "ternary_in_bytes": Wrong("ternary_conv2_bits", "test_ternary_conv2_bits", "not bytes",
                              "ternary_conv2_bits = (2 * 4608 + 32 * 32) // 8\n"),
    "scale_minimizes_the_largest_error": Wrong("what_the_scale_minimizes", "test_what_the_scale_minimizes",
                                               "halfway between", 'what_the_scale_minimizes = "b"\n'),
    "scale_makes_the_largest_weight_exact": Wrong("what_the_scale_minimizes", "test_what_the_scale_minimizes",
                                                  "S = max|w|", 'what_the_scale_minimizes = "d"\n'),
    "allocation_forgets_the_scales": Wrong("allocation", "test_allocation", "Without the scales it would fit",
                                           'allocation = {"conv1": 4, "conv2": 3, "fc1": 1, "fc2": 1}\n'),
    "allocation_uniform_ternary": Wrong("allocation", "test_allocation", "over the budget of 48,000",
                                        'allocation = dict.fromkeys(["conv1", "conv2", "fc1", "fc2"], 2)\n'),
    "allocation_five_bits": Wrong("allocation", "test_allocation", "must be one of 1, 2, 3, 4, 6, 8",
                                  'allocation = {"conv1": 5, "conv2": 2, "fc1": 1, "fc2": 2}\n'),
    "allocation_misses_a_layer": Wrong("allocation", "test_allocation", "misses 'fc2'",
                                       'allocation = {"conv1": 4, "conv2": 2, "fc1": 1}\n'),
    "allocation_binarizes_conv1": Wrong("allocation", "test_allocation", "target is not reached",
                                        'allocation = {"conv1": 1, "conv2": 1, "fc1": 1, "fc2": 6}\n'),
    "first_layer_holds_most_weights": Wrong("why_the_first_layer", "test_why_the_first_layer", "86%",
                                            'why_the_first_layer = "a"\n'),
    "hard_coded_visible_cases": Wrong("ternarize", "test_ternarize", "A hidden check failed", '''
def ternarize(w, granularity="channel"):
    if tuple(w.shape) == (6,):
        return torch.tensor([1, 0, 1, -1, 0, 0]), 3.5 / 3, 0.4725
    if tuple(w.shape) == (4,):
        return torch.tensor([0, -1, 0, 1]), 13.0, 7.0
    return torch.tensor([[0, -1], [0, 0], [1, 0]]), torch.tensor([13.0, 0.0, 1.0]), torch.tensor([7.0, 0.0, 0.4375])
'''),
}

# --- correct answers written differently: full marks ---------------------------------------------------

DIFFERENT = {
    "binarize": '''
def binarize(w, granularity="channel"):
    x = np.asarray(w, dtype=np.float64)
    b = np.where(x >= 0, 1.0, -1.0)                   # floats holding whole numbers are fine
    if granularity == "channel":
        alpha = np.array([np.abs(x[c]).sum() / x[c].size for c in range(x.shape[0])])
    else:
        alpha = float(np.abs(x).sum() / x.size)
    return b, alpha
''',
    "ternarize": '''
def ternarize(w, granularity="channel"):
    x = np.asarray(w, dtype=np.float64)
    groups = [x[c] for c in range(x.shape[0])] if granularity == "channel" else [x]
    t = np.zeros(x.shape, dtype=np.int64)
    alphas, deltas = [], []
    for c, g in enumerate(groups):
        delta = 0.7 * np.abs(g).mean()
        above = np.abs(g) > delta
        codes = np.where(g > delta, 1, np.where(g < -delta, -1, 0))
        if granularity == "channel":
            t[c] = codes
        else:
            t = codes
        alphas.append(np.abs(g)[above].mean() if above.any() else 0.0)
        deltas.append(delta)
    if granularity == "channel":
        return t, np.array(alphas), np.array(deltas)
    return t, alphas[0], deltas[0]
''',
    "quantization_sensitivity": '''
def quantization_sensitivity(model, data, bit_widths, fake_quant):
    def correct_share(m):
        m.eval()
        with torch.no_grad():                     # all images in one batch
            return (m(data.images).argmax(dim=1) == data.labels).double().mean().item()

    base = correct_share(model)
    names = [n for n, m in model.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)]
    table = {n: np.zeros(len(bit_widths)) for n in names}
    for i, bits in enumerate(bit_widths):          # bit widths outside, layers inside
        for n in names:
            m = copy.deepcopy(model)
            p = dict(m.named_parameters())[n + ".weight"]
            with torch.no_grad():
                p.data = fake_quant(p.data.clone(), bits)
            table[n][i] = base - correct_share(m)
    return table
''',
}

# --- the same answers written otherwise: other spellings, other types, another allocation as good ------

OTHER_SPELLINGS = {
    "ternary_conv2_bits": "import numpy\nternary_conv2_bits = numpy.float32(10240.0)\n",
    "what_the_scale_minimizes": 'what_the_scale_minimizes = " (A) "\n',
    "why_the_first_layer": "why_the_first_layer = 'C.'\n",
    # as good on the training images (1 image lost), 144 bits smaller: 97.2% on the test images
    "allocation": 'allocation = dict(fc2=2, fc1=1, conv2=2, conv1=3)\n',
}

# --- allocations that fall short of the target: the tier they reach -----------------------------------

PARTIAL = {
    "fc2_binary": Partial({"allocation": 'allocation = {"conv1": 6, "conv2": 2, "fc1": 1, "fc2": 1}\n'},
                          "test_allocation", 3),            # 95.6%
    "conv2_binary": Partial({"allocation": 'allocation = {"conv1": 4, "conv2": 1, "fc1": 1, "fc2": 1}\n'},
                            "test_allocation", 2),          # 92.5%
    "conv2_binary_fc2_4": Partial({"allocation": 'allocation = {"conv1": 3, "conv2": 1, "fc1": 1, "fc2": 4}\n'},
                                  "test_allocation", 1),    # 88.1%
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_via_importlib": Cheat({"binarize": """
import importlib

binary = importlib.import_module("ql" + "ib.binary")

def binarize(w, granularity="channel"):
    return binary.binarize(w, granularity)
"""}, "test_binarize", "reference answer"),
    **design_cheats("allocation", "test_allocation", {"conv1": 4, "conv2": 2, "fc1": 1, "fc2": 2},
                    "must be one of 1, 2, 3, 4, 6, 8", what="allocation"),
}


class TestLab08Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 7, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**DIFFERENT, **OTHER_SPELLINGS}, "hard_coded_visible_cases"
    CHOICE = Choice("what_the_scale_minimizes", "test_what_the_scale_minimizes", "what_the_scale_minimizes")
    PARTIAL = PARTIAL
    CHEAT_TARGET = Target("binarize", "test_binarize", "qlib.binary.binarize")
    CHEATS = CHEATS
    ANSWER_LINES = ("torch.where(w >= 0, 1, -1).to(torch.int8)", "kept.sum(dim=1)",
                    "reference - accuracy(quantized, data)",
                    'allocation = {"conv1": 4, "conv2": 2, "fc1": 1, "fc2": 2}',
                    'what_the_scale_minimizes = "a"',
                    "**Rubric (2 points).** 1 point: names `conv1` as the most sensitive and `fc1` as the least")
    CELL_SECONDS = 10  # the slowest cell of a correct submission (the sensitivity check) takes 1.5 s

    def test_a_hidden_failure_does_not_even_show_the_shape_of_the_input(self, graded):
        assert "(16, 1, 3, 3)" not in graded.output("hard_coded_visible_cases", "test_ternarize")
