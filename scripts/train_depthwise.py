"""Train the MobileNet-style digits model shipped as qlib/checkpoints/digits_depthwise.pt.

    python scripts/train_depthwise.py            # about 15 seconds on one core

Two steps, both deterministic (fixed seed, one thread, batch order fixed by the seed):

1. Training, as scripts/train_digits.py trains the other models: Adam, cosine learning rate,
   batches of 64, 40 epochs. The trained network quantizes well at 8 bits, per tensor too.
2. A function-preserving rescaling (qlib.models.rescale_depthwise_channels): the channel of the
   depthwise layer dw1 whose weights, folded with their batch norm, already have the widest
   range is made 2**6 times wider, and the stem's batch norm makes the same channel 2**6 times
   smaller. The logits stay bit-identical (checked below); only the spread of dw1's channel
   ranges grows, to the hundreds-fold spreads of real MobileNets, where per-tensor 8-bit
   weights fail. The page "When per-tensor quantization fails" says so and shows both.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from qlib.data import load_digits
from qlib.folding import fold_every_batchnorm
from qlib.models import (
    DEPTHWISE_WIDENED_CHANNEL,
    DepthwiseDigitsCNN,
    accuracy,
    checkpoint_path,
    depthwise_widening,
    rescale_depthwise_channels,
)

EPOCHS = 40
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 64


def train(seed: int = 0, epochs: int = EPOCHS, max_steps: int | None = None) -> DepthwiseDigitsCNN:
    """The trained network before any rescaling (``max_steps`` stops early, for tests)."""
    torch.manual_seed(seed)
    train_set = load_digits("train")
    model = DepthwiseDigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=gen)
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start:start + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(train_set.images[idx]), train_set.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if max_steps is not None and step >= max_steps:
                return model.eval()
        sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  "
                  f"test accuracy {accuracy(model, load_digits('test')):.4f}", flush=True)
    return model.eval()


def folded_channel_ranges(model: DepthwiseDigitsCNN) -> torch.Tensor:
    """max |w| of every channel of dw1 after folding its batch norm, shape [16]."""
    folded = fold_every_batchnorm(model)
    return folded.dw1.weight.detach().reshape(16, -1).abs().amax(dim=1)


def shipped_model(seed: int = 0) -> DepthwiseDigitsCNN:
    """Train, then widen one depthwise channel without changing the function (see the module)."""
    trained = train(seed)
    widest = int(folded_channel_ranges(trained).argmax())
    if widest != DEPTHWISE_WIDENED_CHANNEL:
        raise RuntimeError(f"the widest folded dw1 channel is {widest}, but qlib.models records "
                           f"{DEPTHWISE_WIDENED_CHANNEL}: update DEPTHWISE_WIDENED_CHANNEL")
    shipped = rescale_depthwise_channels(trained, depthwise_widening())
    images = load_digits("test").images
    with torch.no_grad():
        if not torch.equal(shipped(images), trained(images)):
            raise RuntimeError("the rescaling changed the logits")
    return shipped.eval()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    model = shipped_model()
    torch.save(model.state_dict(), checkpoint_path("depthwise"))
    print(f"wrote {checkpoint_path('depthwise')}: test accuracy {accuracy(model, load_digits('test')):.4f}")


if __name__ == "__main__":
    main()
