"""Reference implementations the tests compare against and the benchmarks
time as baselines (benchmarks import them from here)."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra
from scipy.spatial.distance import cdist


def bruteforce_knn_f64(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force: (N, k) indices (ties: smaller index) and distances."""
    dist = cdist(np.asarray(x, np.float64), np.asarray(x, np.float64))
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


def assert_knn_equal_up_to_ties(
    x: np.ndarray, indices: np.ndarray, distances: np.ndarray, k: int, rtol: float = 1e-6
) -> None:
    """faiss-style check: neighbour sets equal the float64 brute force except
    where candidate distances tie within ``rtol``; distances match the indices."""
    x64 = np.asarray(x, np.float64)
    ref_i, ref_d = bruteforce_knn_f64(x64, k)
    indices = np.asarray(indices)
    distances = np.asarray(distances, np.float64)
    assert indices.shape == ref_i.shape
    # distances are the true distances of the returned indices, ascending
    rows = np.arange(x64.shape[0])[:, None]
    true_d = np.linalg.norm(x64[rows] - x64[indices], axis=-1)
    np.testing.assert_allclose(distances, true_d, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(distances, axis=1) >= -1e-9 * (1 + distances[:, 1:]))
    assert not np.any(indices == rows), "a point neighbours itself"
    assert all(len(set(r)) == k for r in indices.tolist()), "a neighbour listed twice"
    np.testing.assert_allclose(distances, ref_d, rtol=rtol, atol=1e-9)
    for i in range(x64.shape[0]):
        got, ref = set(indices[i].tolist()), set(ref_i[i].tolist())
        if got != ref:
            # every disagreement sits at the k-th distance, within tie tolerance
            kth = ref_d[i, -1]
            for j in got ^ ref:
                dj = np.linalg.norm(x64[i] - x64[j])
                assert abs(dj - kth) <= rtol * max(kth, 1e-12) + 1e-12, (i, j, dj, kth)


def scipy_shortest_distances(indptr, neighbours, weights, sources) -> np.ndarray:
    """(S, N) shortest-path distances by scipy's Dijkstra (the paths baseline)."""
    n = indptr.shape[0] - 1
    graph = sp.csr_matrix((weights, neighbours, indptr), shape=(n, n))
    return dijkstra(graph, directed=False, indices=sources)


def reference_pair_scores(x, labels, k: int, min_class_size: int = 2) -> dict:
    """Every ordered same-class pair's path score, the slow, plain way, from
    SPEC.md section 1 alone (nothing from fastconvex): float64 brute-force kNN,
    the union graph built from an explicit edge set, scipy's Dijkstra with
    predecessors, and a walk back along each path.

    Returns ``{label: [((a, b), score, reachable), ...]}`` with pairs in the
    order ``a`` ascending, then ``b`` ascending (``a != b``), for every class
    with at least ``max(min_class_size, 2)`` members; labels are compared with
    Python ``==`` (any hashable). Valid only where shortest paths are unique
    (no duplicate rows, no exactly equal-length paths: continuous data in two
    or more dimensions), since scipy picks an arbitrary one among equals."""
    x = np.asarray(x, np.float64)
    labels = list(labels)
    n = x.shape[0]
    idx, dist = bruteforce_knn_f64(x, k)
    assert np.all(dist > 0), "duplicate rows: zero-length edges are outside this oracle"
    edges = {}
    for i in range(n):
        for j, d in zip(idx[i].tolist(), dist[i].tolist()):
            edges[(min(i, j), max(i, j))] = d
    a = np.array([e[0] for e in edges] + [e[1] for e in edges], np.int64)
    b = np.array([e[1] for e in edges] + [e[0] for e in edges], np.int64)
    w = np.array(list(edges.values()) * 2)
    graph = sp.csr_matrix((w, (a, b)), shape=(n, n))
    _, pred = dijkstra(graph, directed=False, return_predecessors=True)
    out = {}
    for c in dict.fromkeys(labels):
        members = [i for i in range(n) if labels[i] == c]
        if len(members) < max(min_class_size, 2):
            continue
        scored = []
        for s in members:
            for t in members:
                if s == t:
                    continue
                if pred[s, t] < 0:
                    scored.append(((s, t), 0.0, False))
                    continue
                path = [t]
                while path[-1] != s:
                    path.append(int(pred[s, path[-1]]))
                inner = path[1:-1]
                value = 1.0 if not inner else sum(labels[v] == c for v in inner) / len(inner)
                scored.append(((s, t), value, True))
        out[c] = scored
    return out


