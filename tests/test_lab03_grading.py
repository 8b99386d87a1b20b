"""Lab 3 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong

LAB = "lab03_linear_quantization"
POINTS = {"test_integer_range": 2, "test_asymmetric_qparams": 4, "test_symmetric_qparams": 2,
          "test_quantize": 4, "test_dequantize": 2, "test_quantize_per_channel": 4,
          "test_fake_quantize_weights": 3, "test_why_zero_is_exact": 1, "test_breaking_bits": 1,
          "test_zero_rows_of_fc1": 2, "test_rounding_bound": 1, "test_clipped_error": 1, "test_clip_threshold": 4}
WRITTEN = {"why_per_tensor_breaks": 2}

# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "floor_instead_of_round": Wrong("quantize", "test_quantize", "floor instead of round", '''
def quantize(x, scale, zero_point, qmin, qmax):
    return torch.clamp(torch.floor(x / scale) + zero_point, qmin, qmax).to(torch.int64)
'''),
    "zero_point_sign_flipped": Wrong("asymmetric_qparams", "test_asymmetric_qparams", "wrong sign", '''
def asymmetric_qparams(rmin, rmax, qmin, qmax):
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    scale = max((rmax - rmin) / (qmax - qmin), torch.finfo(torch.float32).eps)
    return scale, round(qmin + rmin / scale)
'''),
    "no_clamp": Wrong("quantize", "test_quantize", "not clamped", '''
def quantize(x, scale, zero_point, qmin, qmax):
    return (torch.round(x / scale) + zero_point).to(torch.int64)
'''),
    "symmetric_where_asymmetric_asked": Wrong("quantize_per_channel", "test_quantize_per_channel",
                                              "expected scales", '''
def quantize_per_channel(x, axis, qmin, qmax, symmetric=False):
    n = x.shape[axis]
    scale = torch.empty(n)
    zero_point = torch.zeros(n, dtype=torch.int64)
    for c in range(n):
        ch = x.select(axis, c)
        scale[c], _ = symmetric_qparams(ch.min().item(), ch.max().item(), qmin, qmax)
    shape = [1] * x.dim()
    shape[axis] = n
    return quantize(x, scale.reshape(shape), 0, qmin, qmax), scale, zero_point
'''),
    "granularity_read_as_a_flag": Wrong("fake_quantize_weights", "test_fake_quantize_weights",
                                        "true for any non-empty string", '''
def fake_quantize_weights(model, bits, granularity):
    model = copy.deepcopy(model)
    qmin, qmax = integer_range(bits)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                w = layer.weight
                if granularity:
                    q, scale, zero_point = quantize_per_channel(w, 0, qmin, qmax, symmetric=True)
                    shape = [-1] + [1] * (w.dim() - 1)
                    layer.weight.copy_(dequantize(q, scale.reshape(shape), zero_point.reshape(shape)))
                else:
                    scale, zero_point = symmetric_qparams(w.min().item(), w.max().item(), qmin, qmax)
                    layer.weight.copy_(dequantize(quantize(w, scale, zero_point, qmin, qmax), scale, zero_point))
    return model
'''),
    "qmax_off_by_one": Wrong("integer_range", "test_integer_range", "qmax is one too large", '''
def integer_range(bits, signed=True, narrow=False):
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2 ** bits)
    return qmin + int(narrow), qmax
'''),
    "scale_over_levels_not_steps": Wrong("asymmetric_qparams", "test_asymmetric_qparams", "qmax - qmin steps", '''
def asymmetric_qparams(rmin, rmax, qmin, qmax):
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    scale = max((rmax - rmin) / (qmax - qmin + 1), torch.finfo(torch.float32).eps)
    return scale, min(max(round(qmin - rmin / scale), qmin), qmax)
'''),
    "zero_exact_so_scale_is_positive": Wrong("why_zero_is_exact", "test_why_zero_is_exact",
                                             "which value it produces most often", 'why_zero_is_exact = "a"\n'),
    "breaks_at_three_bits": Wrong("breaking_bits", "test_breaking_bits", "within about a point of FP32",
                                  "breaking_bits = 3\n"),
    "rows_with_a_nonzero_code": Wrong("zero_rows_of_fc1", "test_zero_rows_of_fc1", "keep at least one nonzero code",
                                      "zero_rows_of_fc1 = 44\n"),
    "rows_below_a_whole_step": Wrong("zero_rows_of_fc1", "test_zero_rows_of_fc1", "below half a step",
                                     "zero_rows_of_fc1 = 63\n"),
    "rounding_bound_a_whole_step": Wrong("rounding_bound", "test_rounding_bound", "a whole step",
                                         "rounding_bound = 14.7 / 7\n"),
    "clipped_to_qmin": Wrong("clipped_error", "test_clipped_error", "most NEGATIVE code",
                             "clipped_error = 14.7 - 8 * 0.5\n"),
    "no_clipping_at_all": Wrong("clip_threshold", "test_clip_threshold", "target is not reached",
                                "clip_threshold = 14.7\n"),
    "hard_coded_visible_cases": Wrong("dequantize", "test_dequantize", "A hidden check failed", '''
def dequantize(q, scale, zero_point):
    if scale == 1.0667:
        return torch.tensor([-1.0667, 0.0, 1.0667, 2.1334])
    if scale == 0.02:
        return torch.tensor([-2.56, 0.0, 2.54])
    return q.to(torch.float32)
'''),
}

# --- correct answers written differently: full marks ---------------------------------------------------

NUMPY_ANSWERS = {
    "integer_range": '''
def integer_range(bits, signed=True, narrow=False):
    half = 1 << (bits - 1)
    lo, hi = (-half, half - 1) if signed else (0, (1 << bits) - 1)
    return lo + (1 if narrow else 0), hi
''',
    "asymmetric_qparams": '''
def asymmetric_qparams(rmin, rmax, qmin, qmax):
    lo, hi = np.float32(min(rmin, 0)), np.float32(max(rmax, 0))
    scale = np.maximum(np.float32(hi - lo) / np.float32(qmax - qmin), np.finfo(np.float32).eps)
    return float(scale), int(qmin - np.round(lo / scale))   # qmin - round(r) == round(qmin - r)
''',
    "symmetric_qparams": '''
def symmetric_qparams(rmin, rmax, qmin, qmax):
    return max(np.abs([rmin, rmax]).max() / qmax, np.finfo(np.float32).eps), 0
''',
    "quantize": '''
def quantize(x, scale, zero_point, qmin, qmax):
    x = np.asarray(x, dtype=np.float32)
    q = np.rint(x * (np.float32(1) / np.asarray(scale, dtype=np.float32))) + np.asarray(zero_point)
    return np.clip(q, qmin, qmax).astype(np.int32)
''',
    "dequantize": '''
def dequantize(q, scale, zero_point):
    q = np.asarray(q, dtype=np.float64)
    return (q * np.asarray(scale) - np.asarray(zero_point) * np.asarray(scale)).astype(np.float32)
''',
    "quantize_per_channel": '''
def quantize_per_channel(x, axis, qmin, qmax, symmetric=False):
    x = np.asarray(x, dtype=np.float32)
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    lo, hi = np.minimum(moved.min(axis=1), 0), np.maximum(moved.max(axis=1), 0)
    eps = np.finfo(np.float32).eps
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / np.float32(qmax), eps)
        zero_point = np.zeros_like(scale, dtype=np.int64)
    else:
        scale = np.maximum((hi - lo) / np.float32(qmax - qmin), eps)
        zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.int64)
    shape = [1] * x.ndim
    shape[axis] = -1
    q = np.clip(np.round(x / scale.reshape(shape)) + zero_point.reshape(shape), qmin, qmax)
    return q.astype(np.int64), scale, zero_point
''',
    "fake_quantize_weights": '''
def fake_quantize_weights(model, bits, granularity):
    new = copy.deepcopy(model)
    qmin, qmax = integer_range(bits)
    for name, p in new.named_parameters():
        module = new.get_submodule(name.rsplit(".", 1)[0]) if "." in name else new
        if not name.endswith("weight") or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        w = p.detach().numpy()
        if granularity == "channel":
            amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).reshape([-1] + [1] * (w.ndim - 1))
        else:
            amax = np.abs(w).max()
        scale = np.maximum(amax / np.float32(qmax), np.finfo(np.float32).eps).astype(np.float32)
        w_hat = np.clip(np.round(w / scale), qmin, qmax) * scale
        with torch.no_grad():
            p.copy_(torch.from_numpy(w_hat.astype(np.float32)))
    return new
''',
}

# --- the same answers written otherwise: other spellings, other types, another threshold as good ------

OTHER_SPELLINGS = {
    "why_zero_is_exact": "why_zero_is_exact = ' (B) '\n",
    "breaking_bits": "import numpy\nbreaking_bits = numpy.int64(2)\n",
    "zero_rows_of_fc1": "zero_rows_of_fc1 = torch.tensor(20)\n",
    "rounding_bound": "rounding_bound = torch.tensor(14.7 / 14)\n",
    "clipped_error": "clipped_error = 11.2 + 1e-6\n",
    "clip_threshold": "clip_threshold = np.float32(5.5)  # MSE 0.0921\n",
}

# --- thresholds that fall short of the target: the tier they reach -----------------------------------

PARTIAL = {
    "threshold_a_little_low": Partial({"clip_threshold": "clip_threshold = 4.2  # MSE 0.104\n"},
                                      "test_clip_threshold", 3),
    "threshold_barely_clips": Partial({"clip_threshold": "clip_threshold = 13  # MSE 0.26\n"},
                                      "test_clip_threshold", 1),
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_package_attribute": Cheat({"quantize": """
import qlib

