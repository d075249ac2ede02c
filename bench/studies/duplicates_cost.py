"""What the exact-duplicate search costs, measured in one run on this machine.

    python bench/studies/duplicates_cost.py [--n-expand 1000000]

1. Data without duplicates (the common case): ``graph_convexity`` at N = 2000,
   D = 256 with the duplicate search and with it switched off, interleaved,
   best of 9 each; and the search alone.
2. Data with duplicates: the host expansion of the lists (``expand_knn``) at
   N rows, k = 10, 90 % distinct rows, with groups and neighbours near each
   other in row order ("local") or scattered at random.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconvex as fc
import fastconvex.backends.duplicates as dup
from fastconvex.datasets import overlapping_classes
from fastconvex.kernels.numba.duplicates import expand_knn


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def search_overhead(repeat: int = 9) -> None:
    x, y = overlapping_classes(2000, 256, 10)
    fc.graph_convexity(x, y)  # compile / load the kernels
    search = dup.duplicate_groups
    with_search, without = [], []
    for _ in range(repeat):
        dup.duplicate_groups = search
        with_search.append(best_of(lambda: fc.graph_convexity(x, y), 1))
        dup.duplicate_groups = lambda rows: None
        without.append(best_of(lambda: fc.graph_convexity(x, y), 1))
    dup.duplicate_groups = search
    alone = best_of(lambda: search(x), 10)
    print(
        f"N=2000, D=256, pairs=5000: score {min(with_search):.3f} s with the duplicate search, "
        f"{min(without):.3f} s without (ratio {min(with_search) / min(without):.3f}); "
        f"the search alone {alone * 1e3:.2f} ms"
    )


def expansion(n: int, k: int = 10) -> None:
    rng = np.random.default_rng(0)
    g = int(0.9 * n)
    for layout in ("local", "scattered"):
        inverse = np.concatenate([np.arange(g), rng.integers(0, g, n - g)])
        if layout == "local":
            inverse.sort()
            u_idx = np.clip(np.arange(g)[:, None] + rng.integers(-50, 50, (g, k)), 0, g - 1)
        else:
            rng.shuffle(inverse)
            _, first_row = np.unique(inverse, return_index=True)  # number groups by first row
            renumber = np.empty(g, np.int64)
            renumber[np.argsort(first_row)] = np.arange(g)
            inverse = renumber[inverse]
            u_idx = rng.integers(0, g, (g, k))
        u_dist = np.sort(rng.random((g, k)), axis=1)
        t = best_of(lambda: expand_knn(u_idx, u_dist, inverse, k), 3)
        print(f"expand_knn N={n}, {g} distinct rows, k={k}, {layout}: {t:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-expand", type=int, default=1_000_000)
    args = parser.parse_args()
    search_overhead()
    expansion(args.n_expand)


if __name__ == "__main__":
    main()
