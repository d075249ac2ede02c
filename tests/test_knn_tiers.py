"""The kNN's slow path (issue 13): on clusters far from each other the
float32 rounding bound is wider than the gaps between neighbours, so no row
certified and every row was rescanned exactly (O(N^2 D) scalar work). A
float64 tier now certifies them from float64 matrix products; what is left
for the exact scan is rows with exact ties (binary data). The lists and
distances are those of the exact scan, bit for bit, with or without the tier."""

from __future__ import annotations

import numpy as np
import pytest

import fastconvex as fc
from fastconvex.kernels.numba import knn as numba_knn_module
from fastconvex.kernels.numba.knn import knn
from oracles import bruteforce_knn_f64


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
