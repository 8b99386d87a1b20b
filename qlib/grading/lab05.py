"""Checks for lab05_calibration, called by the lab's test cells.

Each ``check_*`` takes the student's function. Without ``seed`` it runs the visible
cases and explains any difference in full; with ``seed`` it runs hidden cases (fixed-seed
random inputs and edge cases) and names only the kind of input and the likely mistake.

Expected values come from :mod:`qlib.calibration` and are computed before the student's
function runs; while it runs, those references are blocked. Where the math leaves room
for a correct answer written differently, the checks accept it:

* percentile: float32 or float64 arithmetic (a tolerance of 1 % of the gap between the
  two order statistics the percentile falls between);
* MSE and KL searches: any candidate whose error (or divergence), evaluated by the
  reference, is the least up to rounding (so a different order of summation that breaks
  a near-tie the other way is fine);
* stochastic rounding: graded on its properties, not on one particular draw: only the
  two neighbouring integers, integers unchanged, P(round up) = the fraction within six
  binomial standard deviations, the same result for the same seeded generator whatever
  the global random state. Any way of drawing from the generator passes.

The questions (static against dynamic calibration, AdaRound) take the student's answer,
not a function, and have no hidden cases; Question 2's value is measured here with qlib.
Task 6 (a calibrator per layer) is rebuilt and measured by the grader itself with qlib's
reference calibrators (:func:`per_layer_quantizers`, :func:`design_measures`), so an
earlier mistake never costs twice; its points come in tiers of test accuracy.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from qlib import calibration as ref
from qlib.grading.answers import Field, Tier, check_choice, check_number, config_of, measured_design, measured_once
from qlib.grading.checks_common import hidden_case, passed, task_runner, with_hint
from qlib.grading.harness import as_array, check_shape, fail, fmt, time_limit  # noqa: F401

#: The qlib functions that this lab asks students to write; unavailable while their code runs.
REFERENCES = ("percentile_threshold", "mse_threshold", "candidate_distribution", "kl_threshold", "round_stochastic")



def _candidate_distribution_stand_in(counts, levels):
    """A correct candidate_distribution that returns numpy for numpy input and a tensor otherwise."""
    out = ref.candidate_distribution(torch.as_tensor(np.asarray(counts, dtype=np.float64)), levels)
    return out.numpy() if isinstance(counts, np.ndarray) else out


#: Earlier tasks a task may call; while it is checked they are replaced by correct versions.
EARLIER_TASKS = {"kl_threshold": ("candidate_distribution",)}
STAND_INS = {"candidate_distribution": _candidate_distribution_stand_in}
_run = task_runner(REFERENCES, EARLIER_TASKS, STAND_INS)


def _as_float(value, what, task) -> float:
    arr = as_array(value, what, task)
    if arr.size != 1:
        fail(f"{task}: {what} should be a single number, got an array of shape {arr.shape}.")
    return float(arr.reshape(()))


def _laplace(gen: np.random.Generator, n: int) -> np.ndarray:
    return gen.laplace(0.0, 1.0, n)


# --- Task 1: percentile_threshold ----------------------------------------------------------------

def _order_statistics(x: np.ndarray, p: float):
    a = np.sort(np.abs(x.astype(np.float64)))
    pos = p / 100 * (a.size - 1)
    lo = int(math.floor(pos))
    return a, a[lo], a[min(lo + 1, a.size - 1)], pos - lo


def _percentile_hint(x, p, got) -> str:
    a, below, above, t = _order_statistics(x, p)
    x64 = x.astype(np.float64)
    close = lambda v: abs(got - v) <= 1e-6 * max(1.0, abs(v))  # noqa: E731
    if close(float(np.percentile(x64, p))) or close(float(-np.percentile(x64, 100 - p))):
        return "take the percentile of |x| (the magnitudes), not of x itself."
    if t not in (0.0,) and (close(below) or close(above)):
        return ("interpolate linearly between the two sorted values around position p/100 * (n - 1), "
                "do not pick the lower, the higher or the nearest one.")
    if close(float(np.percentile(np.abs(x64), min(100.0, p / 100)))):
        return "percentile is on the 0-100 scale (99.9 means 99.9 %), not a fraction."
    if close(float(a[min(a.size - 1, int(math.ceil(p / 100 * a.size)) - 1)])) and not close(below):
        return "the position of the percentile among n sorted values is p/100 * (n - 1), counted from 0."
    return "sort |x|, find position p/100 * (n - 1) and interpolate linearly (numpy.percentile's default)."


def _percentile_cases(seed):
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(24):
        n = int(gen.choice([1, 2, 5, 97, 1000, 20001]))
        kind = ("normal", "heavy-tailed with outliers", "all negative", "repeated (many ties)")[i % 4]
        if kind == "normal":
            x = gen.standard_normal(n) * 10.0 ** gen.uniform(-2, 2)
        elif kind == "heavy-tailed with outliers":
            x = _laplace(gen, n)
            x[gen.integers(0, n, size=max(1, n // 1000))] *= 30
        elif kind == "all negative":
            x = -np.abs(gen.standard_normal(n)) - 0.5
        else:
            x = gen.integers(-5, 6, size=n).astype(np.float64)
        p = float(gen.choice([0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0, round(float(gen.uniform(1, 99)), 3)]))
        cases.append((kind, x.astype(np.float32), p))
    return cases


def check_percentile_threshold(percentile_threshold, seed=None):
    """Task 1: the percentile of |x|, linear interpolation."""
    task = "percentile_threshold"
    if seed is None:
        cases = [("visible", np.array([-4.0, 1.0, 2.0, -3.0, 0.0], dtype=np.float32), 90.0),
                 ("visible", np.array([0.5, -2.0, 8.0, 1.0], dtype=np.float32), 50.0),
                 ("visible", np.linspace(-1, 1, 1001).astype(np.float32), 99.9)]
    else:
        cases = _percentile_cases(seed)
    for kind, x, p in cases:
        expected = ref.percentile_threshold(torch.from_numpy(x), p)
        got = _as_float(_run(task, percentile_threshold, torch.from_numpy(x.copy()), p), "the threshold", task)
        _, below, above, _ = _order_statistics(x, p)
        if abs(got - expected) <= 1e-6 * max(1.0, abs(expected)) + 0.01 * (above - below):
            continue
        hint = _percentile_hint(x, p, got)
        fail(with_hint(f"{task}(x, {p}) with x = {fmt(x)}: expected {expected:.7g}, got {got:.7g}.", hint)
             if seed is None else hidden_case(f"percentile_threshold on values that are {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 2: mse_threshold -----------------------------------------------------------------------

def _mse_variants(x, qmin, qmax, n):
    """Thresholds that common mistakes produce, to name the one a submission made."""
    x = torch.from_numpy(x)
    amax = float(x.abs().max())
    t = ref.clipping_candidates(amax, n)
    no_clamp = ((torch.round(x.reshape(1, -1) / (t.reshape(-1, 1) / qmax)) * (t.reshape(-1, 1) / qmax)
                 - x).double() ** 2).mean(dim=1)
    abs_err = (ref._fake_quantize_symmetric(x.reshape(1, -1), t.reshape(-1, 1), qmin, qmax) - x).abs().double().mean(dim=1)
    return {
        "the search returned max|x| (the min-max threshold): evaluate the error at every candidate "
        "and keep the smallest.": amax,
        "without the clamp to [qmin, qmax] nothing is ever clipped, so the smallest threshold always wins: "
        "clamp before measuring the error.": float(t[int(torch.argmin(no_clamp))]),
        "the error to minimise is the mean *squared* error, not the mean absolute error.":
            float(t[int(torch.argmin(abs_err))]),
    }


def _mse_cases(seed):
    gen = np.random.default_rng(seed)
    cases = []
    for i in range(14):
        bits = int(gen.integers(2, 9))
        signed = bool(i % 2)
        qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        n = int(gen.integers(200, 3000))
        x = _laplace(gen, n) * 10.0 ** gen.uniform(-1, 1)
        kind = "heavy-tailed"
        if i % 3 == 0:
            x[gen.integers(0, n, 3)] *= 25
            kind = "heavy-tailed with a few large outliers"
        if not signed:
            x = np.maximum(x, 0)
            kind += " and non-negative (unsigned range)"
        cases.append((kind, x.astype(np.float32), qmin, qmax, int(gen.choice([10, 37, 100]))))
    cases.append(("all zero", np.zeros(50, dtype=np.float32), -8, 7, 100))
    return cases


def check_mse_threshold(mse_threshold, seed=None):
    """Task 2: the candidate threshold of least mean squared quantization error."""
    task = "mse_threshold"
    if seed is None:
        rng = np.random.default_rng(5)
        bulk = np.concatenate([np.linspace(-1, 1, 1001), [5.0]]).astype(np.float32)
        cases = [("visible", bulk, -8, 7, 100),
                 ("visible", np.maximum(rng.laplace(0, 1, 2000), 0).astype(np.float32), 0, 15, 50),
                 ("visible", np.zeros(10, dtype=np.float32), -128, 127, 100)]
    else:
        cases = _mse_cases(seed)
    for kind, x, qmin, qmax, n in cases:
        xt = torch.from_numpy(x)
        amax = float(np.abs(x).max())
        expected = ref.mse_threshold(xt, qmin, qmax, n)
        got = _as_float(_run(task, mse_threshold, xt.clone(), qmin, qmax, n), "the threshold", task)
        where = f"{task}(x, qmin={qmin}, qmax={qmax}, n_candidates={n})"
        if amax == 0.0:
            if got != 0.0:
                fail(f"{where} with x all zero: expected 0.0, got {got!r}. Hint: when max|x| = 0 every candidate is 0 "
                     "and the scale would be 0; return 0.0 before searching.")
            continue
        thresholds = ref.clipping_candidates(amax, n)
        errors = ref._clipping_errors(xt, thresholds, qmin, qmax)
        k = int(torch.argmin((thresholds - got).abs()))
        on_grid = abs(float(thresholds[k]) - got) <= 1e-6 * amax
        if on_grid and float(errors[k]) <= float(errors.min()) * (1 + 1e-6) + 1e-15:
            continue
        hint = next((h for h, v in _mse_variants(x, qmin, qmax, n).items() if abs(v - got) <= 1e-6 * amax), None)
        if hint is None:
            hint = ("the threshold should be one of the candidates max|x| * k / n." if not on_grid else
                    "quantize with scale = T / qmax, round half to even, clamp to [qmin, qmax], then "
                    "compare mean((x_hat - x)**2) across candidates.")
        fail(with_hint(f"{where} with x = {fmt(x)}: expected {expected:.6g} (error {float(errors.min()):.4g}), "
                       f"got {got:.6g}" + (f" (error {float(errors[k]):.4g})" if on_grid else "") + ".", hint)
             if seed is None else hidden_case(f"mse_threshold on values that are {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 3: candidate_distribution -------------------------------------------------------------

def _candidate_variants(counts: np.ndarray, levels: int):
    i = counts.size
    out = {}
    # consecutive groups of i // levels bins, the remainder added to the last one (MXNet's split)
    width = i // levels
    q = np.zeros(i)
    for g in range(levels):
        sl = slice(g * width, i if g == levels - 1 else (g + 1) * width)
        nz = counts[sl] > 0
        if nz.any():
            q[sl][nz] = counts[sl].sum() / nz.sum()
    out["group bin j with floor(j * levels / i); equal groups of i // levels bins with the remainder at the "
        "end are a different split."] = q
    group = np.arange(i) * levels // i
    totals = np.bincount(group, weights=counts, minlength=levels)
    sizes = np.bincount(group, minlength=levels)
    out["share each group's total among its non-empty bins only; empty bins stay 0 (otherwise Q puts "
        "values where the data have none)."] = totals[group] / sizes[group]
    out["each non-empty bin gets the group's total divided by the number of non-empty bins in the group, "
        "not the group's total itself."] = np.where(counts > 0, totals[group], 0.0)
    return out


def _histogram_cases(seed):
    gen = np.random.default_rng(seed)
    cases = []
    for r in range(16):
        levels = int(gen.choice([2, 3, 4, 16, 128]))
        i = levels + int(gen.integers(0, 3 * levels + 5))
        counts = gen.integers(0, 40, size=i).astype(np.float64)
        counts[gen.random(i) < 0.3] = 0
        kind = "with empty bins" if (counts == 0).any() else "full"
        if r % 5 == 0:
            counts[:] = 0
            counts[gen.integers(0, i, 2)] = 7
            kind = "almost all empty"
        cases.append((kind, counts, levels))
    return cases


def check_candidate_distribution(candidate_distribution, seed=None):
    """Task 3: fold i bins into `levels` quantized bins and spread each back over its non-empty bins."""
    task = "candidate_distribution"
    if seed is None:
        cases = [("visible", np.array([1, 0, 2, 3, 0, 4, 5, 1], dtype=np.float64), 4),
                 ("visible", np.array([3, 0, 3, 1, 1], dtype=np.float64), 2),
                 ("visible", np.array([2, 4, 0, 0, 6, 1, 1], dtype=np.float64), 3)]
    else:
        cases = _histogram_cases(seed)
    for kind, counts, levels in cases:
        expected = ref.candidate_distribution(torch.from_numpy(counts), levels).numpy()
        got = as_array(_run(task, candidate_distribution, torch.from_numpy(counts.copy()).to(torch.int64), levels),
                       "Q", task).astype(np.float64).reshape(-1)
        check_shape(got, counts.shape, "Q", task)
        if np.allclose(got, expected, rtol=1e-9, atol=1e-12):
            continue
        hint = next((h for h, v in _candidate_variants(counts, levels).items() if np.allclose(got, v, rtol=1e-9)),
                    "bin j goes to quantized bin floor(j * levels / i); each group's total is shared equally by "
                    "its non-empty bins.")
        fail(with_hint(f"{task}(counts={fmt(counts.astype(np.int64))}, levels={levels}):\nexpected {fmt(expected)}\n"
                       f"got      {fmt(got)}", hint)
             if seed is None else hidden_case(f"candidate_distribution on histograms {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 4: kl_threshold ------------------------------------------------------------------------

def _kl_divergences_of(counts: np.ndarray, levels: int, outliers: bool = True, reverse: bool = False):
    """Divergence of every candidate, for the variants that name a mistake."""
    out = []
    for i in range(levels, counts.size + 1):
        p = counts[:i].astype(np.float64).copy()
        if outliers:
            p[-1] += counts[i:].sum()
        q = _candidate_distribution_stand_in(counts[:i].astype(np.float64), levels)
        if reverse:
            p, q = q, p
        if q.sum() == 0 or p.sum() == 0:
            out.append(math.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        s = p > 0
        out.append(math.inf if (q[s] == 0).any() else float((p[s] * np.log(p[s] / q[s])).sum()))
    return np.array(out)


def _kl_hint(counts, levels, width, got) -> str:
    n = counts.size
    i_got = got / width if width else float("nan")
    best = levels + int(np.argmin(_kl_divergences_of(counts, levels)))
    if abs(i_got - (best + 0.5)) < 1e-6 or abs(i_got - (best - 0.5)) < 1e-6:
        return "return i * bin_width, the right edge of the last bin kept (not the centre of a bin)."
    if abs(i_got - (best - 1)) < 1e-6:
        return "the threshold for i bins is i * bin_width (i counts bins, the last kept bin has index i - 1)."
    if abs(got - best) < 1e-9 and width != 1:
        return "multiply the number of bins by bin_width to get a threshold in the units of x."
    variants = {
        "add every count beyond the first i bins to P's last bin: clipping moves the outliers to the threshold.":
            _kl_divergences_of(counts, levels, outliers=False),
        "the divergence is KL(P || Q) = sum P log(P / Q), with P the reference (clipped) distribution.":
            _kl_divergences_of(counts, levels, reverse=True),
    }
    for hint, div in variants.items():
        finite = np.isfinite(div)
        if finite.any() and abs(i_got - (levels + int(np.argmin(np.where(finite, div, np.inf))))) < 1e-6:
            return hint
    if abs(i_got - n) < 1e-6:
        return ("the search kept the whole range: compute the divergence of every i from levels to len(counts), "
                "normalise P and Q to sum to 1, and keep the smallest; bins with P = 0 add nothing, a bin with "
                "P > 0 and Q = 0 makes the divergence infinite.")
    return ("for every i from levels to len(counts): P = counts[:i] with the outliers added to its last bin, "
            "Q = candidate_distribution(counts[:i], levels), both normalised; keep the i of least "
            "sum P log(P/Q) over the bins where P > 0.")


def _kl_cases(seed):
    gen = np.random.default_rng(seed)
    cases = []
    for r in range(6):
        levels, bins = [(16, 256), (32, 512), (8, 200), (128, 2048), (16, 300), (4, 64)][r]
        values = np.abs(_laplace(gen, 30000)) ** gen.uniform(0.8, 1.6)
        if r % 2:
            values[gen.integers(0, values.size, 20)] *= 15
        counts, _ = np.histogram(values, bins=bins, range=(0, values.max()))
        counts = counts.astype(np.float64)
        kind = ("heavy-tailed", "heavy-tailed with far outliers")[r % 2]
        if r == 4:
            counts[bins // 3: bins // 2] = 0
            kind = "cut by a gap of empty bins"
        cases.append((kind, counts, float(gen.uniform(0.001, 0.1)), levels))
    return cases


def check_kl_threshold(kl_threshold, seed=None):
    """Task 4: TensorRT's search for the threshold of least KL divergence."""
    task = "kl_threshold"
    if seed is None:
        bulk = [3, 5, 8, 9, 7, 6, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1] * 4
        small = np.array(bulk + [0] * 100 + [1, 0, 0, 2], dtype=np.float64)
        gen = np.random.default_rng(0)
        relu = np.abs(gen.standard_normal(100000))
        big, edges = np.histogram(relu, bins=2048, range=(0, relu.max()))
        cases = [("visible", small, 1.0, 16), ("visible", big.astype(np.float64), float(edges[1] - edges[0]), 128)]
    else:
        cases = _kl_cases(seed)
    for kind, counts, width, levels in cases:
        expected = ref.kl_threshold(torch.from_numpy(counts), width, levels)
        divergences = ref.kl_divergences(torch.from_numpy(counts), levels)[1].numpy()
        got = _as_float(_run(task, kl_threshold, torch.from_numpy(counts.copy()).to(torch.int64), width, levels,
                             seconds=60.0), "the threshold", task)
        i_got = got / width
        k = int(round(i_got)) - levels
        if abs(i_got - round(i_got)) < 1e-6 and 0 <= k < divergences.size and (
                divergences[k] <= divergences.min() * (1 + 1e-6) + 1e-9):  # float32 sums pass too
            continue
        hint = _kl_hint(counts, levels, width, got)
        fail(with_hint(f"{task}(counts of {counts.size} bins, bin_width={width:.6g}, levels={levels}): expected "
                       f"{expected:.6g} (i = {round(expected / width)} bins, divergence {divergences.min():.4g}), "
                       f"got {got:.6g} (i = {i_got:.6g}).", hint)
             if seed is None else hidden_case(f"kl_threshold on a histogram that is {kind}", hint))
    passed(task, len(cases), hidden=seed is not None)


