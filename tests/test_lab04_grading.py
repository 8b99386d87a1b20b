"""Lab 4 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab04_ptq_granularity"
POINTS = {"test_quantize_per_group": 4, "test_dequantize_per_group": 2, "test_mxint_quantize": 4,
          "test_scale_bits_per_weight": 3, "test_codes_of_a_narrow_row": 2, "test_what_per_channel_misses": 2,
          "test_why_input_scales_cost": 2, "test_design": 4}
WRITTEN = {"mx_or_groups": 2}

# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "one_scale_per_row": Wrong("quantize_per_group", "test_quantize_per_group", "the range of its own group_size", '''
def quantize_per_group(x, axis, group_size, qmin, qmax, symmetric=False):
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.shape[axis] % group_size:
        raise ValueError("group_size does not divide the axis")
    moved = x.movedim(axis, -1)
    qparams = symmetric_qparams if symmetric else asymmetric_qparams
    scale, zero_point = qparams(moved.amin(dim=-1), moved.amax(dim=-1), qmin, qmax)
    q = quantize(moved, scale.unsqueeze(-1), zero_point.unsqueeze(-1), qmin, qmax).movedim(-1, axis)
    n = x.shape[axis] // group_size
    scale = scale.unsqueeze(-1).expand(*scale.shape, n).movedim(-1, axis)
    zero_point = zero_point.unsqueeze(-1).expand(*zero_point.shape, n).movedim(-1, axis)
    return q, scale, zero_point
'''),
    "strided_groups": Wrong("quantize_per_group", "test_quantize_per_group", "CONSECUTIVE values", '''
def quantize_per_group(x, axis, group_size, qmin, qmax, symmetric=False):
    x = torch.as_tensor(x, dtype=torch.float32)
    n = x.shape[axis]
    if n % group_size:
        raise ValueError("group_size does not divide the axis")
    moved = x.movedim(axis, -1)
    groups = moved.reshape(*moved.shape[:-1], group_size, n // group_size).transpose(-1, -2)
    qparams = symmetric_qparams if symmetric else asymmetric_qparams
    scale, zero_point = qparams(groups.amin(dim=-1), groups.amax(dim=-1), qmin, qmax)
    q = quantize(groups, scale.unsqueeze(-1), zero_point.unsqueeze(-1), qmin, qmax)
    q = q.transpose(-1, -2).reshape(moved.shape).movedim(-1, axis)
    return q, scale.movedim(-1, axis), zero_point.movedim(-1, axis)
'''),
    "tiled_instead_of_repeated": Wrong("dequantize_per_group", "test_dequantize_per_group", "instead of repeated", '''
def dequantize_per_group(q, scale, zero_point, axis, group_size):
    reps = [1] * q.dim()
    reps[axis] = group_size
    return dequantize(q, torch.as_tensor(scale).repeat(*reps), torch.as_tensor(zero_point).repeat(*reps))
'''),
    "exponent_from_float32_log2": Wrong("mxint_quantize", "test_mxint_quantize", "torch.frexp", '''
def mxint_quantize(x, bits, block_size=32):
    x = torch.as_tensor(x, dtype=torch.float32)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block_size, block_size)
    amax = blocks.abs().amax(dim=-1)
    s = torch.floor(torch.log2(amax)).clamp(-127, 127).to(torch.int64)
    top = 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(blocks * torch.pow(2.0, (bits - 2 - s).float()).unsqueeze(-1)), -top, top)
    return s, q.reshape(x.shape).to(torch.int64)
'''),
    "groups_floor_not_ceil": Wrong("scale_bits_per_weight", "test_scale_bits_per_weight", "ceil(K / group_size)", '''
def scale_bits_per_weight(shape, granularity, group_size=None, scale_bits=None, zero_point_bits=0):
    out_channels, k = shape[0], math.prod(shape[1:])
    if granularity == "mx":
        group_size, scale_bits = group_size or 32, 8
    scale_bits = 32 if scale_bits is None else scale_bits
    if granularity == "tensor":
        count = 1
    elif granularity == "channel":
        count = out_channels
    else:
        count = out_channels * (k // group_size)
    return count * (scale_bits + zero_point_bits) / (out_channels * k)
'''),
    "levels_not_codes": Wrong("codes_of_a_narrow_row", "test_codes_of_a_narrow_row", "count every code",
                              "codes_of_a_narrow_row = 1\n"),
    "unsigned_grid": Wrong("codes_of_a_narrow_row", "test_codes_of_a_narrow_row", "not to 255",
                           "codes_of_a_narrow_row = 2 * round(2.55) + 1\n"),
    "outlier_rows_still_bad": Wrong("what_per_channel_misses", "test_what_per_channel_misses",
                                    "gets a scale 100 times larger", 'what_per_channel_misses = "a"\n'),
    "input_scales_only_cost_storage": Wrong("why_input_scales_cost", "test_why_input_scales_cost",
                                            "about the arithmetic", 'why_input_scales_cost = "a"\n'),
    "design_over_budget": Wrong("design", "test_design", "over the budget of 4.5",
                                'design = {"granularity": "group", "bits": 4, "group_size": 16, "scale_bits": 16}\n'),
    "design_group_without_size": Wrong("design", "test_design", "needs a group_size",
                                       'design = {"granularity": "group", "bits": 4, "group_size": None, '
                                       '"scale_bits": 16}\n'),
    "hard_coded_visible_cases": Wrong("scale_bits_per_weight", "test_scale_bits_per_weight",
                                      "A hidden check failed", '''
def scale_bits_per_weight(shape, granularity, group_size=None, scale_bits=None, zero_point_bits=0):
    known = {"tensor": 32 / 32768, "channel": 0.0625, "group": 0.15625, "mx": 0.25}
    if tuple(shape) == (32, 16, 3, 3):
        return 160 * 16 / 4608
    return known[granularity]
'''),
}

# --- correct answers written differently (numpy, other algorithms): full marks -------------------

NUMPY_ANSWERS = {
    "quantize_per_group": '''
def quantize_per_group(x, axis, group_size, qmin, qmax, symmetric=False):
    x = np.asarray(x, dtype=np.float32)
    axis = axis % x.ndim
    n_groups, rest = divmod(x.shape[axis], group_size)
    if rest:
        raise ValueError(f"{group_size} does not divide {x.shape[axis]}")
    g = np.moveaxis(x, axis, -1).reshape(*np.moveaxis(x, axis, -1).shape[:-1], n_groups, group_size)
    lo = np.minimum(g.min(axis=-1), 0)
    hi = np.maximum(g.max(axis=-1), 0)
    eps = np.finfo(np.float32).eps
    if symmetric:
        scale = np.maximum(np.maximum(-lo, hi) / np.float32(qmax), eps).astype(np.float32)
        zero_point = np.zeros(scale.shape, dtype=np.int64)
    else:
        scale = np.maximum((hi - lo) / np.float32(qmax - qmin), eps).astype(np.float32)
        zero_point = np.clip(qmin - np.round(lo / scale), qmin, qmax).astype(np.int64)
    q = np.clip(np.round(g / scale[..., None]) + zero_point[..., None], qmin, qmax)
    q = np.moveaxis(q.reshape(np.moveaxis(x, axis, -1).shape), -1, axis)
    return q.astype(np.int32), np.moveaxis(scale, -1, axis), np.moveaxis(zero_point, -1, axis)
''',
    "dequantize_per_group": '''
def dequantize_per_group(q, scale, zero_point, axis, group_size):
    s = np.repeat(np.asarray(scale, dtype=np.float64), group_size, axis=axis)
    z = np.repeat(np.asarray(zero_point), group_size, axis=axis)
    return s * (np.asarray(q) - z)
''',
    "mxint_quantize": '''
def mxint_quantize(x, bits, block_size=32):
    x = np.asarray(x, dtype=np.float64)
    blocks = x.reshape(*x.shape[:-1], -1, block_size)
    amax = np.abs(blocks).max(axis=-1)
    exponent = np.frexp(amax)[1] - 1
    s = np.clip(np.where(amax > 0, exponent, -127), -127, 127)
    top = (1 << (bits - 1)) - 1
    q = np.clip(np.rint(np.ldexp(blocks, (bits - 2 - s)[..., None])), -top, top)
    return s.tolist(), q.reshape(x.shape).astype(np.int16)
''',
    "scale_bits_per_weight": '''
def scale_bits_per_weight(shape, granularity, group_size=None, scale_bits=None, zero_point_bits=0):
    rows = shape[0]
    per_row = 1
    for d in shape[1:]:
        per_row *= d
    if granularity == "tensor":
        n_scales, bits = 1, scale_bits or 32
    elif granularity == "channel":
        n_scales, bits = rows, scale_bits or 32
    else:
        size = group_size or 32
        n_scales = rows * (-(-per_row // size))
        bits = 8 if granularity == "mx" else (scale_bits or 32)
    return n_scales * (bits + zero_point_bits) / (rows * per_row)
''',
}

# --- the same answers written otherwise: other spellings, other types, another design as good ---------

OTHER_SPELLINGS = {
    "codes_of_a_narrow_row": "import numpy\ncodes_of_a_narrow_row = numpy.int64(3)\n",
    "what_per_channel_misses": 'what_per_channel_misses = " (B) "\n',
    "why_input_scales_cost": "why_input_scales_cost = 'B.'\n",
    "design": 'design = dict(granularity="group", bits=4, group_size=32, scale_bits=16)\n',  # 4.5 bits, error 0.027
}

# --- designs that fall short of the target: the tier they reach ---------------------------------------

PARTIAL = {
    "mx_blocks_of_32": Partial({"design": 'design = {"granularity": "mx", "bits": 4, "group_size": None, '
                                          '"scale_bits": None}\n'}, "test_design", 3),
    "per_channel_fp16": Partial({"design": 'design = {"granularity": "channel", "bits": 4, "group_size": None, '
                                           '"scale_bits": 16}\n'}, "test_design", 2),
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_obfuscated": Cheat({"mxint_quantize": """
reference = __import__("ql" + "ib.granularity", fromlist=["mxint_quantize"])


