"""Exact k-nearest neighbours on the GPU (Triton), with a rounding-error certificate.

Pipeline (:func:`knn`):

1. **Fused candidate kernel** (``_knn_candidates_kernel``). One program owns
   ``BLOCK_M`` query rows and streams over a segment of the database in
   ``BLOCK_N``-row tiles. Each tile's squared distances come from ``tl.dot``
   (float16 operands with float32 accumulation, TF32 / 3xTF32 tensor cores, or
   IEEE float32) on centred, power-of-two scaled
   float32 data. The running top-``KP`` candidates of every query row stay in
   registers; distances are packed with their tile column into int32 keys
   (float bits, low mantissa bits = column), so one ``tl.min`` gives a row's
   best candidate and its column. A tile is merged only when some row's minimum
   beats that row's current worst (one reduction per tile otherwise), by
   repeated min-extraction. The N x N matrix never exists; memory is
   O(queries_per_launch * n_split * KP).
2. **Merge** the per-segment lists (``torch.topk``) into ``kc`` candidates per row.
3. **Exact re-rank** on the device (``_exact_sq_dist_kernel``): float64
   ``sum((x_i - x_j)^2)`` of the candidates from the caller's data, summed in
   the CPU backends' order (so distances agree to the bit), their correctly
   rounded roots sorted by (distance, index).
4. **Certificate** as on the CPU: a row is exact when its k-th exact distance
   lies strictly below the root of the smallest approximate squared distance
   any non-candidate can have minus a rigorous rounding bound for the
   precision used.
   Rows that fail are recomputed with the next, more precise tier (by default
   float16 -> 3xTF32 on CUDA) and finally by float64 brute force (torch).
   The float16 tier: after centring and scaling every coordinate is below 1
   in magnitude, so float16 keeps TF32's 10-bit mantissa (rounded to nearest,
   not truncated); its subnormals add an absolute error term to the bound
   (:func:`certificate_bound`). It halves the operand bytes per flop (the
   128 x 128 tile reads 32 flop per byte of float32 operands, likely more
   than the L2 cache can feed at tensor-core speed) and runs at twice TF32's
   rate.

Public entry point: :func:`knn`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch
import triton
import triton.language as tl

from fastconvex.kernels.triton.memory import free_bytes

_U32 = 2.0**-24
# Bound on the relative error of one product a_t * b_t (inputs rounded to the
# tensor-core format, possibly by truncation) for each precision tier.
_PRODUCT_ERROR = {
    "ieee": 0.0,
    "tf32x3": 2.0**-18,
    "tf32": 2.0**-9,
    # float16 copies of the (centred, scaled: |x_t| < 1) data, rounded to
    # nearest: |da| <= 2**-11 |a| in the normal range -- TF32's 10-bit mantissa
    # at half the bytes per operand and twice the tensor-core rate
    "fp16": (1.0 + 2.0**-11) ** 2 - 1.0,
}
# Absolute rounding error of one input where the format's subnormals lose
# relative precision (float16: half the subnormal spacing, 2**-25).
_INPUT_ABS_ERROR = {"fp16": 2.0**-25}
PRECISIONS = tuple(_PRODUCT_ERROR)


def certificate_bound(precision: str, dim: int, norms, big: float):
    """Bound on |computed - exact| squared distance between a row of norm
    ``norms`` and any database row (norms <= ``big``), in the kernel's scaled
    units, for rows of ``dim`` (padded) coordinates and one precision tier.

    Terms: fp32 accumulation of ``dim`` products (gamma), the inputs' rounding
    to the tier's format (relative, plus absolute for float16 subnormals:
    sum |a_t| <= sqrt(dim) |a|), and the float32 rounding of the norms and the
    final sum (7u (|a| + |b|)^2); 1 % slack.

    Tensor cores do not round each addition to nearest: they align a block of
    products to the largest exponent and truncate (Fasi et al. 2021), and for
    near neighbours the products mostly share a sign, so the truncation errors
    add up in one direction. The tensor-core tiers (fp16, tf32, tf32x3)
    therefore take gamma with twice the unit roundoff, 2**-23; "ieee" (FMA
    chains, round to nearest) keeps 2**-24."""
    u = _U32
    u_acc = u if precision == "ieee" else 2.0 * u
    gamma = dim * u_acc / (1.0 - dim * u_acc) if dim * u_acc < 0.5 else math.inf
    e_abs = _INPUT_ABS_ERROR.get(precision, 0.0)
    dot_abs = e_abs * (1.0 + 2.0**-11) * math.sqrt(dim) * (norms + big) + dim * e_abs * e_abs
    return (
        1.01
        * (
            2.0 * ((gamma + _PRODUCT_ERROR[precision] * (1 + 2 * u)) * norms * big + dot_abs)
            + 7.0 * u * (norms + big) ** 2
        )
        + 1e-300
    )


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_KEY_EMPTY = 0x7FFFFFFF  # int32 key of an empty / excluded entry (above every packed float)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b on tensor cores: float16 operands as they are ("fp16"), float32
    ones at the tier's ``input_precision``; float32 accumulation."""
    if PRECISION == "fp16":
        out = tl.dot(a, b, acc)
    else:
        out = tl.dot(a, b, acc, input_precision=PRECISION)
    return out


@triton.jit
def _tile_dot(
    a_base,
    a_offs,
    b_base,
    b_offs,
    DP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) dot products of a query tile and a database tile,
    K step by K step (zero-padded rows and columns: no masks)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, DP, BLOCK_K):
        a = tl.load(a_base + (a_offs + k0))
        b = tl.load(b_base + (b_offs + k0))
        acc = _dot(a, b, acc, PRECISION)
    return acc


