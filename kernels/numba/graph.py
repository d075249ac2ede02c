"""Union symmetrization of a kNN list into an undirected CSR graph (CPU).

Edge {i, j} exists if j is among i's neighbours or i among j's; its weight is the
Euclidean distance. Zero-length edges (exact duplicates) are kept: a CSR entry is
an edge whatever its weight.

Public entry point: :func:`union_csr`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _fill_both_directions(indices, distances, indptr_raw, nbr_raw, w_raw):
    n, k = indices.shape
    fill = indptr_raw[:-1].copy()
    for i in range(n):
        for t in range(k):
            j = indices[i, t]
            d = distances[i, t]
            nbr_raw[fill[i]] = j
            w_raw[fill[i]] = d
            fill[i] += 1
            nbr_raw[fill[j]] = i
            w_raw[fill[j]] = d
            fill[j] += 1


@njit(parallel=True, cache=True)
def _sort_dedupe_rows(indptr_raw, nbr_raw, w_raw, counts):
    n = indptr_raw.shape[0] - 1
    for i in prange(n):
        a = indptr_raw[i]
        b = indptr_raw[i + 1]
        # insertion sort by neighbour index (rows are short: <= k + in-degree)
        for p in range(a + 1, b):
            v = nbr_raw[p]
            wv = w_raw[p]
            q = p - 1
            while q >= a and nbr_raw[q] > v:
                nbr_raw[q + 1] = nbr_raw[q]
                w_raw[q + 1] = w_raw[q]
                q -= 1
            nbr_raw[q + 1] = v
            w_raw[q + 1] = wv
        c = 0
        for p in range(a, b):
            if p == a or nbr_raw[p] != nbr_raw[p - 1]:
                c += 1
        counts[i] = c


@njit(parallel=True, cache=True)
def _compact(indptr_raw, nbr_raw, w_raw, indptr, nbr, w):
    n = indptr_raw.shape[0] - 1
    for i in prange(n):
        out = indptr[i]
        a = indptr_raw[i]
        for p in range(a, indptr_raw[i + 1]):
            if p == a or nbr_raw[p] != nbr_raw[p - 1]:
                nbr[out] = nbr_raw[p]
                w[out] = w_raw[p]
                out += 1


def union_csr(indices: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected kNN graph in CSR form.

    Parameters
    ----------
    indices : (N, k) int64 neighbour indices
    distances : (N, k) float64 distances matching ``indices``

    Returns
    -------
    indptr : (N + 1,) int64
    neighbours : (E,) int64, sorted ascending within each row, no repeats
    weights : (E,) float64 edge lengths (zero for duplicates)
    """
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    distances = np.ascontiguousarray(distances, dtype=np.float64)
    n, k = indices.shape
    degree = np.full(n, k, np.int64) + np.bincount(indices.ravel(), minlength=n)
    indptr_raw = np.zeros(n + 1, np.int64)
    np.cumsum(degree, out=indptr_raw[1:])
    nbr_raw = np.empty(indptr_raw[-1], np.int64)
    w_raw = np.empty(indptr_raw[-1], np.float64)
    _fill_both_directions(indices, distances, indptr_raw, nbr_raw, w_raw)
    counts = np.empty(n, np.int64)
    _sort_dedupe_rows(indptr_raw, nbr_raw, w_raw, counts)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    nbr = np.empty(indptr[-1], np.int64)
    w = np.empty(indptr[-1], np.float64)
    _compact(indptr_raw, nbr_raw, w_raw, indptr, nbr, w)
    return indptr, nbr, w
