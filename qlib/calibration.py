"""Clipping thresholds chosen from the data: percentile, MSE-optimal and KL-divergence calibration.

Chapter 5: Range clipping, calibration and rounding (lab05_calibration).

Min-max calibration spans every value ever seen, so one outlier stretches the scale
and every other value is rounded more coarsely. The calibrators here choose a
*clipping threshold* ``T`` instead and quantize symmetrically with it:

    scale = T / qmax,   x_hat = scale * clamp(round(x / scale), qmin, qmax)

(zero point 0, round half to even, ``x / scale`` computed as ``x * (1 / scale)`` in
float32 as in :mod:`qlib.linear`). Values beyond ``T`` are clipped; values inside are
rounded to a finer grid. One threshold serves both signs:

* :func:`percentile_threshold`: ``T`` = the ``p``-th percentile of ``|x|`` (e.g. 99.9 or
  99.99), linear interpolation between order statistics, as ``numpy.percentile``.
* :func:`mse_threshold`: ``T`` = the candidate ``max|x| * k / n`` (``k = 1..n``) with the
  smallest mean squared error ``mean((x_hat - x)^2)`` over the observed values themselves.
* :func:`kl_threshold`: TensorRT's entropy calibration: a histogram of ``|x|`` in 2048
  bins; for each candidate number of bins ``i`` the reference distribution ``P`` (the
  first ``i`` bins, everything beyond added to the last one) is compared with the
  candidate ``Q`` (the same ``i`` bins folded into ``levels`` quantized bins and spread
  back, see :func:`candidate_distribution`); the threshold is ``i * bin_width`` for the
  ``i`` of least ``KL(P || Q)``. Applied to data (``get_calibrator("kl")``), exact zeros
  are left out of the histogram by default: they quantize exactly at every threshold,
  and the spike a ReLU leaves in bin 0 would drag the threshold far down (TensorRT's
  descriptions do not say what it does with them). The search collapses on data whose
  first bins are empty, such as the 17 pixel levels of the digits (see :func:`kl_threshold`).

Each has the same form ``calibrator(x, qmin, qmax) -> T`` through :func:`get_calibrator`,
so an observer (:class:`qlib.observers.ClippingObserver` and its subclasses) or the PTQ
pipeline (:mod:`qlib.ptq`) can take any of them, or a function of your own.

Ties: when several candidates reach the same smallest error or divergence, the
smallest threshold wins (``torch.argmin`` returns the first).
"""
from __future__ import annotations

import math
import numbers
from functools import partial

import torch

from qlib._checks import as_float_tensor, check_axis, check_count, check_integer_range
from qlib._reference import reference
from qlib.kl_search import kl_divergences_by_prefix_sums
from qlib.linear import MIN_SCALE

#: Number of histogram bins of the KL (entropy) calibration, as in TensorRT.
KL_BINS = 2048
#: Number of candidate thresholds of the MSE search.
MSE_CANDIDATES = 100
#: Default percentile of the percentile calibrator.
PERCENTILE = 99.99


def _checked_levels(qmin: int, qmax: int) -> None:
    check_integer_range(qmin, qmax)
    if qmax <= 0 or qmin > 0:
        raise ValueError(f"symmetric clipping needs qmin <= 0 < qmax, got [{qmin}, {qmax}]")


# --- symmetric quantization with a clipping threshold ---------------------------------------

def threshold_scale(threshold, qmax: int) -> torch.Tensor:
    """``scale = float32(threshold) / qmax`` in float32, at least ``MIN_SCALE``.

    The same number :func:`qlib.linear.symmetric_qparams` gives for the range
    ``[-threshold, threshold]``, so a threshold chosen here and an observer's
    ``qparams()`` quantize identically. ``threshold`` may be a tensor (one per channel).
    """
    t = torch.as_tensor(threshold, dtype=torch.float64).to(torch.float32)
    return torch.clamp(t / float(qmax), min=MIN_SCALE)


