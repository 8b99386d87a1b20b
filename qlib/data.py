"""The digits data set every chapter uses: scikit-learn's 8x8 handwritten digits.

1,797 grey images of 8x8 pixels (values 0..16), 10 classes, shipped inside
scikit-learn, so nothing is downloaded. The split is fixed (stratified, seed 0):
1,437 training and 360 test images. Pixels are scaled to [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """Images ``[N, 1, 8, 8]`` (float32 in [0, 1]) and labels ``[N]`` (int64) of one split."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int = 256):
        """Yield ``(images, labels)`` batches in a fixed order."""
        for start in range(0, len(self), batch_size):
            yield self.images[start:start + batch_size], self.labels[start:start + batch_size]


@lru_cache(maxsize=None)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)


def load_digits(split: str = "test") -> Digits:
    """The ``"train"`` or ``"test"`` split as tensors (the same every call, on every machine)."""
    x_train, x_test, y_train, y_test = _split()
    if split == "train":
        x, y = x_train, y_train
    elif split == "test":
        x, y = x_test, y_test
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return Digits(images, torch.tensor(y, dtype=torch.int64))
