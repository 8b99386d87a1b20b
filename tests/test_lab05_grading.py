"""Lab 5 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, LabGradingTests, Target, Wrong

LAB = "lab05_calibration"
POINTS = {"test_percentile_threshold": 3, "test_mse_threshold": 4, "test_candidate_distribution": 4,
          "test_kl_threshold": 4, "test_round_stochastic": 5}

# --- plausible wrong answers: each must lose its own question, and only that one ---------------------

WRONG = {
    "percentile_of_x_not_abs": Wrong("percentile_threshold", "test_percentile_threshold", "not of x itself", '''
def percentile_threshold(x, percentile):
    return float(np.percentile(np.asarray(x, dtype=np.float64), percentile))
'''),
    "mse_without_clamp": Wrong("mse_threshold", "test_mse_threshold", "clamp before measuring the error", '''
def mse_threshold(x, qmin, qmax, n_candidates=100):
    x = torch.as_tensor(x, dtype=torch.float32).flatten()
    amax = float(x.abs().max())
    if amax == 0:
        return 0.0
    errors = []
    for k in range(1, n_candidates + 1):
        scale = amax * k / n_candidates / qmax
        errors.append(float(((torch.round(x / scale) * scale - x) ** 2).mean()))
    return amax * (1 + int(np.argmin(errors))) / n_candidates
'''),
    "spreads_over_empty_bins": Wrong("candidate_distribution", "test_candidate_distribution", "non-empty bins only", '''
def candidate_distribution(counts, levels):
    counts = np.asarray(counts, dtype=np.float64)
    group = np.arange(counts.size) * levels // counts.size
    totals = np.bincount(group, weights=counts, minlength=levels)
    return totals[group] / np.bincount(group, minlength=levels)[group]
'''),
    "kl_forgets_the_outliers": Wrong("kl_threshold", "test_kl_threshold", "add every count beyond the first i bins", '''
def kl_threshold(counts, bin_width, levels):
    counts = torch.as_tensor(counts, dtype=torch.float64)
    best_i, best = counts.numel(), math.inf
    for i in range(levels, counts.numel() + 1):
        p = counts[:i].clone()
        q = torch.as_tensor(candidate_distribution(counts[:i], levels), dtype=torch.float64)
        if q.sum() == 0 or p.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        s = p > 0
        if (q[s] == 0).any():
            continue
        d = float((p[s] * torch.log(p[s] / q[s])).sum())
        if d < best:
            best_i, best = i, d
    return best_i * bin_width
'''),
    "stochastic_from_the_global_rng": Wrong("round_stochastic", "test_round_stochastic", "generator you are given", '''
def round_stochastic(x, generator):
    floor = torch.floor(x)
    return floor + (torch.rand(x.shape, dtype=torch.float64) < (x - floor)).to(x.dtype)
'''),
    "round_to_nearest": Wrong("round_stochastic", "test_round_stochastic", "rounds like round-to-nearest", '''
def round_stochastic(x, generator):
    return torch.round(x)
'''),
    "hard_coded_visible_cases": Wrong("percentile_threshold", "test_percentile_threshold", "A hidden check failed", '''
def percentile_threshold(x, percentile):
    return {90.0: 3.6, 50.0: 1.5, 99.9: 1.0}.get(percentile, float(x.abs().max()))
'''),
}

# --- correct answers written differently: full marks ---------------------------------------------------

DIFFERENT = {
    "percentile_threshold": '''
def percentile_threshold(x, percentile):
    return torch.quantile(x.abs().flatten(), percentile / 100).item()   # float32 arithmetic
''',
    "mse_threshold": '''
def mse_threshold(x, qmin, qmax, n_candidates=100):
    x = np.asarray(x, dtype=np.float64).ravel()
    amax = np.abs(x).max()
    if amax == 0:
        return 0.0
    t = amax * np.arange(1, n_candidates + 1) / n_candidates
    s = (t / qmax)[:, None]
    err = ((np.clip(np.round(x[None, :] / s), qmin, qmax) * s - x[None, :]) ** 2).sum(axis=1)
    return float(t[np.argmin(err)])
''',
    "candidate_distribution": '''
def candidate_distribution(counts, levels):
    counts = np.asarray(counts, dtype=np.float64)
    i = counts.size
    q = np.zeros(i)
    for g in range(levels):
        start, stop = -(-g * i // levels), -(-(g + 1) * i // levels)     # ceil(g i / L), ceil((g+1) i / L)
        nonzero = counts[start:stop] > 0
        if nonzero.any():
            q[start:stop][nonzero] = counts[start:stop].sum() / nonzero.sum()
    return q
''',
    "kl_threshold": '''
def kl_threshold(counts, bin_width, levels):
    counts = np.asarray(counts, dtype=np.float64)
    divergences = []
    for i in range(levels, len(counts) + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        q = np.asarray(candidate_distribution(counts[:i], levels), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            p, q = p / p.sum(), q / q.sum()
            terms = np.where(p > 0, p * np.log(p / q), 0.0)
        divergences.append(terms.sum() if np.isfinite(terms).all() else np.inf)
    return float((levels + int(np.argmin(divergences))) * bin_width)
''',
    "round_stochastic": '''
def round_stochastic(x, generator):
    fraction = (x - torch.floor(x)).to(torch.float64)
    return torch.floor(x) + torch.bernoulli(fraction, generator=generator).to(x.dtype)
''',
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_obfuscated": Cheat({"mse_threshold": """
ref = __import__("ql" + "ib.calibration", fromlist=["x"])

def mse_threshold(x, qmin, qmax, n_candidates=100):
    return ref.mse_threshold(x, qmin, qmax, n_candidates)
"""}, "test_mse_threshold", "reference answer"),
}


class TestLab05Grading(LabGradingTests):
    LAB, POINTS, N_STUBS = LAB, POINTS, 5
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, DIFFERENT, "hard_coded_visible_cases"
    CHEAT_TARGET = Target("round_stochastic", "test_round_stochastic", "qlib.stochastic_rounding.round_stochastic")
    CHEATS = CHEATS
    ANSWER_LINES = ("p[-1] += counts[i:].sum()", "totals[group] / n_nonzero[group]", "u < (x - floor)")
