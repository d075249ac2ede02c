"""kNN: both CPU backends against float64 brute force, tie-aware (faiss style)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from oracles import assert_knn_equal_up_to_ties, bruteforce_knn_f64

import fastconvex as fc
from fastconvex.kernels.numba.knn import knn as numba_knn

CPU_BACKENDS = ["numba", "naive"]
FAST_BACKENDS = ["numba", pytest.param("triton", marks=pytest.mark.triton)]
_GPU = os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available()


def _on_backend(x, backend):
    return torch.from_numpy(x).cuda() if backend == "triton" and _GPU else x


def _near_tie_grid(seed, n=60, d=3, duplicates=0):
    """Grid points times 0.1 in float64: many squared distances one ulp apart
    whose square roots are equal (so the order must come from the index)."""
    rng = np.random.default_rng(seed)
    x = np.unique(rng.integers(-3, 4, (n, d)), axis=0) * 0.1
    rng.shuffle(x)
    if duplicates:
        x = np.concatenate([x, x[rng.integers(0, len(x), duplicates)]])
    return x, rng.integers(0, 3, len(x))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("seed,k,duplicates", [(0, 5, 0), (1, 7, 0), (2, 3, 0), (3, 6, 12), (4, 4, 30)])
def test_ties_of_returned_distances_go_to_the_smaller_index(backend, seed, k, duplicates):
    """Oracle: the naive scorer (cdist, stable sort). The lists and distances
    must equal it bit for bit, duplicates or not; the exact scores to 1e-12
    (they are sums taken in another order)."""
    x, y = _near_tie_grid(seed, duplicates=duplicates)
    g = fc.knn_graph(_on_backend(x, backend), k, backend=backend)
    ref = fc.knn_graph(x, k, backend="naive")
    np.testing.assert_array_equal(g.distances, ref.distances)
    np.testing.assert_array_equal(g.indices, ref.indices)
    tied = g.distances[:, 1:] == g.distances[:, :-1]
    assert tied.any()
    assert np.all(g.indices[:, 1:][tied] > g.indices[:, :-1][tied])
    a = fc.graph_convexity(_on_backend(x, backend), y, k=k, exact=True, backend=backend)
    b = fc.graph_convexity(x, y, k=k, exact=True, backend="naive")
    assert abs(a.score - b.score) <= 1e-12
    for c in b.per_class:
        assert abs(a.per_class[c] - b.per_class[c]) <= 1e-12


def test_the_tie_aware_oracle_rejects_wrong_lists():
    """The oracle accepts a swap of tied neighbours and nothing else: a
    neighbour repeated in place of a tied one, a farther point, a point as its
    own neighbour, or distances that are not those of the indices."""
    x = np.array([[0.0], [1.0], [-1.0], [5.0]])
    good_i = np.array([[1, 2], [0, 2], [0, 1], [1, 0]])
    good_d = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 2.0], [4.0, 5.0]])
    assert_knn_equal_up_to_ties(x, good_i, good_d, 2)
    swapped = good_i.copy()
    swapped[0] = [2, 1]  # tied at distance 1: either order
    assert_knn_equal_up_to_ties(x, swapped, good_d, 2)
    bad = []
    for row, idx, dist in [
        (0, [1, 1], [1.0, 1.0]),
        (1, [0, 3], [1.0, 4.0]),
        (2, [2, 0], [0.0, 1.0]),
        (3, [1, 0], [4.0, 4.0]),
    ]:
        i, d = good_i.copy(), good_d.copy()
        i[row], d[row] = idx, dist
        bad.append((i, d))
    for i, d in bad:
        with pytest.raises(AssertionError):
            assert_knn_equal_up_to_ties(x, i, d, 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "n,d,k",
    [(2, 1, 1), (7, 3, 6), (31, 1, 5), (101, 17, 10), (257, 1000, 4), (64, 5, 63)],
)
def test_knn_matches_bruteforce(backend, n, d, k):
    x = np.random.default_rng(n * 1000 + d).normal(size=(n, d))
    g = fc.knn_graph(x, k, backend=backend)
    assert g.indices.shape == (n, k) and g.distances.shape == (n, k)
    assert_knn_equal_up_to_ties(x, g.indices, g.distances, k)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_duplicates_are_neighbours_at_distance_zero(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    x[10] = x[3]
    x[20] = x[3]
    g = fc.knn_graph(x, 3, backend=backend)
    assert set(g.indices[3, :2].tolist()) == {10, 20}
    np.testing.assert_array_equal(g.distances[3, :2], 0.0)
    assert 3 not in g.indices[3]
    # ties at distance 0 broken by the smaller index
    assert g.indices[10, 0] == 3 and g.indices[10, 1] == 20


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ties_broken_by_smaller_index(backend):
    # points on a line at integer positions: neighbours of 5 at distance 1 are 4 and 6
    x = np.arange(11, dtype=np.float64)[:, None]
    g = fc.knn_graph(x, 3, backend=backend)
    np.testing.assert_array_equal(g.indices[5], [4, 6, 3])
    np.testing.assert_array_equal(g.distances[5], [1.0, 1.0, 2.0])


def test_float32_and_torch_inputs_agree_with_float64():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 20)).astype(np.float32)
    g32 = fc.knn_graph(x, 7, backend="numba")
    gt = fc.knn_graph(torch.from_numpy(x), 7, backend="numba")
    np.testing.assert_array_equal(g32.indices, gt.indices)
    assert_knn_equal_up_to_ties(x, g32.indices, g32.distances, 7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "scale,dtype",
    [
        (1e-310, np.float64),
        (1e-300, np.float64),
        (1e-30, np.float64),
        (1e-25, np.float32),
        (1e170, np.float64),
        (1e300, np.float64),
    ],
)
def test_knn_and_scores_do_not_depend_on_the_scale(backend, scale, dtype):
    """Oracle: the same data at scale 1 (a power of two apart would be exact;
    here the data are rounded once by the multiplication). Float32 products of
    data at 1e-25 underflow and float64 squares of data at 1e170 overflow: the
    neighbour lists, distances / scale and scores must not notice."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(90, 6))
    y = np.arange(90) % 3
    small = (x * scale).astype(dtype)
    ref_x = small.astype(np.float64) / scale  # what was scaled, at scale 1
    ref = fc.knn_graph(ref_x, 4, backend=backend)
    g = fc.knn_graph(small, 4, backend=backend)
    np.testing.assert_array_equal(g.indices, ref.indices)
    np.testing.assert_allclose(g.distances / scale, ref.distances, rtol=1e-6 if scale < 1e-305 else 1e-12)
    assert_knn_equal_up_to_ties(ref_x, g.indices, g.distances / scale, 4)
    a = fc.graph_convexity(small, y, k=4, exact=True, backend=backend)
    b = fc.graph_convexity(ref_x, y, k=4, exact=True, backend="naive")
    assert abs(a.score - b.score) <= 1e-12


