"""Tests of qlib.calibration: clipping thresholds against independent oracles.

* percentile: ``numpy.percentile`` and ``torch.quantile``;
* histogram: ``numpy.histogram``;
* MSE search: a brute force written here in numpy (every candidate threshold evaluated
  directly on the values, float32 quantization as PyTorch's fake quantization does it);
* KL search: TensorRT's procedure written here independently in plain Python (groups from
  exact fractions, ``scipy.stats.entropy`` for the divergence);
* observers: PyTorch's ``MinMaxObserver`` / ``PerChannelMinMaxObserver`` and
  ``torch.fake_quantize_per_tensor_affine``.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qlib import calibration as cal
from qlib import observers
from qlib.observers import MinMaxObserver, PerChannelMinMaxObserver

scipy_stats = pytest.importorskip("scipy.stats")


def _heavy_tailed(seed, n=20000, outliers=5):
    """Laplace-like values with a few large outliers, float32."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())           # Laplace(0, 1) by inversion
    x[torch.randint(0, n, (outliers,), generator=gen)] *= 12.0
    return x.to(torch.float32)


# --- percentile ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 10001])
@pytest.mark.parametrize("p", [0.0, 12.5, 50.0, 90.0, 99.9, 99.99, 100.0])
def test_percentile_matches_numpy(n, p):
    x = _heavy_tailed(n, n=n, outliers=min(n, 3))
    got = cal.percentile_threshold(x, p)
    expected = float(np.percentile(np.abs(x.numpy()).astype(np.float64), p))
    assert got == expected


def test_percentile_matches_torch_quantile():
    x = _heavy_tailed(7)
    for p in (50.0, 99.0, 99.9):
        expected = float(torch.quantile(x.abs().double(), p / 100))
        assert cal.percentile_threshold(x, p) == pytest.approx(expected, rel=1e-14)


def test_percentile_by_hand():
    x = torch.tensor([-4.0, 1.0, 2.0, -3.0, 0.0])          # |x| sorted: 0 1 2 3 4
    assert cal.percentile_threshold(x, 50) == 2.0
    assert cal.percentile_threshold(x, 100) == 4.0
    assert cal.percentile_threshold(x, 90) == 3.6          # position 3.6: 3 + 0.6 * (4 - 3)
    assert cal.percentile_threshold(x, 0) == 0.0


@pytest.mark.parametrize("p", [-1.0, 100.5, float("nan")])
def test_percentile_out_of_range_is_refused(p):
    with pytest.raises(ValueError, match="percentile"):
        cal.percentile_threshold(torch.ones(3), p)


def test_percentile_type_is_checked():
    with pytest.raises(TypeError, match="percentile"):
        cal.percentile_threshold(torch.ones(3), True)
    with pytest.raises(TypeError, match="percentile"):
        cal.percentile_threshold(torch.ones(3), "99")


# --- histogram -------------------------------------------------------------------------------

@pytest.mark.parametrize("bins", [1, 7, 2048])
@pytest.mark.parametrize("seed", range(3))
def test_abs_histogram_matches_numpy(bins, seed):
    x = _heavy_tailed(seed)
    counts, width = cal.abs_histogram(x, bins)
    a = np.abs(x.numpy()).astype(np.float64)
    expected, edges = np.histogram(a, bins=bins, range=(0.0, a.max()))
    assert counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.numpy(), expected)
    assert width == pytest.approx(edges[1] - edges[0], rel=1e-12)


def test_abs_histogram_by_hand():
    # max |x| = 8 with 4 bins: bins [0,2) [2,4) [4,6) [6,8]; values on an edge go to the bin above
    counts, width = cal.abs_histogram(torch.tensor([0.0, -1.0, 2.0, 3.9, -4.0, 6.0, 8.0, -8.0]), 4)
    assert counts.tolist() == [2, 2, 1, 3] and width == 2.0


def test_abs_histogram_bins_values_on_an_edge_as_numpy():
    # 1.75 = 7/4 sits on the edge of bins 24 and 25 of 100 over [0, 7]; in float64 that edge is
    # 25 * 0.07 = 1.7500000000000002 > 1.75, so numpy (and the rule e_k <= |x| < e_k+1) puts it in
    # bin 24, while floor(1.75 * 100 / 7) = 25 would not
    x = np.array([0.0, 1.75, -3.5, 5.25, 7.0])
    assert 25 * (7.0 / 100) > 1.75 and math.floor(1.75 * (100 / 7.0)) == 25
    counts, width = cal.abs_histogram(torch.from_numpy(x), 100)
    expected, edges = np.histogram(np.abs(x), bins=100, range=(0.0, 7.0))
    np.testing.assert_array_equal(counts.numpy(), expected)
    assert np.flatnonzero(expected).tolist() == [0, 24, 49, 74, 99]
    assert width == edges[1] - edges[0] == 0.07


