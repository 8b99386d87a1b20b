"""Train the pretrained digits models shipped in qlib/checkpoints.

    python scripts/train_digits.py            # both models, about a minute on one core

Deterministic: fixed seed, one thread, full-batch order fixed by the seed, so
the same torch version writes the same weights. Prints test accuracy.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from qlib.data import load_digits
from qlib.models import ARCHITECTURES, accuracy, checkpoint_path

EPOCHS = {"cnn": 40, "mlp": 60}
WEIGHT_DECAY = {"cnn": 1e-4, "mlp": 1e-3}


def train(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    train_set = load_digits("train")
    model = ARCHITECTURES[name]()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=WEIGHT_DECAY[name])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS[name])
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(EPOCHS[name]):
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            loss = nn.functional.cross_entropy(model(train_set.images[idx]), train_set.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"{name} epoch {epoch + 1:3d}  loss {loss.item():.4f}  "
                  f"test accuracy {accuracy(model, load_digits('test')):.4f}", flush=True)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=sorted(ARCHITECTURES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        model = train(name)
        torch.save(model.state_dict(), checkpoint_path(name))
        print(f"wrote {checkpoint_path(name)}: test accuracy {accuracy(model, load_digits('test')):.4f}")


if __name__ == "__main__":
    main()