@triton.jit
def _tile_keys(acc, sq_q, sq_ptr, n0, BLOCK_N: tl.constexpr):
    """The database rows ``n0 ...`` of a tile and its packed keys: the float
    bits of each squared distance (clamped at 0) with the low log2(BLOCK_N)
    bits replaced by the tile column."""
    cols_n = tl.arange(0, BLOCK_N)
    keys = n0 + cols_n
    sq_k = tl.load(sq_ptr + keys)
    d = tl.maximum(sq_q[:, None] + sq_k[None, :] - 2.0 * acc, 0.0)
    return keys, (d.to(tl.int32, bitcast=True) & (-BLOCK_N)) | cols_n[None, :]


@triton.jit
def _merge_rows(key, run_key, run_i, thr, n0, BLOCK_N: tl.constexpr, KP: tl.constexpr):
    """Fold a (BLOCK_M, BLOCK_N) tile of packed keys into the rows' running
    top-KP; returns (run_key, run_i, thr). Merge only when some row's tile
    minimum beats its current worst; one insertion per row per step (the best
    replaces the worst). No re-filter of the tile is needed: once a row's
    minimum fails, everything fails."""
    cols_k = tl.arange(0, KP)
    best = tl.min(key, axis=1)
    n_better = tl.max((best < thr).to(tl.int32), axis=0)
    while n_better > 0:
        worst = tl.argmax(run_key, axis=1)
        ins = best < thr
        slot = (cols_k[None, :] == worst[:, None]) & ins[:, None]
        run_key = tl.where(slot, best[:, None], run_key)
        run_i = tl.where(slot, (n0 + (best & (BLOCK_N - 1)))[:, None], run_i)
        key = tl.where(key == best[:, None], 0x7FFFFFFF, key)
        thr = tl.max(run_key, axis=1)
        best = tl.min(key, axis=1)
        n_better = tl.max((best < thr).to(tl.int32), axis=0)
    return run_key, run_i, thr


@triton.jit
def _merge_tile(
    acc,
    run_key,
    run_i,
    thr,
    sq_q,
    sq_ptr,
    q,
    n0,
    key_hi,
    BLOCK_N: tl.constexpr,
    KP: tl.constexpr,
    MASK_EVERY_TILE: tl.constexpr,
):
    """Fold one (BLOCK_M, BLOCK_N) tile of dot products (database rows n0 ...)
    into the rows' running top-KP keys; returns (run_key, run_i, thr)."""
    keys, key = _tile_keys(acc, sq_q, sq_ptr, n0, BLOCK_N)
    # Keys past the segment (the last tile) and a query row's own key (the
    # tile that holds it) are excluded. Most tiles hold neither: the (BLOCK_M,
    # BLOCK_N) masks then cost nothing, only this (BLOCK_M,) test per tile.
    if MASK_EVERY_TILE:  # the simpler epilogue, kept so bench/gpu_check.py can time both
        needs_mask = True
    else:
        own = tl.max(((q >= n0) & (q < n0 + BLOCK_N)).to(tl.int32), axis=0)
        needs_mask = (own > 0) | (n0 + BLOCK_N > key_hi)
    if needs_mask:
        bad = (keys[None, :] >= key_hi) | (keys[None, :] == q[:, None])
        key = tl.where(bad, 0x7FFFFFFF, key)
    return _merge_rows(key, run_key, run_i, thr, n0, BLOCK_N, KP)


@triton.jit(do_not_specialize=["M", "N", "keys_per_split", "n_split"])
def _knn_candidates_kernel(
    xq_ptr,  # (>= cdiv(M, BLOCK_M) * BLOCK_M, DP) query rows (centred, scaled,
    #          zero-padded rows and columns), row stride DP; float32, or float16
    #          when PRECISION is "fp16"
    xk_ptr,  # (>= cdiv(N, BLOCK_N) * BLOCK_N, DP) database, zero-padded, same dtype
    sq_ptr,  # (>= cdiv(N, BLOCK_N) * BLOCK_N,) float32 squared norms of the database rows
    qidx_ptr,  # (M,) int64 global row index of each query (self-exclusion, norm)
    out_d_ptr,  # (M, n_split, KP) float32 approximate squared distances (truncated)
    out_i_ptr,  # (M, n_split, KP) int32 neighbour indices (-1 = empty)
    M,
    N,
    keys_per_split,
    n_split,
    DP: tl.constexpr,  # padded dimension, a multiple of BLOCK_K
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KP: tl.constexpr,
    PRECISION: tl.constexpr,
    FLAT: tl.constexpr = False,  # one loop over (tile, K step) instead of two nested
    MASK_EVERY_TILE: tl.constexpr = False,  # exclusion masks on every tile (the simpler epilogue)
):
    # Integer arguments are not specialized (do_not_specialize): every launch of
    # one (DP, block, KP, precision) configuration reuses one compiled kernel
    # (a value of 1 or a multiple of 16 would otherwise trigger a new JIT
    # compile, e.g. n_split == 1 inside a timed call).
    #
    # Candidates are packed int32 keys: the bits of the (non-negative) float32
    # distance with its low log2(BLOCK_N) mantissa bits replaced by the tile
    # column. Integer order = distance order (ties by column), so a row's best
    # candidate and its column come from one tl.min. The stored distance is the
    # packed value with the column bits cleared, i.e. rounded down: a valid
    # lower bound for the certificate (see knn()).
    pid_s = tl.program_id(0)  # segment axis first: neighbouring programs share queries in L2
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    q = tl.load(qidx_ptr + rows, mask=row_ok, other=0)
    sq_q = tl.load(sq_ptr + q)
    cols_k = tl.arange(0, KP)
    cols_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # xq / xk rows are zero-padded to whole tiles: scalar tile base + constant
    # int32 offsets, no masks and no per-row 64-bit pointers in the K loop
    a_base = xq_ptr + pid_m.to(tl.int64) * (BLOCK_M * DP)
    a_offs = tl.arange(0, BLOCK_M)[:, None] * DP + offs_k[None, :]
    b_offs = cols_n[None, :] * DP + offs_k[:, None]

    run_key = tl.full((BLOCK_M, KP), 0x7FFFFFFF, tl.int32)
    run_i = tl.full((BLOCK_M, KP), -1, tl.int32)
    thr = tl.max(run_key, axis=1)

    key_lo = pid_s * keys_per_split
    key_hi = tl.minimum(key_lo + keys_per_split, N)
    if FLAT:
        # One loop over (tile, K step): the software pipeliner then keeps the
        # next tile's first operand slices in flight during this tile's merge,
        # instead of draining and refilling its stages at every tile.
        KS: tl.constexpr = DP // BLOCK_K
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        n_steps = tl.cdiv(key_hi - key_lo, BLOCK_N) * KS
        for t in range(n_steps):
            tile = t // KS
            k0 = (t - tile * KS) * BLOCK_K
            n0 = key_lo + tile * BLOCK_N
            a = tl.load(a_base + (a_offs + k0))
            b = tl.load(xk_ptr + n0.to(tl.int64) * DP + (b_offs + k0))
            acc = _dot(a, b, acc, PRECISION)
            if k0 == DP - BLOCK_K:
                run_key, run_i, thr = _merge_tile(
                    acc, run_key, run_i, thr, sq_q, sq_ptr, q, n0, key_hi, BLOCK_N, KP, MASK_EVERY_TILE
                )
                acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    else:
        b_base = xk_ptr + key_lo.to(tl.int64) * DP
        for n0 in range(key_lo, key_hi, BLOCK_N):
            acc = _tile_dot(a_base, a_offs, b_base, b_offs, DP, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
            b_base += BLOCK_N * DP
            run_key, run_i, thr = _merge_tile(
                acc, run_key, run_i, thr, sq_q, sq_ptr, q, n0, key_hi, BLOCK_N, KP, MASK_EVERY_TILE
            )

    out_d = (run_key & (-BLOCK_N)).to(tl.float32, bitcast=True)
    out_d = tl.where(run_key == 0x7FFFFFFF, float("inf"), out_d)
    base = (rows[:, None].to(tl.int64) * n_split + pid_s) * KP + cols_k[None, :]
    tl.store(out_d_ptr + base, out_d, mask=row_ok[:, None])
    tl.store(out_i_ptr + base, run_i, mask=row_ok[:, None])


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v - 1).bit_length())


