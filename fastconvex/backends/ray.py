"""The Ray-sharded engine (``engine="ray"``): the Numba engine with its two
heavy steps of one layer split over Ray tasks. Chosen by
:func:`fastconvex.backends.select.get_engine` like every other engine."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconvex.backends.numba import NumbaEngine, source_sums
from fastconvex.runners.session import task_resources

if TYPE_CHECKING:  # pragma: no cover
    pass


def knn_block(x: np.ndarray, k: int, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of query rows q0..q1-1 of ``x`` against all of ``x`` (a shard's task)."""
    from fastconvex.kernels.numba.knn import knn

    indices, distances, _ = knn(x, k, rows=(q0, q1))
    return indices, distances


def _blocks(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, min(shards, n) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


class ShardedEngine(NumbaEngine):
    """The Numba engine with its two heavy steps split over Ray tasks: the
    exact kNN by query rows (each block against the whole database, which is
    put into the object store once) and the shortest paths by sources (the
    union graph put into the object store once). Both splits are exact, so the
    result is the one-process result, bit for bit."""

    def __init__(self, ray: Any, shards: int) -> None:
        super().__init__(progress=False)  # the work is in Ray tasks: no bars inside the layer
        self.ray = ray
        self.shards = shards
        self.opts = task_resources(ray, gpu=False)

    def distinct_knn(self, rows: np.ndarray, k: int, progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
        ray = self.ray
        ref = ray.put(np.ascontiguousarray(rows))
        task = ray.remote(knn_block).options(**self.opts)
        parts = ray.get([task.remote(ref, k, a, b) for a, b in _blocks(int(rows.shape[0]), self.shards)])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def source_parts(self, csr, codes, plan, progress=None):  # type: ignore[no-untyped-def]
        ray = self.ray
        csr_ref, codes_ref, plan_ref = ray.put(csr), ray.put(codes), ray.put(plan)
        task = ray.remote(source_sums).options(**self.opts)
        return ray.get(
            [task.remote(csr_ref, codes_ref, plan_ref, a, b) for a, b in _blocks(plan.n_sources, self.shards)]
        )
