"""Tests of qlib.pruning: magnitude masks, pruning a model, keeping the zeros, sensitivity scans.

Oracles: torch.nn.utils.prune (L1 unstructured pruning, written independently of qlib), counts
of zeros and accuracies computed here, and small cases worked by hand.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from qlib._reference import ReferenceUnavailable, blocked
from qlib.data import load_digits
from qlib.models import load_pretrained
from qlib.pruning import apply_masks, magnitude_mask, prune_model, sensitivity_scan, sparsity
from qlib.weights import quantized_layers


def _weights(model):
    return {name: layer.weight.detach().clone() for name, layer in quantized_layers(model)}


# --- magnitude_mask ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(100,), (16, 1, 3, 3), (64, 512), (7, 13)])
@pytest.mark.parametrize("s", [0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 0.99])
def test_magnitude_mask_matches_torch_l1_unstructured(shape, s):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g)  # continuous values: no ties in |w|
    expected = torch_prune.L1Unstructured(amount=s).compute_mask(w, torch.ones_like(w)).bool()
    mask = magnitude_mask(w, s)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("n, s, n_pruned", [(5, 0.5, 2), (7, 0.5, 4), (10, 0.25, 2), (10, 0.35, 4), (3, 0.1, 0)])
def test_magnitude_mask_prunes_exactly_round_s_n(n, s, n_pruned):
    """round is Python's round (half to even): 2.5 -> 2, 3.5 -> 4."""
    w = torch.arange(1, n + 1, dtype=torch.float32)
    mask = magnitude_mask(w, s)
    assert int((~mask).sum()) == n_pruned
    assert torch.equal(mask, torch.arange(n) >= n_pruned)  # the smallest go


def test_magnitude_ties_are_pruned_lower_index_first():
    w = torch.tensor([[1.0, -1.0], [1.0, 0.5]])
    assert magnitude_mask(w, 0.5).tolist() == [[False, True], [True, False]]
    assert magnitude_mask(torch.tensor([-2.0, 2.0, 2.0, -2.0]), 0.75).tolist() == [False, False, False, True]


def test_magnitude_mask_refuses_bad_arguments():
    w = torch.randn(10)
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="0 <= sparsity < 1"):
            magnitude_mask(w, bad)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="sparsity must be a number"):
            magnitude_mask(w, bad)
    with pytest.raises(ValueError, match="NaN"):
        magnitude_mask(torch.tensor([1.0, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="empty"):
        magnitude_mask(torch.zeros(0), 0.5)


# --- prune_model, apply_masks, sparsity -----------------------------------------------------

def test_prune_model_prunes_in_place_and_returns_masks():
    model = load_pretrained("cnn")
    before = _weights(model)
    masks = prune_model(model, 0.6)
    assert set(masks) == {"conv1", "conv2", "fc1", "fc2"}
    for name, w in _weights(model).items():
        expected = torch_prune.L1Unstructured(amount=0.6).compute_mask(before[name], torch.ones_like(w)).bool()
        assert torch.equal(masks[name], expected), name
        assert torch.equal(w, before[name] * expected), name
    n = sum(w.numel() for w in before.values())
    assert sparsity(model) == pytest.approx(sum(round(0.6 * w.numel()) for w in before.values()) / n)


def test_prune_model_with_a_dict_touches_only_those_layers():
    model = load_pretrained("cnn")
    before = _weights(model)
    masks = prune_model(model, {"fc1": 0.9, "conv2": 0.5})
    assert set(masks) == {"fc1", "conv2"}
    after = _weights(model)
    assert torch.equal(after["conv1"], before["conv1"]) and torch.equal(after["fc2"], before["fc2"])
    assert int((after["fc1"] == 0).sum()) == round(0.9 * 512 * 64)
    with pytest.raises(ValueError, match="no Linear/Conv2d layer named"):
        prune_model(model, {"fc3": 0.5})
    with pytest.raises(ValueError, match="0 <= sparsity < 1"):
        prune_model(model, {"fc1": 1.0})


def test_apply_masks_keeps_the_zeros_that_adam_would_move():
    """Adam's weight decay and momentum move a pruned weight off 0; apply_masks puts it back."""
    images, labels = load_digits("train").images[:64], load_digits("train").labels[:64]

    def train_step(model, masks, reapply):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if reapply:
                apply_masks(model, masks)

    for reapply in (False, True):
        model = load_pretrained("cnn")
        masks = prune_model(model, 0.8)
        train_step(model, masks, reapply)
        pruned_nonzero = sum(int((w[~masks[n]] != 0).sum()) for n, w in _weights(model).items())
        assert (pruned_nonzero == 0) == reapply, (reapply, pruned_nonzero)


def test_apply_masks_refuses_mismatches():
    model = load_pretrained("cnn")
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"fc2": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no Linear/Conv2d layer named"):
        apply_masks(model, {"bn1": torch.ones(16, dtype=torch.bool)})


def test_sparsity_counts_zero_weights_only():
    model = load_pretrained("mlp")
    assert sparsity(model) == 0.0
    with torch.no_grad():
        model.fc3.weight[:5] = 0   # 5 rows of 64 weights
        model.fc3.bias.zero_()     # biases do not count
    assert sparsity(model) == pytest.approx(320 / (64 * 128 + 128 * 64 + 64 * 10))
    with pytest.raises(ValueError, match="no Linear/Conv2d weights"):
        sparsity(nn.Sequential(nn.ReLU()))


# --- sensitivity_scan -------------------------------------------------------------------------

def test_sensitivity_scan_prunes_one_layer_at_a_time():
    model = load_pretrained("cnn")
    before = _weights(model)
    test = load_digits("test")
    curves = sensitivity_scan(model, test, sparsities=(0.0, 0.5, 0.9))
    assert list(curves) == ["conv1", "conv2", "fc1", "fc2"] and all(len(v) == 3 for v in curves.values())
    for name, w in _weights(model).items():
        assert torch.equal(w, before[name]), "the scan must not change the model"

    def by_hand(name, s):
        pruned = copy.deepcopy(model)
        torch_prune.l1_unstructured(dict(quantized_layers(pruned))[name], "weight", amount=s)
        with torch.no_grad():
            return (pruned(test.images).argmax(1) == test.labels).double().mean().item()

    baseline = by_hand("fc1", 0.0)
    assert baseline == pytest.approx(0.9917, abs=1e-4)
    for name, accs in curves.items():
        assert accs[0] == pytest.approx(baseline, abs=1e-12)
        assert accs[2] == pytest.approx(by_hand(name, 0.9), abs=1e-12), name
    assert curves["conv1"][2] < 0.5 < curves["fc1"][2]  # conv1 is the sensitive one


def test_blocking_magnitude_mask_leaves_pruning_working():
    with blocked({"magnitude_mask"}):
        with pytest.raises(ReferenceUnavailable):
            magnitude_mask(torch.ones(4), 0.5)
        masks = prune_model(load_pretrained("cnn"), 0.5)
    assert len(masks) == 4
