"""Exact k-nearest neighbours on the CPU, in tiers: blocked matrix products
give each row a running top-k' (array heaps), an exact float64 re-rank with a
rounding-error certificate makes the row final, and the rows a tier cannot
certify go on to the next, more precise one:

1. bfloat16 products (:mod:`knn_bf16`), where the CPU multiplies bfloat16 in
   hardware and a probe of rows shows it certifies most of them;
2. float32 products (BLAS), the first tier everywhere else;
3. float64 products, for the rows float32 rounding cannot separate;
4. the exact scan of each row left (exact ties) against every point.

No N x N array ever exists: peak memory is O(N * k' + block_rows * block_cols).

Public entry point: :func:`knn`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, prange

from fastconvex.kernels.numba import knn_bf16
from fastconvex.kernels.numba.candidates import _replace_root, certify, exact_rows, limit_from_squared

_UNIT_ROUNDOFF_F32 = 2.0**-24
# columns screened at once for candidates before the heap is touched
_SCREEN = 256


# nogil: the next tile's product runs in another thread while this one is folded
@njit(parallel=True, cache=True, nogil=True)
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
        sr = sq_rows[r]
        for c0 in range(0, bc, _SCREEN):
            c1 = min(bc, c0 + _SCREEN)
            worst = hd[0]
            # Most chunks hold no candidate once the heap is full: count them
            # first in a loop without stores (it vectorizes), with the very
            # same arithmetic as below, so no candidate is ever skipped.
            hits = 0
            for c in range(c0, c1):
                hits += (sr + sq_cols[c] - 2.0 * gram[r, c]) < worst
            if hits == 0:
                continue
            for c in range(c0, c1):
                d = sr + sq_cols[c] - 2.0 * gram[r, c]
                if d < worst:
                    j = col0 + c
                    if j == i:
                        continue
                    worst = _replace_root(hd, hi, d, j, kc)


class _TileBuffer:
    """One array for every tile's matrix product. A new array per tile (tens of
    MB) is fresh memory from the system each time, whose pages are faulted in and
    zeroed before the product can write them: that cost rivals the fold's."""

    def __init__(self, rows: int, cols: int, dtype: type) -> None:
        self.flat = np.empty(rows * cols, dtype)

    def product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b.T`` (the same BLAS call, so the same bits) in the buffer."""
        out = self.flat[: a.shape[0] * b.shape[0]].reshape(a.shape[0], b.shape[0])
        return np.matmul(a, b.T, out=out)


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
    tile = _TileBuffer(min(block_rows, m), min(block_cols, n), np.float64)
    for c0 in range(0, n, block_cols):
        c1 = min(n, c0 + block_cols)
        xc = (np.asarray(x[c0:c1], np.float64) - mean) * scale
        sq_c = np.einsum("ij,ij->i", xc, xc)
        col_norm_max = max(col_norm_max, float(np.sqrt(sq_c.max())))
        for r0 in range(0, m, block_rows):
            r1 = min(m, r0 + block_rows)
            gram = tile.product(xr[r0:r1], xc)
            _update_topk_from_gram(gram, sq_r[r0:r1], sq_c, r0, rows[r0:r1], c0, heap_d, heap_i)
    # |approx - exact| squared distance, with |a| the row's and |b| the largest
    # column norm: the float64 norms and products, gamma (|a| + |b|)^2; the sum
    # sq_a + sq_b - 2 g, 2 u (|a| + |b|)^2; the rounding of the centred
    # inputs, 2 u (|a| + |b|)^2. Doubled for margin (it costs nothing at
    # float64's scale); float64 subnormals lie far below the 1e-300 floor
    reach = (np.sqrt(sq_r) + col_norm_max) ** 2
    bound = 2.0 * (gamma + 4.0 * u) * reach + 1e-300
    return certify(x, scale, rows, heap_i, limit_from_squared(heap_d[:, 0], bound), k, out_i, out_d)


def candidate_count(k: int, n: int) -> int:
    """Number of approximate candidates kept per row before the exact re-rank."""
    return min(n - 1, k + max(k, 16))


def _float32_tier(x, xf, sq, bound, scale, rows, k, kc, block_rows, block_cols, out_i, out_d, report):
    """Candidates of ``rows`` from float32 products of the centred, scaled data
    ``xf`` (squared norms ``sq``, rounding bound ``bound`` per data row),
    re-ranked and certified; returns the rows left uncertified.

    The tiles are computed one ahead: the next tile's product runs in a worker
    thread, into the other of two buffers, while this one is folded. Folded
    right after its product, a tile took much longer (docs/benchmarks.md): the
    BLAS's threads spin-wait for more work once a product ends, on the cores the
    fold's threads need; now they are working on the next product meanwhile.
    Every tile is folded in the same order as before, so the results are the same.
    """
    n = xf.shape[0]
    m = rows.shape[0]
    heap_d = np.full((m, kc), np.inf)
    heap_i = np.full((m, kc), -1, np.int64)
    # a whole query block (no earlier tier) is read in place, not gathered
    contiguous = m > 0 and bool(np.all(np.diff(rows) == 1))
    tiles = [
        (r0, min(m, r0 + block_rows), c0, min(n, c0 + block_cols))
        for r0 in range(0, m, block_rows)
        for c0 in range(0, n, block_cols)
    ]
    buffers = [_TileBuffer(min(block_rows, m), min(block_cols, n), np.float32) for _ in range(2)]

    def of_rows(a: np.ndarray, r0: int, r1: int) -> np.ndarray:
        return a[rows[0] + r0 : rows[0] + r1] if contiguous else a[rows[r0:r1]]

    def product(t: int) -> np.ndarray:
        r0, r1, c0, c1 = tiles[t]
        return buffers[t % 2].product(of_rows(xf, r0, r1), xf[c0:c1])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastconvex-knn-product") as ahead:
        pending = ahead.submit(product, 0)  # rows and columns are never empty here
        for t, (r0, r1, c0, c1) in enumerate(tiles):
            gram = pending.result()
            if t + 1 < len(tiles):
                pending = ahead.submit(product, t + 1)
            _update_topk_from_gram(gram, of_rows(sq, r0, r1), sq[c0:c1], r0, rows[r0:r1], c0, heap_d, heap_i)
            if report is not None and c1 == n:
                report(r1)
    return certify(x, scale, rows, heap_i, limit_from_squared(heap_d[:, 0], bound[rows]), k, out_i, out_d)


class _Progress:
    """``progress(done, total)`` over the passes: the total starts at the query
    rows, and a pass over rows an earlier pass already counted (float32 after
    bfloat16, the exact scan) adds them to it once they are known."""

    def __init__(self, callback: Callable[[int, int], None] | None, m: int) -> None:
        self.callback = callback
        self.done = 0
        self.total = m

    def part(self, rows: int, recounted: int) -> Callable[[int], None] | None:
        """Reporter of a pass over ``rows`` rows, ``recounted`` of them already
        counted by an earlier pass; it takes the rows done in this pass."""
        self.total += recounted
        start = self.done
        self.done += rows
        callback = self.callback
        if callback is None:
            return None
        return lambda done: callback(start + done, self.total)


def knn(
    x: np.ndarray,
    k: int,
    *,
    block_rows: int = 1024,
    block_cols: int = 16384,
    progress: Callable[[int, int], None] | None = None,
    rows: tuple[int, int] | None = None,
    bf16: bool | None = None,
    tiers: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact k nearest other points of every row of ``x`` (Euclidean).

    Parameters
    ----------
    x : (N, D) float32 or float64 array
    k : int, 1 <= k <= N - 1
    block_rows, block_cols : tile shape of the matrix products.
    progress : optional ``progress(done, total)``, called after every block of
        rows, and of rows recomputed exactly (``total`` grows by those rows
        once the certificate has named them). The results are the same with
        or without it.
    rows : (q0, q1), optional
        Only the neighbours of query rows q0..q1-1 (against every row of ``x``):
        exactly rows q0..q1-1 of the full result, so query blocks can be
        computed apart (by different workers) and stacked.
    bf16 : bool, optional
        Force the bfloat16 first tier on (exact everywhere, slow where the CPU
        lacks bfloat16 units) or off; None (the default) reads
        ``FASTCONVEX_KNN_BF16`` ("on" / "off"), else tries the tier where the
        CPU multiplies bfloat16 in hardware and the problem is large, and keeps
        it when a probe of rows shows it certifies most rows. The results are
        the same either way.
    tiers : dict, optional
        Filled with the rows each tier certified: ``bf16``, ``float32``,
        ``float64``, ``exact`` (for benchmarks).

    Returns
    -------
    indices : (M, k) int64 (M = N, or q1 - q0), ascending by distance, ties by
        the smaller index (ties of the distances as returned)
    distances : (M, k) float64 Euclidean distances, computed exactly in float64
    n_fallback : int, rows recomputed by brute force because no tier of
        matrix products could certify them (exact ties, duplicates).
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
    m = q1 - q0
    query = np.arange(q0, q1, dtype=np.int64)
    # indexed by data row; with a query block only its rows are written (the
    # pages of the others are never touched, so cost no memory). Exact
    # distances read x in its own dtype and accumulate in float64 (no float64
    # copy of the data).
    out_i = np.empty((n, k), np.int64)
    out_d = np.empty((n, k), np.float64)
    passes = _Progress(progress, m)
    count = {"bf16": 0, "float32": 0, "float64": 0, "exact": 0}

    left = query
    use_bf16 = knn_bf16.mode(bf16)
    probe = use_bf16 is None
    if use_bf16 is None:
        use_bf16 = (
            knn_bf16.cpu_has_fast_bf16() and m * n * dim >= knn_bf16.MIN_WORK and knn_bf16.candidate_count(k, n) < n - 1
        )
    if use_bf16 and not knn_bf16.products_are_sound(knn_bf16.operand_width(dim)):
        if not probe:
            warnings.warn(
                "the bfloat16 kNN tier is off: this torch's bfloat16 matrix product rounds in a way "
                "its certificate does not cover (see kernels/numba/knn_bf16.py)",
                RuntimeWarning,
                stacklevel=2,
            )
        use_bf16 = False
    if use_bf16:
        ops = knn_bf16.Bf16Operands(xf, norms)
        bf16_rows = query
        if probe:
            # evenly spread rows first; the rest only if enough of them certify
            sample = np.unique(np.linspace(0, m - 1, min(m, knn_bf16.PROBE_ROWS)).astype(np.int64))
            picked = np.zeros(m, np.bool_)
            picked[sample] = True
            report = passes.part(sample.size, 0)
            probe_left = knn_bf16.bf16_tier(
                ops, x, scale, query[picked], k, block_rows, block_cols, out_i, out_d, report
            )
            count["bf16"] += sample.size - probe_left.size
            if count["bf16"] >= knn_bf16.MIN_CERTIFIED * sample.size:
                bf16_rows = query[~picked]
                left = probe_left
            else:
                bf16_rows = query[:0]
                left = np.sort(np.concatenate([probe_left, query[~picked]]))
        else:
            left = query[:0]
        if bf16_rows.size:
            report = passes.part(bf16_rows.size, 0)
            rest_left = knn_bf16.bf16_tier(ops, x, scale, bf16_rows, k, block_rows, block_cols, out_i, out_d, report)
            count["bf16"] += bf16_rows.size - rest_left.size
            left = np.sort(np.concatenate([left, rest_left]))
        del ops

    if left.size:
        # rows the bfloat16 tier already took: all but those of a probe it failed
        report = passes.part(left.size, left.size - (m - passes.done))
        before = left.size
        left = _float32_tier(x, xf, sq, bound, scale, left, k, kc, block_rows, block_cols, out_i, out_d, report)
        count["float32"] = before - left.size
    del xf
    if left.size >= SECOND_TIER_MIN_ROWS:
        before = left.size
        left = _float64_tier(x, mean, scale, left, k, kc, block_rows, block_cols, out_i, out_d)
        count["float64"] = before - left.size
    if left.size:
        report = passes.part(left.size, left.size)
        if report is None:
            exact_rows(x, scale, left, k, out_i, out_d)
        else:  # in batches, to report them (each row is computed alone)
            step = max(4096, -(-left.size // 20))
            for b0 in range(0, left.size, step):
                exact_rows(x, scale, left[b0 : b0 + step], k, out_i, out_d)
                report(min(left.size, b0 + step))
        count["exact"] = int(left.size)
    if tiers is not None:
        tiers.update(count)
    if rows is None:
        return out_i, out_d, int(left.size)
    return out_i[q0:q1].copy(), out_d[q0:q1].copy(), int(left.size)
