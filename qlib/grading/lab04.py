"""Checks for lab04_ptq_granularity, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab03`: without ``seed`` the visible cases
are explained in full (input, expected, got, a hint); with ``seed`` the hidden
cases name the kind of input and the likely mistake, never the input itself
or how many cases ran.

Expected values come from :mod:`qlib.granularity` and :mod:`qlib.scale_storage`,
computed before the student's function runs; while it runs, those references
are blocked. Integers (codes, zero points, shared exponents) must match
exactly; scales to a relative 1e-6 (float32 against float64 arithmetic); a
code may differ by one only where ``x / scale`` lies within float rounding of
a tie.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qlib import granularity as ref
from qlib import scale_storage as ref_storage
from qlib.grading.answers import (Field, Limit, Tier, check_choice, check_number,
                                  config_of, measured_design, measured_once)
from qlib.grading.checks_common import hidden_case, near_tie_but_not_exact, passed, task_runner, with_hint
from qlib.grading.harness import (
    as_array,
    as_integers,
    call_catching,
    check_shape,
    fail,
    fmt,
    time_limit,  # noqa: F401  (the lab's experiment cell uses grader.time_limit)
)
from qlib.linear import integer_range

#: The qlib functions this lab asks students to write, and those that would do the work for them.
REFERENCES = (
    "quantize_per_group", "dequantize_per_group", "mxint_quantize", "mxint_dequantize",
    "scale_bits_per_weight", "quantize_per_channel", "dequantize_per_channel", "fake_quantize_tensor",
    "mx_quantize", "mx_dequantize", "mx_fake_quantize",
)

_run = task_runner(REFERENCES)


def _triple(got, task, names):
    if not isinstance(got, (tuple, list)) or len(got) != len(names):
        fail(f"{task}: should return {len(names)} values ({', '.join(names)}), got {type(got).__name__}"
             + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "") + ".")
    return got


def _outlier_matrix(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Small weights, a few rows 100x larger (outlier output channels), a column 20x larger."""
    gen = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(rows, cols, generator=gen)
    w *= torch.pow(2.0, 2 * torch.rand(rows, 1, generator=gen) - 1)
    w[rows // 3] *= 100
    w[:, cols // 5] *= 20
    return w


# --- Task 1: quantize_per_group ---------------------------------------------------------------

def _strided_scales(x: np.ndarray, axis: int, group_size: int, qmin, qmax, symmetric) -> np.ndarray:
    """The scales a submission gets if its groups take every n_groups-th value instead of consecutive ones."""
    moved = np.moveaxis(x, axis, -1)
    n_groups = moved.shape[-1] // group_size
    strided = moved.reshape(*moved.shape[:-1], group_size, n_groups).swapaxes(-1, -2).reshape(moved.shape)
    scale = ref.quantize_per_group.unguarded(torch.from_numpy(np.ascontiguousarray(strided)), -1, group_size,
                                             qmin, qmax, symmetric)[1].numpy()
    return np.moveaxis(scale, -1, axis)


def _per_group_hint(x, axis, group_size, qmin, qmax, symmetric, scale, s_ref) -> str:
    """Name the mistake behind wrong scales, by trying the usual ones."""
    if scale.size == 1 and s_ref.size > 1:
        return "one scale per group, not one for the whole tensor."
    if scale.size * x.shape[axis] == x.size and x.shape[axis] > group_size:
        return ("one scale per group, not one per slice along axis: axis is cut into x.shape[axis] // group_size "
                "groups.")
    if scale.shape == s_ref.shape and s_ref.shape[axis] > 1 and np.allclose(
            scale, np.take(scale, [0], axis=axis), rtol=1e-6):
        return ("every group of a row got the same scale: each group needs the range of its own group_size "
                "values, not of the whole row.")
    strided = _strided_scales(x, axis, group_size, qmin, qmax, symmetric)
    if scale.shape == strided.shape and np.allclose(scale, strided, rtol=1e-5):
        return ("the groups take every n_groups-th value: a group is group_size CONSECUTIVE values along axis. "
                "Reshape to (..., n_groups, group_size), not (..., group_size, n_groups).")
    return ("each group's scale and zero point come from the min and max of that group alone, through "
            "symmetric_qparams or asymmetric_qparams.")


def _per_group_cases(seed):
    if seed is None:
        hand = np.array([[1.5, -0.75, 0.375, 0.1], [6.0, 5.0, -0.75, 0.0]], dtype=np.float32)
        return [("the worked example", hand, 1, 2, -4, 3, True),
                ("the worked example, asymmetric", hand, 1, 2, -4, 3, False),
                ("an 8x32 outlier matrix", _outlier_matrix(8, 32, seed=4).numpy(), 1, 8, -8, 7, True)]
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(30):
        shape, axis, group_size = [((12, 64), 1, 16), ((64, 12), 0, 8), ((4, 6, 24), -1, 6), ((6, 10), 1, 10),
                                   ((8, 32), 1, 1), ((3, 8, 5), 1, 4)][i % 6]
        x = gen.standard_normal(shape) * 10.0 ** gen.uniform(-2, 1, size=shape[:1] + (1,) * (len(shape) - 1))
        if i % 5 == 0:
            x = np.abs(x)  # every group all positive: asymmetric ranges widen to 0
        if i % 7 == 3:
            x = -np.abs(x)
        bits = int(gen.integers(2, 9))
        signed = bool(i % 3)
        symmetric = bool(i % 2) and signed
        qmin, qmax = integer_range(bits, signed=signed)
        kind = ("symmetric" if symmetric else "asymmetric") + (", signed" if signed else ", unsigned")
        cases.append((kind, x.astype(np.float32), axis, group_size, qmin, qmax, symmetric))
    return cases


def check_quantize_per_group(quantize_per_group, seed=None):
    """Task 1: one (scale, zero_point) per group of consecutive values along ``axis``."""
    task = "quantize_per_group"
    cases = _per_group_cases(seed)
    for kind, x, axis, group_size, qmin, qmax, symmetric in cases:
        q_ref, s_ref, z_ref = (t.numpy() for t in ref.quantize_per_group.unguarded(
            torch.from_numpy(x), axis, group_size, qmin, qmax, symmetric))
        got = _triple(_run(task, quantize_per_group, torch.from_numpy(x.copy()), axis, group_size, qmin, qmax,
                           symmetric=symmetric), task, ("q", "scale", "zero_point"))
        q = as_integers(got[0], "q", task)
        scale = as_array(got[1], "scale", task, "an all-zero group needs a scale of at least float32 eps.")
        zp = as_integers(got[2], "zero_point", task)
        scheme = "symmetric" if symmetric else "asymmetric"
        where = (f"x of shape {x.shape}, axis={axis}, group_size={group_size}, qmin={qmin}, qmax={qmax}, {scheme}")
        check_shape(q, x.shape, "q", task)
        if scale.shape != s_ref.shape:
            hint = _per_group_hint(x, axis, group_size, qmin, qmax, symmetric, scale, s_ref)
            fail(f"{task} ({where}): scale should have shape {s_ref.shape} (x's shape with axis {axis} divided "
                 f"by group_size), got {scale.shape}. Hint: {hint}")
        check_shape(zp, z_ref.shape, "zero_point", task)
        if not np.allclose(scale, s_ref, rtol=1e-6, atol=0):
            hint = _per_group_hint(x, axis, group_size, qmin, qmax, symmetric, scale, s_ref)
            fail(with_hint(f"{task} ({where}) with x =\n{fmt(x)}\nexpected scales\n{fmt(s_ref)}\n"
                           f"got\n{fmt(scale)}", hint)
                 if seed is None else hidden_case(f"quantize_per_group ({kind}, axis={axis}): the scales differ", hint))
        if not np.array_equal(zp, z_ref):
            hint = ("symmetric quantization has zero point 0." if symmetric else
                    "each group's zero point comes from asymmetric_qparams on the group's own range.")
            fail(with_hint(f"{task} ({where}): expected zero points\n{fmt(z_ref)}\ngot\n{fmt(zp)}", hint)
                 if seed is None else hidden_case(f"quantize_per_group ({kind}): the zero points differ", hint))
        ratio = x.astype(np.float64) / ref.expand_groups(s_ref, axis, group_size).numpy()
        ok = (q == q_ref) | (near_tie_but_not_exact(ratio) & (np.abs(q - q_ref) <= 1))
        if not ok.all():
            hint = ("quantize each value with its own group's scale and zero point: repeat them group_size times "
                    "along axis (or keep the (..., n_groups, group_size) view) so that they line up with x.")
            fail(with_hint(f"{task} ({where}): expected q =\n{fmt(q_ref)}\ngot\n{fmt(q)}", hint)
                 if seed is None else
                 hidden_case(f"quantize_per_group ({kind}, axis={axis}): {int((~ok).sum())} values of q differ", hint))
    # a group size that does not divide the axis must be refused, not silently mishandled
    outcome = _run(task, call_catching, quantize_per_group, torch.ones(4, 12), 1, 5, -8, 7)
    if outcome[0] != "raised" or "ValueError" not in outcome[1]:
        did = "it returned normally" if outcome[0] == "returned" else f"it raised {outcome[1][0]} ({outcome[2]})"
        fail(f"{task}(x of shape (4, 12), axis=1, group_size=5, qmin=-8, qmax=7): 5 does not divide 12, so this "
             f"call should raise ValueError, but {did}. Hint: check x.shape[axis] % group_size first.")
    passed(task, len(cases) + 1, hidden=seed is not None)


# --- Task 2: dequantize_per_group -------------------------------------------------------------

def check_dequantize_per_group(dequantize_per_group, seed=None):
    """Task 2: ``scale_g * (q - zero_point_g)`` with every group's parameters repeated along ``axis``."""
    task = "dequantize_per_group"
    if seed is None:
        cases = [("the worked example", np.array([[3, -2, 3, 1], [3, 2, -3, 0]]), np.array([[0.5, 0.125], [2.0, 0.25]]),
                  np.zeros((2, 2), dtype=np.int64), 1, 2),
                 ("asymmetric groups", np.array([0, 3, 2, 3]), np.array([1.0, 0.5]), np.array([1, 0]), 0, 2)]
    else:
        gen = np.random.default_rng(seed)
        cases = []
        for i in range(20):
            shape, axis, group_size = [((12, 64), 1, 16), ((64, 12), 0, 8), ((4, 6, 24), -1, 6), ((6, 10), 1, 10),
                                       ((3, 8, 5), 1, 4)][i % 5]
            qmin, qmax = [(-8, 7), (0, 255), (-128, 127), (0, 3)][i % 4]
            s_shape = list(shape)
            s_shape[axis] //= group_size
            cases.append(("random groups", gen.integers(qmin, qmax + 1, size=shape),
                          (10.0 ** gen.uniform(-4, 1, size=s_shape)).astype(np.float32),
                          gen.integers(qmin, qmax + 1, size=s_shape), axis, group_size))
    for kind, q, scale, zp, axis, group_size in cases:
        expected = ref.dequantize_per_group.unguarded(torch.from_numpy(q),
                                                      torch.from_numpy(np.asarray(scale, np.float32)),
                                                      torch.from_numpy(zp), axis, group_size).numpy()
        got = as_array(_run(task, dequantize_per_group, torch.from_numpy(q.copy()),
                            torch.from_numpy(np.asarray(scale, np.float32)), torch.from_numpy(zp.copy()), axis,
                            group_size), "x_hat", task)
        check_shape(got, q.shape, "x_hat", task)
        s_full = np.moveaxis(np.repeat(np.moveaxis(np.asarray(scale, np.float64), axis, -1), group_size, axis=-1),
                             -1, axis)
        if np.all(np.abs(got - expected) <= 1e-6 * (np.abs(expected) + s_full)):  # float32 vs float64
            continue
        z_full = np.moveaxis(np.repeat(np.moveaxis(zp, axis, -1), group_size, axis=-1), -1, axis)
        tiled = np.moveaxis(np.tile(np.moveaxis(np.asarray(scale, np.float64), axis, -1), group_size), -1, axis)
        if np.allclose(got, s_full * (q + z_full), rtol=1e-6):
            hint = "subtract the zero point: x_hat = scale * (q - zero_point)."
        elif tiled.shape == q.shape and np.allclose(got, tiled * (q - np.moveaxis(np.tile(
                np.moveaxis(zp, axis, -1), group_size), -1, axis)), rtol=1e-6):
            hint = ("the group parameters are tiled (g0, g1, g0, g1, ...) instead of repeated (g0, g0, ..., g1, g1): "
                    "use repeat_interleave / np.repeat along axis.")
        else:
            hint = "x_hat = scale * (q - zero_point), with each group's scale and zero point repeated group_size times along axis."
        fail(with_hint(f"{task}(q=\n{fmt(q)}, scale={fmt(scale)}, zero_point={fmt(zp)}, axis={axis}, "
                       f"group_size={group_size}):\nexpected {fmt(expected)}\ngot      {fmt(got)}", hint)
             if seed is None else hidden_case(f"dequantize_per_group on {kind} (axis={axis})", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 3: mxint_quantize -------------------------------------------------------------------

def _mxint_hint(x, bits, block_size, s, q, s_ref) -> str:
    blocks = x.astype(np.float64).reshape(*x.shape[:-1], -1, block_size)
    amax = np.abs(blocks).max(axis=-1)
    if not np.array_equal(s, s_ref):
        with np.errstate(divide="ignore"):
            from_log2 = np.clip(np.floor(np.log2(amax.astype(np.float32))), -127, 127)
            up = np.clip(np.ceil(np.log2(amax)), -127, 127)
            unclamped = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))), -127)
        nonzero = amax > 0
        if np.array_equal(s[nonzero], from_log2[nonzero]):
            return ("floor(log2(max)) of a rounded logarithm is wrong just below a power of two "
                    "(in float32, log2(7.9999995) rounds to 3.0): take the exponent from torch.frexp or math.frexp.")
        if np.array_equal(s[nonzero], up[nonzero]):
            return "s = floor(log2(max|x|)), rounded down, not up."
        if np.array_equal(s[nonzero], unclamped[nonzero]):
            return "clamp s to the E8M0 range [-127, 127] (a block whose max is below 2^-127 gets -127)."
        if not np.array_equal(s[~nonzero], s_ref[~nonzero]):
            return "an all-zero block gets s = -127."
        return "s = floor(log2(max|x_block|)), clamped to [-127, 127]."
    top = 2 ** (bits - 1) - 1
    if (np.abs(q) > top).any():
        return f"clamp q to [-{top}, {top}]: the block's largest value can round up to 2^(bits-1)."
    scaled = (blocks * np.ldexp(1.0, bits - 2 - s_ref)[..., None]).reshape(x.shape)
    if np.array_equal(q, np.clip(np.floor(scaled + 0.5), -top, top)) or np.array_equal(
            q, np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5), -top, top)):
        return "ties round half to even (torch.round or np.round), not up or away from zero."
    return "q = clamp(round(x * 2^(bits - 2 - s)), -(2^(bits-1) - 1), 2^(bits-1) - 1) with s of x's own block."