def mxint_quantize(x, bits, block_size=32):
    return reference.mxint_quantize(x, bits, block_size)
"""}, "test_mxint_quantize", "reference answer"),
    **design_cheats("design", "test_design", {"granularity": "mx", "bits": 4, "group_size": 16, "scale_bits": None},
                    "must be one of None, 16, 32"),
    "calls_qlib_via_importlib": Cheat({"scale_bits_per_weight": """
import importlib

storage = importlib.import_module("qlib.scale_storage")


def scale_bits_per_weight(shape, granularity, group_size=None, scale_bits=None, zero_point_bits=0):
    return storage.scale_bits_per_weight(shape, granularity, group_size, scale_bits, zero_point_bits)
"""}, "test_scale_bits_per_weight", "reference answer"),
}


class TestLab04Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 8, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**NUMPY_ANSWERS, **OTHER_SPELLINGS}, "hard_coded_visible_cases"
    CHOICE = Choice("what_per_channel_misses", "test_what_per_channel_misses", "what_per_channel_misses")
    PARTIAL = PARTIAL
    CHEAT_TARGET = Target("dequantize_per_group", "test_dequantize_per_group", "qlib.granularity.dequantize_per_group")
    CHEATS = CHEATS
    ANSWER_LINES = ("count = out_channels * math.ceil(k / group_size)", "torch.frexp(amax).exponent",
                    'what_per_channel_misses = "b"', "**Rubric (2 points).** 1 point: names MX blocks of 32 as better")
    CELL_SECONDS = 10  # the slowest cell of a correct submission takes under 3 s
