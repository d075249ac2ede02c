"""kNN lists of every row from the kNN lists of the distinct rows.

Exact duplicates are a hard case for a rounding-error certificate: a group of m
identical rows ties at distance 0 for each of its members, and at one common
distance for every other point, so once m passes the candidate count no
approximate candidate list can be certified and whole regions fall back to
brute force. Searching the distinct rows only and expanding afterwards avoids
the ties altogether.

Public entry points: :func:`row_hashes`, :func:`rows_equal` (finding the
groups) and :func:`expand_knn`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_MIX = np.uint64(0x9E3779B97F4A7C15)


def hash_coefficients(dim: int) -> np.ndarray:
    """(dim,) odd uint64 multipliers, one per column (fixed seed)."""
    rng = np.random.default_rng(0x5EED)
    return rng.integers(0, 2**63, dim, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


@njit(parallel=True, cache=True)
def _row_hashes(bits, sign_bit, coeffs, out):
    n, dim = bits.shape
    for i in prange(n):
        h = np.uint64(0)
        for t in range(dim):
            b = np.uint64(bits[i, t])
            if b == sign_bit:  # -0.0 hashes as 0.0
                b = np.uint64(0)
            b *= _MIX
            b ^= b >> np.uint64(29)
            h += b * coeffs[t]
        out[i] = h


def row_hashes(x: np.ndarray) -> np.ndarray:
    """(N,) uint64 hash of each row's values of a (N, D) float32/float64 array
    (rows equal as numbers hash alike: -0.0 as 0.0)."""
    x = np.ascontiguousarray(x)
    width = np.uint32 if x.dtype == np.float32 else np.uint64
    bits = x.view(width)
    out = np.empty(x.shape[0], np.uint64)
    _row_hashes(bits, np.uint64(1) << np.uint64(8 * x.itemsize - 1), hash_coefficients(x.shape[1]), out)
    return out


@njit(parallel=True, cache=True)
def _rows_equal(x, a, b, out):
    for p in prange(a.shape[0]):
        same = True
        for t in range(x.shape[1]):
            if x[a[p], t] != x[b[p], t]:
                same = False
                break
        out[p] = same


def rows_equal(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M,) bool: whether rows ``a[p]`` and ``b[p]`` of ``x`` are equal as numbers."""
    out = np.empty(a.shape[0], np.bool_)
    _rows_equal(x, np.asarray(a, np.int64), np.asarray(b, np.int64), out)
    return out


@njit(cache=True)
def _take_block(groups, n_groups, group_ptr, group_rows, self_row, need, dist, out_i, out_d, row, count):
    """Append up to ``need`` rows of the groups ``groups[:n_groups]`` (all at
    distance ``dist`` from ``self_row``), smallest row index first, skipping
    ``self_row``; returns the new count."""
    if n_groups == 1:
        g = groups[0]
        for p in range(group_ptr[g], group_ptr[g + 1]):
            if need == 0:
                break
            r = group_rows[p]
            if r == self_row:
                continue
            out_i[row, count] = r
            out_d[row, count] = dist
            count += 1
            need -= 1
        return count
    # several groups tie: at most need + 1 rows of each can be taken (one may
    # be self_row), merged by row index
    size = 0
    for a in range(n_groups):
        g = groups[a]
        size += min(group_ptr[g + 1] - group_ptr[g], need + 1)
    pool = np.empty(size, np.int64)
    m = 0
    for a in range(n_groups):
        g = groups[a]
        stop = min(group_ptr[g + 1], group_ptr[g] + need + 1)
        for p in range(group_ptr[g], stop):
            if group_rows[p] != self_row:
                pool[m] = group_rows[p]
                m += 1
    pool = np.sort(pool[:m])
    for t in range(min(need, m)):
        out_i[row, count] = pool[t]
        out_d[row, count] = dist
        count += 1
    return count


@njit(parallel=True, cache=True)
def _expand(unique_idx, unique_dist, inverse, group_ptr, group_rows, k, out_i, out_d):
    n = inverse.shape[0]
    ku = unique_idx.shape[1]
    for row in prange(n):
        g = inverse[row]
        groups = np.empty(ku + 1, np.int64)
        # blocks of groups at one distance, in the order of the unique list;
        # the first is the row's own group with every group at distance 0
        # (identical rows the grouping kept apart)
        groups[0] = g
        n_groups = 1
        dist = 0.0
        t = 0
        count = 0
        while True:
            while t < ku and unique_dist[g, t] == dist:
                groups[n_groups] = unique_idx[g, t]
                n_groups += 1
                t += 1
            count = _take_block(groups, n_groups, group_ptr, group_rows, row, k - count, dist, out_i, out_d, row, count)
            if count >= k or t >= ku:
                break
            dist = unique_dist[g, t]
            n_groups = 0


def expand_knn(
    unique_idx: np.ndarray, unique_dist: np.ndarray, inverse: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of every row, from the kNN of the groups.

    Parameters
    ----------
    unique_idx : (G, ku) int64
        Each group's nearest other groups, ascending by (distance, group id),
        with ``ku = min(k, G - 1)``. Groups are numbered in the order of their
        smallest row, so the group order breaks distance ties the way the row
        order does.
    unique_dist : (G, ku) float64
        Their distances.
    inverse : (N,) int64
        The group of every row. A group holds identical rows only; identical
        rows may sit in different groups (they are then at distance 0).
    k : int
        Neighbours per row, ``k <= N - 1``.

    Returns
    -------
    indices : (N, k) int64, ascending by distance, ties by the smaller row index
    distances : (N, k) float64
    """
    inverse = np.ascontiguousarray(inverse, dtype=np.int64)
    n_groups = unique_idx.shape[0]
    group_rows = np.argsort(inverse, kind="stable").astype(np.int64)
    group_ptr = np.zeros(n_groups + 1, np.int64)
    np.cumsum(np.bincount(inverse, minlength=n_groups), out=group_ptr[1:])
    out_i = np.empty((inverse.shape[0], k), np.int64)
    out_d = np.empty((inverse.shape[0], k), np.float64)
    _expand(
        np.ascontiguousarray(unique_idx, dtype=np.int64),
        np.ascontiguousarray(unique_dist, dtype=np.float64),
        inverse,
        group_ptr,
        group_rows,
        k,
        out_i,
        out_d,
    )
    return out_i, out_d