def candidate_slots(k: int) -> int:
    """Candidates kept per row and database segment (power of two >= k + max(k, 16))."""
    return _next_pow2(k + max(k, 16))


def _n_programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def default_precisions(device: torch.device) -> tuple[str, ...]:
    """Certificate tiers tried in order (the last tier's failures go to float64)."""
    if device.type == "cuda" and not _interpreting():
        return ("fp16", "tf32x3")
    return ("ieee",)


def _auto_segments(n, m, block_m, block_n, n_programs, device):
    """Database segments per query block (the grid's first axis): just enough
    programs to fill the GPU (``n_programs``, default 4 x SMs).

    Splitting further, for L2 locality (up to 8 segments of >= 64 tiles), does
    not pay: on Hopper (D = 768, k = 10) one segment is faster at N = 1e5 and
    1e6 (``knn(..., segments=8)`` keeps the split for comparison), and every
    extra segment adds a candidate list to merge."""
    n_tiles = triton.cdiv(n, block_n)
    grid_m = triton.cdiv(m, block_m)
    target = n_programs or _n_programs_target(device)
    fill = triton.cdiv(target, grid_m)
    return max(1, min(n_tiles, fill))


def _candidates(
    xs,
    sq32,
    qidx,
    kp,
    precision,
    block_m,
    block_n,
    block_k,
    num_warps,
    num_stages,
    query_chunk,
    n_programs=None,
    segments=None,
    contiguous=False,
    n_real=None,
    flat_loop=False,
    keep=None,
    mask_every_tile=False,
):
    """Approximate top-``keep`` candidates for the queries ``qidx`` (one launch
    per chunk of ``query_chunk`` queries, a multiple of ``block_m``).

    ``xs`` is (N_pad, DP): DP a multiple of ``block_k``, N_pad >= N a multiple of
    ``block_m`` and ``block_n`` (zero padding); ``sq32`` likewise (N_pad,).
    ``contiguous``: ``qidx`` is ``arange(M)`` (query rows are a view of ``xs``).
    Each chunk's per-segment lists (``n_split`` x ``kp`` per row) are cut to
    their ``keep`` (default ``kp``) smallest at once, so memory holds one
    chunk's lists plus (M, keep) results, however many segments a chunk used.
    Every non-candidate's approximate distance is >= the largest kept one (a
    segment's lists hold ``kp`` >= ``keep`` entries).
    Returns (M, keep) float32 distances (rounded down; inf where empty) and
    int64 indices (-1 where empty)."""
    device = xs.device
    n, dim_p = (xs.shape[0] if n_real is None else n_real), xs.shape[1]
    m_all = qidx.shape[0]
    keep = kp if keep is None else keep
    res_d = torch.empty((m_all, keep), dtype=torch.float32, device=device)
    res_i = torch.empty((m_all, keep), dtype=torch.int64, device=device)
    for c0 in range(0, m_all, query_chunk):
        q = qidx[c0 : c0 + query_chunk]
        m = q.shape[0]
        grid_m = triton.cdiv(m, block_m)
        if contiguous:  # c0 is a multiple of block_m: whole padded tiles lie inside xs
            xq = xs[c0 : c0 + grid_m * block_m]
        else:
            xq = torch.zeros((grid_m * block_m, dim_p), dtype=xs.dtype, device=device)
            xq[:m] = xs.index_select(0, q)
        n_split = _auto_segments(n, m, block_m, block_n, n_programs, device)
        if segments is not None:
            n_split = max(1, min(int(segments), triton.cdiv(n, block_n)))
        per = triton.cdiv(triton.cdiv(n, n_split), block_n) * block_n
        n_split = triton.cdiv(n, per)
        out_d = torch.empty((m, n_split, kp), dtype=torch.float32, device=device)
        out_i = torch.empty((m, n_split, kp), dtype=torch.int32, device=device)
        extra = {} if _interpreting() else {"num_warps": num_warps, "num_stages": num_stages}
        _knn_candidates_kernel[(n_split, grid_m)](
            xq,
            xs,
            sq32,
            q,
            out_d,
            out_i,
            m,
            n,
            per,
            n_split,
            DP=dim_p,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            KP=kp,
            PRECISION=precision,
            FLAT=bool(flat_loop),
            MASK_EVERY_TILE=bool(mask_every_tile),
            **extra,
        )
        cd = out_d.reshape(m, n_split * kp)
        ci = out_i.reshape(m, n_split * kp)
        if cd.shape[1] > keep:
            cd, sel = torch.topk(cd, keep, dim=1, largest=False)
            ci = torch.gather(ci, 1, sel)
        res_d[c0 : c0 + m] = cd
        res_i[c0 : c0 + m] = ci
        del out_d, out_i, cd, ci
    return res_d, res_i