def test_certificate_fallback_on_clustered_near_ties():
    # 60 copies of one point and 60 near it: more tied candidates than the
    # float32 pass keeps, so rows must fall back to the exact scan, and be right.
    rng = np.random.default_rng(5)
    x = np.concatenate([np.ones((60, 32)), 1 + rng.normal(size=(60, 32)) * 1e-5, rng.normal(size=(60, 32))])
    idx, dist, n_fallback = numba_knn(x, 5)
    assert n_fallback > 0
    assert_knn_equal_up_to_ties(x, idx, dist, 5)


def test_large_offset_data_uses_centering():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 64)) + 1e4
    g = fc.knn_graph(x, 10, backend="numba")
    assert_knn_equal_up_to_ties(x, g.indices, g.distances, 10)


def test_knn_tiles_smaller_than_data():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(203, 9))
    idx, dist, _ = numba_knn(x, 6, block_rows=16, block_cols=37)
    ref_i, ref_d = bruteforce_knn_f64(x, 6)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(2, 40), st.integers(1, 6)),
        elements=st.floats(-100, 100, allow_nan=False, width=32),
    ),
    st.data(),
)
def test_knn_properties(x, data):
    n = x.shape[0]
    k = data.draw(st.integers(1, n - 1))
    g = fc.knn_graph(x, k, backend="numba")
    rows = np.arange(n)[:, None]
    # rows ascending, distances recomputable from indices, never self
    assert np.all(np.diff(g.distances, axis=1) >= 0)
    np.testing.assert_allclose(g.distances, np.linalg.norm(x[rows] - x[g.indices], axis=-1), rtol=1e-12, atol=1e-12)
    assert not np.any(g.indices == rows)
    assert all(len(set(r)) == k for r in g.indices.tolist())
    assert_knn_equal_up_to_ties(x, g.indices, g.distances, k)
    # equal distances: smaller index first; a shorter list is a prefix
    tied = g.distances[:, 1:] == g.distances[:, :-1]
    assert np.all(g.indices[:, 1:][tied] > g.indices[:, :-1][tied])
    k2 = data.draw(st.integers(1, k))
    np.testing.assert_array_equal(fc.knn_graph(x, k2, backend="numba").indices, g.indices[:, :k2])
