"""Tests of qlib.stochastic_rounding: statistical properties, exact properties, determinism.

Statistical checks use fixed seeds and bounds of six standard deviations derived from
the binomial variance, so a correct implementation fails them with probability ~1e-9
whatever its random numbers, and a biased one (round to nearest, floor, P(up) = 1/2)
fails them for certain.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qlib.linear import quantize
from qlib.stochastic_rounding import fake_quantize_stochastic, quantize_stochastic, round_stochastic

DRAWS = 100_000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


FRACTIONS = [0.0, 0.001, 0.1, 0.25, 0.5, 0.7, 0.999]


@pytest.mark.parametrize("base", [-3.0, 0.0, 41.0])
@pytest.mark.parametrize("f", FRACTIONS)
def test_probability_of_rounding_up_is_the_fraction(base, f):
    x = torch.full((DRAWS,), base + f, dtype=torch.float64)
    f = float(x[0] - math.floor(x[0]))                       # the fraction as stored
    r = round_stochastic(x, _gen(int(1000 * f) + int(base)))
    ups = int((r == math.floor(base + f) + 1).sum())
    sd = math.sqrt(DRAWS * f * (1 - f))
    assert abs(ups - DRAWS * f) <= 6 * sd + 1, (ups, DRAWS * f, sd)


def test_only_the_two_neighbours_are_ever_chosen():
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(200_000, generator=gen) - 0.5) * 2000
    r = round_stochastic(x, _gen(2))
    x64 = x.double()
    assert bool(((r.double() == torch.floor(x64)) | (r.double() == torch.floor(x64) + 1)).all())
    assert r.dtype == torch.float32 and bool((r == torch.round(r)).all())


def test_integers_never_move():
    x = torch.arange(-50, 51, dtype=torch.float32).repeat(100)
    assert torch.equal(round_stochastic(x, _gen(3)), x)


def test_mean_error_is_near_zero():
    # one value per element, many draws: the average of the rounded values tends to x,
    # with standard error sqrt(f (1 - f) / draws) per element
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(500, generator=gen, dtype=torch.float64) * 10 - 5
    f = x - torch.floor(x)
    draws = 2000
    total = torch.zeros_like(x)
    g = _gen(5)
    for _ in range(draws):
        total += round_stochastic(x, g)
    mean_error = total / draws - x
    bound = 6 * torch.sqrt(f * (1 - f) / draws) + 1e-12
    assert bool((mean_error.abs() <= bound).all())
    # over all elements together the bias is far smaller still
    overall = float(mean_error.mean())
    assert abs(overall) <= 6 * math.sqrt(float((f * (1 - f)).mean()) / (draws * x.numel()))


def test_round_to_nearest_would_fail_the_unbiasedness_check():
    # the check above can fail: rounding to nearest has a mean error of 0.1 - 0 = -0.1 at x = 0.1
    x = torch.full((DRAWS,), 0.1, dtype=torch.float64)
    assert float((torch.round(x) - x).mean()) == pytest.approx(-0.1)
    assert abs(float((round_stochastic(x, _gen(6)) - x).mean())) < 6 * math.sqrt(0.09 / DRAWS)


def test_accumulating_small_increments():
    # adding 0.3 a thousand times, rounding to an integer after every step:
    # round to nearest never leaves 0; stochastic rounding ends near 300 on average
    g = _gen(7)
    runs = 400
    acc_nearest = torch.zeros(runs, dtype=torch.float64)
    acc = torch.zeros(runs, dtype=torch.float64)
    for _ in range(1000):
        acc_nearest = torch.round(acc_nearest + 0.3)
        acc = round_stochastic(acc + 0.3, g)
    assert bool((acc_nearest == 0).all())
    # each run's sum has variance 1000 * 0.3 * 0.7 = 210
    assert abs(float(acc.mean()) - 300.0) <= 6 * math.sqrt(210 / runs)


def test_negative_values_round_to_their_two_neighbours():
    x = torch.full((DRAWS,), -0.25, dtype=torch.float64)
    r = round_stochastic(x, _gen(8))
    assert set(r.unique().tolist()) == {-1.0, 0.0}
    ups = int((r == 0).sum())                                # -0.25 = -1 + 0.75: up to 0 with probability 0.75
    assert abs(ups - 0.75 * DRAWS) <= 6 * math.sqrt(DRAWS * 0.75 * 0.25)


def test_same_seed_same_result_and_the_global_rng_plays_no_part():
    x = torch.randn(1000, generator=_gen(9)) * 3
    torch.manual_seed(123)
    a = round_stochastic(x, _gen(10))
    torch.manual_seed(456)
    b = round_stochastic(x, _gen(10))
    assert torch.equal(a, b)
    assert not torch.equal(a, round_stochastic(x, _gen(11)))


def test_the_documented_draw():
    # one float64 uniform per element from the generator, up where u < x - floor(x) (numpy here)
    x = torch.randn(3, 50, generator=_gen(12)) * 4
    u = torch.rand(3, 50, generator=_gen(13), dtype=torch.float64).numpy()
    x64 = x.double().numpy()
    expected = np.floor(x64) + (u < x64 - np.floor(x64))
    np.testing.assert_array_equal(round_stochastic(x, _gen(13)).double().numpy(), expected)


def test_dtype_is_kept():
    x64 = torch.tensor([0.5, 1.25], dtype=torch.float64)
    assert round_stochastic(x64, _gen()).dtype == torch.float64
    assert round_stochastic([0.5, 1.25], _gen()).dtype == torch.float32


def test_quantize_stochastic_clamps_and_adds_the_zero_point():
    x = torch.tensor([-100.0, -0.75, 0.0, 0.5, 100.0])
    q = quantize_stochastic(x, 0.5, 3, 0, 15, _gen(14))
    assert q.dtype == torch.int64
    assert q[0] == 0 and q[-1] == 15 and q[2] == 3              # clamped, clamped, exact 0 -> zero point
    assert int(q[1]) in (1, 2) and int(q[3]) == 4              # -1.5 -> -2 or -1; 1.0 exact -> 1
    # on values already on the grid it agrees with round-to-nearest quantization
    on_grid = torch.arange(-8, 8, dtype=torch.float32) * 0.25
    assert torch.equal(quantize_stochastic(on_grid, 0.25, 0, -8, 7, _gen()), quantize(on_grid, 0.25, 0, -8, 7))


def test_fake_quantize_stochastic_is_unbiased_inside_the_range():
    x = torch.full((DRAWS,), 0.3)
    x_hat = fake_quantize_stochastic(x, 0.25, 0, -8, 7, _gen(15))
    assert set(x_hat.unique().tolist()) == {0.25, 0.5}
    # 0.3 / 0.25 = 1.2: up with probability 0.2, standard deviation of the mean 0.25 sqrt(0.16 / n)
    assert abs(float(x_hat.double().mean()) - 0.3) <= 6 * 0.25 * math.sqrt(0.16 / DRAWS)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="torch.Generator"):
        round_stochastic(torch.ones(3), None)
    with pytest.raises(TypeError, match="torch.Generator"):
        round_stochastic(torch.ones(3), 0)
    with pytest.raises(ValueError, match="NaN"):
        round_stochastic(torch.tensor([float("nan")]), _gen())
    with pytest.raises(ValueError, match="empty"):
        round_stochastic(torch.tensor([]), _gen())
    with pytest.raises(ValueError, match="scale must be positive"):
        quantize_stochastic(torch.ones(3), 0.0, 0, -8, 7, _gen())