# ---------------------------------------------------------------------------
# Symmetric candidate search: every pair of rows computed once
# ---------------------------------------------------------------------------


@triton.jit(do_not_specialize=["N"])
def _knn_candidates_sym_kernel(
    xs_ptr,  # (N_pad, DP) every row (queries and database), centred, scaled, zero-padded
    sq_ptr,  # (N_pad,) float32 squared norms
    row_d_ptr,  # (N, KP) float32 out: each row's candidates among columns >= its own block
    row_i_ptr,  # (N, KP) int32 out
    col_key_ptr,  # (N_pad, KP) int32 in/out: each row's candidates among earlier blocks (packed keys)
    col_i_ptr,  # (N_pad, KP) int32 in/out
    col_thr_ptr,  # (N_pad,) int32 in/out: the largest key of each column list
    lock_ptr,  # (N_pad // BLOCK_N,) int32: one spin lock per column tile
    N,
    DP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KP: tl.constexpr,
    PRECISION: tl.constexpr,
    STAGGER: tl.constexpr = False,
):
    # Program p owns rows [p * BLOCK_M, (p + 1) * BLOCK_M) and streams over the
    # database tiles from the one holding its own block to the end. A tile's
    # distances serve twice: each row's running top-KP in registers (columns
    # of its own block and later ones, as in _knn_candidates_kernel), and,
    # for columns of later blocks, each column's list in global memory (rows
    # of earlier blocks), merged under the column tile's lock. Every pair of
    # distinct rows is computed once instead of twice. Column keys pack the
    # row within the block in the low log2(BLOCK_N) bits (BLOCK_M <= BLOCK_N).
    pid = tl.program_id(0)
    rloc = tl.arange(0, BLOCK_M)
    rows = pid * BLOCK_M + rloc
    row_ok = rows < N
    sq_q = tl.load(sq_ptr + rows)
    cols_k = tl.arange(0, KP)
    cols_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_base = xs_ptr + pid.to(tl.int64) * (BLOCK_M * DP)
    a_offs = rloc[:, None] * DP + offs_k[None, :]
    b_offs = cols_n[None, :] * DP + offs_k[:, None]

    run_key = tl.full((BLOCK_M, KP), 0x7FFFFFFF, tl.int32)
    run_i = tl.full((BLOCK_M, KP), -1, tl.int32)
    thr = tl.max(run_key, axis=1)
    block_lo = pid * BLOCK_M
    block_hi = block_lo + BLOCK_M
    t_lo = (block_lo // BLOCK_N) * BLOCK_N
    # STAGGER: the BLOCK_N // BLOCK_M programs that start at the same tile
    # begin at evenly spaced tiles of their range instead (then wrap), so they
    # do not queue for the same column lock tile after tile; the cost is less
    # sharing of database tiles in L2. Which wins is for bench/knn_ab.py.
    n_tiles = tl.cdiv(N - t_lo, BLOCK_N)
    shift = (pid % (BLOCK_N // BLOCK_M)) * (n_tiles // (BLOCK_N // BLOCK_M)) if STAGGER else 0
    for i in range(n_tiles):
        if STAGGER:
            j = i + shift
            j = tl.where(j >= n_tiles, j - n_tiles, j)
        else:
            j = i
        n0 = t_lo + j * BLOCK_N
        b_base = xs_ptr + n0.to(tl.int64) * DP
        acc = _tile_dot(a_base, a_offs, b_base, b_offs, DP, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        keys, key = _tile_keys(acc, sq_q, sq_ptr, n0, BLOCK_N)
        # row side: columns of earlier blocks (first tile only), past N (last
        # tile only) and the row itself are excluded
        if (n0 == t_lo) | (n0 + BLOCK_N > N):
            bad = (keys[None, :] < block_lo) | (keys[None, :] >= N) | (keys[None, :] == rows[:, None])
            key = tl.where(bad, 0x7FFFFFFF, key)
        # column side first (the row merge below consumes ``key``): columns of
        # later blocks only, rows below N
        # (a block with rows past N is the last one: no column lies in a later block)
        col_ok = (keys >= block_hi) & (keys < N)
        ckey = (key & (-BLOCK_N)) | rloc[:, None]
        cbest = tl.where(col_ok, tl.min(ckey, axis=0), 0x7FFFFFFF)
        # a stale threshold is never below the current one (they only fall),
        # so no candidate is skipped here; the merge re-reads under the lock.
        # Volatile load / relaxed atomic store: no data race with the writer.
        cthr = tl.load(col_thr_ptr + keys, volatile=True)
        improving = cbest < cthr
        if tl.max(improving.to(tl.int32), axis=0) > 0:
            lock = lock_ptr + n0 // BLOCK_N
            while tl.atomic_cas(lock, 0, 1, sem="acquire") == 1:
                pass
            lst = keys[None, :].to(tl.int64) * KP + cols_k[:, None]  # (KP, BLOCK_N)
            ck = tl.load(col_key_ptr + lst, mask=improving[None, :], other=0x7FFFFFFF, cache_modifier=".cg")
            ci = tl.load(col_i_ptr + lst, mask=improving[None, :], other=-1, cache_modifier=".cg")
            cthr = tl.max(ck, axis=0)
            cbest = tl.where(improving, cbest, 0x7FFFFFFF)
            n_better = tl.max((cbest < cthr).to(tl.int32), axis=0)
            while n_better > 0:
                worst = tl.argmax(ck, axis=0)
                ins = cbest < cthr
                slot = (cols_k[:, None] == worst[None, :]) & ins[None, :]
                ck = tl.where(slot, cbest[None, :], ck)
                ci = tl.where(slot, (block_lo + (cbest & (BLOCK_N - 1)))[None, :], ci)
                cthr = tl.max(ck, axis=0)
                nxt = tl.min(tl.where(ckey > cbest[None, :], ckey, 0x7FFFFFFF), axis=0)
                cbest = tl.where(improving, nxt, 0x7FFFFFFF)
                n_better = tl.max((cbest < cthr).to(tl.int32), axis=0)
            tl.store(col_key_ptr + lst, ck, mask=improving[None, :])
            tl.store(col_i_ptr + lst, ci, mask=improving[None, :])
            tl.atomic_xchg(col_thr_ptr + keys, cthr, mask=improving, sem="relaxed")
            # every thread's stores before the release (the atomic is one
            # thread's; the loads above bypass L1 with .cg and read L2)
            tl.debug_barrier()
            tl.atomic_xchg(lock, 0, sem="release")
        run_key, run_i, thr = _merge_rows(key, run_key, run_i, thr, n0, BLOCK_N, KP)

    out_d = (run_key & (-BLOCK_N)).to(tl.float32, bitcast=True)
    out_d = tl.where(run_key == 0x7FFFFFFF, float("inf"), out_d)
    base = rows[:, None].to(tl.int64) * KP + cols_k[None, :]
    tl.store(row_d_ptr + base, out_d, mask=row_ok[:, None])
    tl.store(row_i_ptr + base, run_i, mask=row_ok[:, None])


def _candidates_symmetric(
    xs, sq32, kp, precision, block_m, block_n, block_k, num_warps, num_stages, n_real, keep, stagger=False
):
    """The candidates of every row (queries = the whole database, ``xs`` padded
    as for :func:`_candidates`) from one launch of the symmetric kernel: each
    row's list among its own and later blocks and its list among earlier
    blocks, cut to their ``keep`` smallest. Same contract as
    :func:`_candidates` (every non-candidate's approximate distance is >= the
    largest kept one: each of the two lists holds ``kp`` >= ``keep``).

    On a GPU the order in which programs take a column's lock decides between
    candidates tied at that column's threshold, so the lists (and which rows
    the first tier certifies) may vary from run to run; the neighbours knn()
    returns cannot, since a row is certified only when its k nearest are
    certain and every other row is recomputed. ``block_n`` is a multiple of
    ``block_m`` (:func:`knn` checks it)."""
    device = xs.device
    n = n_real
    n_pad = xs.shape[0]
    row_d = torch.empty((n, kp), dtype=torch.float32, device=device)
    row_i = torch.empty((n, kp), dtype=torch.int32, device=device)
    col_key = torch.full((n_pad, kp), _KEY_EMPTY, dtype=torch.int32, device=device)
    col_i = torch.full((n_pad, kp), -1, dtype=torch.int32, device=device)
    col_thr = torch.full((n_pad,), _KEY_EMPTY, dtype=torch.int32, device=device)
    locks = torch.zeros(triton.cdiv(n_pad, block_n), dtype=torch.int32, device=device)
    extra = {} if _interpreting() else {"num_warps": num_warps, "num_stages": num_stages}
    _knn_candidates_sym_kernel[(triton.cdiv(n, block_m),)](
        xs,
        sq32,
        row_d,
        row_i,
        col_key,
        col_i,
        col_thr,
        locks,
        n,
        DP=xs.shape[1],
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        KP=kp,
        PRECISION=precision,
        STAGGER=bool(stagger),
        **extra,
    )
    col_key = col_key[:n]
    col_d = (col_key & -block_n).view(torch.float32)
    col_d = torch.where(col_key == _KEY_EMPTY, torch.full_like(col_d, math.inf), col_d)
    cd = torch.cat([row_d, col_d], dim=1)
    ci = torch.cat([row_i, col_i[:n]], dim=1)
    del row_d, row_i, col_key, col_d, col_thr
    cd, sel = torch.topk(cd, keep, dim=1, largest=False)
    return cd, torch.gather(ci, 1, sel).to(torch.int64)


def query_chunk_size(n: int, block_m: int, per_query_bytes: int, budget: int, query_chunk: int | None = None) -> int:
    """Queries per launch: as many as ``budget`` allows (or ``query_chunk``), at
    most 65 535 query blocks (CUDA's limit on the grid's second axis), balanced
    over the launches and rounded up to whole ``block_m`` blocks, so no launch
    is a sliver of a few rows (a one-block launch would split the database into
    hundreds of segments)."""
    want = budget // max(1, per_query_bytes) if query_chunk is None else int(query_chunk)
    want = max(block_m, min(want, 65535 * block_m))
    n_launches = triton.cdiv(n, want)
    return triton.cdiv(triton.cdiv(n, n_launches), block_m) * block_m


def _sort_by_dist_then_index(d: torch.Tensor, i: torch.Tensor):
    """Sort every row by (distance, index): stable sort on the index, then on distance."""
    i_sorted, p = torch.sort(i, dim=1, stable=True)
    d = torch.gather(d, 1, p)
    d_sorted, p2 = torch.sort(d, dim=1, stable=True)
    return d_sorted, torch.gather(i_sorted, 1, p2)


@triton.jit
def _add_squares_in_order(s, d, BLOCK_P: tl.constexpr):
    """s + d[:, 0]**2 + d[:, 1]**2 + ... + d[:, 7]**2, added one column at a
    time, left to right (the order of a sequential loop over the columns)."""
    sq = d * d
    e0, e1 = tl.split(tl.reshape(sq, [BLOCK_P, 2, 2, 2]))  # columns 4a+2b, 4a+2b+1
    e00, e01 = tl.split(e0)  # 4a, 4a+2
    e10, e11 = tl.split(e1)  # 4a+1, 4a+3
    c0, c4 = tl.split(e00)
    c2, c6 = tl.split(e01)
    c1, c5 = tl.split(e10)
    c3, c7 = tl.split(e11)
    s = s + c0
    s = s + c1
    s = s + c2
    s = s + c3
    s = s + c4
    s = s + c5
    s = s + c6
    s = s + c7
    return s


@triton.jit(do_not_specialize=["n_pairs", "KC"])  # KC varies in the brute-force fallback
def _exact_sq_dist_kernel(
    x_ptr,  # (N, D) data as the caller gave it (any float dtype), strides below
    rows_ptr,  # (M,) int64 query row of each list
    cand_ptr,  # (M, KC) int64 candidate rows, contiguous (-1 = none)
    out_ptr,  # (M, KC) float64 squared distances (inf where the candidate is -1)
    n_pairs,  # M * KC
    KC,
    D,
    stride_row,
    stride_col,
    BLOCK_P: tl.constexpr,
):
    # sum_t (x[i, t] - x[j, t])**2 in float64, t ascending, one rounding per
    # subtraction, square and addition (launched with enable_fp_fusion=False:
    # no fused multiply-add). That is the CPU backends' loop (Numba, and
    # SciPy's cdist in the naive scorer), so the distances agree to the bit
    # across backends and devices, and so do the ties they decide. (Numba
    # scales the differences by a power of two first: the same values
    # wherever no squared difference underflows or overflows.)
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < n_pairs
    c = tl.load(cand_ptr + p, mask=p_ok, other=-1)
    ok = p_ok & (c >= 0)
    r = tl.load(rows_ptr + p // KC, mask=p_ok, other=0)
    a_row = x_ptr + r * stride_row
    b_row = x_ptr + tl.where(ok, c, 0) * stride_row
    cols = tl.arange(0, 8)
    s = tl.zeros((BLOCK_P,), tl.float64)
    for t0 in range(0, D, 8):
        t = t0 + cols
        m = ok[:, None] & (t < D)[None, :]
        col = t[None, :].to(tl.int64) * stride_col  # int64: a column-major x can pass 2**31
        a = tl.load(a_row[:, None] + col, mask=m, other=0.0).to(tl.float64)
        b = tl.load(b_row[:, None] + col, mask=m, other=0.0).to(tl.float64)
        # padded columns add +0.0, which leaves every sum (>= 0) unchanged
        s = _add_squares_in_order(s, a - b, BLOCK_P)
    s = tl.where(ok, s, float("inf"))
    tl.store(out_ptr + p, s, mask=p_ok)


def _exact_dist(x: torch.Tensor, rows: torch.Tensor, cand: torch.Tensor):
    """float64 distance, the correctly rounded root of sum((x_i - x_j)^2) summed
    over the columns in order, for each row's candidates (inf where cand < 0):
    bit for bit the naive scorer's (SciPy's cdist), and the Numba backend's
    wherever no squared difference underflows or overflows
    (``_exact_sq_dist_kernel``; no (rows, KC, D) temporaries)."""
    m, kc = cand.shape
    out = torch.empty((m, kc), dtype=torch.float64, device=x.device)
    n_pairs = m * kc
    if n_pairs:
        block_p = 64 if _interpreting() else 128
        extra = {} if _interpreting() else {"num_warps": 4}
        _exact_sq_dist_kernel[(triton.cdiv(n_pairs, block_p),)](
            x,
            rows.to(torch.int64).contiguous(),
            cand.to(torch.int64).contiguous(),
            out,
            n_pairs,
            kc,
            x.shape[1],
            x.stride(0),
            x.stride(1),
            BLOCK_P=block_p,
            enable_fp_fusion=False,
            **extra,
        )
    return _sqrt_rn(out)


def _brute_force_f64(x: torch.Tensor, rows: torch.Tensor, k: int, row_budget: int, mean=None):
    """Exact float64 kNN of ``rows`` against every point (the certificate's fallback).

    Centred float64 Gram distances select, per row, every point within a
    rounding bound of the k-th smallest (so exact ties are all kept); those are
    recomputed as sum((x_i - x_j)^2), and their square roots (the distances
    returned) sorted by (distance, index)."""
    n, dim = x.shape
    if mean is None:
        mean = _chunked_mean(x)
    out_i = torch.empty((rows.shape[0], k), dtype=torch.int64, device=x.device)
    out_d = torch.empty((rows.shape[0], k), dtype=torch.float64, device=x.device)
    col_step = max(1, min(n, row_budget // (8 * max(dim, 1) * 2)))
    row_step = max(1, min(rows.shape[0], row_budget // (8 * max(n, 1) * 4)))
    big = 0.0
    for c0 in range(0, n, col_step):
        big = max(big, float((x[c0 : c0 + col_step].to(torch.float64) - mean).norm(dim=1).max()))
    eps = 2.0**-53
    for r0 in range(0, rows.shape[0], row_step):
        r = rows[r0 : r0 + row_step]
        xr = x[r].to(torch.float64) - mean
        sr = (xr * xr).sum(1)
        dist = torch.empty((r.shape[0], n), dtype=torch.float64, device=x.device)
        for c0 in range(0, n, col_step):
            xc = x[c0 : c0 + col_step].to(torch.float64) - mean
            sc = (xc * xc).sum(1)
            dist[:, c0 : c0 + col_step] = sr[:, None] + sc[None, :] - 2.0 * (xr @ xc.T)
        dist[torch.arange(r.shape[0], device=x.device), r] = math.inf
        kth = torch.topk(dist, k, dim=1, largest=False).values[:, -1]
        tol = 8.0 * (dim + 4) * eps * (sr.sqrt() + big) ** 2
        width = int((dist <= (kth + tol)[:, None]).sum(1).max())
        width = max(k, min(n - 1, width))
        _, cand = torch.topk(dist, width, dim=1, largest=False)
        del dist
        d = _exact_dist(x, r, cand)
        d, cand = _sort_by_dist_then_index(d, cand)
        out_i[r0 : r0 + row_step] = cand[:, :k]
        out_d[r0 : r0 + row_step] = d[:, :k]
    return out_i, out_d


def knn(
    x,
    k: int,
    *,
    precisions: tuple[str, ...] | None = None,
    block_m: int | None = None,
    block_n: int | Mapping[str, int] | None = None,
    block_k: int | None = None,
    num_warps: int = 8,
    num_stages: int = 3,
    query_chunk: int | None = None,
    n_programs: int | None = None,
    segments: int | None = None,
    flat_loop: bool = False,
    mask_every_tile: bool = False,
    symmetric: bool = False,
    stagger: bool = False,
    return_stats: bool = False,
):
    """Exact k nearest other points of every row of ``x`` (Euclidean).

    Parameters
    ----------
    x : (N, D) torch tensor (float32/float64/bf16/fp16) on the kernel's device
        (CUDA, or CPU under ``TRITON_INTERPRET=1``).
    k : 1 <= k <= N - 1 (up to 64 for the fused kernel; any k works, slower).
    precisions : certificate tiers, tried in order ("fp16": float16 copies of
        the centred, scaled data; "tf32", "tf32x3", "ieee": ``tl.dot`` input
        precisions on float32); rows no tier certifies are recomputed in
        float64. Default on CUDA ("fp16", "tf32x3"); under the interpreter ("ieee",).
    block_m, block_n, block_k : tile shape (default on the GPU 128, 256, 32
        for the fp16 tier at k <= 16, else 128, 128, 32; small blocks make
        the interpreter fast); powers of two. ``block_n`` may also map tier
        names to widths (tiers left out get the default).
    num_warps, num_stages : launch settings (default 8, 3).
    query_chunk : queries per launch (default: as many as memory allows).
    n_programs : programs to aim for per launch; the database is split into
        segments (a second grid axis) when the queries alone give fewer
        (default: 4 x the number of SMs; 1 under the interpreter).
    segments : exactly this many database segments per query block (overrides
        the automatic choice; more candidate lists to merge, but concurrent
        programs then share query rows in L2).
    flat_loop : one loop over (database tile, K step) instead of a K loop
        nested in a tile loop. Compiled for sm_90 (Triton 3.6), the flat loop
        keeps the operand pipeline full across tiles: the next tile's first K
        slices are loaded while this tile is merged, where the nested loop
        drains its stages and refills them at every tile. It also holds a few
        more registers per thread (still one 8-warp program per SM). Same
        results; which is faster is measured by ``bench/gpu_check.py``.
    mask_every_tile : apply the exclusion masks (keys past the segment, the
        query row itself) to every tile (the simpler epilogue) instead of only
        to the tiles that can hold such keys. Same results; kept so that
        ``bench/gpu_check.py`` times both epilogues in one run.
    symmetric : the first tier computes every pair of rows once
        (``_knn_candidates_sym_kernel``: a tile's distances feed its rows'
        lists in registers and its columns' lists in global memory, under a
        lock per column tile): half the matmul's flops, for a second merge per
        tile and (N, KP) column lists (8 bytes per slot). Needs ``block_n`` a
        multiple of ``block_m``; no query chunks and no database segments.
        Same results (the certificate is unchanged); whether it is faster is
        for ``bench/knn_ab.py`` to measure.
    stagger : with ``symmetric``, the programs that start at the same
        database tile begin at evenly spaced tiles instead (fewer waits on
        the same column lock, less sharing of tiles in L2). Same results.

    Returns
    -------
    indices : (N, k) int64 tensor, ascending by distance, ties by smaller index
    distances : (N, k) float64 tensor, exact Euclidean distances
    n_fallback : rows not certified by the first tier
    (stats dict as a fourth element with ``return_stats=True``)
    """
    device = x.device
    n, dim = x.shape
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    if precisions is None:
        precisions = default_precisions(device)
    precisions = tuple(precisions)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ValueError(f"precisions must be a non-empty sequence of {PRECISIONS}, got {precisions!r}")
    interp = _interpreting()
    kp = candidate_slots(k)
    # Defaults for Hopper-class GPUs at large N: 128 x 256 tiles for the fp16
    # tier where the candidate lists are short (KP <= 32, k <= 16: 85 flop per
    # byte of float16 operands against 64 for 128 x 128, so the tensor cores
    # wait less on memory), else 128 x 128
    # (registers; and the float32 tiers' operand stages, 160 KiB of shared
    # memory at 128 x 256, would not fit GPUs with 100 KiB); K step 32,
    # 8 warps, 3 stages.
    if block_m is None:
        block_m = 32 if interp else 128
    given = block_n if isinstance(block_n, Mapping) else dict.fromkeys(precisions, block_n)
    tier_block_n = {
        p: given[p] if given.get(p) is not None else (256 if not interp and kp <= 32 and p == "fp16" else 128)
        for p in precisions
    }
    block_n = max(tier_block_n.values())  # rows are padded to whole tiles of every tier
    if block_k is None:
        block_k = 32
    if not interp and kp > 64:
        block_m = min(block_m, 64)
    kc = min(n - 1, kp)
    # zero-padded columns (exact: they add 0 to every dot product and norm) make
    # the row stride a multiple of BLOCK_K, so the kernel's K loop needs no masks
    dim_p = triton.cdiv(max(dim, 1), block_k) * block_k
    budget = max(64 << 20, free_bytes(device) // 4)
    # candidate lists are small (per row: KP x 8 bytes per segment from the
    # kernel and about as much again for the top-kc cut, up to ~8 segments):
    # one launch covers as many queries as memory allows
    query_chunk = query_chunk_size(n, block_m, kp * 16 * 8 + dim_p * 4, budget, query_chunk)

    # Centre in float64 and scale by a power of two (exact) before float32.
    x64mean = x.to(torch.float64).mean(0) if n * dim * 8 <= budget else _chunked_mean(x)
    # rows padded to whole tiles (zero rows are never reported: keys >= N are
    # excluded in the kernel, query rows >= M are not stored)
    n_pad = triton.cdiv(n, max(block_m, block_n)) * max(block_m, block_n)
    xs = torch.zeros((n_pad, dim_p), dtype=torch.float32, device=device)
    step = max(1, budget // (dim * 8 * 2))
    norm_max = 0.0
    for r0 in range(0, n, step):
        xc = x[r0 : r0 + step].to(torch.float64) - x64mean
        norm_max = max(norm_max, float(xc.norm(dim=1).max()))
    scale = 2.0 ** (-math.frexp(norm_max)[1]) if norm_max > 0 else 1.0
    for r0 in range(0, n, step):
        xs[r0 : min(n, r0 + step), :dim] = ((x[r0 : r0 + step].to(torch.float64) - x64mean) * scale).to(torch.float32)
    norms = xs[:n].to(torch.float64).norm(dim=1) if n * dim * 8 <= budget else _chunked_norms(xs[:n])
    sq32 = torch.zeros(n_pad, dtype=torch.float32, device=device)
    sq32[:n] = (norms * norms).to(torch.float32)
    big = float(norms.max())
    # float16 operands for the "fp16" tier (|x_t| < 1 after scaling: no overflow)
    xs16 = xs.to(torch.float16) if "fp16" in precisions else None

    out_i = torch.empty((n, k), dtype=torch.int64, device=device)
    out_d = torch.empty((n, k), dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    stats = {"tiers": []}
    n_fallback = 0
    if stagger and not symmetric:
        raise ValueError("stagger=True applies to the symmetric kernel only: pass symmetric=True too")
    if symmetric and tier_block_n[precisions[0]] % block_m:
        raise ValueError(
            f"symmetric=True needs block_n a multiple of block_m, got {block_m} and {tier_block_n[precisions[0]]}"
        )
    for t, prec in enumerate(precisions):
        if pending.numel() == 0:
            break
        if t == 0 and symmetric:
            cd, ci = _candidates_symmetric(
                xs16 if prec == "fp16" else xs,
                sq32,
                kp,
                prec,
                block_m,
                tier_block_n[prec],
                block_k,
                num_warps,
                num_stages,
                n,
                kc,
                stagger,
            )
        else:
            cd, ci = _candidates(
                xs16 if prec == "fp16" else xs,
                sq32,
                pending,
                kp,
                prec,
                block_m,
                tier_block_n[prec],
                block_k,
                num_warps,
                num_stages,
                query_chunk,
                n_programs,
                segments,
                contiguous=(t == 0),
                n_real=n,
                flat_loop=flat_loop,
                keep=kc,
                mask_every_tile=mask_every_tile,
            )
        # smallest approximate distance any non-candidate can have (>= the kc-th
        # kept; the kernel's distances are clamped at 0 and rounded down, so this
        # stays a lower bound of every non-candidate's computed distance)
        thr = cd.max(dim=1).values.to(torch.float64)
        # sorted by the distances as returned (correctly rounded square roots):
        # squared distances one ulp apart may share a root, and then the
        # smaller index comes first, as in the float64 brute force
        ed = _exact_dist(x, pending, ci)
        ed, ci = _sort_by_dist_then_index(ed, ci)
        if kc >= n - 1:
            ok = torch.ones(pending.shape[0], dtype=torch.bool, device=device)
        else:
            bound = certificate_bound(prec, dim_p, norms[pending], big)
            # the bound is in scaled units, the exact distances of unscaled data;
            # the margin covers the rounding of the division and of the float64
            # sums. Every non-candidate's distance is then >= the root of
            # `lower`: certified where the k-th lies strictly below it
            lower = (thr - bound) / (scale * scale) * (1 - 1e-12 - 2 * dim * 2.0**-53)
            ok = ed[:, k - 1] < _sqrt_rn(lower.clamp_min(0.0))
        out_i[pending[ok]] = ci[ok, :k]
        out_d[pending[ok]] = ed[ok, :k]
        stats["tiers"].append({"precision": prec, "rows": int(pending.numel()), "certified": int(ok.sum())})
        if t == 0:
            n_fallback = int((~ok).sum())
        pending = pending[~ok]
    if pending.numel():
        bi, bd = _brute_force_f64(x, pending, k, budget, x64mean)
        out_i[pending] = bi
        out_d[pending] = bd
        stats["brute_force_rows"] = int(pending.numel())
    else:
        stats["brute_force_rows"] = 0
    if return_stats:
        return out_i, out_d, n_fallback, stats
    return out_i, out_d, n_fallback


def _sqrt_rn(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float64 square root. CUDA's is; PyTorch's CPU kernel
    is not always (1 ulp off for about 1 % of inputs, e.g. sqrt(2) ->
    1.414213562373095), and one ulp in an edge weight decides ties between
    paths of equal length, which the Numba backend (libm sqrt) settles on the
    correctly rounded weights. So on the CPU (the interpreter) NumPy computes it."""
    if t.device.type == "cpu":
        return torch.from_numpy(np.sqrt(t.numpy()))
    return t.sqrt()


def _chunked_mean(x: torch.Tensor, step: int = 1 << 14) -> torch.Tensor:
    acc = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for r0 in range(0, x.shape[0], step):
        acc += x[r0 : r0 + step].to(torch.float64).sum(0)
    return acc / x.shape[0]


def _chunked_norms(x: torch.Tensor, step: int = 1 << 14) -> torch.Tensor:
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for r0 in range(0, x.shape[0], step):
        out[r0 : r0 + step] = x[r0 : r0 + step].to(torch.float64).norm(dim=1)
    return out
