"""Checks for lab03_linear_quantization, called by the lab's test cells.

Each ``check_*`` takes the student's function. Without ``seed`` it runs the
visible cases and explains any difference in full (inputs, expected, got, a
hint). With ``seed`` it runs the hidden cases: fixed-seed random inputs plus
edge cases (ties, all-negative and constant tensors, clamping). A hidden
failure names the kind of input and the likely mistake, never the input itself.

The expected values come from :mod:`qlib.linear` and :mod:`qlib.granularity`,
computed before the student's function runs; while it runs, those references
are blocked.
"""
from __future__ import annotations

import numpy as np
import torch

from qlib import granularity as ref_granularity
from qlib import linear as ref
from qlib import weights as ref_weights
from qlib.grading.answers import Field, Tier, answer_of, check_choice, check_number, tiered
from qlib.grading.checks_common import HIDDEN, hidden_case, near_tie_but_not_exact, passed, task_runner, with_hint
from qlib.grading.harness import (
    as_array,
    as_integers,
    as_pair,
    check_shape,
    fail,
    fmt,
    time_limit,
)

#: The qlib functions that this lab asks students to write; unavailable while their code runs.
REFERENCES = (
    "integer_range", "asymmetric_qparams", "symmetric_qparams", "quantize", "dequantize",
    "quantize_per_channel", "dequantize_per_channel", "fake_quantize_tensor", "fake_quantize_weights",
)

#: Earlier tasks each task may call; while it is checked they are replaced by correct versions.
EARLIER_TASKS = {
    "quantize_per_channel": ("integer_range", "asymmetric_qparams", "symmetric_qparams", "quantize", "dequantize"),
    "fake_quantize_weights": ("integer_range", "asymmetric_qparams", "symmetric_qparams", "quantize",
                              "dequantize", "quantize_per_channel"),
}
#: The correct versions that stand in for them.
STAND_INS = {
    "integer_range": ref.integer_range, "asymmetric_qparams": ref.asymmetric_qparams,
    "symmetric_qparams": ref.symmetric_qparams, "quantize": ref.quantize, "dequantize": ref.dequantize,
    "quantize_per_channel": ref_granularity.quantize_per_channel,
}

_run = task_runner(REFERENCES, EARLIER_TASKS, STAND_INS)


# --- Task 1: integer_range ------------------------------------------------------------------

def _integer_range_hint(got, bits, signed, narrow) -> str:
    qmin, qmax = ref.integer_range(bits, signed, narrow)
    if got[1] == qmax + 1 or got[1] == 2 ** bits:
        return "qmax is one too large: n bits hold 2^n different integers, so the largest is one less than a power of 2."
    if narrow and got == ref.integer_range(bits, signed, False):
        return "narrow=True should drop the lowest code (qmin + 1)."
    if not narrow and signed and got == ref.integer_range(bits, signed, True):
        return "without narrow, a signed range starts at -2^(bits-1) (two's complement)."
    if signed and got == ref.integer_range(bits, False, narrow):
        return "signed=True asks for a two's complement range around 0."
    if not signed and got == ref.integer_range(bits, True, narrow):
        return "signed=False asks for an unsigned range starting at 0."
    return "check the formulas in the docstring for this combination of signed and narrow."