# --- Task 5: round_stochastic --------------------------------------------------------------------

def _draw(round_stochastic, task, x: torch.Tensor, seed: int, global_seed: int = 0) -> np.ndarray:
    torch.manual_seed(global_seed)
    np.random.seed(global_seed)
    got = as_array(_run(task, round_stochastic, x.clone(), torch.Generator().manual_seed(seed)), "the result", task)
    check_shape(got, tuple(x.shape), "the result", task)
    return got.astype(np.float64)


def check_round_stochastic(round_stochastic, seed=None):
    """Task 5: stochastic rounding, graded on its properties (see the module docstring)."""
    task = "round_stochastic"
    def fail_(msg, hint):
        fail(with_hint(f"{task}: {msg}", hint)
             if seed is None else hidden_case(task, hint))

    base = seed or 0
    gen = np.random.default_rng(base)
    # 1. only floor(x) or floor(x) + 1, integers unchanged
    if seed is None:
        x = torch.tensor([[0.25, 1.5, -0.75, 3.0], [-2.0, 7.9, -0.1, 0.0]])
    else:
        x = torch.from_numpy((gen.standard_normal((40, 50)) * 10.0 ** gen.uniform(-1, 3)).astype(np.float32))
        x[0, :10] = torch.arange(-5, 5, dtype=torch.float32)
        x = x.to(torch.float64) if gen.integers(0, 2) else x
    got = _draw(round_stochastic, task, x, 1 + base)
    x64 = x.double().numpy()
    lo = np.floor(x64)
    if not np.all((got == lo) | (got == lo + 1)):
        bad = np.flatnonzero(~((got == lo) | (got == lo + 1)))[0]
        fail_(f"x = {x64.flat[bad]!r} gave {got.flat[bad]!r}; only floor(x) = {lo.flat[bad]!r} or floor(x) + 1 are "
              "allowed.", "round down to floor(x), then add 1 with probability x - floor(x); for negative x, "
              "floor(-0.75) = -1, not 0.")
    if not np.array_equal(got[x64 == lo], x64[x64 == lo]):
        fail_("an integer input was moved.", "x - floor(x) is 0 for an integer: it must never round up.")
    # 2. P(round up) equals the fraction, for several fractions, within 6 binomial standard deviations
    n = 40_000
    fractions = [0.1, 0.5, 0.75, 0.999] if seed is None else [0.01, 0.3, 0.6, 0.9]
    for j, f in enumerate(fractions):
        start = -3.0 if seed is None else float(gen.integers(-100, 100))
        x = torch.full((n,), start + f, dtype=torch.float32)
        frac = float(x[0].double() - math.floor(float(x[0])))
        ups = int((_draw(round_stochastic, task, x, 100 + base + j) == math.floor(float(x[0])) + 1).sum())
        sd = math.sqrt(n * frac * (1 - frac))
        if abs(ups - n * frac) > 6 * sd + 1:
            hint = ("round up with probability x - floor(x) (the distance from the floor), not with probability 1/2."
                    if abs(ups - n / 2) <= 6 * math.sqrt(n / 4) + 1 else
                    "round up with probability x - floor(x), not 1 - (x - floor(x))." if abs(ups - n * (1 - frac)) <= 6 * sd + 1
                    else "this rounds like round-to-nearest: the choice must be random, up with probability x - floor(x)."
                    if ups in (0, n) else "round up where u < x - floor(x), u uniform in [0, 1).")
            fail_(f"{n} copies of x = {float(x[0]):.6g} rounded up {ups} times; expected about {n * frac:.0f} "
                  f"(x - floor(x) = {frac:.4g} of them, give or take {sd:.0f}).", hint)
    # 3. the generator decides everything: same seed, same result, whatever the global random state
    x = torch.from_numpy((gen.standard_normal(2000) * 5).astype(np.float32))
    a = _draw(round_stochastic, task, x, 7 + base, global_seed=1)
    b = _draw(round_stochastic, task, x, 7 + base, global_seed=2)
    if not np.array_equal(a, b):
        fail_("two calls with generators seeded alike gave different results.",
              "draw every random number from the generator you are given (e.g. torch.rand(x.shape, "
              "generator=generator)), not from the global random state (torch.rand without it, np.random).")
    c = _draw(round_stochastic, task, x, 8 + base, global_seed=1)
    if np.array_equal(a, c):
        fail_("generators with different seeds gave the same result.", "the rounding must depend on the generator's draws.")
    passed(task, 3 + len(fractions), hidden=seed is not None)


