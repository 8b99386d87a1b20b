"""Checks for lab07_qat, called by the lab's test cells.

Same contract as :mod:`qlib.grading.lab03`: visible cases explained in full;
hidden cases (``seed``) name the kind of input and the likely mistake, never the
input. The students' autograd functions are run forward and backward
(``torch.autograd.grad``) on fixed-seed inputs and compared with :mod:`qlib.ste`
and :mod:`qlib.lsq`, computed before the student's code runs. Where
``x / scale`` and ``x * (1 / scale)`` may round a value within float error of a
tie differently, either neighbour is accepted.

While a student's function runs, qlib's references and PyTorch's own fake
quantization operators (which compute these very answers) are unavailable.
The fine-tuning task is graded by the test accuracy that the grader itself
measures on the returned weights, quantized the way the lab prescribes.

The questions (PACT's gradient for alpha; the share of fc1's weights that a 2-bit
grid rounds to 0) are computed here from the folded model, never from the
student's functions. Task 5 takes QAT settings (a dict) and fine-tunes the
pretrained CNN at W2/A2 with qlib's reference QAT (:func:`qlib.qat.prepare_qat`,
:func:`qlib.qat_training.train_qat`), two seeds on one thread, within a budget of
optimizer steps; the mean test accuracy earns points in tiers.
"""
from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qlib import lsq as ref_lsq
from qlib import ste as ref_ste
from qlib._reference import reference
from qlib.grading.answers import Field, Tier, check_choice, check_number, config_of, measured_design, measured_once
from qlib.grading.checks_common import HIDDEN, hidden_case, passed, task_runner, tie_or_near_tie, with_hint
from qlib.grading.harness import as_array, fail, fmt, run_submission, time_limit  # noqa: F401 (time_limit: the lab)

#: The qlib functions whose work this lab asks for; unavailable while a student's code runs.
REFERENCES = ("fake_quantize_ste", "lsq_fake_quantize", "lsq_grad_scale", "lsq_init_step", "prepare_qat",
              "train_qat", "quantized_forward")

#: The layers of the folded digits CNN whose inputs and weights are quantized, in order.
LAYERS = ("conv1", "conv2", "fc1", "fc2")

# PyTorch operators that would compute a task's answer; hidden while the student's function runs.
_TORCH_ANSWERS = ("fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine",
                  "_fake_quantize_learnable_per_tensor_affine", "_fake_quantize_learnable_per_channel_affine")


@contextmanager
def _torch_answers_hidden():
    """Inside the ``with``, PyTorch's fake-quantization operators raise an explanation instead."""
    saved = {name: getattr(torch, name) for name in _TORCH_ANSWERS}

    def refuse(name):
        def refused(*args, **kwargs):
            raise RuntimeError(f"torch.{name} computes this task's answer and is switched off while your "
                               "work is graded: write the formula with torch.round, torch.clamp and friends")
        return refused

    for name in _TORCH_ANSWERS:
        setattr(torch, name, refuse(name))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def _without_torch_answers(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with PyTorch's fake-quantization operators switched off (runs in the kernel)."""
    with _torch_answers_hidden():
        return fn(*args, **kwargs)


# --- references for the later tasks ----------------------------------------------------------

@reference("quantized_forward")
def reference_quantized_forward(model: nn.Module, images: torch.Tensor, bits: int, input_max: dict) -> torch.Tensor:
    """The lab's quantized forward pass of the folded digits CNN (the answer to Task 3).

    Weights: symmetric, one scale per output channel, ``scale = max|W_c| / (2**(bits-1) - 1)``,
    integers ``[-2**(bits-1), 2**(bits-1) - 1]``. Inputs of every layer: unsigned
    ``[0, 2**bits - 1]``, zero point 0, ``scale = input_max[layer] / (2**bits - 1)``.
    Both with the straight-through estimator of :mod:`qlib.ste`.
    """
    qmax_w = 2 ** (bits - 1) - 1
    qmax_x = 2**bits - 1

    def weight(layer):
        w = layer.weight
        scale = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) / qmax_w
        return ref_ste.fake_quantize_ste.unguarded(w, scale, 0, -qmax_w - 1, qmax_w)

    def inputs(x, name):
        scale = torch.tensor(input_max[name] / qmax_x, dtype=torch.float32)
        return ref_ste.fake_quantize_ste.unguarded(x, scale, 0, 0, qmax_x)

    m = model
    x = F.relu(F.conv2d(inputs(images, "conv1"), weight(m.conv1), m.conv1.bias, padding=1))
    x = F.relu(F.conv2d(inputs(x, "conv2"), weight(m.conv2), m.conv2.bias, padding=1))
    x = F.max_pool2d(x, 2).flatten(1)
    x = F.relu(F.linear(inputs(x, "fc1"), weight(m.fc1), m.fc1.bias))
    return F.linear(inputs(x, "fc2"), weight(m.fc2), m.fc2.bias)


@torch.no_grad()
def layer_input_max(model: nn.Module, data) -> dict:
    """``{layer: largest value entering it}`` over ``data`` (a :class:`qlib.data.Digits`), FP32 model."""
    seen = {}
    hooks = [getattr(model, name).register_forward_pre_hook(
        lambda module, args, name=name: seen.__setitem__(name, max(seen.get(name, 0.0), float(args[0].max())))
    ) for name in LAYERS]
    try:
        model.eval()
        for images, _ in data.batches():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return {name: seen[name] for name in LAYERS}


