"""Lab 6 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, LabGradingTests, Target, Wrong

LAB = "lab06_integer_inference"
POINTS = {"test_quantize_multiplier": 3, "test_saturating_rounding_doubling_high_mul": 2,
          "test_rounding_divide_by_pot": 2, "test_requantize": 3, "test_quantized_linear": 4,
          "test_quantized_conv2d": 6, "test_layer_multiplier": 2, "test_precomputed_terms": 1,
          "test_folded_bias": 2, "test_max_products": 1, "test_fast_quantized_conv2d": 3, "test_which_bug": 1,
          "test_bn_folded_q_bias": 2}
WRITTEN = {"roundings_differ": 2}

# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "round_ties_to_even": Wrong("quantize_multiplier", "test_quantize_multiplier",
                                "sends a tie to the even neighbour", '''
def quantize_multiplier(multiplier):
    f, e = math.frexp(multiplier)
    m0 = round(f * 2**31)
    if m0 == 2**31:
        m0, e = 2**30, e + 1
    return m0, -e
'''),
    "floor_division_in_high_mul": Wrong("saturating_rounding_doubling_high_mul",
                                        "test_saturating_rounding_doubling_high_mul",
                                        "truncates toward zero", '''
def saturating_rounding_doubling_high_mul(a, b):
    ab = torch.as_tensor(a).long() * torch.as_tensor(b).long()
    nudge = torch.where(ab >= 0, 2**30, 1 - 2**30)
    high = (ab + nudge) // 2**31
    return torch.where(ab == 2**62, INT32_MAX, high)
'''),
    "plain_right_shift": Wrong("rounding_divide_by_pot", "test_rounding_divide_by_pot", "rounds down", '''
def rounding_divide_by_pot(x, exponent):
    return torch.as_tensor(x).long() >> torch.as_tensor(exponent).long()
'''),
    "single_rounding": Wrong("requantize", "test_requantize", "round twice", '''
def requantize(acc, m0, shift, zero_point, qmin, qmax):
    total = 31 + torch.as_tensor(shift).long()
    scaled = (torch.as_tensor(acc).long() * torch.as_tensor(m0).long() + (1 << (total - 1))) >> total
    return torch.clamp(scaled + zero_point, qmin, qmax)
'''),
    "relu_at_zero": Wrong("quantized_linear", "test_quantized_linear", "output zero point", '''
def quantized_linear(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                     relu=False, weight_zero_point=0):
    w = q_weight.long() - torch.as_tensor(weight_zero_point).long().reshape(-1, 1)
    acc = (q_x.long() - x_zero_point) @ w.T
    if q_bias is not None:
        acc = acc + q_bias.long()
    return requantize(acc, m0, shift, y_zero_point, max(qmin, 0) if relu else qmin, qmax)
'''),
    "pads_with_zero": Wrong("quantized_conv2d", "test_quantized_conv2d", "pad with the input zero point", '''
def quantized_conv2d(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                     stride=1, padding=0, groups=1, relu=False, weight_zero_point=0):
    x = torch.nn.functional.pad(q_x.long(), (padding,) * 4)
    w = q_weight.long()
    n, (c_out, c_in, kh, kw) = x.shape[0], w.shape
    patches = x.unfold(2, kh, stride).unfold(3, kw, stride)
    oh, ow = patches.shape[2:4]
    cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
    q_y = quantized_linear(cols, w.reshape(c_out, -1), q_bias, x_zero_point, m0, shift, y_zero_point,
                           qmin, qmax, relu, weight_zero_point)
    return q_y.reshape(n, oh, ow, c_out).permute(0, 3, 1, 2)
'''),
    "m0_truncated": Wrong("layer_multiplier", "test_layer_multiplier", "do not cut it off",
                          "m0_of_layer = 1374389534\nshift_of_layer = 9\n"),
    "shift_with_the_wrong_sign": Wrong("layer_multiplier", "test_layer_multiplier", "needs a positive shift",
                                       "m0_of_layer = 1374389535\nshift_of_layer = -9\n"),
    "input_sum_taken_for_a_constant": Wrong("precomputed_terms", "test_precomputed_terms",
                                            "changes with every input row", 'precomputed_terms = "c"\n'),
    "folded_bias_without_the_constant_term": Wrong("folded_bias", "test_folded_bias", "A term is missing",
                                                   "folded_bias = 5000 - 128 * (-300)\n"),
    "products_bounded_by_255": Wrong("max_products", "test_max_products", "how large can",
                                     "max_products = (2**31 - 1) // (127 * 255)\n"),
    "colleague_left_unfixed": Wrong("fast_quantized_conv2d", "test_fast_quantized_conv2d", "at the border",
                                    "fast_quantized_conv2d = colleague_conv2d\n"),
    "bug_blamed_on_the_output_zero_point": Wrong("which_bug", "test_which_bug", "after its two roundings",
                                                 'which_bug = "d"\n'),
    "batch_norm_divided_by_the_variance": Wrong("bn_folded_q_bias", "test_bn_folded_q_bias",
                                                "square root of the variance",
                                                "a = 1.2 / 0.09  # gamma / variance\n"
                                                "bn_folded_q_bias = round((a * (0.3 - 0.8) - 0.4) / 0.0002)\n"),
    "hard_coded_visible_cases": Wrong("quantize_multiplier", "test_quantize_multiplier", "A hidden check failed", '''
def quantize_multiplier(multiplier):
    table = {0.3: (1288490189, 1), 0.5: (2**30, 0), 0.0119: (1635523546, 6), 1.5: (3 * 2**29, -1),
             0.5 + 2**-32: (2**30 + 1, 0), 1 - 2**-40: (2**30, -1)}
    return table.get(multiplier, (2**30, 0))
'''),
}

# --- correct answers written differently: full marks ---------------------------------------------------

DIFFERENT = {
    # exact fractions instead of floats, numpy integers returned
    "quantize_multiplier": '''
from fractions import Fraction

def quantize_multiplier(multiplier):
    exact = Fraction(multiplier)
    shift = 0
    while exact * 2**shift < Fraction(1, 2):
        shift += 1
    while exact * 2**shift >= 1:
        shift -= 1
    m0 = int(exact * 2**shift * 2**31 + Fraction(1, 2))   # positive: int() of v + 1/2 rounds half up
    if m0 == 2**31:
        m0, shift = 2**30, shift - 1
    return np.int64(m0), np.int64(shift)
''',
    # numpy, C division written with absolute values
    "saturating_rounding_doubling_high_mul": '''
def saturating_rounding_doubling_high_mul(a, b):
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    ab = a * b
    num = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    result = np.sign(num) * (np.abs(num) >> 31)
    return np.where((a == -2**31) & (b == -2**31), 2**31 - 1, result)
''',
    # round half away from zero in float64 (exact for |x| < 2^53)
    "rounding_divide_by_pot": '''
def rounding_divide_by_pot(x, exponent):
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) / 2.0 ** np.asarray(exponent) + 0.5)
''',
    "requantize": '''
def requantize(acc, m0, shift, zero_point, qmin, qmax):
    high = saturating_rounding_doubling_high_mul(np.asarray(acc, dtype=np.int64), np.asarray(m0))
    return np.clip(np.asarray(rounding_divide_by_pot(high, np.asarray(shift))) + zero_point, qmin, qmax)
''',
    # zero points folded into the bias ahead of the product, numpy
    "quantized_linear": '''
def quantized_linear(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                     relu=False, weight_zero_point=0):
    x = np.asarray(q_x, dtype=np.int64)
    w = np.asarray(q_weight, dtype=np.int64)
    z_w = np.broadcast_to(np.asarray(weight_zero_point, dtype=np.int64), (w.shape[0],))
    bias = np.zeros(w.shape[0], np.int64) if q_bias is None else np.asarray(q_bias, dtype=np.int64)
    folded = bias - x_zero_point * w.sum(axis=1) + w.shape[1] * z_w * x_zero_point
    acc = x @ w.T + folded - np.outer(x.sum(axis=1), z_w)
    low = max(qmin, y_zero_point) if relu else qmin
    return requantize(acc, m0, shift, y_zero_point, low, qmax)
''',
    # no im2col: one shifted slice of the input per kernel offset, then requantize per channel
    "quantized_conv2d": '''
def quantized_conv2d(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                     stride=1, padding=0, groups=1, relu=False, weight_zero_point=0):
    x = np.pad(np.asarray(q_x, dtype=np.int64), ((0, 0), (0, 0), (padding, padding), (padding, padding)),
               constant_values=x_zero_point) - x_zero_point
    w = np.asarray(q_weight, dtype=np.int64)
    w = w - np.broadcast_to(np.asarray(weight_zero_point, dtype=np.int64), (w.shape[0],)).reshape(-1, 1, 1, 1)
    n, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    acc = np.zeros((n, c_out, oh, ow), dtype=np.int64)
    for u in range(kh):
        for v in range(kw):
            window = x[:, :, u:u + stride * (oh - 1) + 1:stride, v:v + stride * (ow - 1) + 1:stride]
            acc += np.einsum("nchw,oc->nohw", window, w[:, :, u, v])
    if q_bias is not None:
        acc += np.asarray(q_bias, dtype=np.int64).reshape(1, -1, 1, 1)
    per_channel = [np.asarray(p).reshape(-1, 1, 1) if np.asarray(p).size > 1 else p for p in (m0, shift)]
    low = max(qmin, y_zero_point) if relu else qmin
    return requantize(acc, per_channel[0], per_channel[1], y_zero_point, low, qmax)
''',
}

# --- the same answers written otherwise: other spellings, other types, another fix -----------------------

OTHER_SPELLINGS = {
    "layer_multiplier": "import numpy\nm0_of_layer = numpy.int64(1374389535)\nshift_of_layer = 9.0\n",
    "precomputed_terms": 'precomputed_terms = " (B) "\n',
    "folded_bias": "folded_bias = torch.tensor(59784)\n",
    "max_products": "max_products = 132104.0\n",
    # the fix written the other way round: pad the centred input with 0, add Z_X back
    "fast_quantized_conv2d": '''
def fast_quantized_conv2d(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                          stride=1, padding=0, relu=False):
    x = torch.as_tensor(q_x).to(torch.int64)
    w = torch.as_tensor(q_weight).to(torch.int64).reshape(q_weight.shape[0], -1)
    n, (c_out, c_in, kh, kw) = x.shape[0], q_weight.shape
    folded_bias = -x_zero_point * w.sum(dim=1)
    if q_bias is not None:
        folded_bias = folded_bias + torch.as_tensor(q_bias).to(torch.int64)
    x = torch.nn.functional.pad(x - x_zero_point, (padding,) * 4) + x_zero_point
    patches = x.unfold(2, kh, stride).unfold(3, kw, stride)
    oh, ow = patches.shape[2], patches.shape[3]
    cols = patches.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
    low = max(qmin, y_zero_point) if relu else qmin
    q_y = requantize(cols @ w.T + folded_bias, m0, shift, y_zero_point, low, qmax)
    return q_y.reshape(n, oh, ow, c_out).permute(0, 3, 1, 2)
''',
    "which_bug": 'which_bug = "B)"\n',
    "bn_folded_q_bias": "bn_folded_q_bias = -12000.0\n",
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_hidden_import": Cheat({"quantized_linear": """
layers = __import__("ql" + "ib.integer_layers", fromlist=["quantized_linear"])

def quantized_linear(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                     relu=False, weight_zero_point=0):
    return layers.quantized_linear(q_x, q_weight, q_bias, x_zero_point, m0, shift, y_zero_point, qmin, qmax,
                                   relu, weight_zero_point)
"""}, "test_quantized_linear", "reference answer"),
}


class TestLab06Grading(LabGradingTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 13, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**DIFFERENT, **OTHER_SPELLINGS}, "hard_coded_visible_cases"
    CHOICE = Choice("precomputed_terms", "test_precomputed_terms", "precomputed_terms")
    CHEAT_TARGET = Target("quantize_multiplier", "test_quantize_multiplier", "qlib.requantize.quantize_multiplier")
    CHEATS = CHEATS
    ANSWER_LINES = ("m0 = math.floor(f * 2**31 + 0.5)", "threshold = (mask >> 1) + (x < 0)",
                    "patches.permute(0, 2, 3, 1, 4, 5)", 'precomputed_terms = "b"', "m0_of_layer = 1374389535",
                    'which_bug = "b"', "**Rubric (2 points).** 1 point: names the differences in rounding")
    CELL_SECONDS = 10  # the slowest cell of a correct submission takes under 3 s
