"""What every tier of the CPU kNN shares: per-row candidate heaps kept as
arrays, the exact float64 re-rank of a row's candidates with its certificate,
and the exact scan of the rows no tier could certify.

A tier (bfloat16, float32 or float64 matrix products) leaves ``kc``
candidates per row and, per row, a *limit*: a lower bound on the exact
distance (scaled units) of every point that is not a candidate. A row whose
k-th exact distance lies strictly below its limit is final; the others go on
to the next tier.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _sift_down(heap_d, heap_i, pos, size):
    """Restore the max-heap property (root = worst candidate) from ``pos``."""
    d = heap_d[pos]
    idx = heap_i[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and (
            heap_d[child + 1] > heap_d[child]
            or (heap_d[child + 1] == heap_d[child] and heap_i[child + 1] > heap_i[child])
        ):
            child += 1
        if heap_d[child] > d or (heap_d[child] == d and heap_i[child] > idx):
            heap_d[pos] = heap_d[child]
            heap_i[pos] = heap_i[child]
            pos = child
        else:
            break
    heap_d[pos] = d
    heap_i[pos] = idx


@njit(cache=True, inline="always")
def _replace_root(heap_d, heap_i, d, j, size):
    """Put (d, j) in place of the heap's worst entry; returns the new worst."""
    heap_d[0] = d
    heap_i[0] = j
    _sift_down(heap_d, heap_i, 0, size)
    return heap_d[0]


@njit(cache=True, inline="always")
def _dist_f64(x, i, j, scale):
    """Distance of rows i and j in float64 (the correctly rounded root of the
    sequential sum of squares), in units scaled by the power of two ``scale``
    (exact: the order of distances, and the distances once unscaled, are those
    of the unscaled computation where it neither over- nor underflows; scaled,
    it does neither for any finite data)."""
    s = 0.0
    for t in range(x.shape[1]):
        diff = (np.float64(x[i, t]) - np.float64(x[j, t])) * scale
        s += diff * diff
    return math.sqrt(s)


@njit(cache=True, inline="always")
def _dist4_f64(x, i, j0, j1, j2, j3, scale):
    """:func:`_dist_f64` of row i to four rows at once: the same sequential sum
    for each (the same bits), four independent chains of additions, so the
    adder's latency is paid once for four distances, not four times."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for t in range(x.shape[1]):
        a = np.float64(x[i, t])
        d0 = (a - np.float64(x[j0, t])) * scale
        d1 = (a - np.float64(x[j1, t])) * scale
        d2 = (a - np.float64(x[j2, t])) * scale
        d3 = (a - np.float64(x[j3, t])) * scale
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
    return math.sqrt(s0), math.sqrt(s1), math.sqrt(s2), math.sqrt(s3)


@njit(cache=True, inline="always")
def _sort_by_dist_then_index(d, idx, n):
    """Insertion sort of the first n entries by (distance, index)."""
    for a in range(1, n):
        dv = d[a]
        iv = idx[a]
        b = a - 1
        while b >= 0 and (d[b] > dv or (d[b] == dv and idx[b] > iv)):
            d[b + 1] = d[b]
            idx[b + 1] = idx[b]
            b -= 1
        d[b + 1] = dv
        idx[b + 1] = iv


@njit(parallel=True, cache=True)
def rerank_exact(x, scale, rows, heap_i, limit, k, out_i, out_d, certified):
    """Exact float64 distances for the candidates, sorted by (distance, index).

    The order is that of the distances as returned (square roots, correctly
    rounded): two squared distances one ulp apart may share a square root, and
    then the smaller index comes first, as in the float64 brute force. Heap row
    h holds the candidates of data row ``rows[h]`` (-1: an empty slot); the row
    is certified when its k-th distance lies strictly below ``limit[h]``, the
    tier's lower bound on the exact distance of every non-candidate (scaled
    units), or when the candidates are every other point. ``certified[h]`` says
    whether ``out_i[rows[h]]`` is final.
    """
    n = x.shape[0]
    kc = heap_i.shape[1]
    all_candidates = kc >= n - 1
    for h in prange(rows.shape[0]):
        i = rows[h]
        cd = np.empty(kc, np.float64)
        ci = np.empty(kc, np.int64)
        for t in range(kc):
            ci[t] = heap_i[h, t]
        t = 0
        while t + 4 <= kc and ci[t] >= 0 and ci[t + 1] >= 0 and ci[t + 2] >= 0 and ci[t + 3] >= 0:
            cd[t], cd[t + 1], cd[t + 2], cd[t + 3] = _dist4_f64(x, i, ci[t], ci[t + 1], ci[t + 2], ci[t + 3], scale)
            t += 4
        for u in range(t, kc):
            cd[u] = _dist_f64(x, i, ci[u], scale) if ci[u] >= 0 else np.inf
        _sort_by_dist_then_index(cd, ci, kc)
        for t in range(k):
            out_i[i, t] = ci[t]
            out_d[i, t] = cd[t] / scale
        certified[h] = all_candidates or cd[k - 1] < limit[h]


@njit(parallel=True, cache=True)
def exact_rows(x, scale, rows, k, out_i, out_d):
    """Brute-force float64 kNN for the given rows (the certificate's fallback)."""
    n = x.shape[0]
    for r in prange(rows.shape[0]):
        i = rows[r]
        hd = np.full(k, np.inf)
        hi = np.full(k, -1, np.int64)
        for j in range(n):
            if j == i:
                continue
            d = _dist_f64(x, i, j, scale)
            if d < hd[0] or (d == hd[0] and (j < hi[0] or hi[0] < 0)):
                _replace_root(hd, hi, d, j, k)
        _sort_by_dist_then_index(hd, hi, k)
        for t in range(k):
            out_i[i, t] = hi[t]
            out_d[i, t] = hd[t] / scale


def certify(x, scale, rows, heap_i, limit, k, out_i, out_d) -> np.ndarray:
    """:func:`rerank_exact` of a tier's candidates; returns the rows it could
    not certify (for the next tier)."""
    certified = np.empty(rows.shape[0], np.bool_)
    rerank_exact(x, scale, rows, heap_i, limit, k, out_i, out_d, certified)
    return rows[~certified]


def limit_from_squared(root: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """A float tier's limit: every non-candidate's approximate squared distance
    is at least the heap root, so its exact squared distance is at least
    ``root - bound``; 0 (no row certifies) where that is not positive."""
    lower = root - bound
    return np.where(lower > 0.0, np.sqrt(np.maximum(lower, 0.0)), 0.0)
