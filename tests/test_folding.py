"""Tests of qlib.folding: batch norm folded into the convolution or linear layer before it.

Oracles: the unfolded modules themselves (conv then batch norm, run by PyTorch in float64),
PyTorch's own fusion (``torch.nn.utils.fusion.fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``
and ``torch.ao.quantization.fuse_modules``), and a value worked by hand.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from qlib.folding import (
    batchnorm_pairs,
    fold_batchnorm_parameters,
    fold_batchnorms,
    fold_conv_bn,
    fold_every_batchnorm,
    fold_linear_bn,
)
from qlib.models import load_pretrained


def random_bn(bn: nn.Module, seed: int) -> nn.Module:
    """Give a batch norm non-trivial statistics and affine parameters, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.05)
        if bn.affine:
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))
    return bn.eval()


CONV_CASES = [
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=(1, 0), bias=True),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=2, dilation=2, bias=True),
    dict(in_channels=5, out_channels=5, kernel_size=1, groups=5, bias=False),  # depthwise
]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_folded_conv_equals_conv_then_bn_in_float64(case, affine):
    torch.manual_seed(case)
    conv = nn.Conv2d(**CONV_CASES[case]).double().eval()
    bn = random_bn(nn.BatchNorm2d(conv.out_channels, affine=affine, eps=1e-3).double(), case)
    x = torch.randn(7, conv.in_channels, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(conv(x))
        got = fold_conv_bn(conv, bn)(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_folded_linear_equals_linear_then_bn_in_float64(bias):
    torch.manual_seed(1)
    linear = nn.Linear(20, 12, bias=bias).double().eval()
    bn = random_bn(nn.BatchNorm1d(12).double(), 3)
    x = torch.randn(50, 20, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_linear_bn(linear, bn)(x), bn(linear(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_folded_conv_matches_torch_fuse_conv_bn_eval(case):
    fusion = pytest.importorskip("torch.nn.utils.fusion")
    torch.manual_seed(10 + case)
    conv = nn.Conv2d(**CONV_CASES[case]).eval()
    bn = random_bn(nn.BatchNorm2d(conv.out_channels), case)
    ours = fold_conv_bn(conv, bn)
    theirs = fusion.fuse_conv_bn_eval(conv, bn)
    # float32 results; torch multiplies by rsqrt in float32, qlib divides in float64 then rounds.
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=2e-6, atol=1e-6)
    for attr in ("stride", "padding", "dilation", "groups"):
        assert getattr(ours, attr) == getattr(theirs, attr)


def test_folded_linear_matches_torch_fuse_linear_bn_eval():
    fusion = pytest.importorskip("torch.nn.utils.fusion")
    torch.manual_seed(2)
    linear = nn.Linear(16, 9).eval()
    bn = random_bn(nn.BatchNorm1d(9), 5)
    ours, theirs = fold_linear_bn(linear, bn), fusion.fuse_linear_bn_eval(linear, bn)
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(ours.bias, theirs.bias, rtol=2e-6, atol=1e-6)


def test_folded_digits_cnn_matches_torch_fuse_modules():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = pytest.importorskip("torch.ao.quantization")
        cnn = load_pretrained("cnn")
        theirs = ao.fuse_modules(load_pretrained("cnn"), [["conv1", "bn1"], ["conv2", "bn2"]])
    ours = fold_batchnorms(cnn, [("conv1", "bn1"), ("conv2", "bn2")])
    for name in ("conv1", "conv2"):
        torch.testing.assert_close(getattr(ours, name).weight, getattr(theirs, name).weight, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(getattr(ours, name).bias, getattr(theirs, name).bias, rtol=2e-6, atol=1e-6)
    assert isinstance(ours.bn1, nn.Identity) and isinstance(ours.bn2, nn.Identity)
    x = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), cnn(x), rtol=1e-4, atol=1e-4)
    assert isinstance(cnn.bn1, nn.BatchNorm2d)  # the original is untouched


def test_fold_by_hand():
    # One channel: W = [2, -1], b = 1, mean = 3, var = 3, eps = 1, gamma = 4, beta = 0.5
    # a = 4 / sqrt(3 + 1) = 2;  W' = [4, -2];  b' = (1 - 3) * 2 + 0.5 = -3.5
    w, b = fold_batchnorm_parameters(torch.tensor([[2.0, -1.0]]), torch.tensor([1.0]), torch.tensor([3.0]),
                                     torch.tensor([3.0]), 1.0, torch.tensor([4.0]), torch.tensor([0.5]))
    assert w.tolist() == [[4.0, -2.0]]
    assert b.tolist() == [-3.5]
    assert w.dtype == torch.float32


def test_fold_refuses_what_it_cannot_fold():
    conv, bn = nn.Conv2d(2, 4, 3).eval(), nn.BatchNorm2d(4).eval()
    with pytest.raises(ValueError, match="eval mode"):
        fold_conv_bn(conv, nn.BatchNorm2d(4).train())
    with pytest.raises(ValueError, match="output channels"):
        fold_conv_bn(conv, nn.BatchNorm2d(5).eval())
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(conv, nn.BatchNorm2d(4, track_running_stats=False).eval())
    with pytest.raises(TypeError, match="Conv2d"):
        fold_conv_bn(nn.Linear(3, 4).eval(), bn)
    with pytest.raises(TypeError, match="BatchNorm1d"):
        fold_linear_bn(nn.Linear(3, 4).eval(), bn)
    with pytest.raises(ValueError, match="NaN"):
        fold_batchnorm_parameters(torch.ones(1, 2), None, torch.tensor([float("nan")]), torch.ones(1), 1e-5)
    with pytest.raises(ValueError, match="positive"):
        fold_batchnorm_parameters(torch.ones(1, 2), None, torch.zeros(1), torch.tensor([-1.0]), 1e-5)
    with pytest.raises(TypeError, match="absorb"):
        fold_batchnorms(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)).eval(), [("0", "1")])


def test_batchnorm_pairs_are_read_off_the_model_in_registration_order():
    from qlib.models import DepthwiseDigitsCNN, load_pretrained

    assert batchnorm_pairs(load_pretrained("cnn")) == [("conv1", "bn1"), ("conv2", "bn2")]
    assert batchnorm_pairs(load_pretrained("mlp")) == []
    assert batchnorm_pairs(DepthwiseDigitsCNN()) == [("conv1", "bn1"), ("dw1", "bn2"), ("pw1", "bn3"),
                                                     ("dw2", "bn4"), ("pw2", "bn5")]
    linear = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU())
    assert batchnorm_pairs(linear) == [("0", "1")]


def test_a_batchnorm_without_its_layer_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="batch norm 0 does not follow a Conv2d or Linear"):
        batchnorm_pairs(nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="batch norm 1 has 4 channels but 0 has 3 outputs"):
        batchnorm_pairs(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(4)))
    with pytest.raises(ValueError, match="batch norm 2 does not follow"):  # two in a row: the second has none
        batchnorm_pairs(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.BatchNorm1d(3)))


def test_fold_every_batchnorm_leaves_the_model_alone_and_returns_eval_mode():
    from qlib.models import load_pretrained

    cnn = load_pretrained("cnn").train()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    folded = fold_every_batchnorm(cnn)
    assert cnn.training and not folded.training
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