def check_mxint_quantize(mxint_quantize, seed=None):
    """Task 3: blocks over the last axis sharing the power-of-two scale 2^(s - (bits - 2))."""
    task = "mxint_quantize"
    if seed is None:
        hand = np.array([[1.5, -0.75, 0.375, 0.1, 7.9, 1.0, -2.0, 0.5]], dtype=np.float32)
        below = np.array([[7.9999995, 1.0, -3.0, 0.5, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)  # just below 8; zeros
        cases = [("the worked example", hand, 4, 4), ("just below a power of two, and an all-zero block", below, 4, 4),
                 ("an 8x64 outlier matrix", _outlier_matrix(8, 64, seed=5).numpy(), 4, 32)]
    else:
        gen = np.random.default_rng(seed)
        cases = []
        for i in range(24):
            bits = [2, 3, 4, 6, 8][i % 5]
            block_size = [32, 8, 4][i % 3]
            x = (gen.standard_normal((6, 96)) * 10.0 ** gen.uniform(-4, 4, size=(6, 1))).astype(np.float32)
            kind = "random blocks"
            n_blocks = 96 // block_size
            if i % 4 == 1:  # block maxima exactly at, and just below, powers of two
                k = gen.integers(-10, 10, size=(6, n_blocks))
                top = np.ldexp(1.0, k) * np.where(gen.integers(0, 2, size=k.shape) == 1, 1.0, 1 - 2.0 ** -24)
                xb = x.reshape(6, n_blocks, block_size).astype(np.float64)
                xb = xb / np.abs(xb).max(axis=-1, keepdims=True) * 0.5 * top[..., None]
                xb[..., 0] = top
                x = xb.reshape(6, 96).astype(np.float32)
                kind = "blocks whose max is a power of two or just below one"
            if i % 6 == 2:  # ties: odd multiples of half a step, under a block max of 1.5 * 2^s
                s_blk = gen.integers(-3, 4, size=(6, n_blocks))
                step = np.ldexp(1.0, s_blk - bits + 2)
                lim = int(1.5 * 2 ** (bits - 2))
                xb = (gen.integers(-lim, lim, size=(6, n_blocks, block_size)) + 0.5) * step[..., None]
                xb[..., 0] = 1.5 * np.ldexp(1.0, s_blk)
                x = xb.reshape(6, 96).astype(np.float32)
                kind = "values exactly halfway between two codes"
            if i % 8 == 5:
                x[:, :block_size] = 0.0
                x[1, block_size:2 * block_size] *= np.float32(2.0 ** -140)  # max below 2^-127: s clamps
                kind = "all-zero and tiny blocks"
            cases.append((kind, x, bits, block_size))
    for kind, x, bits, block_size in cases:
        s_ref, q_ref = (t.numpy() for t in ref.mxint_quantize.unguarded(torch.from_numpy(x), bits, block_size))
        got = _triple(_run(task, mxint_quantize, torch.from_numpy(x.copy()), bits, block_size), task,
                      ("shared_exponents", "q"))
        s = as_integers(got[0], "shared_exponents", task)
        q = as_integers(got[1], "q", task)
        where = f"x of shape {x.shape}, bits={bits}, block_size={block_size}"
        check_shape(s, s_ref.shape, "shared_exponents (one per block)", task)
        check_shape(q, x.shape, "q", task)
        if np.array_equal(s, s_ref) and np.array_equal(q, q_ref):
            continue
        hint = _mxint_hint(x, bits, block_size, s, q, s_ref)
        fail(with_hint(f"{task} ({where}) with x =\n{np.array2string(x, precision=8, threshold=20, separator=', ')}\n"
                       f"expected shared_exponents {fmt(s_ref)} and q =\n{fmt(q_ref)}\n"
                       f"got shared_exponents {fmt(s)} and q =\n{fmt(q)}", hint)
             if seed is None else hidden_case(f"mxint_quantize on {kind} (bits={bits})", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 4: scale_bits_per_weight ------------------------------------------------------------

def _storage_hint(shape, granularity, group_size, scale_bits, zero_point_bits, got) -> str:
    out, k = shape[0], math.prod(shape[1:])
    n = out * k
    gs = 32 if granularity == "mx" and group_size is None else group_size
    sb = 8 if granularity == "mx" else (32 if scale_bits is None else scale_bits)
    if granularity in ("group", "mx") and math.isclose(got, out * (k // gs) * (sb + zero_point_bits) / n):
        return "a group that does not fill up (the last of a row) still needs its own scale: ceil(K / group_size)."
    if granularity in ("group", "mx") and math.isclose(got, (n / gs) * (sb + zero_point_bits) / n) and k % gs:
        return "groups never span two output channels: count ceil(K / group_size) groups in each row."
    if zero_point_bits and math.isclose(got, ref_storage._count(shape, granularity, gs) * sb / n):
        return "add the zero point's bits to every scale: (scale_bits + zero_point_bits) per group."
    if granularity == "mx" and math.isclose(got, out * math.ceil(k / gs) * 32 / n):
        return "MX scales are E8M0: 8 bits each, whatever scale_bits says."
    if math.isclose(got, ref_storage._count(shape, granularity, gs) * (sb + zero_point_bits) / k):
        return "divide by the number of weights N = C_out * K, not by K."
    if scale_bits is None and math.isclose(got, ref_storage._count(shape, granularity, gs) * (16 + zero_point_bits) / n):
        return "scale_bits=None means 32 (FP32), or 8 for 'mx'."
    return "count the scales (1, C_out or C_out * ceil(K / g)), multiply by their bits, divide by the weights."


def check_scale_bits_per_weight(scale_bits_per_weight, seed=None):
    """Task 4: bits of scales and zero points per weight, for every granularity."""
    task = "scale_bits_per_weight"
    if seed is None:
        cases = [((64, 512), "tensor", None, None, 0), ((64, 512), "channel", None, 32, 0),
                 ((64, 512), "group", 128, 16, 4), ((32, 16, 3, 3), "group", 32, 16, 0), ((64, 512), "mx", None, None, 0)]
    else:
        gen = np.random.default_rng(seed)
        cases = []
        for i in range(60):
            shape = [(int(gen.integers(1, 300)), int(gen.integers(1, 700))),
                     (int(gen.integers(1, 64)), int(gen.integers(1, 32)), 3, 3),
                     (int(gen.integers(1, 40)), int(gen.integers(1, 9)), 5, 5)][i % 3]
            granularity = ("tensor", "channel", "group", "mx")[i % 4]
            group_size = {"group": int(gen.choice([8, 16, 32, 64, 100, 128])),
                          "mx": [None, 16, 32][i % 3]}.get(granularity)
            scale_bits = None if granularity == "mx" else [None, 16, 32, 8][i % 4]
            zero_point_bits = 0 if granularity == "mx" else [0, 4, 8][i % 3]
            cases.append((tuple(shape), granularity, group_size, scale_bits, zero_point_bits))
    for shape, granularity, group_size, scale_bits, zero_point_bits in cases:
        expected = ref_storage.scale_storage_bits(shape, granularity, group_size, scale_bits, zero_point_bits) \
            / math.prod(shape)
        got = as_array(_run(task, scale_bits_per_weight, shape, granularity, group_size=group_size,
                            scale_bits=scale_bits, zero_point_bits=zero_point_bits), "the result", task)
        if got.size != 1:
            fail(f"{task}: should return one number (bits per weight), got an array of shape {got.shape}.")
        got = float(got.reshape(()))
        if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            continue
        hint = _storage_hint(shape, granularity, group_size, scale_bits, zero_point_bits, got)
        call = (f"{task}({shape}, {granularity!r}, group_size={group_size}, scale_bits={scale_bits}, "
                f"zero_point_bits={zero_point_bits})")
        fail(with_hint(f"{call}: expected {expected!r}, got {got!r}.", hint)
             if seed is None else hidden_case(f"scale_bits_per_weight with granularity {granularity!r}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Questions: reasoning about the experiment -----------------------------------------------------

def check_codes_of_a_narrow_row(answer):
    """Question 1: at 8 bits per tensor, a row 100x narrower than the widest uses at most 3 codes (-1, 0, 1)."""
    qmax = integer_range(8)[1]
    top = round(qmax / 100)  # the narrow row's largest |w| in steps of the per-tensor scale
    check_number("Question 1", answer, 2 * top + 1, rel_tol=0.0, abs_tol=1e-9, mistakes=[
        (qmax / 100, "That is the row's largest value measured in steps of the scale; the codes are the whole "
                     "numbers its weights round to, from the most negative to the most positive."),
        (top, "That is the largest code; count every code the row can take, negative ones and 0 included."),
        (top + 1, "Count the negative codes too: the weights of a row have both signs."),
        (2 * round(255 / 100) + 1, "A symmetric 8-bit scale maps the largest |w| to 127, not to 255."),
    ], hint="The scale is the matrix's largest |w| divided by 127; divide the row's largest |w| by it, round, "
            "and count the whole numbers from minus that to plus that.")


def check_what_per_channel_misses(answer):
    """Question 2: per channel, the outlier columns still set every row's scale."""
    check_choice("Question 2", answer, "b", hints={
        "a": "Per channel gives each row its own scale: a row 100 times larger gets a scale 100 times larger, "
             "and its weights use the whole grid.",
        "c": "Look at the right panel of the experiment: per channel, at 4 bits, the row errors are far from zero.",
        "d": "A symmetric scale taken from max|w| never clips: the largest weight of a row lands exactly on q_max.",
    })


def check_why_input_scales_cost(answer):
    """Question 3: a scale per input column does not factor out of the integer dot product."""
    check_choice("Question 3", answer, "b", hints={
        "a": "Storage is small either way (256 scales against 64 here); the question is about the arithmetic: "
             "where does the scale sit in the sum over the inputs?",
        "c": "The weights are the same integers either way; what changes is where the scale is applied.",
        "d": "The activations keep their one scale S_x. Write the output as a sum over j and see where S_j sits.",
    })


# --- Task 5: a scheme within a budget of bits per weight --------------------------------------------

#: The budget of Task 5, in effective bits per weight (elements and scales).
DESIGN_BUDGET = 4.5
#: Task 5's configuration: key -> allowed values.
DESIGN_FIELDS = {
    "granularity": Field(str, choices=("tensor", "channel", "group", "mx")),
    "bits": Field(int, choices=(2, 3, 4, 5, 6, 7, 8)),
    "group_size": Field(object, choices=(None, 4, 8, 16, 32, 64, 128, 256)),
    "scale_bits": Field(object, choices=(None, 16, 32)),
}
#: The reference design (MX blocks of 16 at 4 bits: 4.5 bits per weight) has mean row error 0.0243.
DESIGN_TIERS = [
    Tier(1.0, "mean row error at most 0.030 (within 25% of the reference design)", lambda m: m["error"] <= 0.030),
    Tier(0.75, "mean row error at most 0.060", lambda m: m["error"] <= 0.060),
    Tier(0.5, "mean row error at most 0.160 (better than one FP16 scale per row at 4 bits)",
         lambda m: m["error"] <= 0.160),
    Tier(0.25, "mean row error at most 0.5 (better than one scale for the whole matrix)", lambda m: m["error"] <= 0.5),
]


def lab_outlier_matrix(rows: int = 64, cols: int = 256) -> torch.Tensor:
    """The lab's weight matrix ``W`` (its ``matrix`` cell builds the same one)."""
    gen = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(rows, cols, generator=gen)
    w *= torch.pow(2.0, 2 * torch.rand(rows, 1, generator=gen) - 1)
    w[torch.randperm(rows, generator=gen)[:4]] *= 100
    w[:, torch.randperm(cols, generator=gen)[:2]] *= 20
    return w


@measured_once
def design_measures(design: dict) -> dict:
    """Effective bits per weight and mean row error of ``design`` on the lab's ``W``, with qlib's quantizers.

    Mean row error: the mean over rows ``c`` of ``||W_c - W_hat_c||^2 / ||W_c||^2``; symmetric
    quantization, round half to even, scales in float32 (:func:`qlib.weights.fake_quantize_weight`).
    ``ValueError`` (from qlib) names what the configuration gets wrong.
    """
    from qlib.weights import fake_quantize_weight

    w = lab_outlier_matrix()
    bits_per_weight = ref_storage.bits_per_weight(tuple(w.shape), design["bits"], design["granularity"],
                                                  design["group_size"], design["scale_bits"])
    w_hat = fake_quantize_weight(w, design["bits"], design["granularity"], design["group_size"]).double()
    w64 = w.double()
    error = float((((w64 - w_hat) ** 2).sum(dim=1) / (w64 ** 2).sum(dim=1)).mean())
    return {"bits_per_weight": bits_per_weight, "error": error}


def check_design(design):
    """Task 5: the grader quantizes ``W`` with the student's configuration itself and grades it in tiers."""
    task = "Task 5"
    design = config_of(task, design, DESIGN_FIELDS, what="design")
    if design["granularity"] == "mx" and design["scale_bits"] is not None:
        fail(f"{task}: MX scales are always 8-bit powers of two (E8M0): set scale_bits to None.")
    return measured_design(task, design, design_measures, DESIGN_TIERS,
                           report=lambda m: f"{m['bits_per_weight']:g} bits per weight, mean row error "
                                            f"{m['error']:.4f}",
                           limit=Limit("bits_per_weight", DESIGN_BUDGET, lambda m: (
                               f"this design costs {m['bits_per_weight']:g} bits per weight, over the budget of "
                               f"{DESIGN_BUDGET:g}. Task 4 tells you what its scales cost.")))