# --- Questions: static against dynamic calibration, AdaRound ----------------------------------------


def check_what_dynamic_costs(answer):
    """Question 1: dynamic quantization needs no calibration data, but scans every tensor at run time."""
    check_choice("Question 1", answer, "c", hints={
        "a": "Which of the two fixes its thresholds from calibration images before deployment? That one is static.",
        "b": "A dynamic threshold is the tensor's own max|x|: nothing is clipped, so an outlier in the batch "
             "stretches the step of everything else in it, exactly as min-max does.",
        "d": "The dynamic range is taken over the whole batch at that layer: change the other images and the "
             "scale, hence the answer for one image, can change. The chapter counts such images.",
    })


@torch.no_grad()
def _fc1_input_of_each_test_image(folded: bool = True) -> torch.Tensor:
    from qlib.data import load_digits
    from qlib.folding import fold_every_batchnorm
    from qlib.models import load_pretrained
    from qlib.ptq import layer_inputs

    model = load_pretrained("cnn")
    model = fold_every_batchnorm(model) if folded else model.eval()
    return layer_inputs(model, load_digits("test").images)["fc1"].flatten(1)


def dynamic_scale_spread() -> dict:
    """Question 2's numbers: the 4-bit dynamic scale of fc1's input, test image by test image."""
    from qlib.data import load_digits
    from qlib.folding import fold_every_batchnorm
    from qlib.models import load_pretrained
    from qlib.ptq import layer_inputs

    per_image = _fc1_input_of_each_test_image().abs().amax(dim=1).to(torch.float64)
    calibration = layer_inputs(fold_every_batchnorm(load_pretrained("cnn")), load_digits("train").images[:256])
    calib_per_image = calibration["fc1"].flatten(1).abs().amax(dim=1).to(torch.float64)
    static_t = float(calib_per_image.max())
    return {"ratio": float(per_image.max() / per_image.min()),
            "calibration_ratio": float(calib_per_image.max() / calib_per_image.min()),
            "static_over_smallest": static_t / float(per_image.min()),
            "largest_over_static": float(per_image.max()) / static_t,
            "largest_over_median": float(per_image.max() / per_image.median()),
            "smallest_scale": float(per_image.min()) / 15, "largest_scale": float(per_image.max()) / 15}


