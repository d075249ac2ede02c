"""Batched shortest paths with path statistics on the GPU (Triton).

Pull-style Bellman-Ford over the CSR of the union graph for a batch of B sources
at once. State is laid out (N, B) so a neighbour's row is one coalesced load:
``dist`` float64 and, per entry, ``hops`` and ``same`` (interior vertices on the
path whose label equals the source's) -- packed by default into one int32 key
``hops * 2**16 + (2**16 - 1 - same)`` (12 bytes per entry and offer), or as two
int32 arrays (``state="wide"``, 16 bytes; used when a batch would need 2**15
sweeps, since hops after t sweeps are at most t). A vertex keeps the
lexicographically smallest (dist, hops, -same) over all its neighbours' offers,
so among exactly equal-length paths the one with fewest hops (then most
same-label interior vertices) wins: deterministic whatever the scheduling (the
score allows any equal-length path: docs/score.md, step 4).

Sweeps are Jacobi (read one buffer, write the other: no torn (dist, hops, same)
triples). A (vertex block, source block) tile is recomputed only when one of its
vertices' neighbours changed in the previous sweep (flags set by the changed
vertex's program, push-style, one byte per tile); a skipped tile whose own
vertices changed copies them across the buffers. With ``activity="vertex"``
the flags are per vertex and source block, and only the flagged vertices of a
tile gather their neighbours (the others keep their state). Convergence: the host looks
at the change flags every ``check_every`` sweeps only (no per-sweep sync).

Public entry points: :func:`pair_scores`, :func:`class_sums` (same contract as the
CPU versions in ``kernels/numba/paths.py``, on torch tensors) and
:func:`shortest_path_batches` (the generic driver).
"""

from __future__ import annotations

import os
import time

import torch
import triton
import triton.language as tl

from fastconvex.kernels.triton.memory import free_bytes

