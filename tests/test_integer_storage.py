"""qlib.integer_storage against counts worked out by hand, and against a converted integer model's own tensors."""
import pytest
import torch

from qlib.integer_storage import integer_model_bits


def test_one_linear_layer_worked_by_hand():
    # weights 4 * 640 = 2560; per channel (32 + 32 + 8) * 10 = 720; two FP32 scales 64;
    # two zero points (input, output) at 8 bits: 16.
    assert integer_model_bits([((10, 64), 4)], 8) == 3360


def test_the_digits_cnn_at_two_bits_worked_by_hand():
    # weights: 2 * (144 + 4608 + 32768 + 640) = 76320
    # per channel: 72 * (16 + 32 + 64 + 10) = 8784
    # scales 64; five zero points (input, conv1, conv2, fc1, fc2) at 4 bits: 20
    layers = [((16, 1, 3, 3), 2), ((32, 16, 3, 3), 2), ((64, 512), 2), ((10, 64), 2)]
    assert integer_model_bits(layers, 4) == 76320 + 8784 + 64 + 20


def test_mixed_widths_count_each_layer_at_its_own():
    # conv (4, 2, 3, 3) at 3 bits: 3 * 72 = 216, + 72 * 4 = 288; linear (5, 8) at 6 bits: 240, + 360;
    # 64 for the scales; three zero points at 6 bits: 18.
    layers = [((4, 2, 3, 3), 3), ((5, 8), 6)]
    assert integer_model_bits(layers, activation_bits=6) == 216 + 288 + 240 + 360 + 64 + 18


def test_tuples_and_lists_and_tensor_sizes_all_work():
    assert integer_model_bits([([10, 64], 4)]) == integer_model_bits([(torch.Size([10, 64]), 4)]) == 3360


def test_counts_exactly_what_the_integer_model_holds():
    # The tensors of a converted model: one int32 bias, one M0 and one shift per output channel,
    # weights at the widths asked for; the count here must agree with them.
    from qlib.data import load_digits
    from qlib.integer_model import convert_digits_cnn
    from qlib.models import load_pretrained

    bits = {"conv1": 4, "conv2": 3, "fc1": 2, "fc2": 5}
    model = convert_digits_cnn(load_pretrained("cnn"), load_digits("train").images[:64], weight_bits=bits,
                               activation_bits=6)
    by_hand = 0
    for layer in model.layers:
        assert layer.q_bias.numel() == layer.m0.numel() == layer.shift.numel() == layer.q_weight.shape[0]
        top = 2 ** (bits[layer.name] - 1) - 1
        assert int(layer.q_weight.abs().max()) <= top
        by_hand += bits[layer.name] * layer.q_weight.numel() + (32 + 32 + 8) * layer.q_weight.shape[0]
    by_hand += 2 * 32 + 5 * 6
    layers = [(tuple(layer.q_weight.shape), bits[layer.name]) for layer in model.layers]
    assert integer_model_bits(layers, 6) == by_hand


@pytest.mark.parametrize("layers, error", [
    ([], ValueError), ("fc1", TypeError), ([((10,), 4)], ValueError), ([((10, 0), 4)], ValueError),
    ([((10, 64), 0)], ValueError), ([((10, 64), 2.5)], TypeError), ([(10, 64, 4)], TypeError),
])
def test_bad_layers_are_refused(layers, error):
    with pytest.raises(error):
        integer_model_bits(layers)


def test_bad_activation_bits_are_refused():
    with pytest.raises(ValueError):
        integer_model_bits([((10, 64), 4)], activation_bits=0)
