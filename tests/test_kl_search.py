"""Tests of qlib.kl_search: the prefix-sum KL search against the readable loop of qlib.calibration.

The loop (``qlib.calibration._kl_divergences_readable``) builds ``P_i`` and ``Q_i`` one candidate
at a time, as the docstrings of ``reference_distribution`` and ``candidate_distribution`` say
(and tests/test_calibration.py holds both, and ``kl_divergences``, to an independent
transcription of TensorRT's procedure with scipy). The prefix sums must give the same
divergences: the same infinite entries, the finite ones to a relative 1e-9, the same argmin.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlib import calibration as cal
from qlib.kl_search import kl_divergences_by_prefix_sums, xlogx


def _agree(counts, levels: int) -> None:
    c = torch.as_tensor(counts, dtype=torch.float64)
    slow = cal._kl_divergences_readable(c, levels)
    fast = kl_divergences_by_prefix_sums(c, levels)
    assert fast.shape == slow.shape == (c.numel() - levels + 1,)
    assert torch.equal(torch.isfinite(slow), torch.isfinite(fast))
    both = torch.isfinite(slow)
    torch.testing.assert_close(fast[both], slow[both], rtol=1e-9, atol=1e-12)
    if bool(both.any()):
        assert int(torch.argmin(fast)) == int(torch.argmin(slow))


def _skewed_histogram(seed: int, bins: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(50_000, generator=gen, dtype=torch.float64)) ** (1.0 + seed / 2)
    counts, _ = cal.abs_histogram(x[x > 0], bins)
    return counts.to(torch.float64)


@pytest.mark.parametrize("seed", range(2))
def test_equals_the_readable_loop_on_skewed_data(seed):
    c = _skewed_histogram(seed, 1024)
    if seed == 1:
        c[500:600] = 0                     # empty bins before the end: infinite candidates
    _agree(c, 128)


@pytest.mark.parametrize("seed", range(12))
def test_equals_the_readable_loop_on_random_histograms(seed):
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(8, 300))
    levels = int(rng.integers(1, bins + 1))
    counts = rng.integers(0, [1, 5, 1000, 10**9][seed % 4] + 1, bins).astype(np.float64)
    counts[rng.random(bins) < [0.0, 0.3, 0.7, 0.95][seed // 3]] = 0       # from dense to sparse
    if counts.sum() == 0:
        counts[-1] = 1
    _agree(counts, levels)


@pytest.mark.parametrize("counts, levels", [
    ([5.0], 1),                                        # one bin, one level
    ([0.0, 0.0, 0.0, 7.0], 2),                         # everything in the last bin
    ([3.0, 0.0, 0.0, 0.0, 0.0, 0.0], 2),               # everything in the first bin
    ([0.0, 0.0, 4.0, 4.0, 0.0, 0.0, 1.0], 3),          # empty first bins: S_i = 0
    ([1.0] * 64, 64),                                  # as many levels as bins
    ([2.0, 1.0] * 20, 7),                              # groups of unequal sizes
    ([0.0] * 40 + [10.0] * 20 + [0.0] * 100 + [1.0, 0.0, 0.0, 2.0], 16),
])
def test_equals_the_readable_loop_on_edge_cases(counts, levels):
    _agree(counts, levels)


def test_infinite_exactly_where_q_cannot_hold_p():
    # bins 0..5, 2 levels: i = 2 has Q = [0, 0] (S_2 = 0); i = 4 ends on an empty bin 3 that gets
    # the outliers of bins 4, 5; i = 5 ends on bin 4 (not empty); i = 6 has no outliers
    c = torch.tensor([0.0, 0.0, 3.0, 0.0, 1.0, 2.0])
    div = kl_divergences_by_prefix_sums(c, 2)
    assert torch.isinf(div).tolist() == [True, False, True, False, False]
    assert div[1] > 0 and div[4] == pytest.approx(cal.kl_divergence(c, cal.candidate_distribution(c, 2)))


def test_xlogx():
    v = torch.tensor([0.0, 1.0, 2.0, math.e])
    torch.testing.assert_close(xlogx(v), torch.tensor([0.0, 0.0, 2 * math.log(2.0), math.e]))
