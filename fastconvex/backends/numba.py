"""The CPU engine: the Numba kernels (``fastconvex.kernels.numba``) behind
``backend="numba"``: exact kNN, the union graph, and the per-source path sums."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastconvex.core.inputs import as_kernel_float, is_torch_tensor, to_numpy
from fastconvex.core.pairs import (
    PairPlan,
    SourceStats,
    stats_from_class_sums,
    stats_from_pair_scores,
)
from fastconvex.core.results import KNNGraph

# layers with at least this many points get progress bars inside the layer
# (kNN rows, searches): below it a layer takes a few seconds at most
INNER_PROGRESS_MIN_POINTS = 20_000


def _announce_numba_compilation() -> None:
    """On a cold Numba cache (a fresh install), say once that the kernels compile."""
    from fastconvex.core.progress import announce_compilation
    from fastconvex.kernels.numba import candidates, cover, graph, knn, paths

    announce_compilation(
        [knn._update_topk_from_gram, candidates.rerank_exact, graph.union_csr, paths._run, cover.greedy_pair_cover]
    )


class NumbaEngine:
    """CPU: BLAS-blocked exact kNN, CSR union graph, parallel Dijkstra.

    ``progress=True`` shows bars inside the layer (kNN rows, then searches)
    for layers of at least :data:`INNER_PROGRESS_MIN_POINTS` points.

    The kNN of the distinct rows (:meth:`distinct_knn`) and the per-source path
    sums (:meth:`source_parts`) are the two steps the Ray engine
    (:class:`fastconvex.backends.ray.ShardedEngine`) splits over workers; both split
    exactly (query rows, sources), so its results equal this engine's.
    """

    name = "numba"

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress
        _announce_numba_compilation()

    @staticmethod
    def _host(x: Any) -> np.ndarray:
        return as_kernel_float(to_numpy(x) if is_torch_tensor(x) else np.asarray(x))

    def _inner(self, n: int) -> bool:
        return bool(self.progress) and n >= INNER_PROGRESS_MIN_POINTS

    def distinct_knn(self, rows: np.ndarray, k: int, progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN of every row of ``rows`` (no duplicate rows)."""
        from fastconvex.kernels.numba.knn import knn

        indices, distances, _ = knn(rows, k, progress=progress)
        return indices, distances

    def knn(self, x: Any, k: int) -> KNNGraph:
        from fastconvex.backends.duplicates import knn_over_distinct_rows
        from fastconvex.core.progress import Progress

        host = self._host(x)
        with Progress(host.shape[0], "rows", desc="kNN", leave=False, enabled=self._inner(host.shape[0])) as bar:
            report = bar.set if bar.enabled else None
            indices, distances, _ = knn_over_distinct_rows(
                host, k, lambda rows, kd: self.distinct_knn(rows, kd, report)
            )
        return KNNGraph(indices, distances, self.name)

    def source_parts(
        self, csr: tuple[np.ndarray, np.ndarray, np.ndarray], codes: np.ndarray, plan: PairPlan, progress: Any = None
    ) -> list[tuple[np.ndarray, ...]]:
        """Path sums of every source, as one part (see :func:`source_sums`)."""
        return [source_sums(csr, codes, plan, 0, plan.n_sources, progress)]

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats:
        from fastconvex.core.progress import Progress
        from fastconvex.kernels.numba.graph import union_csr

        graph = self.knn(x, k)
        csr = union_csr(graph.indices, graph.distances)
        with Progress(plan.n_sources, "sources", desc="paths", leave=False, enabled=self._inner(graph.n_points)) as bar:
            parts = self.source_parts(csr, codes, plan, bar.update if bar.enabled else None)
        return stats_from_parts(plan, parts)


def source_sums(
    csr: tuple[np.ndarray, np.ndarray, np.ndarray],
    codes: np.ndarray,
    plan: PairPlan,
    s0: int,
    s1: int,
    progress: Any = None,
) -> tuple[np.ndarray, ...]:
    """Shortest-path sums of sources ``plan.sources[s0:s1]`` on the union graph
    ``csr`` (indptr, neighbours, weights). Each source is independent, so parts
    over consecutive source ranges concatenate to the whole.

    Returns
    -------
    class mode: (sums, sumsq, n_unreachable), each (s1 - s0,)
    explicit targets: (scores, reachable), each of the ranges' pairs
    """
    from fastconvex.kernels.numba.paths import class_sums, pair_scores

    indptr, nbr, w = csr
    sources = plan.sources[s0:s1]
    if plan.class_mode:
        return tuple(
            np.asarray(a) for a in class_sums(indptr, nbr, w, codes, sources, plan.class_sizes, progress=progress)
        )
    t0, t1 = int(plan.target_ptr[s0]), int(plan.target_ptr[s1])
    ptr = plan.target_ptr[s0 : s1 + 1] - t0
    scores, reachable = pair_scores(indptr, nbr, w, codes, sources, ptr, plan.targets[t0:t1], progress=progress)
    return np.asarray(scores), np.asarray(reachable)


def stats_from_parts(plan: PairPlan, parts: list[tuple[np.ndarray, ...]]) -> SourceStats:
    """Concatenate :func:`source_sums` parts (in source order) into SourceStats."""
    joined = [np.concatenate(column) for column in zip(*parts)]
    if plan.class_mode:
        return stats_from_class_sums(plan, *joined)
    return stats_from_pair_scores(plan, *joined)