@pytest.mark.parametrize("bins", [3, 7, 100, 2048])
@pytest.mark.parametrize("seed", range(4))
def test_abs_histogram_matches_numpy_on_every_edge(bins, seed):
    # values exactly on numpy's edges and one float64 step either side of them
    rng = np.random.default_rng(seed)
    amax = float(rng.uniform(0.1, 50.0))
    edges = np.linspace(0.0, amax, bins + 1)
    a = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf)])
    a = np.clip(a, 0.0, amax)
    x = a * rng.choice([-1.0, 1.0], a.size)
    counts, width = cal.abs_histogram(torch.from_numpy(x), bins)
    expected, numpy_edges = np.histogram(np.abs(x), bins=bins, range=(0.0, amax))
    np.testing.assert_array_equal(counts.numpy(), expected)
    assert width == numpy_edges[1] - numpy_edges[0]


def test_abs_histogram_of_zeros():
    counts, width = cal.abs_histogram(torch.zeros(5), 4)
    assert counts.tolist() == [5, 0, 0, 0] and width == 0.0


# --- MSE-optimal clipping: brute force -------------------------------------------------------

def _brute_force_mse(x: np.ndarray, qmin: int, qmax: int, n: int):
    """Every candidate T_k = max|x| k / n, quantized the way PyTorch's fake quantization does."""
    x = x.astype(np.float32)
    amax = float(np.abs(x).max())
    errors = []
    for k in range(1, n + 1):
        t = amax * k / n
        scale = np.float32(np.float32(t) / np.float32(qmax))
        inv = np.float32(1.0) / scale
        q = np.clip(np.round(x * inv), qmin, qmax)                 # np.round: half to even, float32
        x_hat = (q * scale).astype(np.float32)
        errors.append(float(np.mean((x_hat.astype(np.float64) - x.astype(np.float64)) ** 2)))
    errors = np.array(errors)
    return amax * (np.arange(1, n + 1)) / n, errors


@pytest.mark.parametrize("bits,signed", [(8, True), (4, True), (4, False), (3, True), (2, False)])
@pytest.mark.parametrize("seed", range(3))
def test_mse_threshold_is_the_brute_force_minimum(bits, signed, seed):
    x = _heavy_tailed(seed, n=5000)
    if not signed:
        x = torch.relu(x)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    thresholds, errors = _brute_force_mse(x.numpy(), qmin, qmax, 60)
    got = cal.mse_threshold(x, qmin, qmax, n_candidates=60)
    k = int(np.argmin(errors))
    assert got == pytest.approx(thresholds[k], rel=1e-12)
    # the whole curve agrees, not only its minimum
    t, e = cal.mse_curve(x, qmin, qmax, n_candidates=60)
    np.testing.assert_allclose(t.numpy(), thresholds, rtol=1e-12)
    np.testing.assert_allclose(e.numpy(), errors, rtol=1e-9)
    assert cal.clipping_error(x, got, qmin, qmax) == pytest.approx(errors[k], rel=1e-9)


def test_error_components_add_up_and_trade_off():
    x = _heavy_tailed(4, n=3000)
    t, total = cal.mse_curve(x, -8, 7, n_candidates=40)
    rounding, clipping = cal.error_components(x, t, -8, 7)
    torch.testing.assert_close(rounding + clipping, total, rtol=1e-12, atol=0)
    assert clipping[-1] == 0 and clipping[0] > clipping[-2]            # min-max clips nothing
    assert rounding[0] < rounding[-1]
    # by hand: x = [0.3, 2.0], T = 1 with 2 levels each side (scale 0.5): 0.3 -> 0.5, 2.0 -> 1.0 (clipped)
    r, c = cal.error_components(torch.tensor([0.3, 2.0]), [1.0], -2, 2)
    assert r.item() == pytest.approx(0.2 ** 2 / 2) and c.item() == pytest.approx(1.0 / 2)


