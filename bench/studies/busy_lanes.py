"""Share of the Triton path kernel's edge-loop lanes that do work, per vertex order.

Each program of ``kernels/triton/paths.py`` takes a block of consecutive vertices
and loops to the block's largest degree, so a lane is busy for
``deg(v) / max(deg in block)`` of the loop. This computes that share on the
union kNN graph of the benchmark data (40 overlapping Gaussian classes, D = 768,
k = 10, as in ``bench/gpu_check.py``), built on the CPU by the Numba backend,
for the input order, the degree order (the default), an exact sort by degree
(for comparison) and RCM. No GPU needed.

    python bench/studies/busy_lanes.py 20000 60000
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from fastconvex.kernels.numba.graph import union_csr
from fastconvex.kernels.numba.knn import knn
from fastconvex.kernels.triton.graph import degree_order, rcm_order

BLOCK_V = 32  # the path kernel's default vertex block on a GPU


def busy_share(deg: np.ndarray, order: np.ndarray, block: int = BLOCK_V) -> float:
    d = deg[order]
    d = np.concatenate([d, np.zeros(-len(d) % block, d.dtype)]).reshape(-1, block)
    return float(d.sum() / (d.max(axis=1).sum() * block))


def main(sizes: list[int]) -> None:
    for n in sizes:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 40, n)
        centres = rng.standard_normal((40, 768)) * (3.0 / np.sqrt(768))
        x = (centres[labels] + rng.standard_normal((n, 768))).astype(np.float32)
        t0 = time.perf_counter()
        idx, dist, _ = knn(x, 10)
        indptr, nbr, _ = union_csr(idx, dist)
        deg = np.diff(indptr)
        orders = {
            "none": np.arange(n),
            "degree": degree_order(torch.from_numpy(indptr)).numpy(),
            "exact degree sort": np.argsort(deg, kind="stable"),  # for comparison with the bins
            "rcm": rcm_order(torch.from_numpy(indptr), torch.from_numpy(nbr)),
        }
        shares = ", ".join(f"{k} {busy_share(deg, o):.1%}" for k, o in orders.items())
        print(
            f"N={n}: degree mean {deg.mean():.1f}, max {deg.max()}; busy lanes: {shares} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [20000])
