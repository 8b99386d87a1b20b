"""Short, seeded QAT fine-tuning of the digits models, and the PTQ / STE / LSQ comparison.

Chapter: Quantization-aware training.

:func:`train_qat` fine-tunes a model made by :func:`qlib.qat.prepare_qat` from
pretrained weights: one initializing batch (activation ranges, LSQ steps, PACT
clipping values), then a few epochs of Adam or SGD with a cosine learning-rate
decay on the cross-entropy, one printed line per epoch, and the test accuracy of
the quantized model. Everything random (the batch order) comes from the seed, so
a run is repeatable to the bit on a given machine and thread count.

:func:`accuracy_table` runs the comparison of the chapter: for each
``(w_bits, a_bits)``, post-training quantization (min-max ranges measured on the
training set, no training), STE-QAT and LSQ.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from qlib._checks import check_count
from qlib._reference import reference
from qlib.data import Digits
from qlib.granularity import TENSOR_OR_CHANNEL, check_granularity
from qlib.models import accuracy, load_pretrained
from qlib.observers import MinMaxObserver
from qlib.pact import pact_penalty
from qlib.qat import calibrate_qat, prepare_qat

#: Fine-tuning settings of each method, chosen on the digits CNN (12 epochs take 2-4 s on one core).
#: LSQ uses SGD with momentum, as in its paper: Adam would cancel its gradient scale, and at
#: lr 1e-3 it pushed 2-bit steps below 0. STE uses Adam: SGD at lr 0.01 diverged with binary weights.
#: LSQ learns one step per layer (the paper's choice; per channel it was 1-2 points worse at 2 bits).
SETTINGS = {
    "ste": {"epochs": 12, "lr": 1e-3, "optimizer": "adam", "granularity": "channel"},
    "lsq": {"epochs": 12, "lr": 1e-2, "optimizer": "sgd", "granularity": "tensor"},
    "pact": {"epochs": 12, "lr": 1e-3, "optimizer": "adam", "granularity": "channel"},
}


def _shuffled_batches(data: Digits, batch_size: int, gen: torch.Generator):
    order = torch.randperm(len(data), generator=gen)
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        yield data.images[idx], data.labels[idx]


@reference
def train_qat(model: nn.Module, train: Digits, test: Digits, epochs: int = 4, lr: float = 1e-3, seed: int = 0,
              batch_size: int = 64, optimizer: str = "adam", pact_decay: float = 1e-4, log=print) -> float:
    """Fine-tune ``model`` (from :func:`qlib.qat.prepare_qat`) and return its test accuracy.

    ``optimizer``: ``"adam"``, or ``"sgd"`` (momentum 0.9, as in the LSQ paper; with Adam
    the gradient scale of LSQ has no effect, since Adam normalizes each parameter's
    steps), on every parameter (weights, biases, LSQ steps, PACT alphas), learning rate
    ``lr`` decayed to 0 along a cosine, ``epochs`` passes over ``train`` in an order
    drawn from ``seed``, batches of ``batch_size``. The loss is the cross-entropy, plus ``pact_decay * sum(alpha**2)``
    when the model has PACT quantizers (the PACT paper's L2 term). Before the first
    step, one batch in training mode without gradients initializes the quantizers.
    ``log`` receives one line per epoch (``None`` for silence). The model is left in
    eval mode (activation ranges frozen).
    """
    epochs = check_count(epochs, "epochs", 1)
    batch_size = check_count(batch_size, "batch_size", 1)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    gen = torch.Generator().manual_seed(seed)
    calibrate_qat(model, train, n_batches=1, batch_size=batch_size)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    steps_per_epoch = -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for images, labels in _shuffled_batches(train, batch_size, gen):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            if pact_decay:
                loss = loss + pact_penalty(model, pact_decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += len(labels)
        if log is not None:
            log(f"epoch {epoch}/{epochs}: loss {loss_sum / total:.4f}, train accuracy {correct / total:.4f}, "
                f"{time.perf_counter() - start:.1f} s")
    return accuracy(model.eval(), test)


def ptq_accuracy(model: nn.Module, train: Digits, test: Digits, w_bits: int, a_bits: int | None,
                 granularity: str = "channel") -> float:
    """Test accuracy after post-training quantization: min-max weights, min-max input ranges over ``train``.

    ``granularity``: ``"channel"``, one weight scale per output channel, or ``"tensor"``, one per weight.
    """
    check_granularity(granularity, TENSOR_OR_CHANNEL, "ptq_accuracy")
    ptq = prepare_qat.unguarded(model, w_bits, a_bits, "ste", granularity, observer=MinMaxObserver)
    calibrate_qat(ptq, train)
    return accuracy(ptq, test)


def qat_accuracy(model: nn.Module, train: Digits, test: Digits, w_bits: int, a_bits: int | None,
                 method: str = "ste", seed: int = 0, log=print, **overrides) -> float:
    """Test accuracy after QAT fine-tuning of ``model`` with ``method``.

    The settings (epochs, lr, optimizer, granularity) are those of :data:`SETTINGS`
    unless given in ``overrides``.
    """
    if method not in SETTINGS:
        raise ValueError(f"method must be one of {sorted(SETTINGS)}, got {method!r}")
    settings = {**SETTINGS[method], **overrides}
    granularity = check_granularity(settings.pop("granularity"), TENSOR_OR_CHANNEL, "qat_accuracy")
    qat = prepare_qat.unguarded(model, w_bits, a_bits, method, granularity)
    return train_qat.unguarded(qat, train, test, seed=seed, log=log, **settings)


#: The weight/activation bit widths of the chapter's table (those of the lecture's SAT table).
BIT_PAIRS = ((8, 8), (4, 8), (2, 8), (1, 8), (4, 4), (3, 3), (2, 2))


def accuracy_table(train: Digits, test: Digits, model_name: str = "cnn", bit_pairs=BIT_PAIRS,
                   methods=("ptq", "ste", "lsq"), seed: int = 0, log=print) -> dict:
    """``{(w_bits, a_bits): {method: test accuracy}}`` for PTQ and the QAT methods, from the pretrained model.

    ``"ptq"`` is :func:`ptq_accuracy`; the others are :func:`qat_accuracy` with the
    settings of :data:`SETTINGS`. ``log`` gets one line per configuration. Runs on one
    thread (restored afterwards): with two, PyTorch may sum in another order and a run
    can end one test image apart, so the table would depend on the machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _accuracy_table(train, test, model_name, bit_pairs, methods, seed, log)
    finally:
        torch.set_num_threads(threads)


def _accuracy_table(train, test, model_name, bit_pairs, methods, seed, log) -> dict:
    model = load_pretrained(model_name)
    table = {}
    for w_bits, a_bits in bit_pairs:
        row = {}
        for method in methods:
            start = time.perf_counter()
            if method == "ptq":
                row[method] = ptq_accuracy(model, train, test, w_bits, a_bits)
            else:
                row[method] = qat_accuracy(model, train, test, w_bits, a_bits, method, seed=seed, log=None)
            if log is not None:
                log(f"W{w_bits}/A{a_bits} {method}: {row[method]:.4f} ({time.perf_counter() - start:.1f} s)")
        table[(w_bits, a_bits)] = row
    return table