def reference_exact_convexity(x, labels, k: int, min_class_size: int = 2) -> dict:
    """What ``exact=True`` must report, from :func:`reference_pair_scores`:
    ``score`` (mean over every scored pair, pooled), ``macro`` (mean of the
    class means), ``per_class`` (NaN for a skipped class), ``n_pairs`` (0 for a
    skipped class) and ``n_unreachable``."""
    labels = list(labels)
    per = reference_pair_scores(x, labels, k, min_class_size)
    classes = list(dict.fromkeys(labels))
    pooled = [v for c in per for _, v, _ in per[c]]
    return {
        "score": float(np.mean(pooled)),
        "macro": float(np.mean([np.mean([v for _, v, _ in per[c]]) for c in per])),
        "per_class": {c: float(np.mean([v for _, v, _ in per[c]])) if c in per else math.nan for c in classes},
        "n_pairs": {c: len(per.get(c, [])) for c in classes},
        "n_unreachable": sum(not r for c in per for _, _, r in per[c]),
    }


def nnconvexity_all_pairs(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, dict[int, float]]:
    """The authors' package (nnconvexity 0.1.1) scoring every ordered pair,
    unrounded fractions: its own graph construction and path walk, with the
    pair budget set above the number of ordered pairs so nothing is sampled.

    Labels must be 0..C-1 (the package's requirement)."""
    import itertools

    import pandas as pd
    from igraph import Graph
    from nnconvexity import graph as nng

    dist = pd.DataFrame(cdist(x, x, metric="euclidean"))
    nearest, _ = nng.get_nearest_neighbors(dist, k, 1)
    adjacency = nearest.to_numpy().astype(float)
    graph = Graph.Weighted_Adjacency(np.maximum(adjacency, adjacency.T))
    pooled: list[float] = []
    per_class: dict[int, float] = {}
    for c in sorted(set(labels.tolist())):
        ids = np.flatnonzero(labels == c)
        n_pairs = len(list(itertools.permutations(ids, r=2)))
        props = nng.compute_paths(graph, ids, n_pairs)
        pooled.extend(props)
        per_class[c] = float(np.mean(props))
    return float(np.mean(pooled)), per_class


def euclidean_one_pair_at_a_time(x, labels, predict, n_sampled: int = 10) -> tuple[float, dict]:
    """Euclidean convexity the slow, obvious way (unrounded fractions): every
    unordered same-class pair, its ``n_sampled`` points
    ``lam * x[a] + (1 - lam) * x[b]`` (``lam = i / (n_sampled + 1)``, a < b)
    sent through ``predict`` one at a time (as a batch of one). Returns the
    pooled mean over all pairs and the per-class means (classes with one
    member left out)."""
    import itertools

    x = np.asarray(x)
    labels = list(labels)
    per_class, pooled = {}, []
    for c in dict.fromkeys(labels):
        members = [i for i, v in enumerate(labels) if v == c]
        scores = []
        for a, b in itertools.combinations(members, 2):
            hits = 0
            for i in range(1, n_sampled + 1):
                lam = i * (1.0 / (n_sampled + 1))
                point = lam * x[a] + (1 - lam) * x[b]
                hits += int(next(iter(predict(point[None]))) == c)
            scores.append(hits / n_sampled)
        if scores:
            per_class[c] = float(np.mean(scores))
            pooled.extend(scores)
    return float(np.mean(pooled)), per_class


def nnconvexity_euclidean_all_pairs(x, labels, predict, n_sampled: int = 10) -> tuple[float, dict]:
    """The authors' ``compute_euclidean_convexity`` (nnconvexity 0.1.1) with a
    pair budget above every class's number of pairs, so every pair is scored:
    percentages rounded to 2 decimals, as it reports them. ``predict`` gets its
    torch batches as numpy arrays."""
    from nnconvexity.euclidean import compute_euclidean_convexity

    labels = np.asarray(labels)
    budget = len(labels) * len(labels)
    return compute_euclidean_convexity(
        np.asarray(x),
        labels,
        lambda feats, layer: predict(feats.numpy()),
        0,
        n_pairs=budget,
        n_sampled=n_sampled,
    )
