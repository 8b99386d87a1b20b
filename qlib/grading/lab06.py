"""Checks for lab06_integer_inference, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab03`: without ``seed`` the visible cases
are explained in full (input, expected, got, a hint); with ``seed`` the hidden
cases name the kind of input and the likely mistake, never the input itself
or how many cases ran.

Every answer is integer arithmetic, so every check is bit-exact. Expected
values come from :mod:`qlib.requantize` and :mod:`qlib.integer_layers`,
computed before the student's function runs; while it runs, those references
are blocked. A later task that calls an earlier one gets a correct stand-in
for it, so one mistake costs one question.

The questions (a multiplier, the folded bias, an accumulator bound, the bug's letter, a batch norm
folded into an int32 bias) are graded by :mod:`qlib.grading.answers`, without hidden cases. Task 7
(the colleague's folded convolution, fixed) is checked like Task 6, on layers whose padding and
input zero point expose the planted bug.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qlib import integer_layers as ref_layers
from qlib import requantize as ref
from qlib.grading.answers import check_choice, check_number
from qlib.grading.checks_common import hidden_case, passed, task_runner, with_hint
from qlib.grading.harness import (
    as_integers,
    as_pair,
    check_shape,
    fail,
    fmt,
    time_limit,  # noqa: F401  (the lab's experiment cell uses grader.time_limit)
)

#: The qlib functions this lab asks students to write, and those that would do the work for them.
REFERENCES = (
    "quantize_multiplier", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "requantize",
    "multiply_by_quantized_multiplier", "multiply_by_quantized_multiplier_single_round", "quantized_linear",
    "quantized_conv2d", "quantize_bias",
)

INT32_MIN, INT32_MAX = ref.INT32_MIN, ref.INT32_MAX

#: Earlier tasks each task may call; while it is checked they are replaced by correct versions.
EARLIER_TASKS = {
    "requantize": ("saturating_rounding_doubling_high_mul", "rounding_divide_by_pot"),
    "quantized_linear": ("saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "requantize"),
    "quantized_conv2d": ("saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "requantize",
                         "quantized_linear"),
    "fast_quantized_conv2d": ("saturating_rounding_doubling_high_mul", "rounding_divide_by_pot", "requantize",
                              "quantized_linear", "quantized_conv2d"),
}
#: The correct versions that stand in for them.
STAND_INS = {
    "saturating_rounding_doubling_high_mul": ref.saturating_rounding_doubling_high_mul,
    "rounding_divide_by_pot": ref.rounding_divide_by_pot,
    "requantize": ref.requantize,
    "quantized_linear": ref_layers.quantized_linear,
    "quantized_conv2d": ref_layers.quantized_conv2d,
}
_run = task_runner(REFERENCES, EARLIER_TASKS, STAND_INS)


def _hint_from(got: np.ndarray, variants: dict, default: str) -> str:
    """The hint of the first variant (a likely mistake) that ``got`` equals."""
    for hint, value in variants.items():
        value = np.asarray(value)
        if value.shape == got.shape and np.array_equal(got, value):
            return hint
    return default


def _first_difference(inputs: dict, expected: np.ndarray, got: np.ndarray) -> str:
    """Where ``got`` first differs from ``expected``, with the inputs at that place."""
    index = tuple(int(i) for i in np.argwhere(expected != got)[0])
    at = ", ".join(f"{name} = {int(np.broadcast_to(v, expected.shape)[index])}" for name, v in inputs.items())
    return f"first difference where {at}: expected {expected[index]}, got {got[index]}"


# --- Task 1: quantize_multiplier ----------------------------------------------------------------

def _multiplier_cases(seed: int):
    gen = np.random.default_rng(seed)
    cases = [("in (0, 1)", float(m)) for m in 2.0 ** gen.uniform(-31, 0, 300)]
    cases += [("at least 1", float(m)) for m in 2.0 ** gen.uniform(0, 20, 40)]
    cases += [("exactly halfway between two values of m0 (a tie)", m)
              for m in (0.5 + 2**-32, 0.75 + 5 * 2**-32, (2**30 + 7.5) * 2**-37)]
    cases += [("just below a power of two, where m0 rounds up to 2^31", m) for m in (1 - 2**-40, 0.25 - 2**-45)]
    return cases + [("a power of two", m) for m in (1.0, 0.5, 2.0**-20)]


def _quantize_multiplier_hint(m: float, m0: int, shift: int) -> str:
    ref_m0, ref_shift = (int(v) for v in ref.quantize_multiplier(m))
    f, e = math.frexp(m)
    if shift == -ref_shift and shift != ref_shift:
        return ("the shift has the wrong sign: M = m0 * 2^-31 * 2^-shift, so a multiplier below 0.5 needs a "
                "positive shift (a right shift): shift = -e for M = f * 2^e.")
    if m0 == 2**31:
        return "m0 = 2^31 does not fit in int32: when rounding gives 2^31, use m0 = 2^30 and one shift less."
    if m0 == round(f * 2**31) and m0 != ref_m0:
        return ("Python's round() sends a tie to the even neighbour; round half away from zero, as TFLite does "
                "(for a positive number: math.floor(v + 0.5)).")
    if m0 == math.floor(f * 2**31):
        return "int() and floor() cut the fraction off: round f * 2^31 to the nearest integer."
    if not 2**30 <= m0 < 2**31:
        return "m0 must lie in [2^30, 2^31): take the mantissa f in [0.5, 1) of math.frexp(M) and m0 = round(f * 2^31)."
    return "write M = f * 2^e with math.frexp; then m0 = round(f * 2^31) (half away from zero) and shift = -e."


def check_quantize_multiplier(quantize_multiplier, seed=None):
    """Task 1: (m0, shift) with M ~= m0 * 2^-31 * 2^-shift."""
    task = "quantize_multiplier"
    visible = (0.3, 0.5, 0.0119, 1.5, 0.5 + 2**-32, 1 - 2**-40)  # the last two: a tie and a carry
    cases = [("visible", m) for m in visible] if seed is None else _multiplier_cases(seed)
    for kind, m in cases:
        expected = tuple(int(v) for v in ref.quantize_multiplier(m))
        got = as_pair(_run(task, quantize_multiplier, m), task, task)
        m0, shift = (as_integers(v, name, task) for v, name in zip(got, ("m0", "shift")))
        if m0.size != 1 or shift.size != 1:
            fail(f"{task}: for one multiplier, m0 and shift should be single integers, "
                 f"got shapes {m0.shape} and {shift.shape}.")
        got = (int(m0.reshape(())), int(shift.reshape(())))
        if got != expected:
            hint = _quantize_multiplier_hint(m, *got)
            fail(with_hint(f"{task}({m!r}): expected (m0, shift) = {expected}, got {got}.", hint)
                 if seed is None else hidden_case(f"quantize_multiplier on a multiplier {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 2: saturating_rounding_doubling_high_mul ----------------------------------------------

def _random_int32(gen, n):
    bits = gen.integers(0, 32, n)
    spread = gen.integers(-(2**bits), 2**bits, endpoint=True).clip(INT32_MIN, INT32_MAX)
    return np.concatenate([gen.integers(INT32_MIN, INT32_MAX, n, endpoint=True), spread])


def _tie_pairs(gen, n):
    """Pairs with a * b = 2^30 * odd, so that a * b / 2^31 lies exactly halfway between two integers."""
    t = gen.integers(0, 31, n)
    a = (gen.integers(0, 2**15, n) * 2 + 1) << (30 - t)
    b = (gen.integers(0, 2**15, n) * 2 + 1) << t
    return a % 2**31 * gen.choice([-1, 1], n), b % 2**31 * gen.choice([-1, 1], n)


def _c_div(p: int, d: int) -> int:
    """C's integer division (truncates toward zero) on Python ints."""
    q = abs(p) // d
    return q if p >= 0 else -q