def test_mse_threshold_clips_an_outlier():
    # one value at 5 among 1001 in [-1, 1]: clipping it costs (5 - T)^2 / 1002, rounding the
    # bulk on the min-max grid (step 5/7) costs about step^2 / 12 = 0.04 per value
    x = torch.cat([torch.linspace(-1, 1, 1001), torch.tensor([5.0])])
    t = cal.mse_threshold(x, -8, 7, n_candidates=200)
    assert 0.8 < t < 3.0
    assert cal.clipping_error(x, t, -8, 7) < 0.5 * cal.clipping_error(x, 5.0, -8, 7)


def test_mse_threshold_beats_min_max_and_percentile_on_its_own_measure():
    x = _heavy_tailed(11)
    qmin, qmax = -8, 7
    t_mse = cal.mse_threshold(x, qmin, qmax, n_candidates=400)
    for other in (float(x.abs().max()), cal.percentile_threshold(x, 99.99)):
        assert cal.clipping_error(x, t_mse, qmin, qmax) <= cal.clipping_error(x, other, qmin, qmax)


def test_mse_threshold_of_zeros_is_zero():
    assert cal.mse_threshold(torch.zeros(10), -8, 7) == 0.0


# --- KL (entropy) calibration: an independent transcription of TensorRT's procedure ----------

def _trt_fold_expand(bins: list[int], levels: int) -> list[float]:
    """Split the i bins into `levels` equal stretches of [0, i) (exact fractions), share each total."""
    i = len(bins)
    q = [0.0] * i
    for g in range(levels):
        lo, hi = Fraction(g * i, levels), Fraction((g + 1) * i, levels)
        members = range(math.ceil(lo), math.ceil(hi))        # the integers j with lo <= j < hi
        total = sum(bins[j] for j in members)
        nonzero = [j for j in members if bins[j] > 0]
        for j in nonzero:
            q[j] = total / len(nonzero)
    return q


def _trt_kl_search(hist: list[int], levels: int):
    """divergence[i] for i = levels..len(hist), and the i of the least (the first on a tie)."""
    divergences = []
    for i in range(levels, len(hist) + 1):
        p = [float(v) for v in hist[:i]]
        p[-1] += sum(hist[i:])
        q = _trt_fold_expand(hist[:i], levels)
        divergences.append(float(scipy_stats.entropy(p, q)) if sum(q) > 0 else math.inf)
    best = min(range(len(divergences)), key=lambda k: (divergences[k], k))
    return divergences, levels + best


def test_candidate_distribution_by_hand():
    counts = torch.tensor([1, 0, 2, 3, 0, 4, 5, 1])
    # pairs: [1,0] -> [1,0]; [2,3] -> 2.5 each; [0,4] -> [0,4]; [5,1] -> 3 each
    assert cal.candidate_distribution(counts, 4).tolist() == [1.0, 0.0, 2.5, 2.5, 0.0, 4.0, 3.0, 3.0]
    # 5 bins into 2: bins 0,1,2 (0 <= j < 2.5) and 3,4
    assert cal.candidate_distribution(torch.tensor([3, 0, 3, 1, 1]), 2).tolist() == [3.0, 0.0, 3.0, 1.0, 1.0]
    assert cal.candidate_distribution(torch.tensor([6, 0, 0, 2, 0]), 2).tolist() == [6.0, 0.0, 0.0, 2.0, 0.0]


def test_reference_distribution_by_hand():
    assert cal.reference_distribution(torch.tensor([1, 2, 3, 4, 5]), 3).tolist() == [1.0, 2.0, 12.0]


@functools.lru_cache(maxsize=None)
def _histograms():
    """Histograms of different shapes: smooth, with gaps, with outliers far away, sparse."""
    out = []
    for seed in range(3):
        x = _heavy_tailed(seed, n=20000).abs()
        counts, _ = cal.abs_histogram(x[x > 0], 256)
        out.append(counts.tolist())
    rng = np.random.default_rng(0)
    gappy = rng.integers(0, 50, 200)
    gappy[rng.random(200) < 0.4] = 0
    gappy[-1] = 3
    out.append(gappy.tolist())
    out.append([0] * 40 + [10] * 20 + [0] * 100 + [1, 0, 0, 2])    # bulk then far outliers
    return out


@pytest.mark.parametrize("levels", [8, 16, 32])
@pytest.mark.parametrize("case", range(5))
def test_kl_search_matches_an_independent_transcription(levels, case):
    hist = _histograms()[case]
    expected_div, expected_i = _trt_kl_search(hist, levels)
    i, got_div = cal.kl_divergences(torch.tensor(hist), levels)
    assert i.tolist() == list(range(levels, len(hist) + 1))
    exp = np.array(expected_div)
    finite = np.isfinite(exp)
    np.testing.assert_array_equal(np.isfinite(got_div.numpy()), finite)
    np.testing.assert_allclose(got_div.numpy()[finite], exp[finite], rtol=1e-9, atol=1e-12)
    # the threshold: the right edge of the best number of bins
    got = cal.kl_threshold(torch.tensor(hist), 0.5, levels)
    chosen = int(round(got / 0.5))
    assert chosen == expected_i or expected_div[chosen - levels] <= min(expected_div) * (1 + 1e-9)


