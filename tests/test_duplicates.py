"""Exact duplicate rows: searched once, expanded to every row.

Oracle: float64 brute force with ties broken by the smaller index. Integer
coordinates make every distance exact, so ties are exact and the neighbour
lists must equal the oracle's index for index, on every backend.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import assert_knn_equal_up_to_ties, bruteforce_knn_f64

import fastconvex as fc
import fastconvex.backends.duplicates as dup
from fastconvex.kernels.numba.duplicates import expand_knn
from fastconvex.kernels.numba.knn import knn as numba_knn

_GPU = os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()
BACKENDS = ["numba", pytest.param("triton", marks=pytest.mark.triton)]


def _grid_with_duplicates(n, d, n_points, seed):
    """n rows drawn (with repeats) from n_points integer points: exact ties."""
    rng = np.random.default_rng(seed)
    points = rng.integers(-2, 3, (n_points, d)).astype(np.float32)
    return points[rng.integers(0, n_points, n)]


def _assert_exact(x, g, k):
    ref_i, ref_d = bruteforce_knn_f64(x, k)
    np.testing.assert_array_equal(g.indices, ref_i)
    np.testing.assert_allclose(g.distances, ref_d, rtol=1e-12, atol=0)


def _input(x, backend):
    return torch.from_numpy(x).cuda() if backend == "triton" and _GPU else x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n,d,n_points,k", [(60, 2, 5, 7), (45, 3, 45, 10), (31, 1, 3, 30), (80, 4, 20, 3), (12, 2, 1, 11), (9, 2, 2, 8)]
)
def test_lists_equal_float64_brute_force_index_for_index(backend, n, d, n_points, k):
    x = _grid_with_duplicates(n, d, n_points, seed=n * 31 + k)
    g = fc.knn_graph(_input(x, backend), k, backend=backend)
    _assert_exact(x, g, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_row_the_same_point(backend):
    x = np.full((7, 3), 2.5, np.float32)
    g = fc.knn_graph(_input(x, backend), 6, backend=backend)
    for i in range(7):
        np.testing.assert_array_equal(g.indices[i], [j for j in range(7) if j != i])
    np.testing.assert_array_equal(g.distances, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groups_larger_than_the_candidate_lists_need_no_brute_force(backend, monkeypatch):
    """150 copies of one point and 150 of the centre (more ties than any
    candidate list holds): the distinct rows are searched, and every one of
    them is certified by the float32 pass."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    x[rng.choice(400, 150, replace=False)] = x[0]
    x[np.flatnonzero((x != x[0]).any(1))[:150]] = x.mean(0)
    k = 5
    ref_i, _ = bruteforce_knn_f64(x, k)
    raw_i, _, raw_fallback = numba_knn(x, k)
    assert raw_fallback > 150  # the search over all rows does fall back
    np.testing.assert_array_equal(raw_i, ref_i)

    searched = []
    if backend == "numba":
        import fastconvex.kernels.numba.knn as kernel
    else:
        import fastconvex.kernels.triton.knn as kernel

    def spy(rows, kd, **kw):
        out = real(rows, kd, **kw)
        searched.append((rows.shape[0], out[2]))  # (rows searched, rows that fell back)
        return out

    real = kernel.knn
    monkeypatch.setattr(kernel, "knn", spy)
    g = fc.knn_graph(_input(x, backend), k, backend=backend)
    np.testing.assert_array_equal(g.indices, ref_i)
    assert searched == [(len(np.unique(x, axis=0)), 0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_zero_equals_zero(backend):
    x = np.array([[0.0, 1.0], [-0.0, 1.0], [3.0, 0.0], [0.0, -1.0]], np.float32)
    for data in (x, torch.from_numpy(x), x.astype(np.float64)):
        groups = dup.duplicate_groups(data)
        assert groups is not None
        inverse, first = groups
        np.testing.assert_array_equal(inverse, [0, 0, 1, 2])
        np.testing.assert_array_equal(first, [0, 2, 3])
    _assert_exact(x, fc.knn_graph(_input(x, backend), 3, backend=backend), 3)


def test_distinct_rows_are_not_grouped():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 8))
    x[7, 3] = np.nextafter(x[3, 3], np.inf)  # one ulp from a copy of row 3
    x[7, :3], x[7, 4:] = x[3, :3], x[3, 4:]
    for data in (x, torch.from_numpy(x)):
        assert dup.duplicate_groups(data) is None
    for data in (x.astype(np.float32), torch.from_numpy(x.astype(np.float32))):  # equal in float32
        inverse, first = dup.duplicate_groups(data)
        assert inverse[7] == inverse[3] == 3 and first.shape[0] == 499


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_hash_values", [1, 3])
def test_hash_collisions_never_join_different_rows(backend, n_hash_values, monkeypatch):
    """Rows hash to 1 or 3 values at random: the row-by-row check must still
    separate the points, and identical rows it leaves in different groups are
    still each other's neighbours at distance 0, smallest index first."""
    import fastconvex.kernels.numba.duplicates as numba_dup
    import fastconvex.kernels.triton.duplicates as torch_dup

    fake = np.random.default_rng(n_hash_values).integers(0, n_hash_values, 50)
    monkeypatch.setattr(numba_dup, "row_hashes", lambda x: fake.astype(np.uint64))
    monkeypatch.setattr(torch_dup, "row_hashes", lambda x: torch.from_numpy(fake).to(x.device))
    x = _grid_with_duplicates(50, 2, 6, seed=9)
    inverse, first = dup.duplicate_groups(x)
    for tensor_x in (torch.from_numpy(x), _input(x, backend)):
        np.testing.assert_array_equal(dup.duplicate_groups(tensor_x)[0], inverse)
    for g in range(first.shape[0]):
        members = x[inverse == g]
        assert (members == members[0]).all()
    assert first.shape[0] > len(np.unique(x, axis=0))  # identical rows were left apart
    g = fc.knn_graph(_input(x, backend), 9, backend=backend)
    _assert_exact(x, g, 9)


