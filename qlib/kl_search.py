"""The KL (entropy) threshold search of :mod:`qlib.calibration`, every candidate at once.

Chapter 5: Range clipping, calibration and rounding (lab05_calibration).

:func:`qlib.calibration.kl_divergences` is specified one candidate at a time: for each number of
bins ``i = L .. B`` (``L`` quantized bins, ``B`` histogram bins) build ``P_i``
(:func:`~qlib.calibration.reference_distribution`) and ``Q_i``
(:func:`~qlib.calibration.candidate_distribution`) and take ``KL(P_i || Q_i)``. That loop
(``qlib.calibration._kl_divergences_readable``) reads as the definition and costs ``O(B^2)``
tensor operations; this module computes the same divergences from three prefix sums of the
histogram in ``O(B L)`` arithmetic and a few dozen tensor operations. ``tests/test_kl_search.py``
holds the two equal to a relative 1e-9 (same finite entries, same argmin).
"""
from __future__ import annotations

import math

import torch


def xlogx(v: torch.Tensor) -> torch.Tensor:
    """``v log v`` with ``0 log 0 = 0`` (its limit), natural log, for ``v >= 0``."""
    positive = v > 0
    return torch.where(positive, v * torch.log(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


def kl_divergences_by_prefix_sums(c: torch.Tensor, levels: int) -> torch.Tensor:
    """``KL(P_i || Q_i)`` for ``i = levels .. len(c)`` (float64), from prefix sums of the histogram ``c``.

    ``c`` is a float64 histogram (counts ``c_j >= 0``, total ``N``), ``L = levels``.

    Reference, normalised: ``P_j = c_j / N`` for ``j < i - 1``; the last bin holds the outliers
    too, ``P_(i-1) = (c_(i-1) + N - S_i) / N`` with ``S_i = c_0 + ... + c_(i-1)``.

    Candidate, normalised: bin ``j`` belongs to quantized bin ``g(j) = floor(j L / i)``, so
    quantized bin ``g`` is the run ``start_g <= j < start_(g+1)`` with ``start_g = ceil(g i / L)``.
    With ``T_g`` the run's total count and ``Z_g`` its number of non-empty bins, every non-empty
    ``j`` of the run gets ``Q_j = T_g / (Z_g S_i)`` (the total ``S_i`` of ``Q`` normalises).

    Sum of one run, while no bin holds outliers (``c_j > 0`` there, empty bins add nothing):

        sum_j (c_j / N) log((c_j / N) / Q_j)
            = ( sum_j c_j log c_j  -  T_g log N  -  T_g log(T_g / (Z_g S_i)) ) / N

    Every quantity of a run is a difference of two prefix sums, ``F(start_(g+1)) - F(start_g)``,
    of ``F(k) = sum_(j<k) c_j``, of ``sum_(j<k) [c_j > 0]`` and of ``sum_(j<k) c_j log c_j``,
    so all ``(B - L + 1) L`` runs cost one gather each. The last bin is then corrected: its term
    with ``c_(i-1)`` is taken out and put back with ``c_(i-1) + N - S_i`` (same ``Q_(i-1)``).

    Infinite where ``Q`` cannot hold ``P``: ``S_i = 0`` (``Q`` all zero), or an empty last bin
    that receives outliers (``P_(i-1) > 0 = Q_(i-1)``); every other bin with ``P_j > 0`` has
    ``c_j > 0`` and so ``Q_j > 0``. Rounding: sums and logs in float64, in another order than the
    loop, so the two agree to about 1e-12 relative, not bit for bit.
    """
    n_bins, total = c.numel(), float(c.sum())
    zero = torch.zeros(1, dtype=torch.float64)
    c_sum = torch.cat([zero, torch.cumsum(c, 0)])                              # F(k) = sum of c[:k]
    nz_sum = torch.cat([zero, torch.cumsum((c > 0).to(torch.float64), 0)])     # non-empty bins among c[:k]
    cl_sum = torch.cat([zero, torch.cumsum(xlogx(c), 0)])                      # sum of c log c over c[:k]
    i = torch.arange(levels, n_bins + 1).reshape(-1, 1)                        # [candidates, 1]
    g = torch.arange(levels + 1).reshape(1, -1)                                # [1, L + 1]
    edges = (g * i + levels - 1) // levels                                     # start_g = ceil(g i / L); start_L = i
    tot = c_sum[edges[:, 1:]] - c_sum[edges[:, :-1]]                           # T_g, [candidates, L]
    nz = nz_sum[edges[:, 1:]] - nz_sum[edges[:, :-1]]                          # Z_g
    cl = cl_sum[edges[:, 1:]] - cl_sum[edges[:, :-1]]                          # sum of c_j log c_j over the run
    s_i = c_sum[i.reshape(-1)]                                                 # S_i
    log_q = torch.log(torch.where(tot > 0, tot, torch.ones_like(tot))) - torch.log(nz.clamp(min=1.0)) \
        - torch.log(s_i.clamp(min=1e-300)).reshape(-1, 1)                       # log Q_j of the run's non-empty j
    terms = cl - tot * math.log(total) - tot * log_q
    kl = terms.sum(dim=1) / total
    # the last bin (index i - 1, in quantized bin L - 1) also holds the outliers beyond it
    last = c[i.reshape(-1) - 1]
    outliers = total - s_i
    log_q_last = log_q[:, -1]
    kl = kl - (xlogx(last) - last * math.log(total) - last * log_q_last) / total
    p_last = last + outliers
    kl = kl + torch.where(p_last > 0, (xlogx(p_last) - p_last * math.log(total) - p_last * log_q_last) / total,
                          torch.zeros_like(kl))
    infinite = (s_i == 0) | ((last == 0) & (outliers > 0))
    return torch.where(infinite, torch.full_like(kl, math.inf), kl)