def _srdhm_variants(a: np.ndarray, b: np.ndarray) -> dict:
    """What common mistakes return (Python ints, exact)."""
    pairs = list(zip(a.tolist(), b.tolist()))

    def variant(rounded, saturate=True):
        return np.array([INT32_MAX if saturate and x == y == INT32_MIN else rounded(x * y) for x, y in pairs],
                        dtype=np.int64)

    def nudge(p):
        return 2**30 if p >= 0 else 1 - 2**30

    return {
        "torch's // and >> round down (floor), but C's integer division truncates toward zero: "
        "use torch.div(..., rounding_mode='trunc').": variant(lambda p: (p + nudge(p)) // 2**31),
        "for a negative product the nudge is 1 - 2^30, not -2^30: a tie goes up (-2.5 -> -2).":
            variant(lambda p: _c_div(p + (2**30 if p >= 0 else -(2**30)), 2**31)),
        "INT32_MIN * INT32_MIN (-1 * -1) must saturate to INT32_MAX.":
            variant(lambda p: _c_div(p + nudge(p), 2**31), saturate=False),
    }


def check_saturating_rounding_doubling_high_mul(saturating_rounding_doubling_high_mul, seed=None):
    """Task 2: gemmlowp's SaturatingRoundingDoublingHighMul on int32 tensors."""
    task = "saturating_rounding_doubling_high_mul"
    if seed is None:
        a = np.array([5 * 2**28, -5 * 2**28, 3, -3, INT32_MIN, 2**30, 123456789, -987654321, 0])
        b = np.array([4, 4, 2**30, 2**30, INT32_MIN, 2**30, 987654321, 123456789, INT32_MAX])
        cases = [("visible", a, b, torch.int64), ("visible", a, b, torch.int32)]
    else:
        gen = np.random.default_rng(seed)
        cases = []
        for i in range(4):
            ta, tb = _tie_pairs(gen, 2000)
            cases.append(("random int32 values", _random_int32(gen, 5000), _random_int32(gen, 5000),
                          torch.int64 if i % 2 == 0 else torch.int32))
            cases.append(("products exactly halfway between two integers (ties)", ta, tb, torch.int64))
        extremes = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX])
        ea, eb = np.meshgrid(extremes, extremes)
        cases.append(("INT32_MIN, INT32_MAX and their neighbours", ea.ravel(), eb.ravel(), torch.int32))
    for kind, a, b, dtype in cases:
        ta, tb = torch.from_numpy(a.astype(np.int64)).to(dtype), torch.from_numpy(b.astype(np.int64)).to(dtype)
        expected = ref.saturating_rounding_doubling_high_mul(ta, tb).numpy()
        got = as_integers(_run(task, saturating_rounding_doubling_high_mul, ta.clone(), tb.clone()), "the result", task)
        check_shape(got, expected.shape, "the result", task)
        if np.array_equal(got, expected):
            continue
        hint = _hint_from(got, _srdhm_variants(a, b), "compare your steps with the formula in the docstring.")
        if dtype == torch.int32 and hint.startswith("compare"):
            hint = ("with int32 tensors a * b overflows: the product of two int32 values needs 64 bits, "
                    "so convert to torch.int64 first.")
        fail(with_hint(f"{task}(a, b) with {dtype} tensors\na = {fmt(a)}\nb = {fmt(b)}:\n"
                       f"expected {fmt(expected)}\ngot      {fmt(got)}\n"
                       f"{_first_difference({'a': a, 'b': b}, expected, got)}.", hint)
             if seed is None else hidden_case(f"{task} on {kind} ({dtype} tensors)", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 3: rounding_divide_by_pot --------------------------------------------------------------

def _rdbpot_variants(x: np.ndarray, e: np.ndarray) -> dict:
    x, e = x.astype(np.int64), np.broadcast_to(e, x.shape).astype(np.int64)
    half = np.where(e > 0, 1 << np.maximum(e - 1, 0), 0)
    exact = x / 2.0**e
    return {
        "an arithmetic shift x >> exponent rounds down: add 1 when the bits shifted out are more than half.":
            x >> e,
        "(x + 2^(exponent-1)) >> exponent sends negative ties up (-2.5 -> -2); gemmlowp sends ties away from "
        "zero (-2.5 -> -3): the threshold is one higher when x < 0.": (x + half) >> e,
        "ties go away from zero, not to the even neighbour (2.5 -> 3, -2.5 -> -3).": np.round(exact).astype(np.int64),
        "exponent 0 divides by 1: the result is x itself.": np.where(e == 0, x + 1, x),
    }


def check_rounding_divide_by_pot(rounding_divide_by_pot, seed=None):
    """Task 3: gemmlowp's RoundingDivideByPOT (round half away from zero)."""
    task = "rounding_divide_by_pot"
    if seed is None:
        x = np.array([5, -5, 7, -7, -6, 6, 1, -1, 100, -100, INT32_MIN, INT32_MAX])
        cases = [("visible", x, 1), ("visible", x, 2), ("visible", x, 0), ("visible", x, 31)]
    else:
        gen = np.random.default_rng(seed)
        cases = [("random int32 values", _random_int32(gen, 2000), int(e)) for e in range(32)]
        for e in range(1, 32):
            k = gen.integers(-(2**15), 2**15, 500)
            ties = np.clip(k * (1 << e) + (1 << (e - 1)), INT32_MIN, INT32_MAX)
            cases.append(("values exactly halfway between two results (ties)", ties, e))
        x = _random_int32(gen, 3000)
        cases.append(("an exponent given as a tensor, one per value", x, gen.integers(0, 32, x.size)))
    for kind, x, e in cases:
        tx = torch.from_numpy(x.astype(np.int64))
        te = e if isinstance(e, int) else torch.from_numpy(np.asarray(e, dtype=np.int64))
        expected = ref.rounding_divide_by_pot(tx, te).numpy()
        got = as_integers(_run(task, rounding_divide_by_pot, tx.clone(), te if isinstance(te, int) else te.clone()),
                          "the result", task)
        check_shape(got, expected.shape, "the result", task)
        if np.array_equal(got, expected):
            continue
        hint = _hint_from(got, _rdbpot_variants(x, np.asarray(e)),
                          "compare your steps with the formula in the docstring.")
        fail(with_hint(f"{task}(x, exponent={e}) with x = {fmt(x)}:\nexpected {fmt(expected)}\ngot      {fmt(got)}\n"
                       f"{_first_difference({'x': x}, expected, got)}.", hint)
             if seed is None else hidden_case(f"{task} on {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 4: requantize -------------------------------------------------------------------------

def _requantize_variants(acc, m0, shift, zp, qmin, qmax) -> dict:
    acc64 = torch.from_numpy(acc)
    m0, shift = torch.as_tensor(m0), torch.as_tensor(shift)
    scaled = ref.multiply_by_quantized_multiplier(acc64, m0, shift)
    single = ref.multiply_by_quantized_multiplier_single_round(acc64, m0, shift)
    real = acc.astype(np.float64) * ref.dequantize_multiplier(m0, shift).numpy()
    return {
        "round twice, as gemmlowp does: saturating_rounding_doubling_high_mul(acc, m0), then "
        "rounding_divide_by_pot(..., shift). Rounding acc * M once gives a different integer in some cases "
        "(398 * 0.3 = 119.4 -> 119, but gemmlowp gives 120).": torch.clamp(single + zp, qmin, qmax).numpy(),
        "rescale with integers only: the two gemmlowp roundings, not a float multiplication.":
            np.clip(np.round(real) + zp, qmin, qmax),
        "add the output zero point before clamping.": torch.clamp(scaled, qmin, qmax).numpy(),
        "clamp the result to [qmin, qmax].": (scaled + zp).numpy(),
        "add the zero point first, then clamp (clamping first can leave the range).":
            (torch.clamp(scaled, qmin, qmax) + zp).numpy(),
    }


def _requantize_cases(seed: int):
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(30):
        bits = int(gen.integers(2, 9)) if i % 3 else 8
        signed = bool(i % 2)
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        zp = int(gen.integers(qmin, qmax + 1))
        per_channel = i % 4 == 3
        shape = (int(gen.integers(1, 20)), int(gen.integers(1, 9)))
        # small shifts (M near 1) are where the two roundings most often differ from one rounding
        mult = 2.0 ** gen.uniform(-4 if i % 2 else -20, -0.01, shape[1] if per_channel else 1)
        # accumulators whose outputs mostly land inside [qmin, qmax], a few far outside
        span = (qmax - qmin) / mult
        acc = np.round(gen.uniform(-1, 1, shape) * span).astype(np.int64)
        acc.flat[0] = int(gen.integers(INT32_MIN, INT32_MAX))
        m0, shift = ref.quantize_multiplier(torch.from_numpy(mult))
        if not per_channel:
            m0, shift = int(m0[0]), int(shift[0])
        kind = "one multiplier per output channel (the last axis)" if per_channel else "one multiplier"
        cases.append((f"{kind}, {'signed' if signed else 'unsigned'} {bits}-bit output", acc, m0, shift, zp,
                      qmin, qmax, torch.int32 if i % 5 == 4 else torch.int64))
    return cases


def check_requantize(requantize, seed=None):
    """Task 4: q = clamp(MBQM(acc, m0, shift) + zero_point, qmin, qmax)."""
    task = "requantize"
    if seed is None:
        m0, shift = (int(v) for v in ref.quantize_multiplier(0.01))
        acc = np.array([1000, -1000, 12345, 50000, 50, -50, 149, -151])
        pc_m0, pc_shift = ref.quantize_multiplier(torch.tensor([0.01, 0.002, 0.3]))
        acc2 = np.array([[1000, 1000, 1000], [-2500, 12345, -77]])
        m0_b, shift_b = (int(v) for v in ref.quantize_multiplier(0.3))
        acc3 = np.array([398, -398, 100, -100, 5, -5, 3, -3])  # 398 * 0.3 = 119.4, but gemmlowp gives 120
        cases = [("visible", acc, m0, shift, 3, -128, 127, torch.int64),
                 ("visible", acc2, pc_m0, pc_shift, 0, 0, 255, torch.int64),
                 ("visible", acc3, m0_b, shift_b, 0, -128, 127, torch.int32)]
    else:
        cases = _requantize_cases(seed)
    for kind, acc, m0, shift, zp, qmin, qmax, dtype in cases:
        t_acc = torch.from_numpy(acc.astype(np.int64)).to(dtype)
        expected = ref.requantize(t_acc, m0, shift, zp, qmin, qmax).numpy()
        m0_arg = m0.clone() if isinstance(m0, torch.Tensor) else m0
        shift_arg = shift.clone() if isinstance(shift, torch.Tensor) else shift
        got = as_integers(_run(task, requantize, t_acc.clone(), m0_arg, shift_arg, zp, qmin, qmax), "q", task)
        check_shape(got, expected.shape, "q", task)
        if np.array_equal(got, expected):
            continue
        hint = _hint_from(got, _requantize_variants(acc.astype(np.int64), m0, shift, zp, qmin, qmax),
                          "q = clamp(rounding_divide_by_pot(saturating_rounding_doubling_high_mul(acc, m0), shift) "
                          "+ zero_point, qmin, qmax).")
        fail(with_hint(f"{task}(acc, m0={fmt(np.asarray(m0))}, shift={fmt(np.asarray(shift))}, zero_point={zp}, "
                       f"qmin={qmin}, qmax={qmax}) with acc = {fmt(acc)}:\n"
                       f"expected {fmt(expected)}\ngot      {fmt(got)}\n"
                       f"{_first_difference({'acc': acc}, expected, got)}.", hint)
             if seed is None else hidden_case(f"{task} with {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 5: quantized_linear -------------------------------------------------------------------

def _layer_case(gen, kind: str, conv: bool = False):
    """A random integer layer: inputs, int8 weights, int32 bias, multipliers, output range."""
    relu = "ReLU" in kind
    per_channel = "per output channel" in kind
    small_dtype = "uint8" in kind
    asym_w = "weight zero point" in kind
    no_bias = "no bias" in kind
    c_in, c_out = int(gen.integers(1, 9)), int(gen.integers(1, 7))
    if conv:
        k = int(gen.integers(1, 4))
        stride, padding = int(gen.integers(1, 3)), int(gen.integers(0, 3))
        h, w = int(gen.integers(k, 9)), int(gen.integers(k, 9))
        q_x = gen.integers(0, 256, (int(gen.integers(1, 4)), c_in, h, w))
        q_w = gen.integers(-127, 128, (c_out, c_in, k, k))
        geometry = {"stride": stride, "padding": padding}
    else:
        q_x = gen.integers(0, 256, (int(gen.integers(1, 12)), c_in * 4))
        q_w = gen.integers(-127, 128, (c_out, c_in * 4))
        geometry = {}
    x_zp = int(gen.integers(0, 256))
    q_b = None if no_bias else gen.integers(-(2**16), 2**16, c_out)
    mult = 2.0 ** gen.uniform(-13, -7, c_out if per_channel else 1)
    m0, shift = ref.quantize_multiplier(torch.from_numpy(mult))
    if not per_channel:
        m0, shift = int(m0[0]), int(shift[0])
    qmin, qmax = (0, 255) if gen.integers(0, 2) else (-128, 127)
    y_zp = int(gen.integers(qmin, qmax))  # below qmax: a fused ReLU then keeps at least two output levels
    w_zp = int(gen.integers(-5, 6)) if asym_w else 0
    x_dtype = torch.uint8 if small_dtype else torch.int64
    return dict(q_x=torch.from_numpy(q_x).to(x_dtype), q_weight=torch.from_numpy(q_w).to(torch.int8),
                q_bias=None if q_b is None else torch.from_numpy(q_b).to(torch.int32), x_zero_point=x_zp,
                m0=m0, shift=shift, y_zero_point=y_zp, qmin=qmin, qmax=qmax, relu=relu, weight_zero_point=w_zp,
                **geometry)


LAYER_KINDS = ["int64 inputs and one multiplier", "a fused ReLU", "one multiplier per output channel",
               "a uint8 input tensor", "no bias (q_bias=None)", "a weight zero point (asymmetric weights)",
               "one multiplier per output channel and a fused ReLU"]


def _clone(args: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def _positional(args: dict, names: tuple) -> tuple[tuple, dict]:
    """The arguments the way the integer digits model passes them: positional, then keywords."""
    return tuple(args[n] for n in names), {k: v for k, v in args.items() if k not in names}


LINEAR_POSITIONAL = ("q_x", "q_weight", "q_bias", "x_zero_point", "m0", "shift", "y_zero_point", "qmin", "qmax")


def _layer_outputs(task: str, fn, reference, args: dict, positional: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(expected, got): qlib's ``reference`` layer and the student's ``fn`` on the same ``args``."""
    expected = reference(**_clone(args)).numpy()
    names, keywords = _positional(_clone(args), positional)
    return expected, as_integers(_run(task, fn, *names, **keywords), "q_y", task)


def _linear_variants(args: dict) -> dict:
    a = _clone(args)
    variants = {}
    no_zx = dict(a, x_zero_point=0)
    variants["the input zero point is missing: the real input is S_X (q_X - Z_X), not S_X q_X."] = no_zx
    if a["relu"]:
        variants["a fused ReLU clamps at the output zero point Z_Y (the integer for real 0), not at 0."] = dict(
            a, relu=False, qmin=max(a["qmin"], 0))
        variants["relu=True asks for a fused ReLU: clamp at max(qmin, Z_Y)."] = dict(a, relu=False)
    if a["q_bias"] is not None:
        variants["add the bias q_bias to the accumulator."] = dict(a, q_bias=None)
    if a["weight_zero_point"]:
        variants["the weight zero point is missing: the real weight is S_W (q_W - Z_W), with one Z_W per output "
                 "channel."] = dict(a, weight_zero_point=0)
    out = {}
    for hint, v in variants.items():
        try:
            out[hint] = ref_layers.quantized_linear(**v).numpy()
        except (ValueError, TypeError):
            pass
    return out


def _wraps_small_ints(fn, task, args, expected) -> bool:
    """True if the submission is right once its inputs are int64: it let uint8 arithmetic wrap around."""
    if args["q_x"].dtype not in (torch.uint8, torch.int8) and args["q_weight"].dtype not in (torch.uint8, torch.int8):
        return False
    wide = {k: (v.to(torch.int64) if isinstance(v, torch.Tensor) else v) for k, v in _clone(args).items()}
    try:
        got = as_integers(_run(task, fn, **wide), "q", task)
    except AssertionError:
        return False
    return got.shape == expected.shape and np.array_equal(got, expected)


WRAP_HINT = ("the inputs are uint8/int8 tensors, whose arithmetic wraps around (uint8: 3 - 5 = 254): "
             "convert them to torch.int64 before subtracting and multiplying.")


def check_quantized_linear(quantized_linear, seed=None):
    """Task 5: the integer-only fully connected layer."""
    task = "quantized_linear"
    if seed is None:
        base = dict(q_x=torch.tensor([[10, 20, 30, 40], [0, 255, 128, 7]]),
                    q_weight=torch.tensor([[1, -2, 3, -4], [127, 0, -127, 5], [-1, -1, -1, -1]], dtype=torch.int8),
                    q_bias=torch.tensor([100, -2000, 50], dtype=torch.int32), x_zero_point=128,
                    m0=int(ref.quantize_multiplier(0.02)[0]), shift=int(ref.quantize_multiplier(0.02)[1]),
                    y_zero_point=10, qmin=0, qmax=255, relu=False, weight_zero_point=0)
        cases = [("visible", base), ("visible", dict(base, relu=True))]
    else:
        gen = np.random.default_rng(seed)
        cases = [(kind, _layer_case(gen, kind)) for _ in range(4) for kind in LAYER_KINDS]
    for kind, args in cases:
        expected, got = _layer_outputs(task, quantized_linear, ref_layers.quantized_linear, args, LINEAR_POSITIONAL)
        check_shape(got, expected.shape, "q_y (N, C_out)", task)
        if np.array_equal(got, expected):
            continue
        if _wraps_small_ints(quantized_linear, task, args, expected):
            hint = WRAP_HINT
        else:
            hint = _hint_from(got, _linear_variants(args),
                              "acc must satisfy y = S_W S_X acc: substitute x = S_X (q_X - Z_X), "
                              "W = S_W (q_W - Z_W) and b = S_W S_X q_b into y = W x + b. Then "
                              "requantize(acc, m0, shift, Z_Y, qmin', qmax), qmin' = max(qmin, Z_Y) under a "
                              "fused ReLU.")
        fail(with_hint(f"{task}({_shown(args)}):\nexpected {fmt(expected)}\ngot      {fmt(got)}", hint)
             if seed is None else hidden_case(f"{task} on a layer with {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 6: quantized_conv2d -------------------------------------------------------------------

CONV_POSITIONAL = LINEAR_POSITIONAL + ("stride", "padding")


def _conv_variants(args: dict) -> dict:
    a = _clone(args)
    variants = {}
    if a["padding"]:
        p = a["padding"]
        padded = torch.nn.functional.pad(a["q_x"].to(torch.int64), (p, p, p, p), value=0)
        variants["pad with the input zero point Z_X (the integer that stands for real 0), not with 0."] = dict(
            a, q_x=padded, padding=0)
    variants["a convolution layer computes a cross-correlation: do not flip the kernel."] = dict(
        a, q_weight=a["q_weight"].flip(2, 3))
    variants["subtract the input zero point: (q_X - Z_X) in every window."] = dict(a, x_zero_point=0)
    c_out, c_in, kh, kw = a["q_weight"].shape
    read_as_uvc = a["q_weight"].reshape(c_out, kh, kw, c_in).permute(0, 3, 1, 2)
    variants["the patch columns are in (row, column, channel) order, but q_weight.reshape(C_out, -1) is in "
             "(channel, row, column) order: arrange each patch as (C_in, kh, kw) before flattening it."] = dict(
        a, q_weight=read_as_uvc)
    if a["relu"]:
        variants["a fused ReLU clamps at the output zero point Z_Y, not at 0."] = dict(
            a, relu=False, qmin=max(a["qmin"], 0))
    out = {}
    for hint, v in variants.items():
        try:
            out[hint] = ref_layers.quantized_conv2d(**v).numpy()
        except (ValueError, TypeError):
            pass
    return out


def _visible_conv_layer(seed: int) -> dict:
    """The visible cases' convolution, without its geometry: a 5x5 input of 2 channels, 3 kernels 3x3, uint8 out."""
    gen = np.random.default_rng(seed)
    q_x = torch.from_numpy(gen.integers(0, 256, (1, 2, 5, 5)))
    q_w = torch.from_numpy(gen.integers(-127, 128, (3, 2, 3, 3))).to(torch.int8)
    m0, shift = (int(v) for v in ref.quantize_multiplier(0.003))
    return dict(q_x=q_x, q_weight=q_w, q_bias=torch.tensor([500, -500, 0], dtype=torch.int32),
                x_zero_point=100, m0=m0, shift=shift, y_zero_point=128, qmin=0, qmax=255, relu=False)


def _shown(args: dict) -> str:
    """The arguments of a visible case, as the message shows them."""
    return ", ".join(f"{k}={fmt(np.asarray(v)) if isinstance(v, torch.Tensor) else v}" for k, v in args.items())


def _conv_case(task: str, args: dict, got: np.ndarray, expected: np.ndarray) -> str:
    """A visible convolution case that fails: its layer, how many outputs differ, and the first of them."""
    differ = got != expected
    index = tuple(int(i) for i in np.argwhere(differ)[0])
    return (f"{task} on an input of shape {tuple(args['q_x'].shape)} with q_weight of shape "
            f"{tuple(args['q_weight'].shape)}, stride={args['stride']}, padding={args['padding']}, "
            f"relu={args['relu']}, x_zero_point={args['x_zero_point']}: {int(differ.sum())} of "
            f"{got.size} outputs differ; the first at (n, c_out, i, j) = {index}: expected {expected[index]}, "
            f"got {got[index]}.")


CONV_KINDS = ["int64 inputs and one multiplier", "a fused ReLU", "one multiplier per output channel",
              "a uint8 input tensor", "no bias (q_bias=None)", "a weight zero point (asymmetric weights)"]


def check_quantized_conv2d(quantized_conv2d, seed=None):
    """Task 6: the integer-only 2-D convolution (groups=1)."""
    task = "quantized_conv2d"
    if seed is None:
        base = dict(_visible_conv_layer(60), weight_zero_point=0)
        cases = [("visible", dict(base, stride=1, padding=1)), ("visible", dict(base, stride=2, padding=0, relu=True))]
    else:
        gen = np.random.default_rng(seed)
        cases = [(kind, _layer_case(gen, kind, conv=True)) for _ in range(3) for kind in CONV_KINDS]
    for kind, args in cases:
        expected, got = _layer_outputs(task, quantized_conv2d, ref_layers.quantized_conv2d, args, CONV_POSITIONAL)
        if got.shape != expected.shape:
            k, s, p = args["q_weight"].shape[2], args["stride"], args["padding"]
            fail(f"{task} (input of shape {tuple(args['q_x'].shape)}, kernel {k}x{k}, stride {s}, padding {p}): "
                 f"q_y should have shape {expected.shape} (N, C_out, OH, OW), got {got.shape}. Hint: "
                 "OH = (H + 2 * padding - kh) // stride + 1, and the channels come before the rows and columns.")
        if np.array_equal(got, expected):
            continue
        n_out, c_out, oh, ow = expected.shape
        if np.array_equal(got, expected.transpose(0, 2, 3, 1).reshape(expected.shape)):
            hint = ("the rows of the patch product are the output positions (n, i, j) and its columns the "
                    "channels: reshape it to (N, OH, OW, C_out), then permute to (N, C_out, OH, OW).")
        elif _wraps_small_ints(quantized_conv2d, task, args, expected):
            hint = WRAP_HINT
        else:
            hint = _hint_from(got, _conv_variants(args),
                              "cut the padded input into patches (in the same channel, row, column order as "
                              "q_weight.reshape(C_out, -1)) and apply your quantized_linear to them.")
        fail(with_hint(_conv_case(task, args, got, expected), hint)
             if seed is None else hidden_case(f"{task} on a layer with {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Question 1: the multiplier of a layer, by hand -------------------------------------------------

#: The scales of Question 1's layer: M = S_W S_X / S_Y = 0.00125 = 0.64 * 2^-9.
QUESTION1_SCALES = {"S_X": 0.05, "S_W": 0.004, "S_Y": 0.16}


def check_layer_multiplier(m0_of_layer, shift_of_layer):
    """Question 1: (m0, shift) of M = S_W S_X / S_Y, worked out by hand (Task 1's rules)."""
    s = QUESTION1_SCALES
    multiplier = s["S_W"] * s["S_X"] / s["S_Y"]
    m0, shift = (int(v) for v in ref.quantize_multiplier(multiplier))
    f, e = math.frexp(multiplier)
    check_number("Question 1 (shift)", shift_of_layer, shift, rel_tol=0.0, abs_tol=1e-6, whole=True, mistakes=[
        (-shift, "The sign: M is below 0.5, so M = m0 * 2^-31 * 2^-shift needs a positive shift (a right shift)."),
        (shift + 1, "Write M = f * 2^e with the mantissa f in [0.5, 1), as math.frexp does, not in [1, 2)."),
        (shift - 1, "Write M = f * 2^e with the mantissa f in [0.5, 1), as math.frexp does: f * 2^e must equal M."),
    ], hint="Compute M = S_W S_X / S_Y, then the power of two that brings it into [0.5, 1).")
    check_number("Question 1 (m0)", m0_of_layer, m0, rel_tol=0.0, abs_tol=1e-6, whole=True, mistakes=[
        (math.floor(f * 2**31), "f * 2^31 is not a whole number: round it to the nearest integer, do not cut it off."),
        (f * 2**31, "m0 is an integer: round f * 2^31."),
        (round(multiplier * 2**31), "That is M * 2^31: first write M = f * 2^e with f in [0.5, 1); m0 holds f."),
        (round(f * 2**32), "m0 = round(f * 2^31), a Q0.31 number in [2^30, 2^31)."),
    ], hint="m0 = round(f * 2^31) for the mantissa f in [0.5, 1) of M = f * 2^e.")


# --- Question 2 and 3: the zero points folded into the bias ------------------------------------------

def check_precomputed_terms(precomputed_terms):
    """Question 2: of the four sums, Z_X sum_k q_W and K Z_W Z_X are constants of the layer."""
    check_choice("Question 2", precomputed_terms, "b", hints={
        "a": "sum_k q_W q_X multiplies the weights with the input: it is the work of the layer, done for every "
             "input.",
        "c": "sum_k q_X[n, k] adds up the input: it changes with every input row, so it cannot be computed "
             "before the input arrives.",
        "d": "A term is a constant of the layer only if it holds no q_X at all: check each of the four.",
    })


#: Question 3's output channel: K products, the weights' sum, the zero points and the int32 bias.
QUESTION3_LAYER = {"K": 64, "sum_q_w": -300, "Z_W": 2, "Z_X": 128, "q_b": 5000}


def check_folded_bias(folded_bias):
    """Question 3: q_b - Z_X sum q_W + K Z_W Z_X for one output channel."""
    c = QUESTION3_LAYER
    zx_term, zz_term = c["Z_X"] * c["sum_q_w"], c["K"] * c["Z_W"] * c["Z_X"]
    expected = c["q_b"] - zx_term + zz_term
    check_number("Question 3", folded_bias, expected, rel_tol=0.0, abs_tol=1e-6, whole=True, mistakes=[
        (c["q_b"] - zx_term, "A term is missing: expand (q_W - Z_W)(q_X - Z_X) into four sums; with Z_W != 0 "
                             "two of them hold no q_X."),
        (c["q_b"] + zx_term + zz_term, "Check the sign of the term with Z_X and the weights' sum: the weights' sum "
                                       "here is negative."),
        (c["q_b"] - zx_term - zz_term, "Check the sign of the constant term: the product of the two minus signs."),
        (c["q_b"] + zx_term - zz_term, "Check the signs of both folded terms: expand (q_W - Z_W)(q_X - Z_X) "
                                       "term by term."),
        (c["q_b"], "The bias alone: the zero-point terms that hold no q_X join it."),
    ], hint="Expand sum_k (q_W - Z_W)(q_X - Z_X) and add q_b; keep the terms that do not depend on the input.")


# --- Question 4: how many products an int32 accumulator holds -------------------------------------

def check_max_products(max_products):
    """Question 4: largest K with K * 127 * 128 <= 2^31 - 1 (|q_W| <= 127, |q_X - Z_X| <= 128)."""
    worst = 127 * 128
    expected = (2**31 - 1) // worst
    check_number("Question 4", max_products, expected, rel_tol=0.0, abs_tol=1e-6, whole=True, mistakes=[
        (expected + 1, "With that many products the worst case already passes the int32 range: give the largest K "
                       "that stays inside it."),
        ((2**31 - 1) // (127 * 255), "The accumulator sums (q_X - Z_X) q_W: with Z_X = 128, how large can "
                                     "|q_X - Z_X| be?"),
        ((2**31 - 1) // (127 * 127), "q_X - Z_X ranges over [-128, 127]: its largest magnitude is 128."),
        (2**31 // (128 * 128), "The weights are symmetric int8: |q_W| <= 127."),
        ((2**31 - 1) / worst, "A number of products is a whole number."),
        (2**31 / worst, "A number of products is a whole number."),
    ], hint="Bound |q_W (q_X - Z_X)| for one product, then divide the int32 range by it.")


# --- Task 7: the folded convolution, debugged -------------------------------------------------------

FAST_CONV_POSITIONAL = CONV_POSITIONAL
FAST_CONV_KINDS = ["int64 inputs and one multiplier", "a fused ReLU", "one multiplier per output channel",
                   "a uint8 input tensor", "no bias (q_bias=None)"]


def _fast_conv_case(gen, kind: str) -> dict:
    args = _layer_case(gen, kind, conv=True)
    del args["weight_zero_point"]
    args["padding"] = int(gen.integers(1, 3))  # the border is where the zero point matters
    args["x_zero_point"] = int(gen.integers(1, 256))
    return args


def check_fast_quantized_conv2d(fast_quantized_conv2d, seed=None):
    """Task 7: the convolution with Z_X folded into the bias, fixed (symmetric weights, groups=1)."""
    task = "fast_quantized_conv2d"
    if seed is None:
        base = _visible_conv_layer(61)
        cases = [("visible", dict(base, stride=2, padding=0)), ("visible", dict(base, stride=1, padding=1, relu=True))]
    else:
        gen = np.random.default_rng(seed)
        cases = [(kind, _fast_conv_case(gen, kind)) for _ in range(3) for kind in FAST_CONV_KINDS]
    for kind, args in cases:
        expected, got = _layer_outputs(task, fast_quantized_conv2d, ref_layers.quantized_conv2d, args,
                                       FAST_CONV_POSITIONAL)
        check_shape(got, expected.shape, "q_y (N, C_out, OH, OW)", task)
        if np.array_equal(got, expected):
            continue
        differ = got != expected
        p = args["padding"]
        inside = np.zeros(expected.shape[2:], dtype=bool)
        if p:
            # output positions whose window lies inside the input: rows i with i*s - p >= 0 and i*s - p + k <= H
            k, s = args["q_weight"].shape[2], args["stride"]
            h, w = args["q_x"].shape[2:]
            rows = [(i * s - p >= 0) and (i * s - p + k <= h) for i in range(expected.shape[2])]
            cols = [(j * s - p >= 0) and (j * s - p + k <= w) for j in range(expected.shape[3])]
            inside = np.outer(rows, cols)
        if p and not differ[..., inside].any():
            hint = ("every output whose window lies inside the image is right; the wrong ones are all at the "
                    "border, where the window covers padding.")
        elif _wraps_small_ints(fast_quantized_conv2d, task, args, expected):
            hint = WRAP_HINT
        else:
            hint = ("compare it with your quantized_conv2d from Task 6 on the same layer: the folded form must give "
                    "the same integers.")
        fail(with_hint(_conv_case(task, args, got, expected), hint)
             if seed is None else hidden_case(f"{task} on a layer with {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


def check_which_bug(which_bug):
    """Question 5: the colleague's convolution pads with the integer 0 where the patches keep Z_X."""
    check_choice("Question 5", which_bug, "b", hints={
        "a": "Read the first lines of the function: the inputs are widened to int64 before any arithmetic.",
        "c": "Expand sum q_W (q_X - Z_X): the folded term's sign is right, and without padding the function "
             "agrees with your Task 6.",
        "d": "requantize adds the output zero point after its two roundings, inside the function you wrote in "
             "Task 4.",
    })


# --- Question 6: batch-norm folding and the converted bias -------------------------------------------

#: Question 6's output channel: the convolution's bias, its batch norm (eps = 0), the scales of the folded layer.
QUESTION6_CHANNEL = {"b": 0.3, "gamma": 1.2, "beta": -0.4, "mu": 0.8, "var": 0.09, "S_X": 0.02, "S_W": 0.01}


def check_bn_folded_q_bias(bn_folded_q_bias):
    """Question 6: q_b = round((a (b - mu) + beta) / (S_X S_W)), a = gamma / sqrt(var)."""
    c = QUESTION6_CHANNEL
    scale = c["S_X"] * c["S_W"]
    a = c["gamma"] / math.sqrt(c["var"])
    folded = a * (c["b"] - c["mu"]) + c["beta"]
    expected = round(folded / scale)
    check_number("Question 6", bn_folded_q_bias, expected, rel_tol=0.0, abs_tol=1e-6, whole=True, mistakes=[
        (folded, "That is the folded bias as a real number; the converted layer stores it as an int32 at the "
                 "scale of the accumulator."),
        ((c["b"] - c["mu"] + c["beta"]) / scale, "The batch norm's factor a multiplies the whole affine map, "
                                                 "the bias included."),
        ((c["gamma"] / c["var"] * (c["b"] - c["mu"]) + c["beta"]) / scale,
         "The batch norm divides by the standard deviation, the square root of the variance."),
        ((a * c["b"] + c["beta"]) / scale, "The running mean is subtracted too."),
        ((a * (c["b"] - c["mu"])) / scale, "The shift beta is added after the scaling."),
        ((a * c["b"] - c["mu"] + c["beta"]) / scale, "The mean is subtracted before the scaling by a."),
        (folded / c["S_X"], "The accumulator's scale is S_W S_X, the product of both scales."),
        (folded / c["S_W"], "The accumulator's scale is S_W S_X, the product of both scales."),
    ], hint="Fold the batch norm into the bias (chapter 6, batch-norm folding), then divide by the scale of "
            "the accumulator and round.")
