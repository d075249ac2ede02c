"""The kNN's slow path (issue 13): on clusters far from each other the
float32 rounding bound is wider than the gaps between neighbours, so no row
certified and every row was rescanned exactly (O(N^2 D) scalar work). A
float64 tier now certifies them from float64 matrix products; what is left
for the exact scan is rows with exact ties (binary data). The lists and
distances are those of the exact scan, bit for bit, with or without the tier."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import bruteforce_knn_f64

import fastconvex as fc
from fastconvex.kernels.numba import knn as numba_knn_module
from fastconvex.kernels.numba.knn import knn


def _far_clusters(n=1500, d=16, spread=1000.0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * spread
    labels = rng.integers(0, 20, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(dtype), labels


def _without_tier(monkeypatch, x, k):
    monkeypatch.setattr(numba_knn_module, "SECOND_TIER_MIN_ROWS", 10**12)
    out = knn(x, k)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_far_apart_clusters_certify_in_the_float64_tier(monkeypatch, dtype):
    x, _ = _far_clusters(dtype=dtype)
    i1, d1, left = knn(x, 10)
    i0, d0, scanned = _without_tier(monkeypatch, x, 10)
    assert scanned == x.shape[0]  # the float32 pass certifies no row here
    assert left == 0  # the float64 tier certifies all of them
    np.testing.assert_array_equal(i1, i0)  # bit for bit what the exact scan gives
    np.testing.assert_array_equal(d1, d0)
    ref_i, ref_d = bruteforce_knn_f64(x, 10)
    np.testing.assert_array_equal(i1, ref_i)
    np.testing.assert_allclose(d1, ref_d, rtol=1e-12)


def test_binary_data_ties_still_go_to_the_exact_scan(monkeypatch):
    """Binary rows tie exactly (distances are square roots of integers): no
    bound can certify a tie, so the tier leaves those rows to the exact scan,
    and the result is unchanged."""
    rng = np.random.default_rng(3)
    x = (rng.random((1200, 12)) < 0.5).astype(np.float32)
    i1, d1, left = knn(x, 8)
    i0, d0, scanned = _without_tier(monkeypatch, x, 8)
    assert left == scanned > 256  # every uncertified row is a tie the tier cannot break
    np.testing.assert_array_equal(i1, i0)
    np.testing.assert_array_equal(d1, d0)


def test_scores_on_far_clusters_match_the_naive_scorer():
    x, y = _far_clusters(n=600, seed=5, dtype=np.float64)
    a = fc.graph_convexity(x, y, k=6, exact=True, backend="numba")
    b = fc.graph_convexity(x, y, k=6, exact=True, backend="naive")
    assert abs(a.score - b.score) <= 1e-12


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(30, 300),
    d=st.integers(1, 12),
    k=st.integers(1, 12),
    spread=st.sampled_from([0.0, 1.0, 30.0, 1e3, 1e6]),
    grid=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_tier_never_changes_a_list(n, d, k, spread, grid, seed):
    """Property: with the tier run on every uncertified row, lists and
    distances equal the exact scan's bit for bit (clusters at any spread,
    near-tie grids, any k)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d)) * spread
    x = centres[rng.integers(0, 5, n)] + (rng.integers(-3, 4, (n, d)) * 0.1 if grid else rng.normal(size=(n, d)))
    k = min(k, n - 1)
    saved = numba_knn_module.SECOND_TIER_MIN_ROWS
    try:
        numba_knn_module.SECOND_TIER_MIN_ROWS = 1
        tiered = knn(x, k)
        numba_knn_module.SECOND_TIER_MIN_ROWS = 10**12
        scanned = knn(x, k)
    finally:
        numba_knn_module.SECOND_TIER_MIN_ROWS = saved
    np.testing.assert_array_equal(tiered[0], scanned[0])
    np.testing.assert_array_equal(tiered[1], scanned[1])
    assert tiered[2] <= scanned[2]