_NO_HOPS = 1 << 30  # "unreached" hop count (never overflows when incremented)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _relax_kernel(
    indptr_ptr,
    nbr_ptr,
    w_ptr,
    codes_ptr,
    scode_ptr,
    svert_ptr,  # (B,) class code and vertex of each source column
    d_in,
    h_in,
    s_in,
    d_out,
    h_out,
    s_out,  # (N, B) state buffers (PACKED: h = key, s unused)
    act_in,
    chg_in,
    act_out,
    chg_out,  # int8 flags: act (n_vblocks * NBB,) per tile, or
    # (N * NBB,) per vertex and source block (VERTEX_ACT); chg (n_vblocks * NBB,) per tile
    count_ptr,  # (128,) int64: [0:64] edge relaxations performed (edges x columns),
    # [64:128] edge-loop slots run (block's max degree x BV x columns); spread
    N,
    B,
    NBB,
    BV: tl.constexpr,
    BB: tl.constexpr,
    PACKED: tl.constexpr,
    NO_HOPS: tl.constexpr = 1 << 30,  # hop count of an unreached entry (wide state; _NO_HOPS)
    VERTEX_ACT: tl.constexpr = False,  # activity flags per vertex, not per tile ("vertex" rule)
):
    pid_v = tl.program_id(0)
    pid_b = tl.program_id(1)
    tile = pid_v * NBB + pid_b
    own_changed = tl.load(chg_in + tile)
    # Every per-vertex quantity is kept as a (BV, 1) column and every
    # per-source one as a (1, BB) row, so all tensors share one 2-D layout:
    # mixing 1-D vectors with 2-D tiles inside the edge loop makes Triton 3.6's
    # layout passes fail to compile the kernel.
    v = (pid_v * BV + tl.arange(0, BV))[:, None]  # (BV, 1)
    vm = v < N
    if VERTEX_ACT:
        # a vertex is recomputed only when one of its own neighbours changed (for
        # a source of this block); the tile's other vertices keep their state
        vdirty = tl.load(act_in + v.to(tl.int64) * NBB + pid_b, mask=vm, other=0) != 0  # (BV, 1)
        active = tl.max(tl.max(vdirty.to(tl.int32), axis=1), axis=0)
    else:
        vdirty = vm
        active = tl.load(act_in + tile)
    b = (pid_b * BB + tl.arange(0, BB))[None, :]  # (1, BB)
    bm = b < B
    m2 = vm & bm
    offs = v.to(tl.int64) * B + b
    if active != 0:
        start = tl.load(indptr_ptr + v, mask=vm, other=0)
        end = tl.load(indptr_ptr + v + 1, mask=vm, other=0)
        deg = end - start  # (BV, 1)
        max_deg = tl.max(tl.max(tl.where(vdirty, deg, 0), axis=1), axis=0)
        scode = tl.load(scode_ptr + b, mask=bm, other=-1)
        svert = tl.load(svert_ptr + b, mask=bm, other=-1)
        # Every vertex but the source is recomputed from its neighbours' current
        # offers alone, not seeded with its own state: an offer made from a
        # neighbour's superseded distance must not survive because its float sum
        # happens to round to the final distance (the tie rule is over the
        # neighbours' final states, as in the Numba and naive backends).
        # PACKED: one int32 key = hops * 2**16 + (2**16 - 1 - same), so the
        # tie-break (fewest hops, then most same) is one integer comparison and
        # an offer costs 12 bytes instead of 16. Hops after t Jacobi sweeps are
        # at most t, so the key cannot overflow while the host keeps the sweep
        # count under 2**15 (it redoes the batch with the wide state past that).
        is_src = v == svert  # (BV, BB)
        cur_d = tl.where(is_src, tl.zeros((BV, BB), tl.float64), tl.full((BV, BB), float("inf"), tl.float64))
        if PACKED:
            cur_h = tl.where(is_src, 0xFFFF, 0x7FFFFFFF)  # hops 0, same 0 / none
        else:
            cur_h = tl.where(is_src, 0, NO_HOPS)
            cur_s = tl.zeros((BV, BB), dtype=tl.int32)
        # Edge e's neighbour and weight are fetched one iteration ahead, so the
        # gathers of u's row need no dependent load first: one memory latency
        # per iteration instead of two. Loads are unmasked at safe indices (edge
        # 0, a real vertex); lanes off the edge list are ignored through ``um``.
        eidx = tl.where(vm & (deg > 0), start, 0)
        u = tl.load(nbr_ptr + eidx)
        wu = tl.load(w_ptr + eidx)
        for e in range(max_deg):
            em = vdirty & (e < deg)  # (BV, 1)
            um = em & bm  # (BV, BB)
            uoffs = u * B + b
            du = tl.load(d_in + uoffs, mask=um, other=float("inf"))
            hu = tl.load(h_in + uoffs, mask=um, other=0)
            cu = tl.load(codes_ptr + u)
            nidx = tl.where(vm & (e + 1 < deg), start + e + 1, 0)
            u_next = tl.load(nbr_ptr + nidx)
            w_next = tl.load(w_ptr + nidx)
            add = ((cu == scode) & (u != svert)).to(tl.int32)
            cd = du + wu
            if PACKED:
                ch = hu + (65536 - add)
                better = (cd < cur_d) | ((cd == cur_d) & (ch < cur_h))
            else:
                su = tl.load(s_in + uoffs, mask=um, other=0)
                ch = hu + 1
                cs = su + add
                better = (cd < cur_d) | ((cd == cur_d) & ((ch < cur_h) | ((ch == cur_h) & (cs > cur_s))))
            better = better & um & (du < float("inf")) & ~is_src
            if not PACKED:
                cur_s = tl.where(better, cs, cur_s)
            cur_d = tl.where(better, cd, cur_d)
            cur_h = tl.where(better, ch, cur_h)
            u = u_next
            wu = w_next
        # the previous state, read only here, after the edge loop, so it holds
        # no registers during it: what "changed" compares with, and what a
        # vertex not recomputed (VERTEX_ACT) keeps
        old_d = tl.load(d_in + offs, mask=m2, other=float("inf"))
        old_h = tl.load(h_in + offs, mask=m2, other=0x7FFFFFFF if PACKED else NO_HOPS)
        if VERTEX_ACT:
            cur_d = tl.where(vdirty, cur_d, old_d)
            cur_h = tl.where(vdirty, cur_h, old_h)
        tl.store(d_out + offs, cur_d, mask=m2)
        tl.store(h_out + offs, cur_h, mask=m2)
        changed = (cur_d != old_d) | (cur_h != old_h)
        if not PACKED:
            old_s = tl.load(s_in + offs, mask=m2, other=0)
            if VERTEX_ACT:
                cur_s = tl.where(vdirty, cur_s, old_s)
            tl.store(s_out + offs, cur_s, mask=m2)
            changed = changed | (cur_s != old_s)
        changed = changed & m2
        n_cols = tl.sum(tl.sum(bm.to(tl.int64), axis=1), axis=0)
        n_edges = tl.sum(tl.sum(tl.where(vdirty, deg, 0).to(tl.int64), axis=1), axis=0)
        tl.atomic_add(count_ptr + pid_v % 64, n_edges * n_cols)
        tl.atomic_add(count_ptr + 64 + pid_v % 64, max_deg.to(tl.int64) * BV * n_cols)
        vchg = tl.max(changed.to(tl.int32), axis=1, keep_dims=True) > 0  # (BV, 1)
        any_chg = tl.sum(tl.sum(vchg.to(tl.int32), axis=1), axis=0) > 0
        if any_chg:
            tl.store(chg_out + tile, 1)
            for e in range(max_deg):
                em = vm & (e < deg) & vchg
                eidx = tl.where(em, start + e, 0)
                u = tl.load(nbr_ptr + eidx)
                if VERTEX_ACT:
                    flag = act_out + u * NBB + pid_b
                else:
                    flag = act_out + (u // BV) * NBB + pid_b
                tl.store(flag, tl.full(u.shape, 1, tl.int8), mask=em)
    elif own_changed != 0:
        tl.store(d_out + offs, tl.load(d_in + offs, mask=m2), mask=m2)
        tl.store(h_out + offs, tl.load(h_in + offs, mask=m2), mask=m2)
        if not PACKED:
            tl.store(s_out + offs, tl.load(s_in + offs, mask=m2), mask=m2)


STATES = ("packed", "wide")
ACTIVITY_RULES = ("tile", "vertex")
# Packed keys hold hop counts below 2**15; hops after t sweeps are at most t.
PACKED_SWEEP_LIMIT = (1 << 15) - 1


def batch_width(
    n: int,
    device: torch.device,
    block_b: int,
    max_batch: int | None = None,
    entry_bytes: int = 16,
    extra_bytes: int = 8 + 3 * 8,
) -> int:
    """Sources per batch from free device memory: two (N, B) state buffers of
    ``entry_bytes`` per entry (12 packed, 16 wide) and ``extra_bytes`` per entry
    for what the caller builds from them (default: the decoded hop and
    same-label counts, 8 bytes, and ~3 float64 (N, B) temporaries; 0 for
    :func:`class_sums` and :func:`pair_scores`, which read the state in place)."""
    per_col = n * (2 * entry_bytes + extra_bytes) + 64
    b = max(1, (free_bytes(device) // 3) // per_col)
    b = max(block_b, (b // block_b) * block_b)
    b = min(b, 4096)
    if max_batch is not None:
        b = min(b, max(1, max_batch))
    return b


def _converge(
    indptr,
    neighbours,
    weights,
    codes,
    src,
    packed,
    sweep_limit,
    *,
    deg,
    block_v,
    block_b,
    check_every,
    counter,
    extra,
    time_check,
    activity="tile",
    decode=True,
):
    """Bellman-Ford for the sources ``src`` (one batch) to convergence.

    Returns ``(dist, hops, same, sweeps)``, or None when the packed state would
    need ``sweep_limit`` sweeps or more (its hop field could overflow)."""
    device = indptr.device
    n = indptr.shape[0] - 1
    bsz = src.shape[0]
    nvb = triton.cdiv(n, block_v)
    nbb = triton.cdiv(bsz, block_b)
    scode = codes[src].contiguous()
    cols = torch.arange(bsz, device=device)
    bufs = []
    for _ in range(2):
        d = torch.full((n, bsz), float("inf"), dtype=torch.float64, device=device)
        d[src, cols] = 0.0
        if packed:
            h = torch.full((n, bsz), 0x7FFFFFFF, dtype=torch.int32, device=device)
            h[src, cols] = 0xFFFF  # hops 0, same 0
            s = h  # unused by the packed kernel
        else:
            h = torch.full((n, bsz), _NO_HOPS, dtype=torch.int32, device=device)
            h[src, cols] = 0
            s = torch.zeros((n, bsz), dtype=torch.int32, device=device)
        bufs.append((d, h, s))
    per_vertex = activity == "vertex"
    act = torch.zeros((n if per_vertex else nvb) * nbb, dtype=torch.int8, device=device)
    chg = torch.zeros(nvb * nbb, dtype=torch.int8, device=device)
    # tiles (vertices) holding a neighbour of a source start active
    nb_cnt = deg[src]
    nb_col = cols.repeat_interleave(nb_cnt)
    starts = indptr[src].repeat_interleave(nb_cnt)
    within = torch.arange(nb_col.shape[0], device=device) - torch.repeat_interleave(
        torch.cumsum(nb_cnt, 0) - nb_cnt, nb_cnt
    )
    nb_v = neighbours[starts + within]
    act[(nb_v if per_vertex else nb_v // block_v) * nbb + nb_col // block_b] = 1
    act_next = torch.zeros_like(act)
    chg_next = torch.zeros_like(act)
    cur, nxt = 0, 1
    sweeps = 0
    while True:
        act_next.zero_()
        chg_next.zero_()
        d_in, h_in, s_in = bufs[cur]
        d_out, h_out, s_out = bufs[nxt]
        _relax_kernel[(nvb, nbb)](
            indptr,
            neighbours,
            weights,
            codes,
            scode,
            src,
            d_in,
            h_in,
            s_in,
            d_out,
            h_out,
            s_out,
            act,
            chg,
            act_next,
            chg_next,
            counter,
            n,
            bsz,
            nbb,
            BV=block_v,
            BB=block_b,
            PACKED=packed,
            NO_HOPS=_NO_HOPS,
            VERTEX_ACT=per_vertex,
            **extra,
        )
        act, act_next = act_next, act
        chg, chg_next = chg_next, chg
        cur, nxt = nxt, cur
        sweeps += 1
        if sweeps % check_every == 0 or sweeps > n + 1 or (packed and sweeps >= sweep_limit):
            if not bool(chg.any()):
                break
            if packed and sweeps >= sweep_limit:
                return None
            time_check(sweeps)
            if sweeps > 2 * n + 2:  # cannot happen (Bellman-Ford bound)
                raise RuntimeError("shortest paths did not converge")
    d, h, s = bufs[cur]
    if packed:
        # free the other buffer before the decoded counts are allocated
        del bufs, d_in, h_in, s_in, d_out, h_out, s_out
        if not decode:
            return d, h, None, sweeps  # h holds the packed keys
        h, s = _decode(d, h)
    return d, h, s, sweeps


def _decode(d: torch.Tensor, key: torch.Tensor):
    """Hop and same-label counts from packed keys (hops ``_NO_HOPS`` where unreached)."""
    return torch.where(torch.isfinite(d), key >> 16, torch.full_like(key, _NO_HOPS)), 0xFFFF - (key & 0xFFFF)


def shortest_path_batches(
    indptr: torch.Tensor,
    neighbours: torch.Tensor,
    weights: torch.Tensor,
    codes: torch.Tensor,
    sources: torch.Tensor,
    *,
    state: str = "packed",
    block_v: int | None = None,
    block_b: int | None = None,
    max_batch: int | None = None,
    check_every: int = 8,
    num_warps: int = 4,
    stats: dict | None = None,
    time_limit: float | None = None,
    packed_sweep_limit: int = PACKED_SWEEP_LIMIT,
    max_registers: int | None = None,
    activity: str = "tile",
    decode: bool = True,
):
    """Yield ``(s0, s1, dist, hops, same)`` for consecutive batches of sources:
    the converged (N, s1 - s0) state of ``sources[s0:s1]``.

    ``decode=False``: a batch of the packed state yields its packed keys as
    ``hops`` and None as ``same`` (a wide batch yields both counts), and the
    batch width leaves room for the two state buffers alone; for callers that
    read the state in place (:func:`class_sums`, :func:`pair_scores`).

    ``state``: "packed" (hop and same-label counts in one int32 key, 12 bytes
    per entry; a batch that would need 2**15 sweeps or more is redone with the
    wide state) or "wide" (two int32 arrays, 16 bytes per entry).
    ``stats`` (a dict), if given, accumulates ``sweeps``, ``batches``,
    ``relaxations`` (edges x columns relaxed), ``edge_slots`` (edge-loop
    iterations x lanes run: each program loops to its block's largest degree;
    ``relaxations / edge_slots`` is the share of lanes doing work) and
    ``wide_reruns`` (packed batches redone wide).
    ``time_limit`` (seconds): raise ``TimeoutError`` when exceeded (checked at
    the convergence checks; for benchmarks).
    ``max_registers``: cap on registers per thread (Triton's ``maxnreg``): more
    programs per SM for the latency-bound gathers, fewer loads in flight per
    thread (CUDA only; None: the compiler's choice).
    ``activity``: which entries a sweep recomputes. "tile": every vertex of a
    (vertex block, source block) tile one of whose vertices has a neighbour
    that changed in the previous sweep; "vertex": only those vertices (one flag
    per vertex and source block instead of per tile; the others keep their
    state). The same sweeps and results; "vertex" relaxes fewer edges (a
    tile's unflagged vertices gather nothing; ``bench/studies/paths_schedule_sim.py``
    counts them) for N flag bytes per source block instead of N / block_v.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    if activity not in ACTIVITY_RULES:
        raise ValueError(f"activity must be one of {ACTIVITY_RULES}, got {activity!r}")
    if max_registers is not None and (
        isinstance(max_registers, bool) or not isinstance(max_registers, int) or not 16 <= max_registers <= 255
    ):
        raise ValueError(f"max_registers must be an integer in [16, 255] or None, got {max_registers!r}")
    if not 1 <= packed_sweep_limit <= PACKED_SWEEP_LIMIT:
        raise ValueError(
            f"packed_sweep_limit must be in [1, {PACKED_SWEEP_LIMIT}] (the packed key holds "
            f"hop counts below 2**15), got {packed_sweep_limit}"
        )
    t_start = time.perf_counter()
    device = indptr.device
    n = indptr.shape[0] - 1
    # the kernel's offsets (vertex * B + column) come from these dtypes: int64
    # keeps them exact past 2**31 entries (N = 10**6 and B > 2147)
    indptr, neighbours, codes = indptr.long(), neighbours.long(), codes.long()
    interp = _interpreting()
    if block_v is None:
        # 8 x 32 tiles, 4 warps on CUDA: the fastest of bench/paths_tune.py's grid
        # (block_v 8/16/32 x block_b 16/32/64 x 2/4 warps) at N = 1e6. Narrow
        # tiles hold fewer registers, so more programs per SM hide the gathers'
        # latency, and are woken less often for one entry's sake. The
        # interpreter keeps 64 x 64: fewer programs to interpret.
        block_v = 64 if interp else 8
    if block_b is None:
        block_b = 64 if interp else 32
    extra_bytes = {} if decode else {"extra_bytes": 0}
    width = batch_width(n, device, block_b, max_batch, 12 if state == "packed" else 16, **extra_bytes)
    counter = torch.zeros(128, dtype=torch.int64, device=device)
    extra = {} if interp else {"num_warps": num_warps}
    if max_registers is not None and not interp:
        extra["maxnreg"] = int(max_registers)
    totals = {"sweeps": 0, "batches": 0, "wide_reruns": 0}
    deg = indptr[1:] - indptr[:-1]
    for s0 in range(0, sources.shape[0], width):
        s1 = min(sources.shape[0], s0 + width)

        def time_check(sweeps, s0=s0, s1=s1):
            if time_limit is not None and time.perf_counter() - t_start > time_limit:
                raise TimeoutError(
                    f"shortest paths: time limit {time_limit:.0f}s hit in batch "
                    f"{totals['batches'] + 1} (sources {s0}..{s1} of {sources.shape[0]}) "
                    f"after {sweeps} sweeps"
                )

        args = (indptr, neighbours, weights, codes, sources[s0:s1])
        kw = dict(
            deg=deg,
            block_v=block_v,
            block_b=block_b,
            check_every=check_every,
            counter=counter,
            extra=extra,
            time_check=time_check,
            activity=activity,
        )
        out = _converge(*args, state == "packed", packed_sweep_limit, decode=decode, **kw)
        if out is not None:
            d, h, s, sweeps = out
            totals["sweeps"] += sweeps
            totals["batches"] += 1
            yield s0, s1, d, h, s
            continue
        # redo the batch wide (from the start), in sub-batches that fit memory
        # at the wide state's 16 bytes per entry
        totals["sweeps"] += packed_sweep_limit
        totals["wide_reruns"] += 1
        wide = batch_width(n, device, block_b, max_batch, 16, **extra_bytes)
        for r0 in range(s0, s1, wide):
            r1 = min(s1, r0 + wide)
            d, h, s, sweeps = _converge(
                indptr, neighbours, weights, codes, sources[r0:r1], False, packed_sweep_limit, **kw
            )
            totals["sweeps"] += sweeps
            totals["batches"] += 1
            yield r0, r1, d, h, s
    if stats is not None:
        for key, value in totals.items():
            stats[key] = stats.get(key, 0) + value
        stats["relaxations"] = stats.get("relaxations", 0) + int(counter[:64].sum().item())
        stats["edge_slots"] = stats.get("edge_slots", 0) + int(counter[64:].sum().item())


def _scores(d, h, s):
    hf = h.to(torch.float64)
    sc = torch.where(h == 1, torch.ones_like(hf), s.to(torch.float64) / (hf - 1).clamp_min(1))
    reach = torch.isfinite(d)
    return torch.where(reach, sc, torch.zeros_like(sc)), reach


def pair_scores(indptr, neighbours, weights, codes, sources, target_ptr, targets, **kw):
    """Path scores of explicit (source, target) pairs (torch tensors on the device).

    Returns scores (T,) float64 and reachable (T,) bool tensors."""
    device = indptr.device
    scores = torch.zeros(targets.shape[0], dtype=torch.float64, device=device)
    reachable = torch.zeros(targets.shape[0], dtype=torch.bool, device=device)
    counts = target_ptr[1:] - target_ptr[:-1]
    for s0, s1, d, h, s in shortest_path_batches(indptr, neighbours, weights, codes, sources, decode=False, **kw):
        a, b = int(target_ptr[s0]), int(target_ptr[s1])
        if a == b:
            continue
        col = torch.arange(s1 - s0, device=device).repeat_interleave(counts[s0:s1])
        t = targets[a:b]
        dt = d[t, col]
        ht, st = _decode(dt, h[t, col]) if s is None else (h[t, col], s[t, col])
        sc, re = _scores(dt, ht, st)
        scores[a:b] = sc
        reachable[a:b] = re
    return scores, reachable


# vertices per program of the class-sum kernel, and per step inside it: fixed,
# so every column's sum runs in one order whatever the batch width
_SUM_CHUNK = 4096
_SUM_ROWS = 64
_SUM_COLS = 32


@triton.jit(do_not_specialize=["N", "B"])  # one compiled layout, so one summation order, for every B
def _class_sums_kernel(
    d_ptr,
    h_ptr,
    s_ptr,  # (N, B) converged state (PACKED: h holds the packed keys, s unused)
    codes_ptr,
    scode_ptr,
    svert_ptr,  # (N,) class codes; (B,) class code and vertex of each source
    psum_ptr,
    psq_ptr,
    punr_ptr,  # (n_chunks, B) per-chunk sum, sum of squares (float64), unreachable (int64)
    N,
    B,
    CHUNK: tl.constexpr,
    RB: tl.constexpr,
    BB: tl.constexpr,
    PACKED: tl.constexpr,
):
    # One program: CHUNK vertices x BB sources. A vertex is a target of a source
    # when it shares the source's class and is not the source. Its score is 1
    # for a direct edge (hops 1), else same / (hops - 1); 0 when unreachable.
    pid_c = tl.program_id(0)
    pid_b = tl.program_id(1)
    b = (pid_b * BB + tl.arange(0, BB))[None, :]  # (1, BB)
    bm = b < B
    scode = tl.load(scode_ptr + b, mask=bm, other=-1)
    svert = tl.load(svert_ptr + b, mask=bm, other=-1)
    acc = tl.zeros((1, BB), tl.float64)
    acc2 = tl.zeros((1, BB), tl.float64)
    unr = tl.zeros((1, BB), tl.int64)
    for r0 in range(pid_c * CHUNK, pid_c * CHUNK + CHUNK, RB):
        v = (r0 + tl.arange(0, RB))[:, None]  # (RB, 1)
        vm = v < N
        c = tl.load(codes_ptr + v, mask=vm, other=-2)
        target = vm & bm & (c == scode) & (v != svert)
        offs = v.to(tl.int64) * B + b
        d = tl.load(d_ptr + offs, mask=target, other=float("inf"))
        if PACKED:
            key = tl.load(h_ptr + offs, mask=target, other=0)
            h = key >> 16
            same = 0xFFFF - (key & 0xFFFF)
        else:
            h = tl.load(h_ptr + offs, mask=target, other=0)
            same = tl.load(s_ptr + offs, mask=target, other=0)
        reach = d < float("inf")
        hf = h.to(tl.float64)
        sc = tl.where(h == 1, 1.0, same.to(tl.float64) / tl.maximum(hf - 1.0, 1.0))
        sc = tl.where(target & reach, sc, 0.0)
        acc += tl.sum(sc, axis=0, keep_dims=True)
        acc2 += tl.sum(sc * sc, axis=0, keep_dims=True)
        unr += tl.sum((target & ~reach).to(tl.int64), axis=0, keep_dims=True)
    out = pid_c * B + b
    tl.store(psum_ptr + out, acc, mask=bm)
    tl.store(psq_ptr + out, acc2, mask=bm)
    tl.store(punr_ptr + out, unr, mask=bm)


@triton.jit(do_not_specialize=["n_chunks", "B"])
def _sum_chunks_kernel(psum_ptr, psq_ptr, punr_ptr, sum_ptr, sq_ptr, unr_ptr, n_chunks, B, BB: tl.constexpr):
    """Each column's per-chunk partial sums added chunk after chunk, in order."""
    b = tl.program_id(0) * BB + tl.arange(0, BB)
    bm = b < B
    acc = tl.zeros((BB,), tl.float64)
    acc2 = tl.zeros((BB,), tl.float64)
    unr = tl.zeros((BB,), tl.int64)
    for c in range(n_chunks):
        acc += tl.load(psum_ptr + c * B + b, mask=bm, other=0.0)
        acc2 += tl.load(psq_ptr + c * B + b, mask=bm, other=0.0)
        unr += tl.load(punr_ptr + c * B + b, mask=bm, other=0)
    tl.store(sum_ptr + b, acc, mask=bm)
    tl.store(sq_ptr + b, acc2, mask=bm)
    tl.store(unr_ptr + b, unr, mask=bm)


def _class_sums_of_batch(d, h, s, codes, src):
    """(sum, sum of squares, unreachable count) of one batch's scores over each
    source's class, read from the state in place: no (N, B) temporaries, and
    each column summed in one fixed order (chunks of ``_SUM_CHUNK`` vertices,
    steps of ``_SUM_ROWS``), so a source's sums do not depend on the batch it
    was in, nor on the device memory that set the batch width."""
    n, bsz = d.shape
    device = d.device
    n_chunks = triton.cdiv(n, _SUM_CHUNK)
    part = [torch.empty((n_chunks, bsz), dtype=dt, device=device) for dt in (torch.float64, torch.float64, torch.int64)]
    out = [torch.empty(bsz, dtype=dt, device=device) for dt in (torch.float64, torch.float64, torch.int64)]
    scode = codes[src].contiguous()
    packed = s is None
    _class_sums_kernel[(n_chunks, triton.cdiv(bsz, _SUM_COLS))](
        d,
        h,
        h if packed else s,
        codes,
        scode,
        src,
        *part,
        n,
        bsz,
        CHUNK=_SUM_CHUNK,
        RB=_SUM_ROWS,
        BB=_SUM_COLS,
        PACKED=packed,
    )
    _sum_chunks_kernel[(triton.cdiv(bsz, _SUM_COLS),)](*part, *out, n_chunks, bsz, BB=_SUM_COLS)
    return out


def class_sums(indptr, neighbours, weights, codes, sources, class_sizes, **kw):
    """Sum and sum of squares of the path scores from each source to every other
    member of its class, and the number of unreachable ones (torch tensors).
    Each source's sums come out the same whatever batch it was searched in."""
    device = indptr.device
    n_src = sources.shape[0]
    sums = torch.zeros(n_src, dtype=torch.float64, device=device)
    sumsq = torch.zeros(n_src, dtype=torch.float64, device=device)
    unreach = torch.zeros(n_src, dtype=torch.int64, device=device)
    codes = codes.long().contiguous()
    for s0, s1, d, h, s in shortest_path_batches(indptr, neighbours, weights, codes, sources, decode=False, **kw):
        sums[s0:s1], sumsq[s0:s1], unreach[s0:s1] = _class_sums_of_batch(
            d, h, s, codes, sources[s0:s1].long().contiguous()
        )
    return sums, sumsq, unreach