@torch.no_grad()
def quantized_accuracy(model: nn.Module, data, bits: int, input_max: dict) -> float:
    """Share of ``data`` classified correctly by :func:`reference_quantized_forward`."""
    logits = reference_quantized_forward(model, data.images, bits, input_max)
    return float((logits.argmax(dim=1) == data.labels).double().mean())


# --- shared helpers ---------------------------------------------------------------------------

def _autograd_function_or_type(cls):
    """None if ``cls`` is a torch.autograd.Function subclass, else its type's name (runs where ``cls`` lives)."""
    return None if isinstance(cls, type) and issubclass(cls, torch.autograd.Function) else type(cls).__name__


def _autograd_function(cls, task):
    other = run_submission(task, _autograd_function_or_type, cls)
    if other is not None:
        fail(f"{task}: expected a class derived from torch.autograd.Function (with static methods forward and "
             f"backward), got {other}. Did you overwrite its name?")
    return cls


def _tensor_out(value, what, task):
    if not isinstance(value, torch.Tensor):
        fail(f"{task}: {what} should be a torch tensor, got {type(value).__name__}.")
    if value.dtype != torch.float32:
        fail(f"{task}: {what} should be float32 (like the input), got {value.dtype}.")
    return value


# --- Task 1: fake quantization with the straight-through estimator -----------------------------

def _ste_visible():
    return [
        ("visible", torch.tensor([-1.0, -0.26, 0.0, 0.24, 0.25, 0.75, 1.3, 9.0]), 0.5, 0, -4, 3),
        ("visible", torch.tensor([0.5, 1.5, 2.5, 3.5, -7.0]), 1.0, 1, -2, 3),
        ("visible", torch.tensor([-2.6, -2.4, -0.3, 0.0, 1.2, 1.4, 1.5, 1.6, 3.0]), 1.0, 0, -2, 1),
        ("one scale per row", torch.tensor([[0.1, 0.7, -0.9], [0.1, 0.7, -0.9]]), torch.tensor([[0.25], [0.5]]),
         0, -2, 1),
    ]


def _ste_hidden(seed):
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(40):
        bits = 2 + i % 7
        signed = bool(i % 2)
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        zp = int(torch.randint(qmin, qmax + 1, (1,), generator=gen))
        if i % 4 == 0:
            scale = 2.0 ** int(torch.randint(-6, 2, (1,), generator=gen))
            k = torch.randint(qmin - 3, qmax + 3, (64,), generator=gen)
            x = ((k - zp + 0.5) * scale).to(torch.float32)
            kind = "exactly halfway between two levels, some beyond the range"
        elif i % 4 == 3:
            scale = (0.01 + torch.rand(5, 1, generator=gen)) / 2
            x = torch.randn(5, 30, generator=gen) * (qmax - qmin) * 0.2
            zp = 0 if qmin < 0 else qmin
            kind = "a scale per row (a tensor that broadcasts against x)"
        else:
            scale = float(torch.tensor(10 ** (-2 + 2 * torch.rand(1, generator=gen).item()), dtype=torch.float32))
            x = (torch.randn(200, generator=gen) * scale * (qmax - qmin) / 2.5 + (qmin + qmax) / 2 * scale)
            kind = "random, some outside the range"
        cases.append((kind, x.to(torch.float32), scale, zp, qmin, qmax))
    return cases


def _ratio(x, scale):
    return (x.double() / torch.as_tensor(scale, dtype=torch.float64)).numpy()


def _where(kind, x, scale, zp, qmin, qmax):
    s = fmt(scale.reshape(-1).numpy()) if isinstance(scale, torch.Tensor) else scale
    return f"x = {fmt(x.numpy())}, scale = {s}, zero_point = {zp}, qmin = {qmin}, qmax = {qmax}"


def _forward_variants(x, scale, zp, qmin, qmax):
    v = _ratio(x, scale)
    s = torch.as_tensor(scale, dtype=torch.float64).numpy()
    return {
        "the result is not clamped to [qmin, qmax].": (np.round(v) + zp - zp) * s,
        "the output should be dequantized: return (q - zero_point) * scale, not the integer q.":
            np.clip(np.round(v) + zp, qmin, qmax),
        "floor instead of round: use torch.round (round half to even).":
            (np.clip(np.floor(v) + zp, qmin, qmax) - zp) * s,
        "the zero point is not subtracted again when dequantizing.": np.clip(np.round(v) + zp, qmin, qmax) * s,
    }


