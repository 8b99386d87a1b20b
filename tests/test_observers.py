"""qlib.observers against PyTorch's observers of the same names, bit for bit."""
from __future__ import annotations

import pytest
import torch

from qlib import observers

ao = pytest.importorskip("torch.ao.quantization")


def _batches(seed, n=6, shape=(16, 32)):
    g = torch.Generator().manual_seed(seed)
    # batches whose ranges drift and differ, with an occasional outlier
    out = []
    for i in range(n):
        x = torch.randn(shape, generator=g) * (0.5 + i) + 0.3 * i
        if i == 2:
            x[0, 0] = 40.0
        out.append(x)
    return out


def _torch_qparams(obs):
    scale, zp = obs.calculate_qparams()
    return scale.to(torch.float32), zp.to(torch.int64)


AFFINE_U8 = dict(bits=8, signed=False, symmetric=False)
SYMMETRIC_S8 = dict(bits=8, signed=True, symmetric=True, narrow=True)


def _torch_kwargs(kind):
    if kind == "affine":
        return dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
    return dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127)


@pytest.mark.parametrize("kind", ["affine", "symmetric"])
@pytest.mark.parametrize("seed", range(5))
def test_min_max_observer_matches_pytorch(kind, seed):
    ours = observers.MinMaxObserver(**(AFFINE_U8 if kind == "affine" else SYMMETRIC_S8))
    theirs = ao.MinMaxObserver(**_torch_kwargs(kind))
    for x in _batches(seed):
        assert ours(x) is x
        theirs(x)
    assert torch.equal(ours.rmin, theirs.min_val) and torch.equal(ours.rmax, theirs.max_val)
    scale, zp = ours.qparams()
    t_scale, t_zp = _torch_qparams(theirs)
    assert torch.equal(scale.reshape(1), t_scale.reshape(1)) and torch.equal(zp.reshape(1), t_zp.reshape(1))


@pytest.mark.parametrize("c", [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_moving_average_observer_matches_pytorch(c, seed):
    ours = observers.MovingAverageMinMaxObserver(averaging_constant=c, **AFFINE_U8)
    theirs = ao.MovingAverageMinMaxObserver(averaging_constant=c, **_torch_kwargs("affine"))
    for x in _batches(seed, n=10):
        ours(x)
        theirs(x)
    assert torch.equal(ours.rmin, theirs.min_val) and torch.equal(ours.rmax, theirs.max_val)
    scale, zp = ours.qparams()
    t_scale, t_zp = _torch_qparams(theirs)
    assert torch.equal(scale.reshape(1), t_scale.reshape(1)) and torch.equal(zp.reshape(1), t_zp.reshape(1))


def test_moving_average_by_hand():
    obs = observers.MovingAverageMinMaxObserver(averaging_constant=0.5)
    obs(torch.tensor([-2.0, 4.0]))       # first batch sets the range
    obs(torch.tensor([0.0, 8.0]))        # halfway to the new batch's range
    assert obs.range()[0].item() == -1.0 and obs.range()[1].item() == 6.0


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("seed", range(3))
def test_per_channel_observer_matches_pytorch(axis, seed):
    ours = observers.PerChannelMinMaxObserver(axis=axis, **SYMMETRIC_S8)
    theirs = ao.PerChannelMinMaxObserver(ch_axis=axis % 3, dtype=torch.qint8,
                                         qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127)
    for x in _batches(seed, n=4, shape=(4, 6, 5)):
        ours(x)
        theirs(x)
    scale, zp = ours.qparams()
    t_scale, t_zp = _torch_qparams(theirs)
    assert torch.equal(scale, t_scale) and torch.equal(zp, t_zp)


def test_min_max_keeps_the_outlier_moving_average_forgets_it():
    calm = [torch.linspace(-1, 1, 101)] * 20
    spike = torch.tensor([-1.0, 100.0])
    mm, ema = observers.MinMaxObserver(), observers.MovingAverageMinMaxObserver()
    for x in [spike, *calm]:
        mm(x), ema(x)
    assert mm.range()[1].item() == 100.0
    assert ema.range()[1].item() < 100.0 * 0.99 ** 20 + 1.0 + 1e-4


def test_unobserved_observer_says_so():
    with pytest.raises(RuntimeError, match="has not seen any data"):
        observers.MinMaxObserver().qparams()


@pytest.mark.parametrize("bad, match", [(torch.tensor([1.0, float("nan")]), "NaN"),
                                        (torch.tensor([]), "empty"),
                                        (torch.tensor([1.0, float("inf")]), "infinite")])
def test_bad_batches_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        observers.MinMaxObserver()(bad)


def test_per_channel_observer_refuses_a_different_channel_count():
    obs = observers.PerChannelMinMaxObserver(axis=0)
    obs(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="tracks 3 channels"):
        obs(torch.zeros(5, 4))


def test_bad_averaging_constant():
    with pytest.raises(ValueError, match="averaging_constant"):
        observers.MovingAverageMinMaxObserver(averaging_constant=0.0)


def test_all_zero_tensor_gives_the_minimum_scale():
    obs = observers.MinMaxObserver(bits=8, signed=True)
    obs(torch.zeros(10))
    scale, zp = obs.qparams()
    assert scale.item() == 2.0 ** -23 and zp.item() == -128   # rmin = 0 maps to qmin


def test_observer_is_a_state_dict_module():
    obs = observers.MinMaxObserver()
    obs(torch.tensor([-1.0, 3.0]))
    assert set(obs.state_dict()) == {"rmin", "rmax"}
