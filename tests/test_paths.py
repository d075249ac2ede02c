"""Path statistics kernels against scipy's Dijkstra with predecessors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from oracles import scipy_shortest_distances
from scipy.sparse.csgraph import dijkstra

from fastconvex.datasets import overlapping_classes
from fastconvex.kernels.numba.graph import union_csr
from fastconvex.kernels.numba.knn import knn
from fastconvex.kernels.numba.paths import bucket_plan, class_sums, pair_scores


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
        lambda: (
            np.concatenate(
                [np.random.default_rng(3).normal(size=(60, 4)), 500 + np.random.default_rng(4).normal(size=(61, 4))]
            ),
            np.random.default_rng(5).integers(0, 3, 121),
        ),
        3,
        id="disconnected",
    ),
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

    def targets_of(s):
        return np.flatnonzero((codes == codes[s]) & (np.arange(len(x)) != s))

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
    single = pair_scores(
        indptr, nbr, w, codes, sources, np.array([0, 3, 5]), np.array([9, 40, 77, 3, 50]), buckets=buckets
    )
    double = pair_scores(
        indptr, nbr, w, codes, sources, np.array([0, 5, 8]), np.array([9, 40, 9, 77, 40, 3, 50, 3]), buckets=buckets
    )
    np.testing.assert_array_equal(double[0], single[0][[0, 1, 0, 2, 1, 3, 4, 3]])
    np.testing.assert_array_equal(double[1], single[1][[0, 1, 0, 2, 1, 3, 4, 3]])


# ----------------------------------------------------------------------------------
# exactly equal-length shortest paths: every backend takes, among them, the path
# with the fewest hops, then the most interior vertices labelled like the source
# (a vertex keeps the lexicographically smallest (dist, hops, -same) over its
# neighbours' offers (dist_u + w, hops_u + 1, same_u + [u != s, label(u) == label(s)]))


def _csr(n, edges):
    """Symmetric CSR of an undirected edge list [(a, b, w), ...]."""
    a = np.array([e[0] for e in edges] + [e[1] for e in edges], np.int64)
    b = np.array([e[1] for e in edges] + [e[0] for e in edges], np.int64)
    w = np.array([float(e[2]) for e in edges] * 2)
    order = np.lexsort((b, a))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(a, minlength=n), out=indptr[1:])
    return indptr, b[order], w[order]


def _relabel(perm, edges, codes):
    """The same graph with vertex i renamed perm[i] (search order changes)."""
    new_codes = np.empty_like(codes)
    new_codes[perm] = codes
    return [(perm[a], perm[b], w) for a, b, w in edges], new_codes


def _one_pair(edges, codes, s, t, buckets):
    indptr, nbr, w = _csr(len(codes), edges)
    got, reach = pair_scores(
        indptr,
        nbr,
        w,
        codes,
        np.array([s], np.int64),
        np.array([0, 1], np.int64),
        np.array([t], np.int64),
        buckets=buckets,
    )
    assert reach[0]
    return got[0]


@pytest.mark.parametrize("buckets", [True, False])
def test_equal_length_paths_fewest_hops_win(buckets):
    # 0-1-2-4 (1 + 1 + 2) and 0-3-4 (3 + 1) both have length 4: the 2-hop path
    # wins, interior [3] (label A) -> 1; the 3-hop one, [1, 2] = B, A, would give
    # 1/2. Vertex 2 is settled (distance 2) before 3 (distance 3), so a search
    # keeping the first path settled takes the 3-hop one.
    edges = [(0, 1, 1), (1, 2, 1), (0, 3, 3), (2, 4, 2), (3, 4, 1)]
    codes = np.array([0, 1, 0, 0, 0], np.int64)
    assert bucket_plan(_csr(5, edges)[2])[1] > 0  # weights 1..3: buckets when allowed
    for perm in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        e, c = _relabel(np.array(perm), edges, codes)
        assert _one_pair(e, c, perm[0], perm[4], buckets) == 1.0
        assert _one_pair(e, c, perm[4], perm[0], buckets) == 1.0  # 4-3-0 too


@pytest.mark.parametrize("buckets", [True, False])
def test_equal_length_paths_same_hops_most_same_label_wins(buckets):
    # a unit square 0-1-3, 0-2-3: both 2 hops; the one through the vertex
    # labelled like the source wins, whichever of 1 and 2 that is and whichever
    # the search settles first
    import itertools

    edges = [(0, 1, 1), (0, 2, 1), (1, 3, 1), (2, 3, 1)]
    for codes in ([0, 1, 0, 0], [0, 0, 1, 0]):
        for perm in itertools.permutations(range(4)):
            e, c = _relabel(np.array(perm), edges, np.array(codes, np.int64))
            assert _one_pair(e, c, perm[0], perm[3], buckets) == 1.0
            assert _one_pair(e, c, perm[3], perm[0], buckets) == 1.0


def test_zero_length_edges_fewest_hops_then_most_same_label():
    # 3, 5 and 6 are duplicates (zero-length edges), all at distance 2:
    # 0-1-2-3 (0.5 + 0.5 + 1, 3 hops) and 0-4-5 (1.5 + 0.5, 2 hops). Fewest hops
    # to 6: 0-4-5-6, interior [4, 5] = B, B -> 0, although 0-1-2-3-6 runs through
    # A only (fewest hops comes before most same-label). 3's entry at distance 2
    # is queued before 5's (2 is settled before 4), so a search keeping the
    # first path settled takes 3's. To 3: 0-1-2-3 and 0-4-5-3, 3 hops each:
    # through [1, 2] (A, A) -> 1. (Zero-length edges: heap search only.)
    edges = [(0, 1, 0.5), (1, 2, 0.5), (2, 3, 1), (0, 4, 1.5), (4, 5, 0.5), (3, 5, 0), (3, 6, 0), (5, 6, 0)]
    codes = np.array([0, 0, 0, 0, 1, 1, 0], np.int64)
    rng = np.random.default_rng(0)
    perms = [np.arange(7)] + [rng.permutation(7) for _ in range(40)]
    for perm in perms:
        e, c = _relabel(perm, edges, codes)
        assert _one_pair(e, c, perm[0], perm[6], True) == 0.0
        assert _one_pair(e, c, perm[0], perm[3], True) == 1.0


@pytest.mark.parametrize("buckets", [True, False])
def test_unit_grid_scores_are_the_best_monotone_lattice_path(buckets):
    # 4-neighbour unit grid: the shortest paths between two cells are the
    # monotone lattice paths (all with |dr| + |dc| hops); the chosen one has the
    # most interior cells labelled like the source, a max-plus recursion over
    # the rectangle between them
    rows, cols = 6, 7
    cell = lambda r, c: r * cols + c  # noqa: E731
    edges = [(cell(r, c), cell(r, c + 1), 1) for r in range(rows) for c in range(cols - 1)]
    edges += [(cell(r, c), cell(r + 1, c), 1) for r in range(rows - 1) for c in range(cols)]
    codes = np.random.default_rng(4).integers(0, 2, rows * cols).astype(np.int64)
    indptr, nbr, w = _csr(rows * cols, edges)
    sources = np.array([0, cell(2, 3), cell(5, 6), cell(4, 1)], np.int64)
    n = rows * cols
    targets = np.concatenate([np.delete(np.arange(n), s) for s in sources]).astype(np.int64)
    ptr = np.arange(0, len(sources) * (n - 1) + 1, n - 1, dtype=np.int64)
    got, reach = pair_scores(indptr, nbr, w, codes, sources, ptr, targets, buckets=buckets)
    assert reach.all()
    expected = []
    for s in sources:
        r0, c0 = divmod(int(s), cols)
        for t in np.delete(np.arange(n), s):
            r1, c1 = divmod(int(t), cols)
            dr, dc = np.sign(r1 - r0), np.sign(c1 - c0)
            best = {}  # cell -> most same-label cells strictly between s and it
            for i in range(abs(r1 - r0) + 1):
                for j in range(abs(c1 - c0) + 1):
                    r, c = r0 + dr * i, c0 + dc * j
                    prev = [(r - dr, c)] * (i > 0) + [(r, c - dc)] * (j > 0)
                    best[r, c] = max(
                        (best[p] + (p != (r0, c0) and codes[cell(*p)] == codes[s]) for p in prev),
                        default=0,
                    )
            hops = abs(r1 - r0) + abs(c1 - c0)
            expected.append(1.0 if hops == 1 else best[r1, c1] / (hops - 1))
    np.testing.assert_array_equal(got, expected)


def _tie_rule_reference(indptr, nbr, w, codes, s):
    """(dist, hops, same) per vertex by the rule, plainly: float64 distances by
    Bellman-Ford (summed source-outward, dist_u + w), then the smallest
    (hops, -same) over the tight edges (dist_u + w == dist_v) by Bellman-Ford."""
    n = len(indptr) - 1
    dist = [np.inf] * n
    dist[s] = 0.0
    changed = True
    while changed:
        changed = False
        for v in range(n):
            for e in range(indptr[v], indptr[v + 1]):
                if dist[nbr[e]] + w[e] < dist[v]:
                    dist[v] = dist[nbr[e]] + w[e]
                    changed = True
    key = [None] * n  # (hops, -same)
    key[s] = (0, 0)
    changed = True
    while changed:
        changed = False
        for v in range(n):
            for e in range(indptr[v], indptr[v + 1]):
                u = nbr[e]
                if v == s or key[u] is None or dist[u] + w[e] != dist[v]:
                    continue
                offer = (key[u][0] + 1, key[u][1] - int(u != s and codes[u] == codes[s]))
                if key[v] is None or offer < key[v]:
                    key[v] = offer
                    changed = True
    return [(dist[v], None, None) if key[v] is None else (dist[v], key[v][0], -key[v][1]) for v in range(n)]


TIE_HEAVY = [
    pytest.param(lambda r: r.integers(0, 4, (28, 2)).astype(float), 4, id="int-2d-duplicates"),
    pytest.param(lambda r: r.integers(0, 12, (30, 1)).astype(float), 3, id="int-1d-duplicates"),
    pytest.param(lambda r: r.permutation(30)[:, None] * 0.1, 3, id="1d-tenths"),
    pytest.param(lambda r: r.normal(size=(30, 1)), 3, id="1d-normal"),
    pytest.param(
        lambda r: np.stack(np.meshgrid(np.arange(5), np.arange(6)), -1).reshape(-1, 2).astype(float),
        8,
        id="grid-diagonals",
    ),
]


@pytest.mark.parametrize("buckets", [True, False])
@pytest.mark.parametrize("make,k", TIE_HEAVY)
def test_tie_rule_matches_a_plain_reference_on_tie_heavy_graphs(make, k, buckets):
    rng = np.random.default_rng(k)
    x = make(rng)
    codes = rng.integers(0, 3, len(x)).astype(np.int64)
    indptr, nbr, w = _graph(x, k)
    n = len(x)
    sources = np.arange(n, dtype=np.int64)
    targets = np.concatenate([np.delete(np.arange(n), s) for s in sources]).astype(np.int64)
    ptr = np.arange(0, n * (n - 1) + 1, n - 1, dtype=np.int64)
    got, reach = pair_scores(indptr, nbr, w, codes, sources, ptr, targets, buckets=buckets)
    expected, expected_reach = [], []
    for s in sources:
        state = _tie_rule_reference(indptr, nbr, w, codes, s)
        for t in np.delete(np.arange(n), s):
            _d, h, c = state[t]
            expected_reach.append(h is not None)
            expected.append(0.0 if h is None else 1.0 if h == 1 else c / (h - 1))
    np.testing.assert_array_equal(reach, expected_reach)
    np.testing.assert_array_equal(got, expected)