def test_kl_threshold_clips_far_outliers_and_keeps_a_bulk():
    bulk = [3, 5, 8, 9, 7, 6, 5, 4, 3, 3, 2, 2, 1, 1, 1, 1, 1] * 4          # 68 bins
    t = cal.kl_threshold(torch.tensor(bulk + [0] * 100 + [1, 0, 0, 2]), 1.0, 16)
    assert t == 68.0                                                       # the bulk, not the 3 outliers


def test_kl_collapses_when_the_first_bins_are_empty():
    # A known weakness, documented: with one non-empty bin among the first ones, P for a small i
    # is a single spike that Q reproduces exactly, KL = 0, and nearly everything is clipped.
    hist = [0] * 40 + [10] * 20 + [0] * 100 + [1, 0, 0, 2]
    assert cal.kl_threshold(torch.tensor(hist), 1.0, 16) == 41.0
    _, div = cal.kl_divergences(torch.tensor(hist), 16)
    assert div[41 - 16] == 0.0


def test_kl_divergence_by_hand():
    assert cal.kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0])) == pytest.approx(
        0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert cal.kl_divergence(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])) == math.inf
    assert cal.kl_divergence(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0])) == pytest.approx(math.log(2))


def test_kl_calibrator_ignores_exact_zeros_by_default():
    # half zeros, as after a ReLU: the spike would otherwise dominate the first quantized bin
    gen = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(40000, generator=gen))
    with_zeros = cal.get_calibrator("kl", ignore_zeros=False)(x, 0, 255)
    without = cal.get_calibrator("kl")(x, 0, 255)
    counts, width = cal.abs_histogram(x[x != 0])
    assert without == cal.kl_threshold(counts, width, 256)
    assert with_zeros < without


# --- the calibrator interface ------------------------------------------------------------------

def test_calibrators_by_name():
    x = _heavy_tailed(5)
    assert cal.calibrate_threshold(x, -128, 127, "minmax") == float(x.abs().max())
    assert cal.calibrate_threshold(x, -128, 127, "percentile") == cal.percentile_threshold(x, 99.99)
    assert cal.calibrate_threshold(x, -8, 7, "mse") == cal.mse_threshold(x, -8, 7)
    assert cal.get_calibrator("percentile", percentile=99.0)(x, -8, 7) == cal.percentile_threshold(x, 99.0)
    assert cal.calibrate_threshold(x, -8, 7, lambda v, lo, hi: 1.5) == 1.5


def test_unknown_calibrator_and_bad_threshold_are_refused():
    with pytest.raises(ValueError, match="unknown calibrator"):
        cal.get_calibrator("entropy")
    with pytest.raises(ValueError, match="finite"):
        cal.calibrate_threshold(torch.ones(3), -8, 7, lambda v, lo, hi: float("nan"))


# --- observers ------------------------------------------------------------------------------

def _batches(seed, n=4, shape=(8, 50)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * (1 + i) for i in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_minmax_clipping_observer_matches_pytorch(seed, ao):
    ours = observers.ClippingObserver(8, signed=True, narrow=True, calibrator="minmax")
    theirs = ao.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127)
    shared = MinMaxObserver(8, signed=True, symmetric=True, narrow=True)
    for x in _batches(seed):
        assert ours(x) is x
        theirs(x)
        shared(x)
    scale, zp = ours.qparams()
    assert torch.equal(scale.reshape(1), theirs.calculate_qparams()[0].reshape(1).float())
    assert torch.equal(scale, shared.qparams()[0]) and int(zp) == 0


def test_unsigned_clipping_observer_matches_pytorch_affine_on_nonnegative_data(ao):
    ours = observers.ClippingObserver(8, signed=False, calibrator="minmax")
    theirs = ao.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
    for x in _batches(4):
        ours(torch.relu(x))
        theirs(torch.relu(x))
    t_scale, t_zp = theirs.calculate_qparams()
    scale, zp = ours.qparams()
    assert torch.equal(scale.reshape(1), t_scale.float().reshape(1)) and int(zp) == int(t_zp) == 0