def quantize(x, scale, zero_point, qmin, qmax):
    return qlib.quantize(x, scale, zero_point, qmin, qmax)
"""}, "test_quantize", "reference answer"),
    "calls_qlib_obfuscated": Cheat({"quantize": """
ref = __import__("ql" + "ib").linear

def quantize(x, scale, zero_point, qmin, qmax):
    return ref.quantize(x, scale, zero_point, qmin, qmax)
"""}, "test_quantize", "reference answer"),
    "threshold_smuggles_code": Cheat({"clip_threshold": "clip_threshold = lambda: 5.3\n"},
                                     "test_clip_threshold", "must be int or float"),
    "threshold_that_lies": Cheat({"clip_threshold": """
class Threshold(float):
    def __le__(self, other):
        return True

    __lt__ = __ge__ = __gt__ = __eq__ = __le__
    __hash__ = float.__hash__


clip_threshold = Threshold(14.7)
"""}, "test_clip_threshold", "target is not reached"),
}


class TestLab03Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 13, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**NUMPY_ANSWERS, **OTHER_SPELLINGS}, "hard_coded_visible_cases"
    CHOICE = Choice("why_zero_is_exact", "test_why_zero_is_exact", "why_zero_is_exact")
    PARTIAL = PARTIAL
    CHEAT_TARGET = Target("asymmetric_qparams", "test_asymmetric_qparams", "qlib.linear.asymmetric_qparams")
    CHEATS = CHEATS
    CELL_SECONDS = 10  # the slowest cell of a correct submission (a check on the model) takes about 1 s
    ANSWER_LINES = ("2 ** (bits - 1) - 1", "scale = max((rmax - rmin) / (qmax - qmin)", 'why_zero_is_exact = "b"',
                    "zero_rows_of_fc1 = int(", "clip_threshold = min(candidates",
                    "**Rubric (2 points).** 1 point: the per-tensor scale is set by the largest weight")