def check_fake_quant_ste_forward(FakeQuantSTE, seed=None):
    """Task 1a: FakeQuantSTE.apply(x, scale, zero_point, qmin, qmax) = fake quantization."""
    task = "FakeQuantSTE.forward"
    cls = _autograd_function(FakeQuantSTE, task)
    cases = _ste_visible() if seed is None else _ste_hidden(seed)
    for kind, x, scale, zp, qmin, qmax in cases:
        expected = ref_ste.fake_quantize_ste(x, scale, zp, qmin, qmax).double().numpy()
        got = _run(task, _without_torch_answers, cls.apply, x.clone(), scale, zp, qmin, qmax)
        got = as_array(_tensor_out(got, "the output", task), "the output", task).astype(np.float64)
        if got.shape != expected.shape:
            fail(f"{task}: the output should have the shape of x {tuple(x.shape)}, got {got.shape}.")
        step = torch.as_tensor(scale, dtype=torch.float64).expand(x.shape).numpy()
        ok = np.isclose(got, expected, rtol=1e-6, atol=1e-7 * step) | (
            tie_or_near_tie(_ratio(x, scale)) & (np.abs(got - expected) <= step * 1.0001))
        if ok.all():
            continue
        hint = next((h for h, v in _forward_variants(x, scale, zp, qmin, qmax).items()
                     if np.allclose(got, np.broadcast_to(v, got.shape), rtol=1e-6, atol=1e-9)),
                    "q = clamp(round(x / scale) + zero_point, qmin, qmax); return (q - zero_point) * scale.")
        i = np.unravel_index(int(np.flatnonzero(~ok.reshape(-1))[0]), ok.shape)
        fail(with_hint(f"{task} with {_where(kind, x, scale, zp, qmin, qmax)}:\nexpected {fmt(expected)}\n"
                       f"got      {fmt(got)}\nfirst difference: x = {float(x[i])!r} should give "
                       f"{expected[i]:.6g}, got {got[i]:.6g}.", hint)
             if seed is None else hidden_case(f"the forward pass on inputs that are {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


def _grad_of(cls, x, upstream, *args):
    """Run the student's function forward and backward; the gradient with respect to ``x``."""
    x = x.clone().requires_grad_()
    out = cls.apply(x, *args)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise TypeError("the output of apply does not depend on x for autograd: return a tensor computed in "
                        "forward, and do not call forward yourself (call FakeQuantSTE.apply)")
    (grad,) = torch.autograd.grad(out, x, upstream, allow_unused=True)
    return grad


def _mask_variants(x, scale, zp, qmin, qmax, upstream):
    v = _ratio(x, scale)
    q = np.round(v) + zp
    up = upstream.double().numpy()
    unrounded = v + zp
    return {
        "no mask: the gradient must be 0 where the value was clamped.": up,
        "the mask is decided on x / scale + zero_point before rounding; decide it on the rounded value "
        "q = round(x / scale) + zero_point, as PyTorch does (a value up to half a step beyond the range still "
        "rounds onto qmin or qmax and keeps its gradient).": up * ((unrounded >= qmin) & (unrounded <= qmax)),
        "the edges are excluded: use qmin <= q <= qmax (both inclusive).": up * ((q > qmin) & (q < qmax)),
        "the mask is inverted: the gradient passes where q lies inside [qmin, qmax].": up * ((q < qmin) | (q > qmax)),
        "the mask must multiply grad_output (the incoming gradient), not replace it.":
            ((q >= qmin) & (q <= qmax)).astype(np.float64),
    }


def check_fake_quant_ste_backward(FakeQuantSTE, seed=None):
    """Task 1b: the gradient is grad_output where qmin <= q <= qmax, else 0."""
    task = "FakeQuantSTE.backward"
    cls = _autograd_function(FakeQuantSTE, task)
    cases = _ste_visible() if seed is None else _ste_hidden(seed + 1)
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    for kind, x, scale, zp, qmin, qmax in cases:
        upstream = (torch.arange(1, x.numel() + 1, dtype=torch.float32).reshape(x.shape) if seed is None
                    else torch.randn(x.shape, generator=gen))
        t = x.clone().requires_grad_()
        (expected,) = torch.autograd.grad(ref_ste.fake_quantize_ste(t, scale, zp, qmin, qmax), t, upstream)
        expected = expected.double().numpy()
        got = _run(task, _without_torch_answers, _grad_of, cls, x, upstream, scale, zp, qmin, qmax)
        if got is None:
            fail(f"{task}: x received no gradient. backward must return the gradient for x first, then None for "
                 "scale, zero_point, qmin and qmax (five values).")
        got = as_array(got, "the gradient", task).astype(np.float64)
        ok = (got == expected) | tie_or_near_tie(_ratio(x, scale))
        if ok.all():
            continue
        hint = next((h for h, v in _mask_variants(x, scale, zp, qmin, qmax, upstream).items()
                     if np.array_equal(got[~tie_or_near_tie(_ratio(x, scale))],
                                       np.broadcast_to(v, got.shape)[~tie_or_near_tie(_ratio(x, scale))])),
                    "return grad_output * mask, mask = (q >= qmin) & (q <= qmax) with "
                    "q = round(x / scale) + zero_point.")
        fail(with_hint(f"{task} with {_where(kind, x, scale, zp, qmin, qmax)} and "
                       f"grad_output = {fmt(upstream.numpy())}:\n"
                       f"expected gradient {fmt(expected)}\ngot               {fmt(got)}", hint)
             if seed is None else hidden_case(f"the backward pass on inputs that are {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 2: LSQ --------------------------------------------------------------------------------

def _lsq_visible():
    v = torch.tensor([0.3, -0.7, 1.2, 1.6, -2.4, -2.6, 5.0, 0.0])
    return [
        ("visible", v, 1.0, -2, 1, 1.0),
        ("visible", v * 0.1, 0.25, -8, 7, 0.5),
        ("visible, unsigned", torch.tensor([0.05, 0.4, 0.93, 2.2, 3.23, -0.2]), 0.2, 0, 15, 0.25),
    ]


def _lsq_hidden(seed):
    """Random tensors kept away from ties, so that v / s and v * (1/s) agree everywhere."""
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(24):
        bits = 2 + i % 6
        signed = i % 3 != 2
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        step = float(torch.tensor(10 ** (-2 + 2 * torch.rand(1, generator=gen).item()), dtype=torch.float32))
        n = [50, 300, 1000][i % 3]
        k = torch.randint(qmin - 4, qmax + 5, (n,), generator=gen).double()
        frac = 0.05 + 0.4 * torch.rand(n, generator=gen, dtype=torch.float64)
        frac = torch.where(torch.rand(n, generator=gen) < 0.5, frac, -frac)
        v = ((k + frac) * step).to(torch.float32)
        g = 1.0 / math.sqrt(n * qmax)
        kind = "unsigned (activations)" if not signed else "signed (weights)"
        cases.append((f"{kind}, {bits} bits, some values clamped", v, step, qmin, qmax, g))
    return cases


def _lsq_expected(v, step, qmin, qmax, g, upstream):
    t, s = v.clone().requires_grad_(), torch.tensor(step, dtype=torch.float32, requires_grad=True)
    out = ref_lsq.lsq_fake_quantize(t, s, qmin, qmax, g)
    gv, gs = torch.autograd.grad(out, (t, s), upstream)
    return out.detach().double().numpy(), gv.double().numpy(), float(gs)


def _lsq_forward_backward(cls, v, step, qmin, qmax, g, upstream):
    t, s = v.clone().requires_grad_(), torch.tensor(step, dtype=torch.float32, requires_grad=True)
    out = cls.apply(t, s, qmin, qmax, g)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise TypeError("the output of apply does not depend on v and step for autograd: return a tensor "
                        "computed in forward (call LSQFakeQuant.apply, not forward)")
    gv, gs = torch.autograd.grad(out, (t, s), upstream, allow_unused=True)
    return out, gv, gs


def _step_gradient_variants(v, step, qmin, qmax, g, upstream):
    vs = v.double().numpy() / step
    q = np.round(vs)
    up = upstream.double().numpy()
    inside = (q >= qmin) & (q <= qmax)
    clamp_part = np.where(q < qmin, qmin, qmax)
    right = np.where(inside, q - vs, clamp_part)
    return {
        "the gradient scale is missing: multiply the step's gradient by grad_scale.": float((up * right).sum()),
        "the sign is flipped inside the range: differentiate round(v / step) * step with respect to step, the "
        "rounding passed straight through, and check the sign of each of the two terms.":
            float((up * np.where(inside, vs - q, clamp_part)).sum() * g),
        "inside the range you held round(v / step) constant: with the straight-through estimator the rounding "
        "passes the derivative of v / step with respect to step on; it is not 0.":
            float((up * np.where(inside, q, clamp_part)).sum() * g),
        "outside the range v_hat does not depend on v at all: it is the last level (an integer) times step. "
        "Differentiate that with respect to step.":
            float((up * (np.clip(q, qmin, qmax) - vs)).sum() * g),
        "below and above the range are swapped: which level does a value below the range land on?":
            float((up * np.where(inside, q - vs, np.where(q < qmin, qmax, qmin))).sum() * g),
        "inside/outside is decided on v / step before rounding; decide it on the rounded value q, as PyTorch does.":
            float((up * np.where((vs >= qmin) & (vs <= qmax), q - vs, np.where(vs < qmin, qmin, qmax))).sum() * g),
        "sum the step's gradient over every element, each multiplied by grad_output.":
            float(right.sum() * g),
    }


def check_lsq_forward(LSQFakeQuant, seed=None):
    """Task 2a: LSQFakeQuant.apply(v, step, qmin, qmax, grad_scale) = clamp(round(v / step), qmin, qmax) * step."""
    task = "LSQFakeQuant.forward"
    cls = _autograd_function(LSQFakeQuant, task)
    cases = _lsq_visible() if seed is None else _lsq_hidden(seed)
    for kind, v, step, qmin, qmax, g in cases:
        upstream = torch.ones(v.shape)
        expected = _lsq_expected(v, step, qmin, qmax, g, upstream)[0]
        out, _, _ = _run(task, _without_torch_answers, _lsq_forward_backward, cls, v, step, qmin, qmax, g,
                         upstream)
        got = as_array(_tensor_out(out, "the output", task), "the output", task).astype(np.float64)
        if got.shape != expected.shape:
            fail(f"{task}: the output should have the shape of v {tuple(v.shape)}, got {got.shape}.")
        ok = np.isclose(got, expected, rtol=1e-6, atol=1e-7 * step) | (
            tie_or_near_tie(v.double().numpy() / step) & (np.abs(got - expected) <= 1.0001 * step))
        if ok.all():
            continue
        vs = v.double().numpy() / step
        if np.allclose(got, np.round(vs) * step):
            hint = "clamp round(v / step) to [qmin, qmax] before multiplying by step."
        elif np.allclose(got, np.clip(np.round(vs), qmin, qmax)):
            hint = "multiply the clamped integer by step: the output is a real value, not the integer."
        else:
            hint = "v_hat = clamp(round(v / step), qmin, qmax) * step, with torch.round (half to even)."
        fail(with_hint(f"{task}(v, step={step}, qmin={qmin}, qmax={qmax}) with v = {fmt(v.numpy())}:\n"
                       f"expected {fmt(expected)}\ngot      {fmt(got)}", hint)
             if seed is None else hidden_case(f"the LSQ forward pass on {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


def check_lsq_backward(LSQFakeQuant, seed=None):
    """Task 2b: gradients for v (straight-through, clamped to 0) and for step (LSQ, scaled by grad_scale)."""
    task = "LSQFakeQuant.backward"
    cls = _autograd_function(LSQFakeQuant, task)
    cases = _lsq_visible() if seed is None else _lsq_hidden(seed + 1)
    gen = torch.Generator().manual_seed(7 if seed is None else seed)
    for kind, v, step, qmin, qmax, g in cases:
        upstream = torch.ones(v.shape) if seed is None and kind == "visible" and qmax == 1 else \
            torch.randn(v.shape, generator=gen)
        _, e_gv, e_gs = _lsq_expected(v, step, qmin, qmax, g, upstream)
        _, gv, gs = _run(task, _without_torch_answers, _lsq_forward_backward, cls, v, step, qmin, qmax, g,
                         upstream)
        where = (f"v = {fmt(v.numpy())}, step = {step}, qmin = {qmin}, qmax = {qmax}, grad_scale = {g:.4g}, "
                 f"grad_output = {fmt(upstream.numpy())}")
        if gv is None or gs is None:
            fail(f"{task}: {'v' if gv is None else 'step'} received no gradient. backward returns five values: "
                 "the gradient for v, the gradient for step, then None for qmin, qmax and grad_scale.")
        gv = as_array(gv, "the gradient for v", task).astype(np.float64)
        gs_arr = as_array(gs, "the gradient for step", task)
        if gs_arr.size != 1:
            fail(f"{task}: the gradient for step should be a single number (step is one number), got shape "
                 f"{gs_arr.shape}. Sum the contributions of every element.")
        gs = float(gs_arr.reshape(()))
        tie = tie_or_near_tie(v.double().numpy() / step)
        if not ((gv == e_gv) | tie).all():
            hint = ("the gradient for v is grad_output where qmin <= round(v / step) <= qmax and 0 elsewhere "
                    "(the straight-through estimator, as in Task 1).")
            fail(with_hint(f"{task} with {where}:\nexpected gradient for v {fmt(e_gv)}\ngot                     "
                           f"{fmt(gv)}", hint)
                 if seed is None else hidden_case(f"the gradient of v on {kind}", hint))
        scale_of_terms = float(np.abs(upstream.double().numpy()).sum()) * g * max(1.0, abs(qmin), qmax)
        if abs(gs - e_gs) > 1e-5 * scale_of_terms + 1e-7:
            hint = next((h for h, val in _step_gradient_variants(v, step, qmin, qmax, g, upstream).items()
                         if abs(gs - val) <= 1e-5 * scale_of_terms + 1e-7),
                        "derive d v_hat / d step in each of the three cases (q below, inside and above [qmin, qmax]) "
                        "from v_hat = clamp(q, qmin, qmax) * step, with the straight-through estimator for the "
                        "rounding; multiply by grad_output, sum over the elements, and multiply by grad_scale.")
            fail(with_hint(f"{task} with {where}:\nexpected gradient for step {e_gs:.6g}, got {gs:.6g}.", hint)
                 if seed is None else hidden_case(f"the gradient of step on {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 3: the quantized forward pass ---------------------------------------------------------

#: Earlier tasks each task may call; while it is checked they are replaced by correct versions.
EARLIER_TASKS = {"quantized_forward": ("fake_quant_ste",), "qat_finetune": ("fake_quant_ste", "quantized_forward")}
STAND_INS = {"fake_quant_ste": ref_ste.fake_quantize_ste, "quantized_forward": reference_quantized_forward}
_run = task_runner(REFERENCES, EARLIER_TASKS, STAND_INS)


def _folded_cnn():
    from qlib.folding import fold_every_batchnorm
    from qlib.models import load_pretrained

    return fold_every_batchnorm(load_pretrained("cnn"))


def _weight_grads(logits, model):
    """Gradients of the summed logits with respect to two weights (None where none reaches them)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"quantized_forward should return a tensor of logits, got {type(logits).__name__}")
    if not logits.requires_grad:
        return None
    return torch.autograd.grad(logits.sum(), [model.conv1.weight, model.fc2.weight], allow_unused=True)


def _logits_and_weight_grads(quantized_forward, model, images, bits, input_max):
    """The student's logits, and the gradients that reach two weights from them (runs in the kernel)."""
    logits = quantized_forward(model, images, bits, input_max)
    return logits, _weight_grads(logits, model)


def check_quantized_forward(quantized_forward, seed=None):
    """Task 3: logits of the folded CNN with fake-quantized weights and layer inputs, gradients to W."""
    from qlib.data import load_digits

    task = "quantized_forward"
    train = load_digits("train")
    model = _folded_cnn()
    input_max = layer_input_max(model, train)
    if seed is None:
        cases = [(4, load_digits("test").images[:64])]
    else:
        gen = torch.Generator().manual_seed(seed)
        cases = [(b, train.images[torch.randint(0, len(train), (128,), generator=gen)]) for b in (2, 3, 8)]
    for bits, images in cases:
        m_ref, m_got = copy.deepcopy(model), copy.deepcopy(model)
        e_logits = reference_quantized_forward(m_ref, images, bits, input_max)
        e_grads = _weight_grads(e_logits, m_ref)
        logits, grads = _run(task, _logits_and_weight_grads, quantized_forward, m_got, images.clone(), bits,
                             dict(input_max))
        got = as_array(logits, "the logits", task).astype(np.float64)
        e_logits = e_logits.detach()
        e = e_logits.double().numpy()
        where = f"bits = {bits}, {len(images)} {'test' if seed is None else 'training'} images"
        if got.shape != e.shape:
            fail(f"{task} ({where}): the logits should have shape {e.shape}, got {got.shape}.")
        rows_ok = np.isclose(got, e, rtol=1e-4, atol=1e-4 * np.abs(e).max()).all(axis=1)
        if rows_ok.mean() < 0.97:  # a near-tie rounded the other way may change an image or two
            fp32 = m_got.eval()(images).detach().double().numpy()
            if np.allclose(got, fp32, rtol=1e-4, atol=1e-4):
                hint = "these are the FP32 logits: quantize every layer's weight and input."
            else:
                hint = ("weights: one scale per output channel, max|W_c| / (2**(bits-1) - 1), integers "
                        "[-2**(bits-1), 2**(bits-1) - 1]; inputs: scale input_max[layer] / (2**bits - 1), zero "
                        "point 0, integers [0, 2**bits - 1]; ReLU after conv1, conv2 and fc1; max pooling after conv2.")
            prefix = f"{task} ({where})" if seed is None else f"{HIDDEN} for {task} at {bits} bits"
            fail(f"{prefix}: {int((~rows_ok).sum())} of {len(images)} images get different logits."
                 + (f"\nfirst image: expected {fmt(e[~rows_ok][0])}\ngot {fmt(got[~rows_ok][0])}"
                    if seed is None else "")
                 + f"\nHint: {hint}")
        if grads is None or any(gr is None for gr in grads):
            fail(f"{task} ({where}): no gradient reaches the weights (model.conv1.weight, model.fc2.weight). Quantize "
                 "the weight itself with fake_quant_ste (detach only the scale), and do not use torch.no_grad.")
        for name, gr, er in zip(("conv1", "fc2"), grads, e_grads):
            gr, er = gr.double().numpy(), er.double().numpy()
            if not np.allclose(gr, er, rtol=1e-3, atol=1e-4 * np.abs(er).max()):
                hint = ("the gradient should reach the FP32 weight through the straight-through estimator: "
                        "compute the weight's scale from w.detach() (a constant) and pass w itself to fake_quant_ste.")
                prefix = f"{task} ({where})" if seed is None else f"{HIDDEN} for {task} at {bits} bits"
                fail(f"{prefix}: the gradient of the summed logits with respect to model.{name}.weight differs "
                     f"from the expected one. Hint: {hint}")
    passed(task, len(cases), hidden=seed is not None)


# --- Task 4: QAT fine-tuning ----------------------------------------------------------------------

#: (bits, epochs, lr, seed, accuracy a correct solution reaches, threshold) of the graded runs.
#: Measured with the reference solution over seeds 0-11: 0.931-0.953 (visible), 0.925-0.961 (hidden);
#: without fine-tuning the 2-bit model reaches 0.61, fine-tuned in FP32 then quantized 0.69.
FINETUNE_VISIBLE = (2, 3, 1e-3, 0, 0.94, 0.90)
FINETUNE_HIDDEN = ((2, 2, 2e-3, 11, 0.94, 0.88),)


def check_qat_finetune(qat_finetune, seed=None):
    """Task 4: QAT fine-tuning reaches a stated test accuracy, measured by the grader."""
    from qlib.data import load_digits

    task = "qat_finetune"
    train, test = load_digits("train"), load_digits("test")
    model = _folded_cnn()
    input_max = layer_input_max(model, train)
    runs = [FINETUNE_VISIBLE] if seed is None else list(FINETUNE_HIDDEN)
    for bits, epochs, lr, run_seed, typical, threshold in runs:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ptq = quantized_accuracy(model, test, bits, input_max)
        got = _run(task, qat_finetune, model, train, bits, dict(input_max), epochs, lr, run_seed, seconds=45.0)
        where = f"bits = {bits}, epochs = {epochs}, lr = {lr}, seed = {run_seed}"
        if not isinstance(got, nn.Module):
            fail(f"{task}: should return the fine-tuned model (a torch.nn.Module), got {type(got).__name__}.")
        if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
            fail(f"{task} ({where}): the model passed in was changed. Fine-tune a copy (copy.deepcopy(model)).")
        shapes = {k: tuple(v.shape) for k, v in got.state_dict().items()}
        if shapes != {k: tuple(v.shape) for k, v in before.items()}:
            fail(f"{task} ({where}): the returned model should have the parameters of the model passed in "
                 "(conv1, conv2, fc1, fc2 with their shapes).")
        acc = quantized_accuracy(got, test, bits, input_max)
        if acc < threshold:
            unchanged = all(torch.equal(before[k], v) for k, v in got.state_dict().items())
            hint = ("the weights did not change: run the optimizer on the copy's parameters." if unchanged else
                    "train with quantized_forward in every step (the quantizers must be in the loop), Adam "
                    "with the given lr, batches of 64 in a random order drawn from the seed.")
            fail(with_hint(f"{task} ({where}): test accuracy of the returned weights, quantized to {bits} bits, is "
                           f"{acc:.4f}; it should reach {threshold:.2f} (a correct solution reaches about "
                           f"{typical:.2f}; without fine-tuning it is {ptq:.2f}).", hint)
                 if seed is None else hidden_case(f"{task}: at {bits} bits after {epochs} epochs the quantized test "
                                                  f"accuracy is {acc:.4f}, below {threshold:.2f}", hint))
        if seed is None:
            print(f"{task}: quantized test accuracy {acc:.4f} (at least {threshold:.2f} needed; {ptq:.4f} before "
                  "fine-tuning)")
    passed(task, len(runs), hidden=seed is not None)


# --- Questions: PACT's gradient for alpha, and the zeros of a 2-bit grid ----------------------------

def check_pact_alpha_gradient(answer):
    """Question 1: PACT's alpha gets the upstream gradient of the clipped values only (x >= alpha)."""
    check_choice("Question 1", answer, "b", hints={
        "a": "If every level moving with alpha counted, the values inside the range would send alpha a gradient "
             "too. PACT's paper drops the dependence of the scale on alpha: which part of the forward pass is left "
             "to differentiate?",
        "c": "That is the term that the scale's dependence on alpha would add; PACT drops that dependence. What "
             "does the clip alone give?",
        "d": "With the straight-through estimator the rounding passes gradients on; and the clip is not flat "
             "everywhere in alpha.",
    })


def _fc1_weight() -> torch.Tensor:
    """The weight of fc1 in the folded digits CNN (the lab's ``model.fc1.weight``): a fresh copy each call."""
    return _folded_fc1_weight().clone()


@functools.lru_cache(maxsize=None)
def _folded_fc1_weight() -> torch.Tensor:
    return _folded_cnn().fc1.weight.detach()


def _zero_share(w: torch.Tensor, step) -> float:
    return float((torch.round(w / step) == 0).double().mean())


@functools.lru_cache(maxsize=None)
def _learned_fc1_step() -> float:
    """The step the lab's experiment learns for fc1 at 2 bits (200 SGD steps, lr 20, from the min-max step).

    Deterministic, so computed once per grading process.
    """
    w = _fc1_weight()
    qmin, qmax = -2, 1
    g = 1 / math.sqrt(w.numel() * qmax)
    step = torch.tensor(w.abs().max().item(), requires_grad=True)
    opt = torch.optim.SGD([step], lr=20.0)
    for _ in range(200):
        err = ((ref_lsq.lsq_fake_quantize(w, step, qmin, qmax, g) - w) ** 2).mean()
        opt.zero_grad()
        err.backward()
        opt.step()
    return step.item()


def _share_mistakes(w: torch.Tensor, right: float) -> list[tuple[float, str]]:
    """Wrong shares that a known mistake gives, each with its hint (none close to ``right``)."""
    again = " Reread which scale the question asks for."
    mean_abs = w.abs().mean()
    mistakes = [
        (1 - right, "That is the share of weights that do NOT round to 0."),
        (_zero_share(w, w.abs().amax(dim=1, keepdim=True)),
         "That is the share with the min-max scale of each output channel (max|W_c| / 1)." + again),
        (_zero_share(w, w.abs().max()), "That is the share with one min-max scale for the whole tensor (max|W| / 1)."
         + again),
        (_zero_share(w, 2 * mean_abs), "That is the share with LSQ's initial step, before any training." + again),
        (_zero_share(w, _learned_fc1_step()), "That is the share with the step the experiment learned." + again),
        (_zero_share(w, mean_abs), "LSQ's initial step is not the mean magnitude itself: reread its formula in "
                                   "Task 2."),
        (_zero_share(w, 2 * mean_abs / math.sqrt(2)), "For signed 2-bit weights Q_P is the largest positive "
                                                      "integer, not Q_N."),
    ]
    return [(v, why) for v, why in mistakes if abs(v - right) > 0.02]


def check_zero_share_minmax(answer):
    """Question 2: share of the fc1 weights that round to 0 at 2 bits, min-max scale per output channel."""
    w = _fc1_weight()
    right = _zero_share(w, w.abs().amax(dim=1, keepdim=True))
    check_number("Question 2", answer, right, rel_tol=0.0, abs_tol=0.003, mistakes=_share_mistakes(w, right),
                 fraction=True, hint="Quantize model.fc1.weight as Task 3 does at 2 bits (one scale per output "
                                     "channel, max|W_c| / q_max) and count the weights whose integer is 0.")


def check_zero_share_initial(answer):
    """Question 3: share of the fc1 weights that round to 0 with LSQ's initial step, one step for the tensor."""
    w = _fc1_weight()
    right = _zero_share(w, 2 * w.abs().mean() / math.sqrt(1))
    check_number("Question 3", answer, right, rel_tol=0.0, abs_tol=0.003, mistakes=_share_mistakes(w, right),
                 fraction=True, hint="Compute LSQ's initial step for the whole fc1 weight at 2 bits (Task 2 gives "
                                     "its formula) and count the weights w with round(w / step) == 0.")


# --- Task 5: QAT settings for W2/A2 within a budget of optimizer steps -----------------------------

#: Task 5: weights and activations both at this many bits.
DESIGN_BITS = 2
#: Task 5's budget: optimizer steps (epochs x batches per epoch) of one fine-tuning run.
DESIGN_STEPS = 72
#: The seeds of the runs whose mean test accuracy is graded.
DESIGN_SEEDS = (0, 1)
#: Task 5's configuration: key -> allowed values.
DESIGN_FIELDS = {
    "method": Field(str, choices=("ste", "lsq", "pact")),
    "granularity": Field(str, choices=("tensor", "channel")),
    "optimizer": Field(str, choices=("adam", "sgd")),
    "lr": Field((float, int), low=1e-5, high=1.0),
    "epochs": Field(int, low=1, high=DESIGN_STEPS),
    "batch_size": Field(int, choices=(16, 32, 64, 128)),
}
#: Mean test accuracy over DESIGN_SEEDS, measured on one thread. The reference design (LSQ, one step per
#: tensor, SGD lr 0.03, 3 epochs of 64) reaches 0.971; LSQ with Adam lr 0.003 0.968; STE with Adam lr 0.003
#: 0.939, with qlib's default STE settings (Adam lr 0.001) 0.911; post-training quantization 0.644.
DESIGN_TIERS = [
    Tier(1.0, "mean test accuracy at least 0.96 (about 4 images below the reference design)",
         lambda m: m["accuracy"] >= 0.96),
    Tier(0.75, "mean test accuracy at least 0.93", lambda m: m["accuracy"] >= 0.93),
    Tier(0.5, "mean test accuracy at least 0.90", lambda m: m["accuracy"] >= 0.90),
    Tier(0.25, "mean test accuracy at least 0.80 (post-training quantization reaches 0.64)",
         lambda m: m["accuracy"] >= 0.80),
]


def design_steps(design: dict, n_train: int) -> int:
    """Optimizer steps of one run: epochs x ceil(n_train / batch_size)."""
    return design["epochs"] * -(-n_train // design["batch_size"])


@measured_once
def design_measures(design: dict) -> dict:
    """Test accuracy of the pretrained digits CNN fine-tuned at W2/A2 with ``design``, by qlib's reference QAT.

    :func:`qlib.qat.prepare_qat` then :func:`qlib.qat_training.train_qat`, once per seed of
    :data:`DESIGN_SEEDS`, on one thread (restored afterwards) so that the result does not depend on the
    machine's cores. ``ValueError`` (from qlib) when training pushes a step or clipping value to 0 or below.
    """
    from qlib.data import load_digits
    from qlib.models import load_pretrained
    from qlib.qat import prepare_qat
    from qlib.qat_training import train_qat

    train, test = load_digits("train"), load_digits("test")
    model = load_pretrained("cnn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accs = []
        for seed in DESIGN_SEEDS:
            qat = prepare_qat(model, DESIGN_BITS, DESIGN_BITS, design["method"], design["granularity"])
            accs.append(train_qat(qat, train, test, epochs=design["epochs"], lr=float(design["lr"]), seed=seed,
                                  batch_size=design["batch_size"], optimizer=design["optimizer"], log=None))
    finally:
        torch.set_num_threads(threads)
    return {"accuracy": sum(accs) / len(accs), "runs": accs}


def check_design(design):
    """Task 5: the grader fine-tunes with the student's settings itself and grades the accuracy in tiers."""
    from qlib.data import load_digits

    task = "Task 5"
    design = config_of(task, design, DESIGN_FIELDS, what="design")
    steps = design_steps(design, len(load_digits("train")))
    if steps > DESIGN_STEPS:
        fail(f"{task}: {design['epochs']} epochs of batches of {design['batch_size']} make {steps} optimizer "
             f"steps, over the budget of {DESIGN_STEPS}.")
    def report(measured: dict) -> str:
        runs = ", ".join(f"{a:.4f}" for a in measured["runs"])
        return (f"{steps} optimizer steps; test accuracy at W2/A2 {runs} (seeds {', '.join(map(str, DESIGN_SEEDS))}), "
                f"mean {measured['accuracy']:.4f}")

    return measured_design(task, design, design_measures, DESIGN_TIERS, report=report,
                           refused="training diverged ({error}): the learning rate is too large for this optimizer "
                                   "and method.")
