"""Lab 5 graded end to end by nbgrader: fair to correct answers, hard to game.

This module holds the lab's data; the tests every lab gets (tests/lab_grading.py) grade it.
"""
from __future__ import annotations

from tests.lab_grading import Cheat, Choice, DesignTargetTests, LabGradingTests, Partial, Target, Wrong, design_cheats

LAB = "lab05_calibration"
POINTS = {"test_percentile_threshold": 2, "test_mse_threshold": 4, "test_candidate_distribution": 4,
          "test_kl_threshold": 4, "test_round_stochastic": 3, "test_what_dynamic_costs": 1, "test_scale_spread": 2,
          "test_what_adaround_learns": 2, "test_design": 4}
WRITTEN = {"clipping_and_accuracy": 2}

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
    "dynamic_handles_outliers": Wrong("what_dynamic_costs", "test_what_dynamic_costs", "stretches the step",
                                      'what_dynamic_costs = "b"\n'),
    "spread_over_calibration_images": Wrong("scale_spread", "test_scale_spread", "over the calibration images", '''
per_image = layer_inputs(fold_every_batchnorm(model), calibration_images)["fc1"].flatten(1).amax(dim=1)
scale_spread = float(per_image.max() / per_image.min())
'''),
    "spread_of_a_single_scale": Wrong("scale_spread", "test_scale_spread", "not a ratio",
                                      "scale_spread = float(layer_inputs(fold_every_batchnorm(model), "
                                      "test_set.images)['fc1'].max()) / 15\n"),
    "adaround_keeps_nearest": Wrong("what_adaround_learns", "test_what_adaround_learns", "not where it must end",
                                    'what_adaround_learns = "a"\n'),
    "design_minmax_everywhere": Wrong("design", "test_design", "target is not reached",
                                      'design = {"conv1": "minmax", "conv2": "minmax", "fc1": "minmax", '
                                      '"fc2": "minmax", "percentile": 99.9}\n'),
    "design_unknown_calibrator": Wrong("design", "test_design", "must be one of",
                                       'design = {"conv1": "entropy", "conv2": "kl", "fc1": "kl", "fc2": "kl", '
                                       '"percentile": 99.0}\n'),
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

# --- the same answers written otherwise: other spellings, other types, another design as good ---------

OTHER_SPELLINGS = {
    "what_dynamic_costs": 'what_dynamic_costs = " (C) "\n',
    "scale_spread": "import numpy\nscale_spread = numpy.float32(2.36)\n",
    "what_adaround_learns": "what_adaround_learns = 'B.'\n",
    "design": 'design = dict(conv1="kl", conv2="kl", fc1="kl", fc2="kl", percentile=99)\n',  # 99.4 %
}

# --- designs that fall short of the target: the tier they reach ---------------------------------------

PARTIAL = {
    "percentile_999_everywhere": Partial({"design": 'design = {"conv1": "percentile", "conv2": "percentile", '
                                                    '"fc1": "percentile", "fc2": "percentile", "percentile": 99.9}\n'},
                                         "test_design", 3),
    "minmax_at_the_image": Partial({"design": 'design = {"conv1": "minmax", "conv2": "kl", "fc1": "kl", "fc2": "kl", '
                                              '"percentile": 99.0}\n'}, "test_design", 2),
}

# --- the lab's own attacks (every lab also gets the standard ones: tests/lab_grading.py) -------------

CHEATS = {
    "calls_qlib_obfuscated": Cheat({"mse_threshold": """
ref = __import__("ql" + "ib.calibration", fromlist=["x"])

def mse_threshold(x, qmin, qmax, n_candidates=100):
    return ref.mse_threshold(x, qmin, qmax, n_candidates)
"""}, "test_mse_threshold", "reference answer"),
    **design_cheats("design", "test_design", {"conv1": "percentile", "conv2": "kl", "fc1": "kl", "fc2": "kl",
                                              "percentile": 99.0}, "must be int or float"),
}


class TestLab05Grading(LabGradingTests, DesignTargetTests):
    LAB, POINTS, N_STUBS, WRITTEN = LAB, POINTS, 9, WRITTEN
    WRONG, DIFFERENT, HIDDEN_ONLY = WRONG, {**DIFFERENT, **OTHER_SPELLINGS}, "hard_coded_visible_cases"
    CHOICE = Choice("what_adaround_learns", "test_what_adaround_learns", "what_adaround_learns")
    PARTIAL = PARTIAL
    CHEAT_TARGET = Target("round_stochastic", "test_round_stochastic", "qlib.stochastic_rounding.round_stochastic")
    CHEATS = CHEATS
    CELL_SECONDS = 15  # the slowest cell of a correct submission (the experiment) takes about 3 s
    ANSWER_LINES = ("p[-1] += counts[i:].sum()", "totals[group] / n_nonzero[group]", "u < (x - floor)",
                    'what_adaround_learns = "b"', "**Rubric (2 points).** 1 point: names MSE as clipping hardest")