def test_per_channel_minmax_matches_the_shared_observer():
    ours = observers.PerChannelClippingObserver(4, calibrator="minmax", axis=1)
    shared = PerChannelMinMaxObserver(4, signed=True, symmetric=True, axis=1)
    for x in _batches(2, shape=(6, 5, 3)):
        ours(x)
        shared(x)
    assert torch.equal(ours.qparams()[0], shared.qparams()[0])


def test_per_channel_thresholds_are_the_calibrator_on_each_channel():
    obs = observers.PerChannelClippingObserver(4, calibrator="mse", axis=0)
    batches = _batches(3, shape=(3, 400))
    for x in batches:
        obs(x)
    whole = torch.cat(batches, dim=1)
    expected = [cal.mse_threshold(whole[c], -8, 7) for c in range(3)]
    assert obs.threshold().tolist() == pytest.approx(expected, rel=1e-6)


def test_percentile_observer_sees_every_batch():
    obs = observers.PercentileObserver(8, signed=True, percentile=99.0)
    batches = _batches(1)
    for x in batches:
        obs(x)
    t = float(np.percentile(np.abs(torch.cat([b.reshape(-1) for b in batches]).numpy()).astype(np.float64), 99.0))
    rmin, rmax = obs.range()
    assert float(rmax) == pytest.approx(t, rel=1e-7) and float(rmin) == -float(rmax)
    assert obs.rmax == max(float(b.max()) for b in batches)   # the raw extremes are still kept


def test_observer_scale_quantizes_like_pytorch_fake_quantize():
    obs = observers.MSEObserver(4, signed=True)
    x = _heavy_tailed(9)
    obs(x)
    scale, zp = obs.qparams()
    expected = torch.fake_quantize_per_tensor_affine(x, float(scale), 0, -8, 7)
    assert torch.equal(cal.fake_quantize_with_scale(x, scale, -8, 7), expected)
    # and the threshold's own grid is that grid
    assert torch.equal(cal.threshold_scale(obs.threshold(), 7), scale)


def test_kl_observer_range_is_unsigned_for_relu_data():
    obs = observers.KLObserver(8)
    obs(torch.relu(_heavy_tailed(2)))
    rmin, rmax = obs.range()
    assert float(rmin) == 0.0 and 0 < float(rmax) <= float(obs.rmax)


def test_observer_errors_are_clear():
    with pytest.raises(RuntimeError, match="has not seen any data"):
        observers.MSEObserver().range()
    with pytest.raises(ValueError, match="symmetric"):
        observers.ClippingObserver(symmetric=False)
    obs = observers.PerChannelClippingObserver(axis=0)
    obs(torch.ones(3, 4))
    with pytest.raises(ValueError, match="tracks 3 channels"):
        obs(torch.ones(4, 4))
    with pytest.raises(TypeError, match="calibrator"):
        observers.ClippingObserver(calibrator=3)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [torch.tensor([1.0, float("nan")]), torch.tensor([float("inf")]), torch.tensor([])])
def test_bad_values_are_refused(bad):
    for call in (lambda: cal.percentile_threshold(bad, 99.0), lambda: cal.mse_threshold(bad, -8, 7),
                 lambda: cal.abs_histogram(bad), lambda: observers.MSEObserver()(bad)):
        with pytest.raises(ValueError, match="NaN|empty"):
            call()


def test_bad_arguments_are_refused():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="qmin <= 0 < qmax"):
        cal.mse_threshold(x, 1, 15)
    with pytest.raises(ValueError, match="n_candidates"):
        cal.mse_threshold(x, -8, 7, n_candidates=0)
    with pytest.raises(ValueError, match="1-D"):
        cal.kl_threshold(torch.ones(4, 4), 1.0, 2)
    with pytest.raises(ValueError, match="negative"):
        cal.kl_threshold(torch.tensor([1.0, -1.0, 2.0]), 1.0, 2)
    with pytest.raises(ValueError, match="fewer than"):
        cal.kl_threshold(torch.ones(10), 1.0, 16)
    with pytest.raises(ValueError, match="at least 4 bins"):
        cal.candidate_distribution(torch.ones(3), 4)
    with pytest.raises(ValueError, match="bin_width"):
        cal.kl_threshold(torch.ones(10), float("nan"), 2)
    with pytest.raises(ValueError, match="threshold must be positive"):
        cal.clipping_error(x, 0.0, -8, 7)
    with pytest.raises(ValueError, match="same length"):
        cal.kl_divergence(torch.ones(3), torch.ones(4))