def check_dynamic_scale_spread(answer):
    """Question 2: how far the dynamic 4-bit scale of fc1's input moves from one test image to another."""
    n = dynamic_scale_spread()
    check_number("Question 2", answer, n["ratio"], rel_tol=0.01, mistakes=[
        (n["calibration_ratio"], "That is the spread over the calibration images; the question asks about the "
                                 "test images, classified one at a time."),
        (n["static_over_smallest"], "Compare the test images with each other: the static threshold plays no "
                                    "part in dynamic quantization."),
        (n["largest_over_static"], "Compare the test images with each other: the static threshold plays no "
                                   "part in dynamic quantization."),
        (n["largest_over_median"], "Take the image of smallest range, not the median one."),
        (n["largest_scale"], "That is a scale, not a ratio of two scales."),
        (n["smallest_scale"], "That is a scale, not a ratio of two scales."),
    ], hint="For each test image take max|x| of its own fc1 input (on the folded model, as quantize_dynamic "
            "sees it); the scale is that over q_max. Divide the largest scale by the smallest.")


def check_what_adaround_learns(answer):
    """Question 3: AdaRound chooses floor or floor + 1 for each weight, on a fixed grid."""
    check_choice("Question 3", answer, "b", hints={
        "a": "Rounding to nearest is where AdaRound starts from, not where it must end: the chapter's figure shows "
             "weights it rounds the other way.",
        "c": "AdaRound keeps the grid and moves each weight by at most one step: look at the soft weight "
             "floor(W/S) + h(V), with h between 0 and 1.",
        "d": "h(V) is soft only while it is trained; at the end each weight is rounded up where h(V) >= 1/2, "
             "so the stored weights are integers times the scale.",
    })


