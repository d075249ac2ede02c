"""Greedy vertex cover of a pair graph (CPU): which end of each sampled pair to
search from. Public entry point: :func:`greedy_pair_cover`."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _before(d1, v1, d2, v2):
    """Heap order: the larger degree first, then the smaller vertex."""
    return d1 > d2 or (d1 == d2 and v1 < v2)


@njit(cache=True, inline="always")
def _push(hd, hv, size, d, v):
    p = size
    while p > 0:
        q = (p - 1) >> 1
        if not _before(d, v, hd[q], hv[q]):
            break
        hd[p] = hd[q]
        hv[p] = hv[q]
        p = q
    hd[p] = d
    hv[p] = v
    return size + 1


@njit(cache=True, inline="always")
def _pop(hd, hv, size):
    """Remove the root (read hd[0], hv[0] first); returns the new size."""
    size -= 1
    kd = hd[size]
    kv = hv[size]
    p = 0
    while True:
        c = 2 * p + 1
        if c >= size:
            break
        if c + 1 < size and _before(hd[c + 1], hv[c + 1], hd[c], hv[c]):
            c += 1
        if not _before(hd[c], hv[c], kd, kv):
            break
        hd[p] = hd[c]
        hv[p] = hv[c]
        p = c
    hd[p] = kd
    hv[p] = kv
    return size


@njit(cache=True)
def _cover(a, b, n):
    n_pairs = a.shape[0]
    degree = np.zeros(n, np.int64)
    for p in range(n_pairs):
        degree[a[p]] += 1
        degree[b[p]] += 1
    ptr = np.zeros(n + 1, np.int64)
    for v in range(n):
        ptr[v + 1] = ptr[v] + degree[v]
    fill = ptr[:-1].copy()
    incident = np.empty(2 * n_pairs, np.int64)
    for p in range(n_pairs):
        incident[fill[a[p]]] = p
        fill[a[p]] += 1
        incident[fill[b[p]]] = p
        fill[b[p]] += 1
    source = np.full(n_pairs, -1, np.int64)
    # lazy max-heap of (degree, vertex); a popped entry whose degree is out of
    # date is pushed again with the current one
    cap = n + n_pairs + 1
    hd = np.empty(cap, np.int64)
    hv = np.empty(cap, np.int64)
    size = 0
    for v in range(n):
        if degree[v] > 0:
            size = _push(hd, hv, size, degree[v], v)
    while size > 0:
        d = hd[0]
        v = hv[0]
        size = _pop(hd, hv, size)
        if degree[v] == 0:
            continue
        if d != degree[v]:
            size = _push(hd, hv, size, degree[v], v)
            continue
        for i in range(ptr[v], ptr[v + 1]):
            q = incident[i]
            if source[q] < 0:
                source[q] = v
                degree[a[q] + b[q] - v] -= 1
        degree[v] = 0
    return source


def greedy_pair_cover(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Greedy vertex cover of the (multi)graph whose edges are the pairs
    (a[p], b[p]): repeatedly take the vertex touching most unassigned pairs
    (ties: the smaller vertex) and assign those pairs to it.

    Parameters
    ----------
    a, b : (P,) int64 endpoints in [0, n), a != b
    n : number of vertices

    Returns
    -------
    source : (P,) int64, the endpoint each pair is assigned to
    """
    return _cover(np.ascontiguousarray(a, np.int64), np.ascontiguousarray(b, np.int64), int(n))
