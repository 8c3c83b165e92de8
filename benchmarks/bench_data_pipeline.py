"""Time the data stages on MovieLens-100K-sized data: BPR embeddings, windows, split, partition.

    python benchmarks/bench_data_pipeline.py [--ml100k DIR]

Without --ml100k it uses random data of ML-100K's size (943 users, 1,682 items, ~100k interactions).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fellrec.data.examples import sliding_window_examples
from fellrec.data.mf import train_bpr_embeddings
from fellrec.data.partition import kmeans_partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    seqs = [rng.choice(1682, size=n, replace=False) for n in rng.integers(20, 193, size=943)]
    print(f"interactions: {sum(len(s) for s in seqs)}")
    for name, fn in (
        ("bpr_embeddings(dim=32, epochs=30)", lambda: train_bpr_embeddings(seqs, 943, 1682)),
        ("sliding_window_examples(H=10)", lambda: sliding_window_examples(seqs, 10)),
        (
            "kmeans_partition(5 clients)",
            lambda: kmeans_partition(rng.normal(size=(943, 32)), 5, 0),
        ),
    ):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(f"{name}: median {np.median(times):.3f} s")


if __name__ == "__main__":
    main()