# --- Task 6: a calibrator per layer, W4A4, with a stray calibration image ---------------------------

#: The quantized layers of the digits CNN, in forward order.
DESIGN_LAYERS = ("conv1", "conv2", "fc1", "fc2")
#: Task 6's configuration: key -> allowed values.
DESIGN_FIELDS = {**{name: Field(str, choices=("minmax", "percentile", "mse", "kl")) for name in DESIGN_LAYERS},
                 "percentile": Field((int, float), low=90.0, high=100.0)}
#: The reference design (percentile 99 at conv1, KL elsewhere) scores 99.7 % (float: 99.2 %).
DESIGN_TIERS = [
    Tier(1.0, "test accuracy at least 98.0% (within 2 points of the reference design)", lambda m: m["accuracy"] >= 0.98),
    Tier(0.75, "test accuracy at least 95.0%", lambda m: m["accuracy"] >= 0.95),
    Tier(0.5, "test accuracy at least 90.0%", lambda m: m["accuracy"] >= 0.90),
    Tier(0.25, "test accuracy at least 85.0% (better than min-max everywhere, 81.1%)", lambda m: m["accuracy"] >= 0.85),
]


def design_calibration_images() -> torch.Tensor:
    """The 256 calibration images of Task 6: the lab's, with the first left unnormalised (pixels 0..16)."""
    from qlib.data import load_digits

    images = load_digits("train").images[:256].clone()
    images[0] *= 16
    return images


