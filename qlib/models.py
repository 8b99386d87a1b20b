"""Two small digits classifiers and their pretrained FP32 checkpoints.

* ``DigitsCNN``: conv(1->16, 3x3) BN ReLU, conv(16->32, 3x3) BN ReLU, maxpool 2,
  linear(512->64) ReLU, linear(64->10). About 38k parameters.
* ``DigitsMLP``: linear(64->128) ReLU, linear(128->64) ReLU, linear(64->10).
* ``DepthwiseDigitsCNN``: a small MobileNet-style network (depthwise and pointwise
  convolutions), whose shipped checkpoint makes 8-bit per-tensor weights fail
  (page "When per-tensor quantization fails", after chapter 4). About 4k parameters.

The checkpoints in ``qlib/checkpoints`` are made by ``scripts/train_digits.py`` and
``scripts/train_depthwise.py`` (deterministic, single thread); ``load_pretrained``
reads one in milliseconds.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

CHECKPOINTS = Path(__file__).parent / "checkpoints"


class DigitsCNN(nn.Module):
    """Convolutional classifier for 1x8x8 digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))       # [N, 16, 8, 8]
        x = torch.relu(self.bn2(self.conv2(x)))       # [N, 32, 8, 8]
        x = self.pool(x).flatten(1)                   # [N, 512]
        x = torch.relu(self.fc1(x))                   # [N, 64]
        return self.fc2(x)                            # [N, 10] logits


class DigitsMLP(nn.Module):
    """Fully connected classifier for 64-pixel digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


ARCHITECTURES = {"cnn": DigitsCNN, "mlp": DigitsMLP}


class DepthwiseDigitsCNN(nn.Module):
    """MobileNet-style classifier for 1x8x8 digit images: depthwise and pointwise convolutions.

    The layers, in order (the stem is ``conv1``):

        conv1   conv(1->16, 3x3)               BN ReLU    [N, 16, 8, 8]
        dw1     depthwise conv(16, 3x3)        BN ReLU    [N, 16, 8, 8]   one 3x3 filter per channel
        pw1     pointwise conv(16->32, 1x1)    BN ReLU    [N, 32, 8, 8]
                maxpool 2                                 [N, 32, 4, 4]
        dw2     depthwise conv(32, 3x3)        BN ReLU    [N, 32, 4, 4]
        pw2     pointwise conv(32->64, 1x1)    BN ReLU    [N, 64, 4, 4]
                global average pool                       [N, 64]
        fc      linear(64->10)                            [N, 10] logits

    A depthwise convolution (``groups`` = channels) filters every channel on its own; the
    pointwise 1x1 convolution after it mixes the channels (Howard et al. 2017, MobileNets).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw1 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw1 = nn.Conv2d(16, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.dw2 = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.bn4 = nn.BatchNorm2d(32)
        self.pw2 = nn.Conv2d(32, 64, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))       # [N, 16, 8, 8]
        x = torch.relu(self.bn2(self.dw1(x)))         # [N, 16, 8, 8]
        x = torch.relu(self.bn3(self.pw1(x)))         # [N, 32, 8, 8]
        x = self.pool(x)                              # [N, 32, 4, 4]
        x = torch.relu(self.bn4(self.dw2(x)))         # [N, 32, 4, 4]
        x = torch.relu(self.bn5(self.pw2(x)))         # [N, 64, 4, 4]
        return self.fc(x.mean(dim=(2, 3)))            # [N, 10] logits


#: The shipped depthwise checkpoint is the trained network with channel 11 of ``dw1`` (the one whose
#: weights, folded with their batch norm, already had the widest range) made 2**6 times wider by
#: :func:`rescale_depthwise_channels`: the same function, a wider spread of ranges.
DEPTHWISE_WIDENED_CHANNEL = 11
DEPTHWISE_WIDENING = 2.0**6


def depthwise_widening() -> torch.Tensor:
    """The factor ``rho[c]`` per channel of ``dw1`` that made the shipped checkpoint (1 except one channel)."""
    rho = torch.ones(16)
    rho[DEPTHWISE_WIDENED_CHANNEL] = DEPTHWISE_WIDENING
    return rho


@torch.no_grad()
def rescale_depthwise_channels(model: DepthwiseDigitsCNN, rho) -> DepthwiseDigitsCNN:
    """A copy of ``model`` that computes the same function with ``dw1``'s channel c ``rho[c]`` times wider.

        dw1.weight[c] *= rho[c]                          the depthwise filter of channel c
        bn1.weight[c] /= rho[c], bn1.bias[c] /= rho[c]   the stem's batch norm (gamma_c, beta_c)

    The stem's channel c comes out ``rho[c]`` times smaller, the ReLU keeps it so
    (ReLU(z / r) = ReLU(z) / r for r > 0), and channel c is the only input of ``dw1``'s filter c,
    which is ``rho[c]`` times larger: its output, and everything after it, is unchanged. With
    powers of two for ``rho`` every float32 operation is exact, so the logits are bit-identical.
    ``rho`` holds 16 positive finite factors; ``model`` itself is not changed.
    """
    if not isinstance(model, DepthwiseDigitsCNN):
        raise TypeError(f"model must be a DepthwiseDigitsCNN, got {type(model).__name__}")
    rho = torch.as_tensor(rho, dtype=torch.float32)
    if rho.shape != (model.dw1.out_channels,):
        raise ValueError(f"rho needs one factor per dw1 channel, shape ({model.dw1.out_channels},), "
                         f"got {tuple(rho.shape)}")
    if not bool(torch.isfinite(rho).all()) or not bool((rho > 0).all()):
        raise ValueError("every factor in rho must be positive and finite")
    rescaled = copy.deepcopy(model)
    rescaled.dw1.weight.mul_(rho[:, None, None, None])
    rescaled.bn1.weight.div_(rho)
    rescaled.bn1.bias.div_(rho)
    return rescaled


#: Every model ``load_pretrained`` knows: the two of ``scripts/train_digits.py`` and the depthwise one.
PRETRAINED = {**ARCHITECTURES, "depthwise": DepthwiseDigitsCNN}


def checkpoint_path(name: str) -> Path:
    """Where the pretrained weights of ``name`` ('cnn', 'mlp' or 'depthwise') live."""
    if name not in PRETRAINED:
        raise ValueError(f"model name must be one of {sorted(PRETRAINED)}, got {name!r}")
    return CHECKPOINTS / f"digits_{name}.pt"


@lru_cache(maxsize=None)
def _state_dict(name: str) -> dict:
    return torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)


def load_pretrained(name: str = "cnn") -> nn.Module:
    """A fresh pretrained FP32 model in eval mode (changing it never changes the next one)."""
    state = _state_dict(name)  # checks the name
    model = PRETRAINED[name]()
    model.load_state_dict(copy.deepcopy(state))
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    """Share of ``data`` (a :class:`qlib.data.Digits`) that ``model`` classifies correctly."""
    model.eval()
    correct = 0
    for images, labels in data.batches():
        correct += int((model(images).argmax(dim=1) == labels).sum())
    return correct / len(data)
