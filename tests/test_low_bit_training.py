"""Tests of qlib.low_bit_training: STE fine-tuning with FP32 latent weights.

Oracle: a training loop written out here with ``torch.func.functional_call`` and the detach
expression ``w + (fake_quant(w) - w).detach()`` in place of qlib's parametrization, the same
optimizer, schedule and batch order; both must end with the same weights.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from qlib.binary import fake_binarize
from qlib.data import Digits, load_digits
from qlib.low_bit_training import finetune_quantized
from qlib.models import accuracy, load_pretrained
from qlib.ternary import fake_ternarize


@pytest.fixture(scope="module")
def small_train():
    train = load_digits("train")
    return Digits(train.images[:300], train.labels[:300])


def _written_out(model, fake_quant, data, epochs, lr, batch_size, seed):
    model = copy.deepcopy(model)
    weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * -(-len(data) // batch_size))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            params = {k: (p + (fake_quant(p.detach()) - p).detach()) if k in weights else p
                      for k, p in model.named_parameters()}
            out = functional_call(model, {**params, **dict(model.named_buffers())}, (data.images[idx],))
            loss = nn.functional.cross_entropy(out, data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        for k, p in model.named_parameters():
            if k in weights:
                p.copy_(fake_quant(p))
    return model.eval()


@pytest.mark.parametrize("fake_quant", [fake_binarize, fake_ternarize], ids=["binary", "ternary"])
def test_finetuning_equals_a_loop_written_out_with_the_detach_expression(small_train, fake_quant):
    model = load_pretrained("cnn")
    ours = finetune_quantized(model, fake_quant, small_train, epochs=2, lr=1e-3, batch_size=64, seed=3,
                              log=lambda line: None)
    theirs = _written_out(model, fake_quant, small_train, 2, 1e-3, 64, 3)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert set(ours_state) == set(theirs_state)
    for k in theirs_state:
        assert torch.allclose(ours_state[k].float(), theirs_state[k].float(), rtol=1e-5, atol=1e-6), k


def test_weights_end_quantized_and_the_original_is_untouched(small_train):
    model = load_pretrained("cnn")
    before = copy.deepcopy(model.state_dict())
    lines = []
    tuned = finetune_quantized(model, fake_ternarize, small_train, epochs=2, seed=0, log=lines.append,
                               eval_data=load_digits("test"))
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ") and "accuracy" in lines[0]
    for name in ("conv1", "conv2", "fc1", "fc2"):
        w = getattr(tuned, name).weight.detach()
        assert type(getattr(tuned, name).weight) is nn.Parameter
        for c in range(w.shape[0]):
            assert len(torch.unique(w[c])) <= 3, name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not tuned.training


def test_finetuning_is_deterministic_and_recovers_binary_accuracy(small_train):
    model, test = load_pretrained("cnn"), load_digits("test")
    a = finetune_quantized(model, fake_binarize, small_train, epochs=2, seed=1, log=lambda s: None)
    b = finetune_quantized(model, fake_binarize, small_train, epochs=2, seed=1, log=lambda s: None)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    ptq = copy.deepcopy(model)
    with torch.no_grad():
        for layer in (ptq.conv1, ptq.conv2, ptq.fc1, ptq.fc2):
            layer.weight.copy_(fake_binarize(layer.weight))
    assert accuracy(a, test) > accuracy(ptq, test) + 0.1


def test_a_dict_quantizes_only_the_layers_it_names(small_train):
    tuned = finetune_quantized(load_pretrained("cnn"), {"conv1": fake_binarize}, small_train, epochs=1,
                               log=lambda s: None)
    assert all(len(torch.unique(tuned.conv1.weight[c])) <= 2 for c in range(16))
    assert len(torch.unique(tuned.fc1.weight[0])) > 100


def test_finetuning_refuses_bad_arguments(small_train):
    model = load_pretrained("cnn")
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        finetune_quantized(model, fake_binarize, small_train, epochs=0)
    with pytest.raises(ValueError, match="lr must be positive"):
        finetune_quantized(model, fake_binarize, small_train, lr=0.0)
    with pytest.raises(ValueError, match="dict of them keyed by layer name"):
        finetune_quantized(model, {"bn1": fake_binarize}, small_train)