def per_layer_quantizers(model, images, bits: int, design: dict) -> dict:
    """Layer name -> fixed input quantizer, each calibrated on ``images`` by the calibrator ``design`` names for it.

    Built from qlib's public functions: :func:`qlib.ptq.calibrate_activations` on the folded float
    model, one layer at a time, then :class:`qlib.ptq.ActivationQuantizer` with the observer's scale
    (``"percentile"`` uses ``design["percentile"]``). Pass the result to
    ``quantize_static(model, None, w_bits, bits, granularity, quantizers=...)``.
    """
    from qlib.calibration import get_calibrator
    from qlib.folding import fold_every_batchnorm
    from qlib.ptq import ActivationQuantizer, calibrate_activations

    float_model = fold_every_batchnorm(model)
    quantizers = {}
    for name in DESIGN_LAYERS:
        choice = design[name]
        calibrator = get_calibrator("percentile", percentile=float(design["percentile"])) \
            if choice == "percentile" else choice
        observer = calibrate_activations(float_model, images, bits, calibrator, layers=[name])[name]
        scale, _ = observer.qparams()
        quantizers[name] = ActivationQuantizer(scale, observer.qmin, observer.qmax,
                                               threshold=float(observer.threshold()))
    return quantizers


@measured_once
@torch.no_grad()
def design_measures(design: dict) -> dict:
    """Test accuracy and input thresholds of ``design``: W4A4, weights per channel (min-max), qlib's references."""
    from qlib.data import load_digits
    from qlib.models import accuracy, load_pretrained
    from qlib.ptq import quantize_static

    model = load_pretrained("cnn")
    quantizers = per_layer_quantizers(model, design_calibration_images(), 4, design)
    quantized = quantize_static(model, None, 4, 4, granularity="channel", quantizers=quantizers)
    return {"accuracy": accuracy(quantized, load_digits("test")),
            "thresholds": {name: q.threshold for name, q in quantizers.items()}}


def check_design(design):
    """Task 6: the grader calibrates and measures the student's per-layer choice itself, graded in tiers."""
    task = "Task 6"
    design = config_of(task, design, DESIGN_FIELDS, what="design")
    return measured_design(task, design, design_measures, DESIGN_TIERS, report=_design_report)


def _design_report(measured: dict) -> str:
    """The input threshold each calibrator chose, and the test accuracy."""
    thresholds = ", ".join(f"{name} {t:.3g}" for name, t in measured["thresholds"].items())
    return f"input thresholds {thresholds}; W4A4 test accuracy {100 * measured['accuracy']:.1f}%"