def test_expand_with_identical_rows_in_different_groups():
    """Rows 0, 2, 3 identical but split into groups {0, 3} and {2}: row 0's
    distance-0 neighbours must come out in index order 2, 3."""
    x = np.array([[0.0], [5.0], [0.0], [0.0], [1.0]])
    inverse = np.array([0, 1, 2, 0, 3])
    first = np.array([0, 1, 2, 4])
    u_i, u_d = bruteforce_knn_f64(x[first], 3)
    idx, dist = expand_knn(u_i, u_d, inverse, 4)
    ref_i, ref_d = bruteforce_knn_f64(x, 4)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_with_duplicates_equal_the_naive_scorer(backend):
    x = _grid_with_duplicates(70, 3, 12, seed=5)
    y = np.arange(70) % 3
    a = fc.graph_convexity(_input(x, backend), y, k=6, exact=True, backend=backend)
    b = fc.graph_convexity(x, y, k=6, exact=True, backend="naive")
    assert a.n_pairs == b.n_pairs
    assert abs(a.score - b.score) <= 1e-12
    for c in b.per_class:
        assert abs(a.per_class[c] - b.per_class[c]) <= 1e-12


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 3), st.integers(1, 12), st.data())
def test_property_lists_equal_brute_force(n, d, n_points, data):
    seed = data.draw(st.integers(0, 2**31 - 1))
    x = _grid_with_duplicates(n, d, n_points, seed)
    if data.draw(st.booleans()):
        x = x.astype(np.float64) * 0.1  # non-integer float64, rounded distances
    k = data.draw(st.integers(1, n - 1))
    g = fc.knn_graph(x, k, backend="numba")
    ref_i, ref_d = bruteforce_knn_f64(x, k)
    if x.dtype == np.float32:
        np.testing.assert_array_equal(g.indices, ref_i)
    else:  # rounded distances: the lists up to near-ties, distances those of the indices
        assert_knn_equal_up_to_ties(x, g.indices, g.distances, k)
    # duplicates: distance exactly 0, and a row's own copies come first
    rows = np.arange(n)[:, None]
    same = (x[g.indices] == x[rows]).all(-1)
    np.testing.assert_array_equal(g.distances == 0.0, same)
    np.testing.assert_allclose(g.distances, ref_d, rtol=1e-12, atol=0)


@pytest.mark.triton
@pytest.mark.parametrize("n_points,distinct_rows,searched", [(1, 1, False), (4, 4, True)])
def test_triton_engine_reports_distinct_rows(n_points, distinct_rows, searched):
    from fastconvex.backends.triton import TritonEngine

    x = _grid_with_duplicates(30, 2, n_points, seed=1)
    assert len(np.unique(x, axis=0)) == distinct_rows
    eng = TritonEngine()
    g = eng.knn(_input(x, "triton"), 5)
    _assert_exact(x, g, 5)
    st = eng.last_stats["knn"]
    assert st["distinct_rows"] == distinct_rows
    assert (len(st["tiers"]) > 0) == searched
    assert st["n_fallback"] == 0 and st["brute_force_rows"] == 0