def fake_quantize_with_scale(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``scale * clamp(round(x * (1/scale)), qmin, qmax)``: symmetric fake quantization, zero point 0.

    float32, ``1/scale`` and the product in float32 (as ``torch.fake_quantize_per_tensor_affine``),
    round half to even. ``scale`` broadcasts against ``x``.
    """
    q = torch.clamp(torch.round(x * torch.reciprocal(scale)), qmin, qmax)
    return q * scale


def _fake_quantize_symmetric(x: torch.Tensor, threshold, qmin: int, qmax: int) -> torch.Tensor:
    """Fake-quantize ``x`` with ``scale = threshold / qmax`` (see :func:`threshold_scale`).

    ``threshold`` may be a tensor that broadcasts against ``x`` (one threshold per candidate
    or per channel). Rounding: half to even.
    """
    return fake_quantize_with_scale(x, threshold_scale(threshold, qmax), qmin, qmax)


def clipping_error(x, threshold: float, qmin: int, qmax: int) -> float:
    """Mean squared error ``mean((x_hat - x)^2)`` of quantizing ``x`` symmetrically with ``threshold``.

    ``x_hat = scale * clamp(round(x / scale), qmin, qmax)``, ``scale = threshold / qmax``
    (float32, round half to even); the differences and their squares are taken in float64. Values beyond the
    threshold contribute *clipping* error, values inside it *rounding* error.
    """
    x = as_float_tensor(x).to(torch.float32).reshape(-1)
    _checked_levels(qmin, qmax)
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    err = _fake_quantize_symmetric(x, threshold, qmin, qmax).to(torch.float64) - x.to(torch.float64)
    return float((err * err).mean())


# --- percentile -------------------------------------------------------------------------------

def _check_percentile(percentile) -> float:
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
        raise TypeError(f"percentile must be a number, got {percentile!r}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be between 0 and 100, got {percentile}")
    return float(percentile)


def _percentile_threshold(x: torch.Tensor, percentile: float) -> float:
    a = torch.sort(x.reshape(-1).abs().to(torch.float64)).values
    position = percentile / 100.0 * (a.numel() - 1)      # where the percentile sits among the sorted values
    lo = math.floor(position)
    hi = min(lo + 1, a.numel() - 1)
    t = position - lo
    below, above = float(a[lo]), float(a[hi])
    # linear interpolation between the two order statistics, written as numpy writes it
    return below + (above - below) * t if t < 0.5 else above - (above - below) * (1.0 - t)


@reference
def percentile_threshold(x, percentile: float = PERCENTILE) -> float:
    """The ``percentile``-th percentile of ``|x|``: the clipping threshold that keeps that share of values.

    With the values of ``|x|`` sorted, ``a[0] <= ... <= a[n-1]``, the percentile sits at
    position ``pos = percentile / 100 * (n - 1)`` and is interpolated linearly:

        T = a[floor(pos)] + (pos - floor(pos)) * (a[floor(pos) + 1] - a[floor(pos)])

    which is ``numpy.percentile(abs(x), percentile)`` (method ``"linear"``). ``percentile=100``
    gives ``max|x|``, the min-max threshold. Computed in float64.

    Raises ``ValueError`` for NaN/inf/empty input or a percentile outside [0, 100].
    """
    x = as_float_tensor(x)
    return _percentile_threshold(x, _check_percentile(percentile))


# --- MSE-optimal clipping ---------------------------------------------------------------------

def clipping_candidates(amax: float, n_candidates: int = MSE_CANDIDATES) -> torch.Tensor:
    """The thresholds the MSE search tries: ``amax * k / n`` for ``k = 1 .. n`` (float64)."""
    n = check_count(n_candidates, "n_candidates", 1)
    return amax * torch.arange(1, n + 1, dtype=torch.float64) / n


def _clipping_errors(x: torch.Tensor, thresholds: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """``clipping_error(x, T)`` for every ``T`` of ``thresholds``, evaluated directly on the values."""
    x = x.reshape(-1).to(torch.float32)
    n = x.numel()
    x = x[x != 0]                    # an exact 0 quantizes to 0 at every threshold: no error
    errors = torch.zeros(thresholds.numel(), dtype=torch.float64)
    if x.numel() == 0:
        return errors
    x64 = x.to(torch.float64)
    chunk = max(1, 2**22 // x.numel())  # candidates per block, to bound memory
    for start in range(0, thresholds.numel(), chunk):
        t = thresholds[start:start + chunk].reshape(-1, 1)
        err = _fake_quantize_symmetric(x.reshape(1, -1), t, qmin, qmax).to(torch.float64) - x64
        errors[start:start + chunk] = (err * err).sum(dim=1) / n
    return errors


def mse_curve(x, qmin: int, qmax: int, n_candidates: int = MSE_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor]:
    """``(thresholds, errors)``: the mean squared quantization error of ``x`` at every candidate threshold.

    Small thresholds clip much and round finely; large ones clip nothing and round
    coarsely. The curve shows the trade-off that :func:`mse_threshold` minimises.
    """
    x = as_float_tensor(x).to(torch.float32)
    _checked_levels(qmin, qmax)
    thresholds = clipping_candidates(float(x.abs().max()), n_candidates)
    return thresholds, _clipping_errors(x, thresholds, qmin, qmax)


def error_components(x, thresholds, qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rounding, clipping)``: the two parts of the quantization MSE of ``x`` at each threshold.

    A value is *clipped* when ``round(x / scale)`` falls outside ``[qmin, qmax]`` and the clamp
    moves it; every other value only suffers *rounding*. Both parts are sums of squared
    errors divided by the number of values, so ``rounding + clipping`` is the MSE of
    :func:`mse_curve` at the same thresholds. Rounding error grows with the threshold,
    clipping error shrinks: the trade-off the MSE search balances.
    """
    x = as_float_tensor(x).to(torch.float32).reshape(1, -1)
    _checked_levels(qmin, qmax)
    t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1, 1)
    if bool((t <= 0).any()):
        raise ValueError("thresholds must be positive")
    rounding = torch.zeros(t.shape[0], dtype=torch.float64)
    clipping = torch.zeros(t.shape[0], dtype=torch.float64)
    chunk = max(1, 2**22 // x.numel())
    for start in range(0, t.shape[0], chunk):
        scale = threshold_scale(t[start:start + chunk], qmax)
        codes = torch.round(x * torch.reciprocal(scale))
        clipped = (codes < qmin) | (codes > qmax)
        err = fake_quantize_with_scale(x, scale, qmin, qmax).to(torch.float64) - x.to(torch.float64)
        sq = err * err
        clipping[start:start + chunk] = torch.where(clipped, sq, 0.0).sum(dim=1) / x.numel()
        rounding[start:start + chunk] = torch.where(clipped, 0.0, sq).sum(dim=1) / x.numel()
    return rounding, clipping


def _mse_threshold(x: torch.Tensor, qmin: int, qmax: int, n_candidates: int) -> float:
    amax = float(x.abs().max())
    if amax == 0.0:
        return 0.0
    thresholds = clipping_candidates(amax, n_candidates)
    errors = _clipping_errors(x, thresholds, qmin, qmax)
    return float(thresholds[int(torch.argmin(errors))])


@reference
def mse_threshold(x, qmin: int, qmax: int, n_candidates: int = MSE_CANDIDATES) -> float:
    """The clipping threshold of least mean squared quantization error on the values ``x``.

    Candidates: ``T_k = max|x| * k / n`` for ``k = 1 .. n`` (``n = n_candidates``). For each,
    ``x`` is quantized symmetrically (``scale = T_k / qmax``, zero point 0, round half to
    even, clamp to ``[qmin, qmax]``) and ``mean((x_hat - x)^2)`` is computed over every
    value; the smallest error wins (the smallest ``T_k`` on a tie). An all-zero ``x``
    gives 0.0.

    Raises ``ValueError`` for NaN/inf/empty input or a range without ``qmin <= 0 < qmax``.
    """
    x = as_float_tensor(x).to(torch.float32)
    _checked_levels(qmin, qmax)
    n = check_count(n_candidates, "n_candidates", 1)
    return _mse_threshold(x, qmin, qmax, n)


# --- KL-divergence (entropy) calibration, as TensorRT does it -----------------------------

def abs_histogram(x, bins: int = KL_BINS) -> tuple[torch.Tensor, float]:
    """``(counts, bin_width)``: histogram of ``|x|`` in ``bins`` equal bins over ``[0, max|x|]``.

    In float64, with ``bin_width = max|x| / bins`` and the edges ``e_k = k * bin_width``
    (``k = 0 .. bins - 1``) and ``e_bins = max|x|`` (how ``numpy.linspace`` computes them), bin
    ``k`` holds the values with ``e_k <= |x| < e_(k+1)``; the last bin also holds ``max|x|``.
    These are exactly the counts of ``numpy.histogram(abs(x).astype(float64), bins,
    range=(0, max|x|))``, values on an edge included. (``floor(|x| * bins / max|x|)`` is not:
    the product is rounded, so a value on an edge can land one bin away, e.g. 1.75 with
    ``max|x| = 7`` and 100 bins, where ``e_25 = 25 * 0.07 = 1.7500000000000002 > 1.75``.
    numpy on float32 data would compute float32 edges; here the values are float64 first.)
    ``counts`` is an int64 tensor. An all-zero ``x`` puts every value in bin 0 with
    ``bin_width = 0`` (numpy would widen the range to ``[-0.5, 0.5]`` instead).
    """
    x = as_float_tensor(x)
    bins = check_count(bins, "bins", 1)
    a = x.reshape(-1).abs().to(torch.float64)
    amax = float(a.max())
    if amax == 0.0:
        counts = torch.zeros(bins, dtype=torch.int64)
        counts[0] = a.numel()
        return counts, 0.0
    bin_width = amax / bins
    edges = torch.arange(bins + 1, dtype=torch.float64) * bin_width
    edges[-1] = amax
    # the k with e_k <= |x| < e_(k+1); max|x| itself (k = bins) joins the last bin
    index = torch.clamp(torch.searchsorted(edges, a, right=True) - 1, max=bins - 1)
    return torch.bincount(index, minlength=bins), bin_width


def _candidate_distribution(counts: torch.Tensor, levels: int) -> torch.Tensor:
    i = counts.numel()
    group = torch.arange(i) * levels // i                          # quantized bin of each of the i bins
    c = counts.to(torch.float64)
    nonzero = c > 0
    totals = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, c)
    n_nonzero = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, nonzero.to(torch.float64))
    return torch.where(nonzero, totals[group] / n_nonzero[group].clamp(min=1.0), torch.zeros_like(c))


