"""Lab 8 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, LabGradingTests, Target, Wrong

LAB = "lab08_binary_mixed"
POINTS = {"test_binarize": 4, "test_ternarize": 6, "test_quantization_sensitivity": 5}

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

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_via_importlib": Cheat({"binarize": """
import importlib

binary = importlib.import_module("ql" + "ib.binary")

def binarize(w, granularity="channel"):
    return binary.binarize(w, granularity)
"""}, "test_binarize", "reference answer"),
}


class TestLab08Grading(LabGradingTests):
    LAB, POINTS, N_STUBS = LAB, POINTS, 3
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, DIFFERENT, "hard_coded_visible_cases"
    CHEAT_TARGET = Target("binarize", "test_binarize", "qlib.binary.binarize")
    CHEATS = CHEATS
    ANSWER_LINES = ("torch.where(w >= 0, 1, -1).to(torch.int8)", "kept.sum(dim=1)",
                    "reference - accuracy(quantized, data)")
    CELL_SECONDS = 10  # the slowest cell of a correct submission takes under 3 s

    def test_a_hidden_failure_does_not_even_show_the_shape_of_the_input(self, graded):
        assert "(16, 1, 3, 3)" not in graded.output("hard_coded_visible_cases", "test_ternarize")
