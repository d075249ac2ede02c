"""Path statistics kernels against scipy's Dijkstra with predecessors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from fastconvex.datasets import overlapping_classes
from fastconvex.kernels.numba.graph import union_csr
from fastconvex.kernels.numba.knn import knn
from fastconvex.kernels.numba.paths import bucket_plan, class_sums, pair_scores
from oracles import scipy_shortest_distances


def _graph(x, k):
    idx, dist, _ = knn(x, k)
    return union_csr(idx, dist)


def _oracle_scores(indptr, nbr, w, codes, sources, targets_of):
    n = indptr.shape[0] - 1
    g = sp.csr_matrix((w, nbr, indptr), shape=(n, n))
    _, pred = dijkstra(g, directed=False, indices=sources, return_predecessors=True)
    out = []
    for r, s in enumerate(sources):
        for t in targets_of(s):
            if pred[r, t] < 0:
                out.append((0.0, False))
                continue
            path = [t]
            while path[-1] != s:
                path.append(pred[r, path[-1]])
            inner = path[1:-1]
            out.append((1.0 if not inner else np.mean([codes[v] == codes[s] for v in inner]), True))
    return np.array([o[0] for o in out]), np.array([o[1] for o in out])


DATA = [
    pytest.param(lambda: overlapping_classes(300, 64, 4, seed=1, dtype=np.float64), 10, id="high-dim"),
    pytest.param(lambda: overlapping_classes(257, 3, 5, seed=2, dtype=np.float64), 4, id="low-dim"),
    pytest.param(
        lambda: (np.concatenate([np.random.default_rng(3).normal(size=(60, 4)),
                                 500 + np.random.default_rng(4).normal(size=(61, 4))]),
                 np.random.default_rng(5).integers(0, 3, 121)), 3, id="disconnected"),
]


@pytest.mark.parametrize("buckets", [True, False])
@pytest.mark.parametrize("make,k", DATA)
def test_pair_scores_match_scipy_paths(make, k, buckets):
    x, codes = make()
    codes = codes.astype(np.int64)
    indptr, nbr, w = _graph(x, k)
    rng = np.random.default_rng(0)
    sources = np.sort(rng.choice(len(x), 25, replace=False)).astype(np.int64)
    target_lists = [np.setdiff1d(rng.choice(len(x), 12, replace=False), [s]) for s in sources]
    ptr = np.concatenate([[0], np.cumsum([len(t) for t in target_lists])]).astype(np.int64)
    targets = np.concatenate(target_lists).astype(np.int64)
    got, reach = pair_scores(indptr, nbr, w, codes, sources, ptr, targets, buckets=buckets)
    lookup = dict(zip(sources.tolist(), target_lists))
    ref, ref_reach = _oracle_scores(indptr, nbr, w, codes, sources, lambda s: lookup[int(s)])
    np.testing.assert_array_equal(reach, ref_reach)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # reachability agrees with scipy's distances
    dist = scipy_shortest_distances(indptr, nbr, w, sources)
    rows = np.repeat(np.arange(len(sources)), np.diff(ptr))
    np.testing.assert_array_equal(np.isfinite(dist[rows, targets]), reach)


@pytest.mark.parametrize("buckets", [True, False])
@pytest.mark.parametrize("make,k", DATA)
def test_class_sums_equal_explicit_pairs(make, k, buckets):
    x, codes = make()
    codes = codes.astype(np.int64)
    indptr, nbr, w = _graph(x, k)
    sources = np.arange(0, len(x), 7, dtype=np.int64)
    sizes = np.bincount(codes).astype(np.int64)
    sums, sumsq, unreach = class_sums(indptr, nbr, w, codes, sources, sizes, buckets=buckets)
    targets_of = lambda s: np.flatnonzero((codes == codes[s]) & (np.arange(len(x)) != s))
    ref, ref_reach = _oracle_scores(indptr, nbr, w, codes, sources, targets_of)
    counts = sizes[codes[sources]] - 1
    seg = np.concatenate([[0], np.cumsum(counts)[:-1]])
    np.testing.assert_allclose(sums, np.add.reduceat(ref, seg), atol=1e-9)
    np.testing.assert_allclose(sumsq, np.add.reduceat(ref**2, seg), atol=1e-9)
    np.testing.assert_array_equal(unreach, np.add.reduceat(~ref_reach, seg))


def test_bucket_plan_choice():
    x, _ = overlapping_classes(300, 64, 4, seed=1)
    _, _, w = _graph(x, 10)
    inv, slots = bucket_plan(w)
    assert inv > 0 and slots >= 2  # high-dimensional kNN weights are close together
    assert bucket_plan(np.array([0.0, 1.0])) == (0.0, 0)  # zero-length edge: heap
    assert bucket_plan(np.array([1e-3, 1.0])) == (0.0, 0)  # spread over 64x: heap
    inv, slots = bucket_plan(np.array([2.0, 3.0, 7.9]))
    assert slots == int(7.9 * inv) + 2 and 1 / inv < 2.0


@pytest.mark.parametrize("buckets", [True, False])
def test_a_target_listed_twice_gets_its_score_twice(buckets):
    x, codes = overlapping_classes(120, 16, 3, seed=4, dtype=np.float64)
    codes = codes.astype(np.int64)
    indptr, nbr, w = _graph(x, 5)
    sources = np.array([0, 7], dtype=np.int64)
    single = pair_scores(indptr, nbr, w, codes, sources, np.array([0, 3, 5]),
                         np.array([9, 40, 77, 3, 50]), buckets=buckets)
    double = pair_scores(indptr, nbr, w, codes, sources, np.array([0, 5, 8]),
                         np.array([9, 40, 9, 77, 40, 3, 50, 3]), buckets=buckets)
    np.testing.assert_array_equal(double[0], single[0][[0, 1, 0, 2, 1, 3, 4, 3]])
    np.testing.assert_array_equal(double[1], single[1][[0, 1, 0, 2, 1, 3, 4, 3]])
