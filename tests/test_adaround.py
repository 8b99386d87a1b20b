"""Tests of qlib.adaround: the rectified sigmoid and regulariser by hand, the rounding it learns
(only floor or ceil of w/scale, never worse than nearest on its objective, strictly better on
a layer with correlated inputs), determinism, and the digits CNN layer by layer."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qlib import adaround as ar
from qlib.data import load_digits
from qlib.models import load_pretrained


def test_rectified_sigmoid_by_hand():
    v = torch.tensor([0.0, 50.0, -50.0, math.log(1 / 11), math.log(11)])
    # sigmoid(0) = 1/2 -> 0.5 * 1.2 - 0.1 = 0.5; it reaches 0 at sigmoid = 1/12 and 1 at sigmoid = 11/12
    torch.testing.assert_close(ar.rectified_sigmoid(v), torch.tensor([0.5, 1.0, 0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    assert ar.ZETA == 1.1 and ar.GAMMA == -0.1


def test_initial_v_inverts_the_rectified_sigmoid():
    f = torch.linspace(0, 0.999, 1000, dtype=torch.float64)
    torch.testing.assert_close(ar.rectified_sigmoid(ar.initial_v(f)), f, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ar.initial_v(torch.tensor([1.0]))


def test_regularizer_by_hand():
    v = torch.tensor([50.0, -50.0, 0.0, ar.initial_v(torch.tensor(0.25)).item()])
    # h = 1, 0, 1/2, 1/4: terms 0, 0, 1, 1 - 0.5^beta
    for beta in (2.0, 20.0):
        expected = 0 + 0 + 1 + (1 - 0.5 ** beta)
        assert ar.rounding_regularizer(v, beta).item() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="beta"):
        ar.rounding_regularizer(v, 0.0)


def test_beta_schedule():
    assert ar.beta_schedule(0, 100) is None and ar.beta_schedule(19, 100) is None   # warm-up: no regulariser
    assert ar.beta_schedule(20, 100) == 20.0
    assert ar.beta_schedule(99, 100) == pytest.approx(2.0 + 18.0 / 80)
    betas = [ar.beta_schedule(s, 100) for s in range(20, 100)]
    assert all(a > b for a, b in zip(betas, betas[1:]))


@pytest.mark.parametrize("layer", [nn.Linear(6, 4), nn.Conv2d(3, 5, 3, padding=1, stride=2)])
def test_layer_forward_is_the_layer(layer):
    x = torch.randn(2, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 7, 7)
    assert torch.equal(ar.layer_forward(layer, x, layer.weight), layer(x))
    with pytest.raises(TypeError, match="Conv2d and Linear"):
        ar.layer_forward(nn.ReLU(), x, layer.weight)


def _correlated_problem(seed=0, n=512, d_in=32, d_out=8):
    """A linear layer whose inputs are strongly correlated: rounding errors of weights add up."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, generator=gen)
    x = base @ torch.randn(4, d_in, generator=gen) + 0.1 * torch.randn(n, d_in, generator=gen)
    layer = nn.Linear(d_in, d_out)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(d_out, d_in, generator=gen) * 0.3)
        layer.bias.zero_()
    layer.requires_grad_(False)
    scale = torch.tensor(float(layer.weight.abs().max()) / 3)     # 3-bit symmetric grid
    return layer, x, layer(x), scale


def test_learned_rounding_is_floor_or_ceil_and_beats_nearest():
    layer, x, target, scale = _correlated_problem()
    result = ar.adaround_layer(layer, x, target, scale, -4, 3, n_steps=400, batch_size=64, seed=0)
    scaled = layer.weight / scale
    q = result.q.to(torch.float32)
    assert bool(((q == torch.clamp(torch.floor(scaled), -4, 3)) | (q == torch.clamp(torch.floor(scaled) + 1, -4, 3))).all())
    assert result.kept == "adaround" and result.flipped > 0
    assert result.adaround_mse < 0.8 * result.nearest_mse
    # the reported numbers are the objective evaluated directly
    nearest = torch.clamp(torch.round(scaled), -4, 3) * scale
    direct = float(((nn.functional.linear(x, nearest, layer.bias) - target) ** 2).double().mean())
    assert result.nearest_mse == pytest.approx(direct, rel=1e-5)
    assert ar.output_mse(layer, x, result.weight, target) == pytest.approx(result.adaround_mse)


def test_never_worse_than_nearest_even_when_training_goes_wrong():
    layer, x, target, scale = _correlated_problem(1)
    # a learning rate this large throws V far from its start in one step
    result = ar.adaround_layer(layer, x, target, scale, -4, 3, n_steps=1, lr=1e3, seed=0)
    assert result.adaround_mse > result.nearest_mse and result.kept == "nearest"
    assert torch.equal(result.q, torch.clamp(torch.round(layer.weight / scale), -4, 3).to(torch.int64))
    assert ar.output_mse(layer, x, result.weight, target) == pytest.approx(result.nearest_mse)


def test_same_seed_same_rounding():
    layer, x, target, scale = _correlated_problem(2)
    a = ar.adaround_layer(layer, x, target, scale, -4, 3, n_steps=60, seed=5)
    b = ar.adaround_layer(layer, x, target, scale, -4, 3, n_steps=60, seed=5)
    assert torch.equal(a.q, b.q) and a.adaround_mse == b.adaround_mse


def test_bad_input_is_refused():
    layer, x, target, scale = _correlated_problem(3, n=8)
    with pytest.raises(ValueError, match="same samples"):
        ar.adaround_layer(layer, x, target[:4], scale, -4, 3)
    with pytest.raises(ValueError, match="n_steps"):
        ar.adaround_layer(layer, x, target, scale, -4, 3, n_steps=0)
    with pytest.raises(ValueError, match="NaN"):
        ar.adaround_layer(layer, x * float("nan"), target, scale, -4, 3)


def test_digits_cnn_layer_by_layer():
    model = load_pretrained("cnn")
    images = load_digits("train").images[:128]
    quantized, results = ar.adaround_model(model, images, bits=3, granularity="channel", n_steps=60, seed=0)
    assert [r.name for r in results] == ["conv1", "conv2", "fc1", "fc2"]
    baseline = ar.nearest_model(model, bits=3, granularity="channel")
    for r in results:
        kept_mse = r.adaround_mse if r.kept == "adaround" else r.nearest_mse
        assert kept_mse <= r.nearest_mse
        assert int(r.q.abs().max()) <= 4
        layer = quantized.get_submodule(r.name)
        assert torch.equal(layer.weight, r.weight)
        # every weight is one grid step from the nearest-rounded one, at most
        step = r.scale
        assert bool(((layer.weight - baseline.get_submodule(r.name).weight).abs() <= step * 1.0001).all())
    assert any(r.kept == "adaround" for r in results)
    # the original model is untouched
    assert torch.equal(model.conv1.weight, load_pretrained("cnn").conv1.weight)
