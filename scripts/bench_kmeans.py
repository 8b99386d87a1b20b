"""Time qlib.kmeans.kmeans_quantize against scikit-learn's KMeans on the same data, in one run.

    python scripts/bench_kmeans.py                 # a million Gaussian values, 16 centroids
    python scripts/bench_kmeans.py --n 200000 --k 256

Both start from the same linear initialisation and run Lloyd's iterations to strict convergence
or --max-iter, on one thread. Prints both times, their ratio, and how far the results differ
(they agree to float32 precision unless a cluster empties, which the two treat differently;
see tests/test_kmeans.py for the exact comparison).
Not a test: timings depend on the machine, the ratio much less.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # scikit-learn's Lloyd uses OpenMP threads

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

from qlib.kmeans import kmeans_quantize, linear_init  # noqa: E402
from timing import best_of  # noqa: E402  (scripts/timing.py: running a script puts its folder on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of values")
    parser.add_argument("--k", type=int, default=16, help="number of centroids")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    x = torch.randn(args.n, generator=torch.Generator().manual_seed(0))
    start = linear_init(x, args.k)
    t_qlib, (codebook, indices) = best_of(args.repeats, lambda: kmeans_quantize(x, start, max_iter=args.max_iter))

    data = x.double().numpy().reshape(-1, 1)
    km = KMeans(n_clusters=args.k, init=start.double().numpy().reshape(-1, 1), n_init=1, algorithm="lloyd", tol=0,
                max_iter=args.max_iter)
    t_sklearn, km = best_of(args.repeats, lambda: km.fit(data))

    print(f"{args.n:,} values, {args.k} centroids, max_iter {args.max_iter} "
          f"(scikit-learn ran {km.n_iter_} iterations), best of {args.repeats}, one thread")
    print(f"qlib.kmeans_quantize  {t_qlib:8.3f} s")
    print(f"sklearn KMeans lloyd  {t_sklearn:8.3f} s")
    print(f"qlib / sklearn time   {t_qlib / t_sklearn:8.3f}")
    print(f"largest centroid difference {np.abs(codebook.numpy() - km.cluster_centers_.ravel()).max():.2e}, "
          f"assignments that differ: {int((indices.numpy() != km.labels_).sum())}")
    empty = args.k - len(np.unique(indices.numpy()))
    if empty:
        print(f"note: {empty} clusters ended empty in qlib, which keeps an empty cluster's centroid; scikit-learn "
              "moves it to a far point instead, so the two results are expected to differ here")


if __name__ == "__main__":
    main()
