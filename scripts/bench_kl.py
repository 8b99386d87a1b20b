"""Time the KL (entropy) threshold search: qlib's prefix-sum path against its readable loop, in one run.

    python scripts/bench_kl.py                  # 2048 bins, 128 quantized bins (int8)
    python scripts/bench_kl.py --bins 4096 --levels 16

Both compute KL(P_i || Q_i) for every candidate i: the readable loop (qlib/calibration.py)
builds P and Q for one i at a time, qlib/kl_search.py gets every divergence from three prefix
sums. Prints both times, their ratio and the largest relative difference of the divergences
(tests/test_kl_search.py holds them equal). Not a test: timings depend on the machine,
the ratio much less.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from qlib.calibration import _kl_divergences_readable, abs_histogram  # noqa: E402
from qlib.kl_search import kl_divergences_by_prefix_sums  # noqa: E402
from timing import best_of  # noqa: E402  (scripts/timing.py: running a script puts its folder on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bins", type=int, default=2048, help="histogram bins")
    parser.add_argument("--levels", type=int, default=128, help="quantized bins")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(1_000_000, generator=gen)) ** 1.5       # a skewed activation
    counts, _ = abs_histogram(x[x > 0], args.bins)
    c = counts.to(torch.float64)

    t_loop, slow = best_of(args.repeats, lambda: _kl_divergences_readable(c, args.levels))
    t_fast, fast = best_of(args.repeats, lambda: kl_divergences_by_prefix_sums(c, args.levels))
    finite = torch.isfinite(slow)
    rel = float(((fast[finite] - slow[finite]).abs() / slow[finite].abs().clamp(min=1e-300)).max())
    print(f"{args.bins} bins, {args.levels} quantized bins, {slow.numel()} candidates")
    print(f"readable loop: {t_loop * 1e3:8.1f} ms")
    print(f"prefix sums:   {t_fast * 1e3:8.1f} ms")
    print(f"ratio:         {t_loop / t_fast:8.1f}x faster; same argmin: "
          f"{int(torch.argmin(fast)) == int(torch.argmin(slow))}; largest relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