def _check_counts(counts, name: str = "counts") -> torch.Tensor:
    c = torch.as_tensor(counts)
    if c.ndim != 1:
        raise ValueError(f"{name} must be a 1-D histogram, got shape {tuple(c.shape)}")
    c = as_float_tensor(c, name).to(torch.float64)
    if bool((c < 0).any()):
        raise ValueError(f"{name} must not be negative: a histogram counts values")
    return c


@reference
def candidate_distribution(counts, levels: int) -> torch.Tensor:
    """TensorRT's candidate ``Q``: ``i`` histogram bins folded into ``levels`` quantized bins, spread back.

    ``counts`` holds the first ``i`` bins of the histogram (``i >= levels``). Bin ``j``
    belongs to quantized bin ``g(j) = floor(j * levels / i)`` (integer arithmetic, so the
    ``levels`` groups differ in size by at most one bin). Each group's total count is
    shared equally among the group's *non-empty* bins; empty bins stay empty:

        Q[j] = sum(counts[g(j)]) / #{non-empty bins in g(j)}   if counts[j] > 0,  else 0

    Returns a float64 tensor of length ``i`` with the same total as ``counts`` (not normalised).
    """
    c = _check_counts(counts)
    levels = check_count(levels, "levels", 1)
    if c.numel() < levels:
        raise ValueError(f"cannot fold {c.numel()} bins into {levels} quantized bins: need at least {levels} bins")
    return _candidate_distribution(c, levels)


