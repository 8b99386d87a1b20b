"""Two small digits classifiers and their pretrained FP32 checkpoints.

* ``DigitsCNN``: conv(1->16, 3x3) BN ReLU, conv(16->32, 3x3) BN ReLU, maxpool 2,
  linear(512->64) ReLU, linear(64->10). About 38k parameters.
* ``DigitsMLP``: linear(64->128) ReLU, linear(128->64) ReLU, linear(64->10).

The checkpoints in ``qlib/checkpoints`` are made by ``scripts/train_digits.py``
(deterministic, single thread); ``load_pretrained`` reads one in milliseconds.
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


def checkpoint_path(name: str) -> Path:
    """Where the pretrained weights of ``name`` ('cnn' or 'mlp') live."""
    if name not in ARCHITECTURES:
        raise ValueError(f"model name must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return CHECKPOINTS / f"digits_{name}.pt"


@lru_cache(maxsize=None)
def _state_dict(name: str) -> dict:
    return torch.load(checkpoint_path(name), map_location="cpu", weights_only=True)


def load_pretrained(name: str = "cnn") -> nn.Module:
    """A fresh pretrained FP32 model in eval mode (changing it never changes the next one)."""
    state = _state_dict(name)  # checks the name
    model = ARCHITECTURES[name]()
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