def check_integer_range(integer_range, seed=None):
    """Task 1: (qmin, qmax) for every bit width, signed or not, narrow or not."""
    task = "integer_range"
    if seed is None:
        cases = [(8, True, False), (8, False, False), (4, True, True), (2, True, False)]
    else:
        cases = [(b, s, n) for b in range(1, 33) for s in (True, False) for n in (False, True)
                 if not (b == 1 and n)]
    for bits, signed, narrow in cases:
        expected = ref.integer_range(bits, signed, narrow)
        got = as_pair(_run(task, integer_range, bits, signed=signed, narrow=narrow), "integer_range", task)
        got = tuple(int(v) for v in as_integers(np.array([as_array(g, "qmin/qmax", task) for g in got]), "(qmin, qmax)", task))
        if got != expected:
            hint = _integer_range_hint(got, bits, signed, narrow)
            kind = f"{'signed' if signed else 'unsigned'}{' narrow' if narrow else ''}"
            fail(with_hint(f"{task}({bits}, signed={signed}, narrow={narrow}): expected {expected}, got {got}.", hint)
                 if seed is None else hidden_case(f"integer_range with {kind} ranges", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Tasks 2 and 3: scale and zero point ---------------------------------------------------

def _random_ranges(seed: int, n: int):
    """Ranges of every kind: mixed sign, all positive, all negative, tiny, huge, zero."""
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        bits = int(gen.integers(2, 17))
        signed = bool(gen.integers(0, 2))
        qmin, qmax = ref.integer_range(bits, signed)
        kind = ("mixed", "positive", "negative")[i % 3]
        lo, hi = np.sort(gen.uniform(-1, 1, size=2) * 10.0 ** gen.uniform(-3, 3))
        if kind == "positive":
            lo, hi = abs(lo) * 0.1 + 1e-3, abs(hi) + abs(lo) + 2e-3
        elif kind == "negative":
            lo, hi = -(abs(hi) + abs(lo) + 2e-3), -(abs(lo) * 0.1 + 1e-3)
        cases.append((kind, float(np.float32(lo)), float(np.float32(hi)), qmin, qmax))
    return cases


def _qparams_got(fn, task, rmin, rmax, qmin, qmax):
    got = as_pair(_run(task, fn, rmin, rmax, qmin, qmax), task, task)
    scale = as_array(got[0], "scale", task)
    zero_point = as_integers(got[1], "zero_point", task)
    if scale.size != 1 or zero_point.size != 1:
        fail(f"{task}: for one range, scale and zero_point should be single numbers, "
             f"got shapes {scale.shape} and {zero_point.shape}.")
    return float(scale.reshape(())), int(zero_point.reshape(()))


def _asymmetric_hint(rmin, rmax, qmin, qmax, scale, zp) -> str:
    """The likely mistake, said in terms of the requirements of Task 2, never as the formula itself."""
    s_ref, z_ref = (float(v) for v in ref.asymmetric_qparams(rmin, rmax, qmin, qmax))
    lo, hi = min(rmin, 0.0), max(rmax, 0.0)
    if not np.isclose(scale, s_ref, rtol=1e-5):
        if np.isclose(scale, (hi - lo) / (qmax - qmin + 1), rtol=1e-5):
            return ("the scale is a little too small: from qmin to qmax there are qmax - qmin steps, "
                    "not qmax - qmin + 1.")
        if np.isclose(scale, (rmax - rmin) / (qmax - qmin), rtol=1e-5):
            return "widen the range to contain 0 first (rmin = min(rmin, 0), rmax = max(rmax, 0))."
        return ("derive the scale again from the two requirements: dequantizing qmin gives rmin and "
                "dequantizing qmax gives rmax (after widening the range to contain 0); subtract one from the other.")
    raw = qmin - lo / s_ref
    if zp == -z_ref or zp == int(np.round(qmin + lo / s_ref)):
        return ("the zero point has the wrong sign: check that dequantizing qmin with your scale and zero point "
                "gives rmin.")
    if zp == int(np.floor(raw)) or zp == int(np.ceil(raw)):
        return "the zero point is off by one: round to the nearest integer (half to even), do not floor or truncate."
    if not qmin <= zp <= qmax:
        return f"the zero point {zp} lies outside [qmin, qmax]: widen the range to contain 0, and clamp it."
    return ("derive the zero point again from the requirement that dequantizing qmin gives rmin, "
            "then round it half to even.")


def check_asymmetric_qparams(asymmetric_qparams, seed=None):
    """Task 2: asymmetric scale and zero point."""
    task = "asymmetric_qparams"
    if seed is None:
        cases = [("lecture", -1.08, 2.12, -2, 1), ("mixed", -1.0, 3.0, -128, 127), ("mixed", -0.5, 1.5, 0, 255)]
    else:
        cases = _random_ranges(seed, 300) + [("positive", 0.25, 4.0, -128, 127),
                                              ("negative", -6.0, -2.0, 0, 15)]
    for kind, rmin, rmax, qmin, qmax in cases:
        s_ref, z_ref = (v.item() for v in ref.asymmetric_qparams(rmin, rmax, qmin, qmax))
        if seed is not None and near_tie_but_not_exact(-min(rmin, 0.0) / s_ref):
            # float32 and float64 may round a near-tie differently; both are fine. The rounded quantity
            # is rmin / scale (qmin is a whole number), so its own size sets the float rounding error
            continue
        scale, zp = _qparams_got(asymmetric_qparams, task, rmin, rmax, qmin, qmax)
        if not (np.isclose(scale, s_ref, rtol=1e-5) and zp == z_ref):
            hint = _asymmetric_hint(rmin, rmax, qmin, qmax, scale, zp)
            fail(with_hint(f"{task}({rmin}, {rmax}, qmin={qmin}, qmax={qmax}): expected scale {s_ref:.6g} and "
                           f"zero_point {z_ref}, got scale {scale:.6g} and zero_point {zp}.", hint)
                 if seed is None else hidden_case(f"asymmetric_qparams on a range that is {kind}"
                                                  f"{' (all values of one sign)' if kind != 'mixed' else ''}", hint))
    # A range of zero width (an all-zero tensor) must not produce NaN or infinity.
    scale, zp = _qparams_got(asymmetric_qparams, task, 0.0, 0.0, -128, 127)
    if not scale > 0 or not -128 <= zp <= 127:
        fail(f"{task}(0.0, 0.0, -128, 127): an all-zero tensor needs a positive scale and a zero point in range "
             f"(got scale {scale:.6g}, zero_point {zp}). Hint: keep the scale at least "
             "torch.finfo(torch.float32).eps so that it is never 0.")
    passed(task, len(cases) + 1, hidden=seed is not None)


def _symmetric_hint(rmin, rmax, qmin, qmax, scale) -> str:
    absmax = max(abs(rmin), abs(rmax))
    if np.isclose(scale, absmax / ((qmax - qmin) / 2), rtol=1e-5):
        return "divide by qmax, not by (qmax - qmin) / 2."
    if np.isclose(scale, max(rmax, 0.0) / qmax, rtol=1e-5) or np.isclose(scale, abs(rmax) / qmax, rtol=1e-5):
        return "use the largest magnitude max(|rmin|, |rmax|), not rmax alone."
    return "scale = max(|rmin|, |rmax|) / qmax and zero_point = 0."


def check_symmetric_qparams(symmetric_qparams, seed=None):
    """Task 3: symmetric scale, zero point 0."""
    task = "symmetric_qparams"
    if seed is None:
        cases = [("lecture", -1.08, 2.12, -2, 1), ("mixed", -3.0, 1.0, -127, 127), ("mixed", -0.5, 2.0, -128, 127)]
    else:
        cases = [c for c in _random_ranges(seed, 300)] + [("unsigned", -1.0, 5.0, 0, 255)]
    for kind, rmin, rmax, qmin, qmax in cases:
        s_ref = ref.symmetric_qparams(rmin, rmax, qmin, qmax)[0].item()
        scale, zp = _qparams_got(symmetric_qparams, task, rmin, rmax, qmin, qmax)
        if zp != 0:
            fail(f"{task}: the zero point of symmetric quantization is always 0, got {zp}.")
        if not np.isclose(scale, s_ref, rtol=1e-5):
            hint = _symmetric_hint(rmin, rmax, qmin, qmax, scale)
            fail(with_hint(f"{task}({rmin}, {rmax}, qmin={qmin}, qmax={qmax}): expected scale {s_ref:.6g}, "
                           f"got {scale:.6g}.", hint)
                 if seed is None else hidden_case(f"symmetric_qparams on a range that is {kind}", hint))
    scale, _ = _qparams_got(symmetric_qparams, task, 0.0, 0.0, -128, 127)
    if not scale > 0:
        fail(f"{task}(0.0, 0.0, -128, 127): an all-zero tensor needs a positive scale, got {scale:.6g}. "
             "Hint: keep the scale at least torch.finfo(torch.float32).eps.")
    passed(task, len(cases) + 1, hidden=seed is not None)


# --- Task 4: quantize -----------------------------------------------------------------------

def _quantize_variants(x, scale, zp, qmin, qmax):
    """What common mistakes would return, to name the one a submission made."""
    v = x.astype(np.float64) / scale
    return {
        "floor instead of round: use round half to even (torch.round or np.round).": np.clip(np.floor(v) + zp, qmin, qmax),
        "ties round away from zero: round half to even (torch.round or np.round) sends 2.5 to 2.":
            np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zp, qmin, qmax),
        "floor(x + 0.5) rounds every tie up: use round half to even (torch.round or np.round).":
            np.clip(np.floor(v + 0.5) + zp, qmin, qmax),
        "the result is not clamped to [qmin, qmax].": np.round(v) + zp,
        "the zero point is subtracted: q = round(x / scale) + zero_point.": np.clip(np.round(v) - zp, qmin, qmax),
        "the zero point is added before rounding, which rounds ties differently: round x / scale first, then add it.":
            np.clip(np.round(v + zp), qmin, qmax),
        "x is multiplied by the scale: divide by it.": np.clip(np.round(x * scale) + zp, qmin, qmax),
    }


def _quantize_cases(seed: int):
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(60):
        bits = int(gen.integers(2, 9))
        qmin, qmax = ref.integer_range(bits, bool(i % 2))
        zp = int(gen.integers(qmin, qmax + 1))
        if i % 3 == 0:  # power-of-two scale with exact ties
            scale = float(2.0 ** gen.integers(-6, 3))
            k = gen.integers(-(2 ** bits), 2 ** bits, size=64)
            x = ((k + 0.5) * scale).astype(np.float32)
            kind = "exactly halfway between two integers"
        else:
            scale = float(np.float32(10.0 ** gen.uniform(-3, 1)))
            x = (gen.standard_normal(200) * scale * (qmax - qmin) / 3).astype(np.float32)
            kind = "random, some outside the range"
        cases.append((kind, x, scale, zp, qmin, qmax))
    return cases


def _q_matches(got, expected, x, scale) -> np.ndarray:
    """Element-wise agreement; at a value within float rounding of a tie either neighbour is accepted."""
    return (got == expected) | (near_tie_but_not_exact(x.astype(np.float64) / scale) & (np.abs(got - expected) <= 1))


def check_quantize(quantize, seed=None):
    """Task 4: q = clamp(round(x / scale) + zero_point, qmin, qmax)."""
    task = "quantize"
    if seed is None:
        cases = [("visible", np.array([-1.0, -0.26, 0.0, 0.24, 0.25, 0.75, 1.3, 9.0], dtype=np.float32), 0.5, 0, -4, 3),
                 ("visible", np.array([0.5, 1.5, 2.5, -7.0], dtype=np.float32), 1.0, 1, -2, 3)]
    else:
        cases = _quantize_cases(seed)
    for kind, x, scale, zp, qmin, qmax in cases:
        expected = ref.quantize(torch.from_numpy(x), scale, zp, qmin, qmax).numpy()
        got = as_integers(_run(task, quantize, torch.from_numpy(x.copy()), scale, zp, qmin, qmax), "q", task)
        check_shape(got, x.shape, "q", task)
        ok = _q_matches(got, expected, x, scale)
        if ok.all():
            continue
        hint = next((h for h, v in _quantize_variants(x, scale, zp, qmin, qmax).items()
                     if np.array_equal(got, v)), "compare your steps with the formula in the docstring.")
        i = int(np.flatnonzero(~ok)[0])
        fail(with_hint(f"{task}(x, scale={scale}, zero_point={zp}, qmin={qmin}, qmax={qmax}) with x = {fmt(x)}:\n"
                       f"expected {fmt(expected)}\ngot      {fmt(got)}\n"
                       f"first difference: x = {float(x[i])!r} should give {expected[i]}, got {got[i]}.", hint)
             if seed is None else
             hidden_case(f"quantize: {int((~ok).sum())} of {x.size} values differ on inputs that are {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 5: dequantize ---------------------------------------------------------------------

def check_dequantize(dequantize, seed=None):
    """Task 5: x_hat = scale * (q - zero_point)."""
    task = "dequantize"
    if seed is None:
        cases = [(np.array([-2, -1, 0, 1], dtype=np.int64), 1.0667, -1), (np.array([0, 128, 255]), 0.02, 128)]
    else:
        gen = np.random.default_rng(seed)
        cases = []
        for _ in range(50):
            qmin, qmax = ref.integer_range(int(gen.integers(2, 17)), bool(gen.integers(0, 2)))
            cases.append((gen.integers(qmin, qmax + 1, size=100), float(np.float32(10.0 ** gen.uniform(-4, 2))),
                          int(gen.integers(qmin, qmax + 1))))
    for q, scale, zp in cases:
        expected = ref.dequantize(torch.from_numpy(q), scale, zp).numpy()
        got = as_array(_run(task, dequantize, torch.from_numpy(q.copy()), scale, zp), "x_hat", task)
        check_shape(got, q.shape, "x_hat", task)
        if np.allclose(got, expected, rtol=1e-6, atol=1e-6 * scale):
            continue
        if np.allclose(got, scale * (q + zp), rtol=1e-6):
            hint = "subtract the zero point: x_hat = scale * (q - zero_point)."
        elif np.allclose(got, q - zp) or np.allclose(got, (q - zp) / scale, rtol=1e-6):
            hint = "multiply (q - zero_point) by the scale."
        else:
            hint = "x_hat = scale * (q - zero_point)."
        fail(with_hint(f"{task}(q={fmt(q)}, scale={scale}, zero_point={zp}): expected {fmt(expected)}, "
                       f"got {fmt(got)}.", hint)
             if seed is None else hidden_case("dequantize on random integers", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 6: quantize_per_channel -----------------------------------------------------------

LECTURE_W = np.array([[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12],
                      [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]], dtype=np.float32)


def _per_channel_cases(seed: int):
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(24):
        shape = [(16, 9), (8, 3, 3, 3), (5, 7, 4)][i % 3]
        x = gen.standard_normal(shape).astype(np.float32)
        axis = [0, 1, -1, 0][i % 4]
        # channels whose ranges differ by 100x, and one all-negative channel
        scales = 10.0 ** gen.uniform(-2, 1, size=x.shape[axis])
        x = x * scales.reshape([-1 if d == axis % x.ndim else 1 for d in range(x.ndim)])
        x = x.astype(np.float32)
        np.moveaxis(x, axis, 0)[0] = -np.abs(np.moveaxis(x, axis, 0)[0])
        bits = int(gen.integers(2, 9))
        symmetric = bool(i % 2)
        cases.append((x, axis, *ref.integer_range(bits), symmetric))
    return cases


def check_quantize_per_channel(quantize_per_channel, seed=None):
    """Task 6: one (scale, zero_point) per index of ``axis``."""
    task = "quantize_per_channel"
    if seed is None:
        cases = [(LECTURE_W, 0, -2, 1, True), (LECTURE_W, 1, -128, 127, False)]
    else:
        cases = _per_channel_cases(seed)
    for x, axis, qmin, qmax, symmetric in cases:
        q_ref, s_ref, z_ref = (t.numpy() for t in ref_granularity.quantize_per_channel(
            torch.from_numpy(x), axis, qmin, qmax, symmetric))
        got = _run(task, quantize_per_channel, torch.from_numpy(x.copy()), axis, qmin, qmax, symmetric)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            fail(f"{task}: should return three values (q, scale, zero_point), got {type(got).__name__}.")
        q = as_integers(got[0], "q", task)
        scale = as_array(got[1], "scale", task).reshape(-1)
        zp = as_integers(got[2], "zero_point", task).reshape(-1)
        check_shape(q, x.shape, "q", task)
        n = x.shape[axis]
        scheme = "symmetric" if symmetric else "asymmetric"
        where = f"x of shape {x.shape}, axis={axis}, qmin={qmin}, qmax={qmax}, {scheme}"
        if scale.size == 1 and n > 1:
            fail(f"{task} ({where}): returned one scale; per-channel quantization needs one per channel ({n}).")
        check_shape(scale, (n,), "scale", task)
        check_shape(zp, (n,), "zero_point", task)
        if not np.allclose(scale, s_ref, rtol=1e-5):
            other = [d for d in range(x.ndim) if d != axis % x.ndim]
            hint = ("the ranges must be taken over every dimension except axis; each channel is x.select(axis, c)."
                    if other else "compute one range per channel.")
            fail(with_hint(f"{task} ({where}): expected scales {fmt(s_ref)}, got {fmt(scale)}.", hint)
                 if seed is None else hidden_case(f"quantize_per_channel ({scheme}, axis={axis}): the scales differ",
                                                  hint))
        bad_zp = zp != z_ref
        if bad_zp.any():
            hint = "symmetric means zero_point 0; asymmetric uses the zero point of your Task 2 function."
            fail(with_hint(f"{task} ({where}): expected zero points {fmt(z_ref)}, got {fmt(zp)}.", hint)
                 if seed is None else hidden_case(f"quantize_per_channel ({scheme}): the zero points differ", hint))
        v = np.moveaxis(np.moveaxis(x, axis, -1).astype(np.float64) / s_ref, -1, axis)
        ok = (q == q_ref) | (near_tie_but_not_exact(v) & (np.abs(q - q_ref) <= 1))
        if not ok.all():
            hint = ("quantize each channel with its own scale and zero point: reshape them so that they broadcast "
                    "along axis.")
            fail(with_hint(f"{task} ({where}): expected q =\n{fmt(q_ref)}\ngot\n{fmt(q)}", hint)
                 if seed is None else
                 hidden_case(f"quantize_per_channel ({scheme}, axis={axis}): {int((~ok).sum())} values of q differ",
                             hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 7: the experiment -----------------------------------------------------------------

def _fake_quantize_weights_hint(key, got, original, bits, granularity, model) -> str:
    """Why the weight ``key`` differs: not quantized, or quantized at the other granularity."""
    if np.allclose(got, original):
        return "this layer's weight was not quantized."
    other = "channel" if granularity == "tensor" else "tensor"
    at_other = ref_weights.fake_quantize_weights(model, bits, other).state_dict()[key].numpy()
    if np.allclose(got, at_other, rtol=1e-5, atol=1e-7):
        return (f'this is the weight quantized with granularity="{other}", but the call asked for '
                f'"{granularity}". Compare the string (granularity == "channel"): `if granularity:` is '
                "true for any non-empty string.")
    how = "per output channel (axis 0)" if granularity == "channel" else "with one scale per tensor"
    return f"quantize every Linear and Conv2d weight symmetrically to {bits} bits {how}."


def check_fake_quantize_weights(fake_quantize_weights, seed=None):
    """Task 7: fake-quantized copies of the digits models, granularity "tensor" or "channel"."""
    from qlib.data import load_digits
    from qlib.models import accuracy, load_pretrained

    task = "fake_quantize_weights"
    test = load_digits("test")
    if seed is None:
        cases = [("cnn", 4, "channel"), ("cnn", 4, "tensor")]
    else:
        cases = [("cnn", 8, "tensor"), ("cnn", 3, "channel"), ("cnn", 2, "tensor"), ("mlp", 2, "channel"),
                 ("mlp", 4, "tensor")]
    for name, bits, granularity in cases:
        model = load_pretrained(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        expected = ref_weights.fake_quantize_weights(model, bits, granularity)
        got = _run(task, fake_quantize_weights, model, bits, granularity, seconds=60.0)
        where = f'the {name.upper()} at {bits} bits, granularity="{granularity}"'
        if not isinstance(got, torch.nn.Module):
            fail(f"{task}: should return a model (torch.nn.Module), got {type(got).__name__}.")
        if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            fail(f"{task} ({where}): the original model was changed. Work on a copy (copy.deepcopy(model)).")
        got_state, exp_state = got.state_dict(), expected.state_dict()
        if set(got_state) != set(exp_state):
            fail(f"{task} ({where}): the returned model has different parameters than the original.")
        for key, exp in exp_state.items():
            g = as_array(got_state[key], key, task)
            e, orig = exp.numpy(), before[key].numpy()
            if key.endswith(".weight") and not np.array_equal(e, orig):
                step = np.abs(np.diff(np.unique(e))).min() if np.unique(e).size > 1 else 1.0
                off = ~np.isclose(g, e, rtol=1e-5, atol=1e-6 * step)
                if off.mean() > 0.002 or (np.abs(g - e)[off] > 1.01 * step).any():
                    hint = _fake_quantize_weights_hint(key, g, orig, bits, granularity, model)
                    prefix = f"{task} ({where})" if seed is None else f"{HIDDEN} for {task} ({where})"
                    fail(f"{prefix}: {key} differs from the expected fake-quantized weight. Hint: {hint}")
            elif not np.allclose(g, e, rtol=1e-6, atol=1e-7):
                fail(f"{task} ({where}): {key} was changed; only the weights of Linear and Conv2d layers are quantized.")
        acc_got, acc_exp = accuracy(got, test), accuracy(expected, test)
        if abs(acc_got - acc_exp) > 2.5 / len(test):
            fail(f"{task} ({where}): test accuracy {acc_got:.4f}, expected {acc_exp:.4f}.")
    passed(task, len(cases), hidden=seed is not None)


# --- Question 1: why real 0 is exact ----------------------------------------------------------------

def check_why_zero_is_exact(answer):
    """Question 1: zero padding and ReLU make exact zeros common; an inexact 0 would bias them all alike."""
    check_choice("Question 1", answer, "b", hints={
        "a": "The scale is kept positive by its minimum (eps), whatever happens to 0; the question is about "
             "the values a network produces, and which value it produces most often.",
        "c": "An asymmetric range is not symmetric at all ([-2, 1] at 2 bits), and real ranges are often "
             "lopsided: think about which real value appears far more often than any other in a network.",
        "d": "Ties are broken by the rounding rule, with or without an integer at 0. Think about which real "
             "value a convolution's padding and a ReLU produce, and how often.",
    })


# --- Questions 2 and 3: reading the experiment ------------------------------------------------------

#: Test accuracy of the digits CNN (FP32 0.992) with weights fake-quantized per tensor at 8, 6, 4, 3, 2
#: bits: 0.992, 0.994, 0.994, 0.989, 0.447 (per channel at 2 bits: 0.736), from qlib.weights.
BREAKING_BITS = 2


def check_breaking_bits(answer):
    """Question 2: per tensor holds to 3 bits (within a point of FP32) and collapses at 2."""
    check_number("Question 2", answer, BREAKING_BITS, rel_tol=0.0, abs_tol=1e-9, mistakes=[
        (3, "At that bit width the per-tensor model is still within about a point of FP32: look again at the "
            "table the experiment printed."),
        (4, "At that bit width both granularities match FP32 within an image or two: look again at the table."),
        (8, "The question asks for the bit width where per tensor breaks, not the widest one tried."),
    ], hint="Read the per-tensor column of the experiment's table against the FP32 accuracy; the answer is one "
            "of the bit widths tried (8, 6, 4, 3, 2).")


def _zero_rows_of_fc1(bits: int, qmin=None, qmax=None, scale=None) -> int:
    """How many rows of the digits CNN's fc1 weight quantize to all zeros with one symmetric scale."""
    from qlib.models import load_pretrained

    w = load_pretrained("cnn").fc1.weight.detach()
    lo, hi = ref.integer_range(bits)
    qmin = lo if qmin is None else qmin
    qmax = hi if qmax is None else qmax
    if scale is None:
        scale = w.abs().max().item() / qmax
    q = torch.clamp(torch.round(w / scale), qmin, qmax)
    return int((q == 0).all(dim=1).sum())


def check_zero_rows_of_fc1(answer):
    """Question 3: at 2 bits per tensor, 20 of fc1's 64 rows round to all zeros (their largest |w| < S/2)."""
    from qlib.models import load_pretrained

    w = load_pretrained("cnn").fc1.weight.detach()
    expected = _zero_rows_of_fc1(BREAKING_BITS)
    qmin, qmax = ref.integer_range(BREAKING_BITS)
    absmax = w.abs().max().item()
    mistakes = [
        (w.shape[0] - expected, "That counts the rows that keep at least one nonzero code; the question asks "
                                "for the rows whose every code is 0."),
        (_zero_rows_of_fc1(3), "That is the count at 3 bits; the question asks at the bit width of Question 2."),
        (0, "With one scale per row (per channel) no row vanishes; the question asks per tensor, with one "
            "scale for the whole weight."),
        (int((w.abs().amax(dim=1) < absmax / qmax).sum()), "That counts the rows whose largest |w| is below a "
                                                           "whole step: a value rounds to 0 only below half a step."),
        (_zero_rows_of_fc1(BREAKING_BITS, scale=absmax / ((qmax - qmin) / 2)),
         "A symmetric scale maps the largest |w| to qmax, not to (qmax - qmin) / 2."),
    ]
    mistakes = [(v, h) for v, h in mistakes if v != expected]
    check_number("Question 3", answer, expected, rel_tol=0.0, abs_tol=1e-9, mistakes=mistakes,
                 hint="One symmetric scale for the whole of fc1.weight: quantize it with your functions and count "
                      "the rows in which every code is 0.")


# --- Questions 5 and 6, Task 8: rounding against clipping -------------------------------------------

#: The four outliers of ``x_clip``; the largest, 14.7, is both max|x| and the value of Question 6.
CLIP_OUTLIERS = (14.7, -12.3, 11.2, -9.8)
#: Question 6's threshold and Task 8's bit width.
CLIP_T, CLIP_BITS = 3.5, 4


def clipping_tensor() -> torch.Tensor:
    """The lab's ``x_clip``: 4096 Laplace(0, 1) values (fixed seed) whose first four are outliers."""
    gen = torch.Generator().manual_seed(3)
    n = 4096
    magnitude = torch.empty(n).exponential_(1.0, generator=gen)
    sign = 2 * torch.randint(0, 2, (n,), generator=gen) - 1
    x = (magnitude * sign).to(torch.float32)
    x[:len(CLIP_OUTLIERS)] = torch.tensor(CLIP_OUTLIERS)
    return x


def clipping_mse(threshold: float) -> float:
    """MSE of ``x_clip`` fake-quantized to 4-bit signed integers, symmetric, scale from ``[-T, T]`` (qlib)."""
    x = clipping_tensor()
    qmin, qmax = ref.integer_range(CLIP_BITS)
    scale, zero_point = ref.symmetric_qparams(-float(threshold), float(threshold), qmin, qmax)
    x_hat = ref.dequantize(ref.quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)
    return float(((x.double() - x_hat.double()) ** 2).mean())


def check_rounding_bound(answer):
    """Question 5: at T = max|x| = 14.7 and 4 bits, half a step: 14.7 / 7 / 2 = 1.05."""
    qmin, qmax = ref.integer_range(CLIP_BITS)
    absmax = max(abs(v) for v in CLIP_OUTLIERS)
    step = absmax / qmax
    check_number("Question 5", answer, step / 2, rel_tol=5e-3, mistakes=[
        (step, "That is a whole step: a value inside the range moves to the NEAREST step, so how far can it move?"),
        (absmax / (qmax - qmin) / 2, "A symmetric scale maps max|x| to qmax, not the whole range to qmax - qmin "
                                     "steps."),
        (absmax / 2 ** CLIP_BITS / 2, "A symmetric scale maps max|x| to qmax of the signed 4-bit range."),
        (absmax / -qmin / 2, "A symmetric scale maps max|x| to qmax, not to |qmin|."),
    ], hint="Compute the scale of a symmetric 4-bit quantizer for this tensor; a value inside the range moves to "
            "the nearest step.")


def check_clipped_error(answer):
    """Question 6: at T = 3.5 the value 14.7 is clamped to qmax * scale = 3.5: error 11.2."""
    qmin, qmax = ref.integer_range(CLIP_BITS)
    top = max(CLIP_OUTLIERS)
    scale = CLIP_T / qmax
    expected = top - qmax * scale
    check_number("Question 6", answer, expected, rel_tol=5e-3, mistakes=[
        (-expected, "The question asks for x - x_hat; the value is above the range, so x_hat is below it."),
        (top - (-qmin) * scale, "A positive value is clamped to the largest code, qmax, and qmin is the most "
                                "NEGATIVE code: which one applies to 14.7?"),
        (scale / 2, "That is the rounding error of a value inside the range; 14.7 lies far beyond it."),
        (top - CLIP_T / (qmax - qmin) * qmax, "The scale comes from symmetric_qparams(-T, T, qmin, qmax): T maps "
                                              "to qmax."),
    ], hint="Quantize 14.7 with the scale of T = 3.5: the code is clamped; dequantize it and subtract.")


#: Task 8's tiers of MSE. The best threshold (about 5.3) gives MSE 0.0918; no clipping (T = 14.7) gives 0.324.
CLIP_TIERS = [
    Tier(1.0, "MSE at most 0.097 (within about 5% of the best threshold)", lambda m: m["mse"] <= 0.097),
    Tier(0.75, "MSE at most 0.115", lambda m: m["mse"] <= 0.115),
    Tier(0.5, "MSE at most 0.16", lambda m: m["mse"] <= 0.16),
    Tier(0.25, "MSE at most 0.30 (better than no clipping, 0.32)", lambda m: m["mse"] <= 0.30),
]
#: Task 8's answer: one positive number.
CLIP_FIELD = Field((int, float), low=0.01, high=1000.0)


def check_clip_threshold(answer):
    """Task 8: the grader quantizes ``x_clip`` at the student's threshold itself and grades the MSE in tiers."""
    task = "Task 8"
    value = answer_of(task, answer)
    if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    problem = CLIP_FIELD.problem(value)
    if problem:
        fail(f"{task}: clip_threshold = {value!r}: {problem}. Set it to one number, the threshold T.")
    mse = clipping_mse(float(value))
    return tiered(task, {"mse": mse}, CLIP_TIERS, report=f"threshold {float(value):g}: MSE {mse:.4f}")
