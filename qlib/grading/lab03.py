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
from qlib.grading.checks_common import HIDDEN, near_tie_but_not_exact, passed, task_runner
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
            if seed is None:
                fail(f"{task}({bits}, signed={signed}, narrow={narrow}): expected {expected}, got {got}. {hint}")
            fail(f"{HIDDEN} for integer_range with {'signed' if signed else 'unsigned'}"
                 f"{' narrow' if narrow else ''} ranges. {hint}")
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
    s_ref, z_ref = (float(v) for v in ref.asymmetric_qparams(rmin, rmax, qmin, qmax))
    lo, hi = min(rmin, 0.0), max(rmax, 0.0)
    if not np.isclose(scale, s_ref, rtol=1e-5):
        if np.isclose(scale, (hi - lo) / (qmax - qmin + 1), rtol=1e-5):
            return "the scale divides by qmax - qmin + 1; the range has qmax - qmin steps."
        if np.isclose(scale, (rmax - rmin) / (qmax - qmin), rtol=1e-5):
            return "widen the range to contain 0 first (rmin = min(rmin, 0), rmax = max(rmax, 0))."
        return "scale = (rmax - rmin) / (qmax - qmin), after widening the range to contain 0."
    raw = qmin - lo / s_ref
    if zp == -z_ref or zp == int(np.round(qmin + lo / s_ref)):
        return "the zero point has the wrong sign: Z = round(qmin - rmin / scale)."
    if zp == int(np.floor(raw)) or zp == int(np.ceil(raw)):
        return "the zero point is off by one: round to the nearest integer (half to even), do not floor or truncate."
    if not qmin <= zp <= qmax:
        return f"the zero point {zp} lies outside [qmin, qmax]: widen the range to contain 0 so that it cannot."
    return "zero_point = round(qmin - rmin / scale), rounded half to even."


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
        if seed is not None and near_tie_but_not_exact(qmin - min(rmin, 0.0) / s_ref):
            continue  # float32 and float64 may round a near-tie differently; both are fine
        scale, zp = _qparams_got(asymmetric_qparams, task, rmin, rmax, qmin, qmax)
        if not (np.isclose(scale, s_ref, rtol=1e-5) and zp == z_ref):
            hint = _asymmetric_hint(rmin, rmax, qmin, qmax, scale, zp)
            if seed is None:
                fail(f"{task}({rmin}, {rmax}, qmin={qmin}, qmax={qmax}): expected scale {s_ref:.6g} and "
                     f"zero_point {z_ref}, got scale {scale:.6g} and zero_point {zp}. Hint: {hint}")
            fail(f"{HIDDEN} for asymmetric_qparams on a range that is {kind}"
                 f"{' (all values of one sign)' if kind != 'mixed' else ''}. Hint: {hint}")
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
            if seed is None:
                fail(f"{task}({rmin}, {rmax}, qmin={qmin}, qmax={qmax}): expected scale {s_ref:.6g}, "
                     f"got {scale:.6g}. Hint: {hint}")
            fail(f"{HIDDEN} for symmetric_qparams on a range that is {kind}. Hint: {hint}")
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
        if seed is None:
            i = int(np.flatnonzero(~ok)[0])
            fail(f"{task}(x, scale={scale}, zero_point={zp}, qmin={qmin}, qmax={qmax}) with x = {fmt(x)}:\n"
                 f"expected {fmt(expected)}\ngot      {fmt(got)}\n"
                 f"first difference: x = {float(x[i])!r} should give {expected[i]}, got {got[i]}. Hint: {hint}")
        fail(f"{HIDDEN} for quantize: {int((~ok).sum())} of {x.size} values differ on inputs that are {kind}. "
             f"Hint: {hint}")
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
        if seed is None:
            fail(f"{task}(q={fmt(q)}, scale={scale}, zero_point={zp}): expected {fmt(expected)}, got {fmt(got)}. "
                 f"Hint: {hint}")
        fail(f"{HIDDEN} for dequantize on random integers. Hint: {hint}")
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
            if seed is None:
                fail(f"{task} ({where}): expected scales {fmt(s_ref)}, got {fmt(scale)}. Hint: {hint}")
            fail(f"{HIDDEN} for quantize_per_channel ({scheme}, axis={axis}): the scales differ. Hint: {hint}")
        bad_zp = zp != z_ref
        if bad_zp.any():
            if seed is None:
                fail(f"{task} ({where}): expected zero points {fmt(z_ref)}, got {fmt(zp)}. "
                     "Hint: use the zero point formula of your Task 2 or Task 3 function.")
            fail(f"{HIDDEN} for quantize_per_channel ({scheme}): the zero points differ. "
                 "Hint: symmetric means zero_point 0; asymmetric uses your Task 2 formula.")
        v = np.moveaxis(np.moveaxis(x, axis, -1).astype(np.float64) / s_ref, -1, axis)
        ok = (q == q_ref) | (near_tie_but_not_exact(v) & (np.abs(q - q_ref) <= 1))
        if not ok.all():
            if seed is None:
                fail(f"{task} ({where}): expected q =\n{fmt(q_ref)}\ngot\n{fmt(q)}\n"
                     "Hint: quantize each channel with its own scale and zero point (broadcast them along axis).")
            fail(f"{HIDDEN} for quantize_per_channel ({scheme}, axis={axis}): {int((~ok).sum())} values of q differ. "
                 "Hint: reshape the scales so that they broadcast along axis.")
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
