"""Granularity is one string everywhere: "tensor", "channel", "group" or "mx", never a True/False flag.

Every public function that chooses between one scale per tensor and one per output channel takes
``granularity``; the shared check (``qlib.granularity.check_granularity``) refuses a bool (the old
``per_channel`` flag) with a message that names the string to pass, and a granularity the function
does not support with a message that names the ones it does.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qlib import adaround, binary, ptq, qat, qat_training, ternary
from qlib.granularity import GRANULARITIES, check_granularity, fake_quantize_tensor
from qlib.lsq import LSQQuantizer
from qlib.weights import WEIGHT_GRANULARITIES, fake_quantize_weight, fake_quantize_weights

W = torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -0.5]])
IMAGES = torch.zeros(4, 3)


def _model():
    return nn.Sequential(nn.Linear(3, 2))


#: name -> call with the granularity as the argument where ``per_channel`` used to go (positionally).
TENSOR_OR_CHANNEL = {
    "binarize": lambda g: binary.binarize(W, g),
    "fake_binarize": lambda g: binary.fake_binarize(W, g),
    "binarize_ste": lambda g: binary.binarize_ste(W, g),
    "binary_storage_bits": lambda g: binary.binary_storage_bits((2, 3), g),
    "ternarize": lambda g: ternary.ternarize(W, g),
    "fake_ternarize": lambda g: ternary.fake_ternarize(W, g),
    "ternarize_ste": lambda g: ternary.ternarize_ste(W, g),
    "optimal_ternary": lambda g: ternary.optimal_ternary(W, g),
    "ternary_storage_bits": lambda g: ternary.ternary_storage_bits((2, 3), g),
    "fake_quantize_weights": lambda g: fake_quantize_weights(_model(), 4, g),
    "quantize_weight": lambda g: ptq.quantize_weight(W, 4, g),
    "quantize_static": lambda g: ptq.quantize_static(_model(), IMAGES, 8, 8, g),
    "quantize_dynamic": lambda g: ptq.quantize_dynamic(_model(), 8, 8, g),
    "quantize_n2d2": lambda g: ptq.quantize_n2d2(_model(), IMAGES, 8, 8, g),
    "adaround_model": lambda g: adaround.adaround_model(_model(), IMAGES, 4, g, n_steps=1),
    "nearest_model": lambda g: adaround.nearest_model(_model(), 4, g),
    "LSQQuantizer": lambda g: LSQQuantizer(4, True, g),
    "WeightFakeQuantize": lambda g: qat.WeightFakeQuantize(4, g),
    "prepare_qat": lambda g: qat.prepare_qat(_model(), 4, 4, "ste", g),
    "ptq_accuracy": lambda g: qat_training.ptq_accuracy(_model(), None, None, 4, 4, g),
    "qat_accuracy": lambda g: qat_training.qat_accuracy(_model(), None, None, 4, 4, "ste", granularity=g),
}
#: The same for the functions that also know groups (and MX blocks).
MORE = {
    "fake_quantize_tensor": (lambda g: fake_quantize_tensor(W, 4, g), GRANULARITIES),
    "fake_quantize_weight": (lambda g: fake_quantize_weight(W, 4, g), WEIGHT_GRANULARITIES),
}


# --- the shared check ---------------------------------------------------------------------------

def test_check_returns_an_allowed_string():
    assert check_granularity("channel", ("tensor", "channel"), "binarize") == "channel"
    assert check_granularity("mx", WEIGHT_GRANULARITIES, "fake_quantize_weight") == "mx"


@pytest.mark.parametrize("flag, string", [(True, "channel"), (False, "tensor")])
def test_a_bool_is_the_old_flag_and_the_message_says_what_to_pass(flag, string):
    with pytest.raises(TypeError) as err:
        check_granularity(flag, ("tensor", "channel"), "binarize")
    assert str(err.value) == (
        f'granularity must be "tensor" or "channel" for binarize, got the flag {flag}: per-channel is no '
        'longer a True/False argument; pass granularity="channel" for per_channel=True, '
        'granularity="tensor" for per_channel=False')
    assert f'granularity="{string}" for per_channel={flag}' in str(err.value)


@pytest.mark.parametrize("value", [None, 1, 0.0, ["channel"], b"channel"])
def test_other_non_strings_are_refused(value):
    with pytest.raises(TypeError) as err:
        check_granularity(value, ("tensor", "channel"), "ternarize")
    assert str(err.value) == (f'granularity must be "tensor" or "channel" for ternarize, '
                              f"got {type(value).__name__} {value!r}")


@pytest.mark.parametrize("name", ["group", "per_channel", "Channel", "channels", ""])
def test_an_unknown_string_names_the_allowed_ones(name):
    with pytest.raises(ValueError) as err:
        check_granularity(name, ("tensor", "channel"), "binarize")
    assert str(err.value) == f'granularity must be "tensor" or "channel" for binarize, got {name!r}'


def test_three_or_more_allowed_values_read_as_a_list():
    with pytest.raises(ValueError) as err:
        check_granularity("row", WEIGHT_GRANULARITIES, "fake_quantize_weight")
    assert str(err.value) == ('granularity must be one of "tensor", "channel", "group" or "mx" '
                              "for fake_quantize_weight, got 'row'")


# --- every function that takes a granularity uses it ----------------------------------------------

@pytest.mark.parametrize("name", sorted(TENSOR_OR_CHANNEL))
def test_the_old_positional_flag_says_to_pass_the_string(name):
    with pytest.raises(TypeError, match=f'for {name}, got the flag True: .*pass granularity="channel"'):
        TENSOR_OR_CHANNEL[name](True)
    with pytest.raises(TypeError, match=f'for {name}, got the flag False: .*granularity="tensor" for'):
        TENSOR_OR_CHANNEL[name](False)


@pytest.mark.parametrize("name", sorted(TENSOR_OR_CHANNEL))
def test_group_is_unsupported_where_only_tensor_and_channel_are(name):
    with pytest.raises(ValueError) as err:
        TENSOR_OR_CHANNEL[name]("group")
    assert str(err.value) == f"granularity must be \"tensor\" or \"channel\" for {name}, got 'group'"


@pytest.mark.parametrize("name", sorted(MORE))
def test_functions_with_groups_refuse_the_flag_and_unknown_strings(name):
    call, allowed = MORE[name]
    with pytest.raises(TypeError, match=f'for {name}, got the flag True: .*pass granularity="channel"'):
        call(True)
    with pytest.raises(ValueError) as err:
        call("row")
    listed = ", ".join(f'"{g}"' for g in allowed[:-1]) + f' or "{allowed[-1]}"'
    assert str(err.value) == f"granularity must be one of {listed} for {name}, got 'row'"


def test_the_strings_mean_what_the_flag_meant():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    _, alpha = binary.binarize(w, "channel")
    assert alpha.tolist() == [2.0, 0.375]
    _, alpha = binary.binarize(w, "tensor")
    assert alpha.item() == pytest.approx(4.75 / 4)
    assert binary.binary_storage_bits((2, 2), "channel") == 4 + 2 * 32
    assert binary.binary_storage_bits((2, 2), "tensor") == 4 + 32
    assert qat.WeightFakeQuantize(4).granularity == "channel"           # the old per_channel=True default
    assert LSQQuantizer(4, signed=True).granularity == "tensor"         # the old per_channel=False default
    assert "per channel" in repr(qat.WeightFakeQuantize(4, "channel"))
    assert "per tensor" in repr(LSQQuantizer(4, signed=True))
