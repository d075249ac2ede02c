"""Exact k-nearest neighbours on the CPU: blocked float32 matrix products (BLAS),
a running top-k' per row kept as array heaps, then an exact float64 re-rank with a
rounding-error certificate; rows the certificate cannot vouch for are recomputed
exactly against every point.

No N x N array ever exists: peak memory is O(N * k' + block_rows * block_cols).

Public entry point: :func:`knn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numba import njit, prange

_UNIT_ROUNDOFF_F32 = 2.0**-24


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


@njit(parallel=True, cache=True)
def _update_topk_from_gram(gram, sq_rows, sq_cols, row0, self_idx, col0, heap_d, heap_i):
    """Fold one tile of dot products into the per-row top-k' heaps.

    gram    : (br, bc) float32 (float64 in the second tier), the tile's rows
              times ``x[col0:col0+bc].T``
    sq_rows : (br,) float64 squared norms of the tile's rows
    sq_cols : (bc,) float64 squared norms of the tile's columns
    row0    : heap row of the tile's first row
    self_idx: (br,) int64 data row of each tile row (never its own neighbour)
    heap_d  : (H, kc) float64 approximate squared distances, max-heap per row
    heap_i  : (H, kc) int64 neighbour indices (-1 = empty slot, distance +inf)
    """
    br, bc = gram.shape
    kc = heap_d.shape[1]
    for r in prange(br):
        i = self_idx[r]
        hd = heap_d[row0 + r]
        hi = heap_i[row0 + r]
        worst = hd[0]
        sr = sq_rows[r]
        for c in range(bc):
            d = sr + sq_cols[c] - 2.0 * gram[r, c]
            if d < worst:
                j = col0 + c
                if j == i:
                    continue
                hd[0] = d
                hi[0] = j
                _sift_down(hd, hi, 0, kc)
                worst = hd[0]


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
def _rerank_exact(x, scale, rows, heap_d, heap_i, bound, k, out_i, out_d, certified):
    """Exact float64 distances for the candidates, sorted by (distance, index).

    The order is that of the distances as returned (square roots, correctly
    rounded): two squared distances one ulp apart may share a square root, and
    then the smaller index comes first, as in the float64 brute force. A row is
    certified when the k-th distance lies strictly below the square root of
    the smallest squared distance a non-candidate can have (its approximate
    squared distance, at least the heap root, minus the rounding bound; all in
    the units scaled by ``scale``). Heap row h holds the candidates of data
    row ``rows[h]``, whose bound is ``bound[h]``; ``certified[h]`` says whether
    ``out_i[rows[h]]`` is final.
    """
    n = x.shape[0]
    kc = heap_i.shape[1]
    all_candidates = kc >= n - 1
    for h in prange(rows.shape[0]):
        i = rows[h]
        cd = np.empty(kc, np.float64)
        ci = np.empty(kc, np.int64)
        for t in range(kc):
            j = heap_i[h, t]
            ci[t] = j
            cd[t] = _dist_f64(x, i, j, scale) if j >= 0 else np.inf
        _sort_by_dist_then_index(cd, ci, kc)
        for t in range(k):
            out_i[i, t] = ci[t]
            out_d[i, t] = cd[t] / scale
        if all_candidates:
            certified[h] = True
        else:
            # heap root = largest approximate distance kept; every non-candidate's
            # approximate distance is >= it.
            lower = heap_d[h, 0] - bound[h]
            certified[h] = lower > 0.0 and cd[k - 1] < math.sqrt(lower)


@njit(parallel=True, cache=True)
def _exact_rows(x, scale, rows, k, out_i, out_d):
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
                hd[0] = d
                hi[0] = j
                _sift_down(hd, hi, 0, k)
        _sort_by_dist_then_index(hd, hi, k)
        for t in range(k):
            out_i[i, t] = hi[t]
            out_d[i, t] = hd[t] / scale


# uncertified rows from which the float64 tier runs before the exact scan
SECOND_TIER_MIN_ROWS = 256


def _float64_tier(x, mean, scale, rows, k, kc, block_rows, block_cols, out_i, out_d):
    """Candidates of the rows the float32 pass could not certify, again, from
    float64 matrix products; returns the rows still uncertified (exact ties).

    The float32 bound grows with the norms of the centred data: on clusters
    far from each other (and from the global mean) it exceeds the gaps between
    a row's k-th and k'-th distances, so no row certifies, and the exact scan
    of every such row against all N points (O(N D) scalar float64 work per
    row) would take over the run, since on such data it is every row. In
    float64 the bound is 2**29 times smaller.
    Rows are then certified exactly as in the first pass, so the lists and
    distances are those of the exact scan, bit for bit.
    """
    n, dim = x.shape
    m = rows.shape[0]
    # the same centring and power-of-two scale as the float32 pass, in float64
    xr = (np.asarray(x[rows], np.float64) - mean) * scale
    sq_r = np.einsum("ij,ij->i", xr, xr)
    u = 2.0**-53
    gamma = dim * u / (1.0 - dim * u)
    col_norm_max = 0.0
    heap_d = np.full((m, kc), np.inf)
    heap_i = np.full((m, kc), -1, np.int64)
    for c0 in range(0, n, block_cols):
        c1 = min(n, c0 + block_cols)
        xc = (np.asarray(x[c0:c1], np.float64) - mean) * scale
        sq_c = np.einsum("ij,ij->i", xc, xc)
        col_norm_max = max(col_norm_max, float(np.sqrt(sq_c.max())))
        for r0 in range(0, m, block_rows):
            r1 = min(m, r0 + block_rows)
            gram = xr[r0:r1] @ xc.T
            _update_topk_from_gram(gram, sq_r[r0:r1], sq_c, r0, rows[r0:r1], c0, heap_d, heap_i)
    # |approx - exact| squared distance, with |a| the row's and |b| the largest
    # column norm: the float64 norms and products, gamma (|a| + |b|)^2; the sum
    # sq_a + sq_b - 2 g, 2 u (|a| + |b|)^2; the rounding of the centred
    # inputs, 2 u (|a| + |b|)^2. Doubled for margin (it costs nothing at
    # float64's scale); float64 subnormals lie far below the 1e-300 floor
    reach = (np.sqrt(sq_r) + col_norm_max) ** 2
    bound = 2.0 * (gamma + 4.0 * u) * reach + 1e-300
    certified = np.empty(m, np.bool_)
    _rerank_exact(x, scale, rows, heap_d, heap_i, bound, k, out_i, out_d, certified)
    return rows[~certified]


def candidate_count(k: int, n: int) -> int:
    """Number of approximate candidates kept per row before the exact re-rank."""
    return min(n - 1, k + max(k, 16))


def knn(
    x: np.ndarray,
    k: int,
    *,
    block_rows: int = 1024,
    block_cols: int = 16384,
    progress: Callable[[int, int], None] | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact k nearest other points of every row of ``x`` (Euclidean).

    Parameters
    ----------
    x : (N, D) float32 or float64 array
    k : int, 1 <= k <= N - 1
    block_rows, block_cols : tile shape of the float32 matrix products.
    progress : optional ``progress(done, total)``, called after every block of
        rows, and of rows recomputed exactly (``total`` grows by those rows
        once the certificate has named them). The results are the same with
        or without it.
    rows : (q0, q1), optional
        Only the neighbours of query rows q0..q1-1 (against every row of ``x``):
        exactly rows q0..q1-1 of the full result, so query blocks can be
        computed apart (by different workers) and stacked.

    Returns
    -------
    indices : (M, k) int64 (M = N, or q1 - q0), ascending by distance, ties by
        the smaller index (ties of the distances as returned)
    distances : (M, k) float64 Euclidean distances, computed exactly in float64
    n_fallback : int, rows recomputed by brute force because the float32
        candidate pass could not certify them (near-ties, duplicates).
    """
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    n, dim = x.shape
    kc = candidate_count(k, n)
    # Centre (in float64) before the float32 products: smaller norms, less
    # cancellation; then scale by a power of two (exact) so every norm is below
    # 1: float32 products of data at 1e-25 would underflow to zero (an
    # absolute error the relative bound below does not cover) and squares of
    # data past 1e154 overflow float64.
    mean = x.mean(axis=0, dtype=np.float64)
    centred = x - mean  # float64
    # from the largest |coordinate| (squares of it could themselves over- or
    # underflow): norms <= sqrt(D) max|x_t| < 1 after scaling
    c_max = max(float(centred.max()), -float(centred.min())) if n else 0.0
    scale = 2.0 ** (-math.frexp(c_max * math.sqrt(dim))[1]) if c_max > 0.0 else 1.0
    centred *= scale
    xf = np.ascontiguousarray(centred.astype(np.float32))
    del centred
    sq = np.einsum("ij,ij->i", xf, xf, dtype=np.float64)
    norms = np.sqrt(sq)
    max_norm = float(norms.max()) if n else 0.0
    # Rounding bound on |approx - exact| squared distance (scaled units):
    # float32 dot products (gamma_D |x_i||x_j| twice), the float32 rounding of
    # the centred inputs, and an absolute term for float32 subnormals (inputs
    # off by <= 2**-150 each, products by <= 2**-150: coordinates far below the
    # largest norm).
    u = _UNIT_ROUNDOFF_F32
    gamma = dim * u / (1.0 - dim * u) if dim * u < 0.5 else np.inf
    bound = 1.01 * (2.0 * gamma * norms * max_norm + 4.0 * u * (norms + max_norm) ** 2) + 4.0 * dim * 2.0**-149 + 1e-300

    q0, q1 = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= q0 < q1 <= n:
        raise ValueError(f"rows must be (q0, q1) with 0 <= q0 < q1 <= N={n}, got {rows!r}")
    m = q1 - q0  # query rows: heap row h holds data row q0 + h
    heap_d = np.full((m, kc), np.inf)
    heap_i = np.full((m, kc), -1, np.int64)
    query = np.arange(q0, q1, dtype=np.int64)
    for r0 in range(q0, q1, block_rows):
        r1 = min(q1, r0 + block_rows)
        xr = xf[r0:r1]
        for c0 in range(0, n, block_cols):
            c1 = min(n, c0 + block_cols)
            gram = xr @ xf[c0:c1].T
            _update_topk_from_gram(gram, sq[r0:r1], sq[c0:c1], r0 - q0, query[r0 - q0 : r1 - q0], c0, heap_d, heap_i)
        if progress is not None:
            progress(r1 - q0, m)

    # indexed by data row; with a query block only its rows are written (the
    # pages of the others are never touched, so cost no memory)
    out_i = np.empty((n, k), np.int64)
    out_d = np.empty((n, k), np.float64)
    certified = np.empty(m, np.bool_)
    # exact distances read x in its own dtype and accumulate in float64
    # (no float64 copy of the data)
    _rerank_exact(x, scale, query, heap_d, heap_i, bound[q0:q1], k, out_i, out_d, certified)
    left = query[~certified]
    del heap_d, heap_i
    if left.size >= SECOND_TIER_MIN_ROWS:
        left = _float64_tier(x, mean, scale, left, k, kc, block_rows, block_cols, out_i, out_d)
    if left.size and progress is None:
        _exact_rows(x, scale, left, k, out_i, out_d)
    elif left.size:  # in batches, to report them (each row is computed alone)
        step = max(4096, -(-left.size // 20))
        for b0 in range(0, left.size, step):
            _exact_rows(x, scale, left[b0 : b0 + step], k, out_i, out_d)
            progress(m + min(left.size, b0 + step), m + left.size)
    if rows is None:
        return out_i, out_d, int(left.size)
    return out_i[q0:q1].copy(), out_d[q0:q1].copy(), int(left.size)
