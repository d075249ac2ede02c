"""The naive scorer: the published algorithm written plainly.

Dense N x N float64 distance matrix, a full sort of every row for the kNN,
the union graph as a scipy sparse matrix (zero-length edges kept as explicit
entries, which scipy's csgraph treats as edges), ``scipy.sparse.csgraph.dijkstra``
distances from every distinct source, a predecessor per vertex chosen by the tie
rule below, and a walk along each sampled path.

Ties (docs/score.md, step 4: any of several exactly equal-length shortest paths may be used; all
backends pick the same one so that they give the same scores): an edge u -> v is
*tight* if ``dist[u] + w == dist[v]`` in float64 (scipy's Dijkstra sums
source-outward in exactly this expression). Over tight edges a vertex takes the
lexicographically smallest (hops, -same), where ``same`` counts the path's
interior vertices labelled like the source: fewest hops, then most same-label
interior vertices. Computed by plain Bellman-Ford rounds over the tight edges.

It is the oracle of the test suite and the baseline of the benchmarks: keep it
simple and obviously right, never optimise it. Memory is O(N^2) (and O(S N) for
the distances and predecessor rows), so it stops at a few tens of thousands of points:
it refuses, naming the fast backends, when its estimate of that memory
(:func:`naive_memory_bytes`) exceeds what the machine has available.

Differences from the authors' ``nnconvexity`` 0.1.1, on purpose (docs/score.md,
"Differences from nnconvexity 0.1.1"): an
exact duplicate of a point is its neighbour at distance 0 (the published code
drops zero-distance edges), scores are fractions, and labels can be anything
hashable. The pair sampling and aggregation are fastconvex's own, shared with
every backend, so the naive scorer scores exactly the pairs the fast ones do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra
from scipy.spatial.distance import cdist

from fastconvex.core.inputs import is_torch_tensor, to_numpy
from fastconvex.core.pairs import PairPlan, SourceStats, stats_from_pair_scores
from fastconvex.core.results import KNNGraph

__all__ = ["NaiveEngine", "check_naive_memory", "naive_memory_bytes"]


def naive_memory_bytes(n_points: int, n_sources: int = 0) -> int:
    """Peak memory the naive scorer needs, estimated: the dense (N, N) float64
    distances and their (N, N) int64 argsort, then (S, N) float64 Dijkstra
    distances and (S, N) int64 predecessor rows for S sources.
    At N = 6000 and S = 0 that is 576 MB. It counts only these arrays, so the
    real peak is higher (temporaries, the interpreter): hence the 80 % margin
    of :func:`check_naive_memory`."""
    return 16 * n_points * n_points + 16 * n_sources * n_points


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation (Linux ``MemAvailable``); None
    where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def check_naive_memory(n_points: int, n_sources: int = 0) -> None:
    """Refuse (RuntimeError) a naive run that would need more than 80 % of the
    memory available, before allocating any of it."""
    need = naive_memory_bytes(n_points, n_sources)
    have = available_memory_bytes()
    if have is not None and need > 0.8 * have:
        raise RuntimeError(
            f"backend='naive' would need about {_size(need)} for N={n_points} points "
            f"(O(N^2) dense distances{f' and {n_sources} Dijkstra rows' if n_sources else ''}), more "
            f"than the {_size(have)} available; use backend='numba' (CPU) or backend='triton' "
            "(GPU), which need O(N k) memory and score the same pairs"
        )


def _dense_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    dist = cdist(x, x)  # (N, N) float64
    np.fill_diagonal(dist, np.inf)  # a point never neighbours itself
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]  # ties: smaller index
    return order.astype(np.int64), np.take_along_axis(dist, order, axis=1)


def _union_graph(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    n, k = indices.shape
    rows = np.repeat(np.arange(n), k)
    cols = indices.ravel()
    a = np.minimum(rows, cols)
    b = np.maximum(rows, cols)
    edges, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    w = distances.ravel()[first]
    ii = np.concatenate([edges[:, 0], edges[:, 1]])
    jj = np.concatenate([edges[:, 1], edges[:, 0]])
    graph = sp.csr_matrix((np.concatenate([w, w]), (ii, jj)), shape=(n, n))
    return graph  # explicit zeros (duplicates) stay as stored entries


def _tie_predecessors(
    dist_row: np.ndarray, source: int, tail: np.ndarray, head: np.ndarray, w: np.ndarray, codes: np.ndarray
) -> np.ndarray:
    """Predecessor row of the shortest paths from ``source`` under the tie rule
    (fewest hops, then most same-label interior vertices, among the exactly
    equal-length paths); -9999 where there is none, as scipy writes it.

    Key of a vertex: hops * (N + 1) + (N - same), which orders like
    (hops, -same) since 0 <= same <= N; a tight edge from u offers
    key[u] + (N + 1) - [u != source and label(u) == label(source)].
    """
    n = dist_row.shape[0]
    du = dist_row[tail]
    tight = np.flatnonzero(du + w == dist_row[head])
    tight = tight[np.isfinite(du[tight])]  # inf + w == inf: between unreached vertices
    tu, tv = tail[tight], head[tight]
    step = (n + 1) - ((tu != source) & (codes[tu] == codes[source])).astype(np.int64)
    unreached = np.iinfo(np.int64).max // 4
    key = np.full(n, unreached, np.int64)
    key[source] = n  # hops 0, same 0
    while True:  # Bellman-Ford rounds: one more than the most hops on a chosen path
        new = key.copy()
        np.minimum.at(new, tv, key[tu] + step)
        if np.array_equal(new, key):
            break
        key = new
    pred = np.full(n, -9999, np.int64)
    best = (key[tu] + step == key[tv]) & (tv != source)
    pred[tv[best]] = tu[best]  # any edge achieving the minimum: same hops and same
    return pred


def _path_score(pred_row: np.ndarray, source: int, target: int, codes: np.ndarray) -> float | None:
    """Score of the path source -> target read off a predecessor row; None if
    the target is unreachable."""
    if pred_row[target] < 0:
        return None
    path = [target]
    while path[-1] != source:
        path.append(int(pred_row[path[-1]]))
    interior = path[1:-1]
    if not interior:
        return 1.0
    return sum(codes[v] == codes[source] for v in interior) / len(interior)


class NaiveEngine:
    name = "naive"

    def knn(self, x: Any, k: int) -> KNNGraph:
        check_naive_memory(int(x.shape[0]))
        x = to_numpy(x) if is_torch_tensor(x) else x
        return KNNGraph(*_dense_knn(x, k), backend=self.name)

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats:
        check_naive_memory(int(x.shape[0]), plan.n_sources)
        graph = self.knn(x, k)
        adjacency = _union_graph(graph.indices, graph.distances)
        src, tgt = plan.pairs(codes)
        sources = np.unique(src)
        dist = dijkstra(adjacency, directed=False, indices=sources)
        coo = adjacency.tocoo()  # symmetric: both directions of every edge
        tail, head = coo.row.astype(np.intp), coo.col.astype(np.intp)  # no per-use casts
        pred = {int(s): _tie_predecessors(dist[r], int(s), tail, head, coo.data, codes) for r, s in enumerate(sources)}
        scores = np.zeros(src.shape[0])
        reachable = np.zeros(src.shape[0], dtype=bool)
        for p, (s, t) in enumerate(zip(src, tgt)):
            value = _path_score(pred[int(s)], int(s), int(t), codes)
            if value is not None:
                scores[p] = value
                reachable[p] = True
        # pairs() lists each source's targets consecutively, in the plan's order
        counts = plan.class_sizes[plan.source_class] - 1 if plan.class_mode else np.diff(plan.target_ptr)
        ptr = np.zeros(plan.n_sources + 1, np.int64)
        np.cumsum(counts, out=ptr[1:])
        grouped = PairPlan(
            plan.estimator,
            False,
            plan.sources,
            plan.source_class,
            ptr,
            tgt,
            plan.class_sizes,
            plan.scored,
            plan.population,
        )
        return stats_from_pair_scores(grouped, scores, reachable)