def reference_distribution(counts, i: int) -> torch.Tensor:
    """TensorRT's reference ``P``: the first ``i`` bins, with every count beyond them added to bin ``i - 1``.

    This is the histogram of ``min(|x|, i * bin_width)``: clipping moves the outliers to the
    threshold. Float64, not normalised.
    """
    c = _check_counts(counts)
    i = check_count(i, "i", 1)
    if i > c.numel():
        raise ValueError(f"i = {i} is beyond the {c.numel()} bins of the histogram")
    p = c[:i].clone()
    p[-1] += c[i:].sum()
    return p


def kl_divergence(p, q) -> float:
    """``KL(P || Q) = sum_j P_j log(P_j / Q_j)`` after normalising ``p`` and ``q`` to sum to 1 (natural log).

    Terms with ``P_j = 0`` are 0; a bin with ``P_j > 0`` and ``Q_j = 0`` makes the divergence
    infinite (``Q`` cannot produce a value that ``P`` holds). An all-zero ``q`` gives infinity.
    """
    p, q = _check_counts(p, "p"), _check_counts(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same length, got {p.numel()} and {q.numel()}")
    return _kl_divergence(p, q)


def _kl_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    p_sum, q_sum = float(p.sum()), float(q.sum())
    if p_sum == 0:
        raise ValueError("p is all zero: it is not a distribution")
    if q_sum == 0:
        return math.inf
    support = p > 0
    if bool((q[support] == 0).any()):
        return math.inf
    p_n, q_n = p[support] / p_sum, q[support] / q_sum
    return float((p_n * torch.log(p_n / q_n)).sum())


def _kl_divergences_readable(c: torch.Tensor, levels: int) -> torch.Tensor:
    """``KL(P_i || Q_i)`` for ``i = levels .. len(c)``, one candidate at a time, as the docstrings say."""
    out = []
    for i in range(levels, c.numel() + 1):
        p = c[:i].clone()
        p[-1] += c[i:].sum()
        out.append(_kl_divergence(p, _candidate_distribution(c[:i], levels)))
    return torch.tensor(out, dtype=torch.float64)


def _kl_divergences(c: torch.Tensor, levels: int) -> torch.Tensor:
    """The divergences of :func:`_kl_divergences_readable`, computed all at once by :mod:`qlib.kl_search`."""
    return kl_divergences_by_prefix_sums(c, levels)


def kl_divergences(counts, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(i, divergence)`` for every candidate number of bins ``i = levels .. len(counts)``.

    ``divergence[k] = KL(reference_distribution(counts, i_k) || candidate_distribution(counts[:i_k]))``;
    the curve that :func:`kl_threshold` minimises.
    """
    c = _check_counts(counts)
    levels = check_count(levels, "levels", 1)
    if c.numel() < levels:
        raise ValueError(f"the histogram has {c.numel()} bins, fewer than the {levels} quantized bins")
    return torch.arange(levels, c.numel() + 1), _kl_divergences(c, levels)


def _kl_threshold_from_histogram(c: torch.Tensor, bin_width: float, levels: int) -> float:
    divergences = _kl_divergences(c, levels)
    if not bool(torch.isfinite(divergences).any()):
        return c.numel() * bin_width      # nothing to compare (e.g. a single non-empty bin): keep the whole range
    return (levels + int(torch.argmin(divergences))) * bin_width


@reference
def kl_threshold(counts, bin_width: float, levels: int) -> float:
    """TensorRT's entropy calibration: the threshold of least KL divergence, from a histogram of ``|x|``.

    ``counts`` is the histogram (TensorRT uses 2048 bins over ``[0, max|x|]``, see
    :func:`abs_histogram`), ``bin_width`` its bin width, ``levels`` the number of quantized
    bins (128 for signed 8-bit: the 128 non-negative codes 0..127). For every
    ``i = levels, ..., len(counts)``:

    1. ``P`` = the first ``i`` bins, with all the counts beyond added to bin ``i - 1``
       (:func:`reference_distribution`);
    2. ``Q`` = the first ``i`` bins (without those outliers) folded into ``levels`` bins and
       spread back over the non-empty bins (:func:`candidate_distribution`);
    3. ``divergence_i = KL(P || Q)`` with both normalised (:func:`kl_divergence`).

    Returns ``i * bin_width`` for the ``i`` of least divergence (the smallest on a tie):
    the right edge of the last bin kept. (TensorRT's slides give ``(i + 0.5) * bin_width``
    and some tools the bin centre; they differ by half a bin, 1/4096 of the range.)

    A known weakness: if the first ``levels`` bins hold a single non-empty bin (values that
    never come near 0, or data with few distinct values such as image pixels), ``P`` for
    the next ``i`` is one spike that ``Q`` reproduces exactly, the divergence is 0, and the
    search returns a threshold that clips nearly everything.
    """
    c = _check_counts(counts)
    levels = check_count(levels, "levels", 1)
    if not (isinstance(bin_width, numbers.Real) and math.isfinite(bin_width) and bin_width >= 0):
        raise ValueError(f"bin_width must be a finite number >= 0, got {bin_width!r}")
    if c.numel() < levels:
        raise ValueError(f"the histogram has {c.numel()} bins, fewer than the {levels} quantized bins")
    return _kl_threshold_from_histogram(c, float(bin_width), levels)


def _kl_calibrate(x: torch.Tensor, qmin: int, qmax: int, bins: int = KL_BINS, ignore_zeros: bool = True) -> float:
    if ignore_zeros:
        nonzero = x[x != 0]
        if nonzero.numel() == 0:
            return 0.0
        x = nonzero
    counts, bin_width = abs_histogram(x, bins)
    if bin_width == 0.0:
        return 0.0
    return _kl_threshold_from_histogram(counts.to(torch.float64), bin_width, qmax + 1)


# --- one interface: calibrator(x, qmin, qmax) -> threshold ---------------------------------

def _minmax_calibrate(x: torch.Tensor, qmin: int, qmax: int) -> float:
    return float(x.abs().max())


def _percentile_calibrate(x: torch.Tensor, qmin: int, qmax: int, percentile: float = PERCENTILE) -> float:
    return _percentile_threshold(x, percentile)


def _mse_calibrate(x: torch.Tensor, qmin: int, qmax: int, n_candidates: int = MSE_CANDIDATES) -> float:
    return _mse_threshold(x, qmin, qmax, n_candidates)


CALIBRATORS = {
    "minmax": _minmax_calibrate,
    "percentile": _percentile_calibrate,
    "mse": _mse_calibrate,
    "kl": _kl_calibrate,
}


def get_calibrator(name: str, **options):
    """A function ``calibrator(x, qmin, qmax) -> threshold`` by name, with its options bound.

    * ``"minmax"``: ``max|x|``;
    * ``"percentile"``: :func:`percentile_threshold` (option ``percentile``, default 99.99);
    * ``"mse"``: :func:`mse_threshold` (option ``n_candidates``, default 100);
    * ``"kl"``: :func:`kl_threshold` on :func:`abs_histogram` of ``x`` with ``levels = qmax + 1``
      (options ``bins``, default 2048, and ``ignore_zeros``, default True: exact zeros are
      left out of the histogram; an all-zero ``x`` gives 0.0).
    """
    try:
        fn = CALIBRATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown calibrator {name!r}; choose one of {sorted(CALIBRATORS)}") from None
    if "percentile" in options:
        _check_percentile(options["percentile"])
    return partial(fn, **options) if options else fn


def calibrate_threshold(x, qmin: int, qmax: int, calibrator="minmax") -> float:
    """The clipping threshold that ``calibrator`` (a name of :data:`CALIBRATORS` or a function) picks for ``x``."""
    x = as_float_tensor(x).to(torch.float32)
    _checked_levels(qmin, qmax)
    fn = get_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
    threshold = float(fn(x, qmin, qmax))
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"the calibrator returned {threshold!r}; a clipping threshold must be finite and >= 0")
    return threshold
