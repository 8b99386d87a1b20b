"""Print the QAT comparison table of the digits CNN: PTQ, STE-QAT, LSQ (and PACT) per bit width.

    python scripts/qat_table.py               # PTQ, STE, LSQ: about 35 s on one core
    python scripts/qat_table.py --pact        # adds PACT: about 50 s

Uses :func:`qlib.qat_training.accuracy_table` with the settings of
:data:`qlib.qat_training.SETTINGS`; seeded and single-threaded, so a rerun prints the
same numbers. The test set has 360 images: one image is 0.28 points, and at 98% the
binomial standard error is about 0.7 points.
"""
from __future__ import annotations

import argparse
import time

import torch

from qlib.data import load_digits
from qlib.models import accuracy, load_pretrained
from qlib.qat_training import accuracy_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pact", action="store_true", help="also fine-tune with PACT")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, test = load_digits("train"), load_digits("test")
    methods = ("ptq", "ste", "lsq") + (("pact",) if args.pact else ())
    start = time.perf_counter()
    table = accuracy_table(train, test, methods=methods, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"\nFP32: {100 * accuracy(load_pretrained('cnn'), test):.2f}%")
    print("W/A   " + "".join(f"{m.upper():>8}" for m in methods))
    for (w, a), row in table.items():
        print(f"{w}/{a}   " + "".join(f"{100 * row[m]:8.2f}" for m in methods))
    print(f"total {elapsed:.1f} s")


if __name__ == "__main__":
    main()
