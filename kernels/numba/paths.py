"""Batched single-source shortest paths with path statistics (CPU).

Dijkstra from each distinct source, in parallel over sources (``prange`` over
chunks of sources, one workspace per chunk). Along the shortest-path tree each
vertex carries its hop count and the number of *interior* vertices whose label
equals the source's, so a path score needs no path reconstruction:

    score(s, t) = 1                         if t is adjacent on the path (1 hop)
                = same(t) / (hops(t) - 1)   otherwise
                = 0                         if t is unreachable

A source's search stops as soon as all of its targets are settled.

Ties: among exactly equal-length shortest paths (float64 distances summed
source-outward, ``dist_u + w``) a vertex keeps the lexicographically smallest
``(dist, hops, -same)`` over its neighbours' offers ``(dist_u + w, hops_u + 1,
same_u + [u != source and label(u) == label(source)])``: fewest hops, then most
same-label interior vertices. This is the Triton backend's rule
(``kernels/triton/paths.py``; docs/gpu.md §3 names one float-rounding case where
its sweeps differ) and the naive scorer's, so the backends give the same scores
on tie-heavy data (grids, duplicates, 1-D data).

Two exact priority queues: Dinitz's buckets (width just under the smallest edge
weight, so no heap is needed) when the edge weights lie within a factor
``MAX_WEIGHT_SPREAD`` of each other — typical of kNN graphs of high-dimensional
embeddings — else a 4-ary heap with lazy deletion (zero-length edges from
duplicates, widely spread weights).

Public entry points: :func:`pair_scores` (explicit targets per source) and
:func:`class_sums` (every other member of the source's class is a target).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _tie_key(h, s):
    """(hops, -same) as one int64 that orders the same way (0 <= same < 2**32)."""
    return (np.int64(h) << 32) - s


@njit(cache=True, inline="always")
def _push(hk, hv, size, key, v):
    """Push (key, v) on a 4-ary min-heap of keys ``hk`` / payload ``hv`` (float64
    distances, or int64 tie keys)."""
    p = size
    while p > 0:
        parent = (p - 1) >> 2
        pk = hk[parent]
        if pk <= key:
            break
        hk[p] = pk
        hv[p] = hv[parent]
        p = parent
    hk[p] = key
    hv[p] = v


@njit(cache=True, inline="always")
def _pop_into_root(hk, hv, size):
    """Remove the root of a 4-ary heap of ``size`` entries (returns the new size).
    A 4-ary heap: half the levels of a binary one to sift through per pop, and
    a node's four children are adjacent in memory."""
    size -= 1
    if size == 0:
        return 0
    key = hk[size]
    v = hv[size]
    p = 0
    while True:
        c = 4 * p + 1
        if c >= size:
            break
        best = c
        bk = hk[c]
        end = min(c + 4, size)
        for q in range(c + 1, end):
            if hk[q] < bk:
                bk = hk[q]
                best = q
        if bk >= key:
            break
        hk[p] = bk
        hv[p] = hv[best]
        p = best
    hk[p] = key
    hv[p] = v
    return size


@njit(cache=True, inline="always")
def _settle(u, src, cs, class_mode, stamp, codes, tstamp, hops, same, out_v, out_s, found):
    """Vertex ``u`` is settled: record its path score if it is a target, and
    return (targets found, hops and same-label count it offers its neighbours)."""
    cu = codes[u]
    if class_mode:
        is_target = u != src and cu == cs
    else:
        is_target = tstamp[u] == stamp
    h = hops[u]
    if is_target:
        out_v[found] = u
        out_s[found] = 1.0 if h == 1 else same[u] / (h - 1)
        found += 1
    return found, h + 1, same[u] + (1 if (u != src and cu == cs) else 0)


@njit(cache=True)
def _search(
    src,
    class_mode,
    n_targets,
    stamp,
    codes,
    indptr,
    nbr,
    w,
    dist,
    hops,
    same,
    hk,
    hv,
    tk,
    tv,
    touched,
    tstamp,
    out_v,
    out_s,
):
    """One Dijkstra search (4-ary heap with lazy deletion, capacity E + 1);
    returns how many targets were settled (written to out_v / out_s as vertex,
    score).

    Vertices are settled in the order of the tuple (dist, hops, -same), not of
    the distance alone: with zero-length edges (duplicates) a vertex at the same
    distance but with fewer hops must be settled first, or its equal-distance
    neighbours would settle with a worse tie-break. As tuples the edge weights
    (w >= 0, +1 hop, ...) are strictly positive, so this Dijkstra settles every
    vertex with its final tuple. Two queues do it: the distance heap (``hk``,
    ``hv``) and, for the vertices at exactly the current distance, a tie heap
    (``tk``, ``tv``) keyed by :func:`_tie_key`. When the popped distance is
    shared by other queued entries, all of them move to the tie heap, and while
    it is not empty every offer of that same distance goes there too. So the
    distance heap keeps its plain float keys: one heap keyed by the tuple (a
    parallel array of tie keys, compared on equal distances) makes every sift
    read a second array and slows the searches down,
    while the tie heap costs one comparison per pop when no distances tie.

    Distance heap: a vertex is pushed only on a strict decrease, so a popped
    entry is stale iff its key exceeds ``dist`` of its vertex; an equally short
    offer with a better tie key for a later distance only updates hops and same
    (the queued entry stands). Tie heap: pushed on any strict improvement, so an
    entry is stale iff its key is not the vertex's current tie key. A settled
    vertex is never improved again, so no "settled" array is needed. Each edge
    is relaxed once (when its tail settles), so each heap holds at most E + 1
    entries. ``dist`` is inf outside the vertices listed in ``touched``, which
    are reset on return.
    """
    cs = codes[src]
    dist[src] = 0.0
    hops[src] = 0
    same[src] = 0
    touched[0] = src
    n_touched = 1
    hk[0] = 0.0
    hv[0] = src
    size = 1
    n_tied = 0
    du = 0.0  # distance being settled (the tie heap's entries all lie at it)
    found = 0
    while (size > 0 or n_tied > 0) and found < n_targets:
        if n_tied > 0:
            qu = tk[0]
            u = tv[0]
            n_tied = _pop_into_root(tk, tv, n_tied)
            if qu != _tie_key(hops[u], same[u]):
                continue  # stale: improved since the push
        else:
            du = hk[0]
            u = hv[0]
            size = _pop_into_root(hk, hv, size)
            if du > dist[u]:
                continue  # stale entry
            if size > 0 and hk[0] == du:
                # other entries at exactly this distance: settle them all in
                # tie-key order (stale ones, now closer, are dropped here)
                tk[0] = _tie_key(hops[u], same[u])
                tv[0] = u
                n_tied = 1
                while size > 0 and hk[0] == du:
                    v = hv[0]
                    size = _pop_into_root(hk, hv, size)
                    if dist[v] == du:
                        _push(tk, tv, n_tied, _tie_key(hops[v], same[v]), v)
                        n_tied += 1
                continue
        found, hu, su = _settle(u, src, cs, class_mode, stamp, codes, tstamp, hops, same, out_v, out_s, found)
        for e in range(indptr[u], indptr[u + 1]):
            v = nbr[e]
            nd = du + w[e]
            dv = dist[v]
            # strictly shorter, or exactly as long with fewer hops / as many
            # hops and more same-label interior vertices (the tie rule)
            if nd < dv or (nd == dv and (hu < hops[v] or (hu == hops[v] and su > same[v]))):
                if dv == np.inf:
                    touched[n_touched] = v
                    n_touched += 1
                dist[v] = nd
                hops[v] = hu
                same[v] = su
                if nd == du:  # zero-length edge (or w below du's rounding)
                    _push(tk, tv, n_tied, _tie_key(hu, su), v)
                    n_tied += 1
                elif nd < dv:
                    _push(hk, hv, size, nd, v)
                    size += 1
    for t in range(n_touched):
        dist[touched[t]] = np.inf
    return found


@njit(cache=True)
def _search_buckets(
    src,
    class_mode,
    n_targets,
    stamp,
    codes,
    indptr,
    nbr,
    w,
    inv_delta,
    n_slots,
    dist,
    hops,
    same,
    head,
    nxt,
    pv,
    settled,
    touched,
    tstamp,
    out_v,
    out_s,
):
    """One search with Dinitz's buckets (Dial's algorithm with bucket width
    delta <= the smallest edge weight): a vertex in the current bucket cannot
    improve another vertex of the same bucket, so every vertex of the lowest
    non-empty bucket already has its final distance and the bucket is settled in
    any order — no heap at all. The buckets are linked lists in a ring of
    ``n_slots`` > max weight / delta slots. Same outputs as :func:`_search`.

    Ties need no tuple ordering here: every edge is longer than a bucket, so all
    of a vertex's equal-distance predecessors lie in earlier buckets and have
    offered before it settles; an offer of the same distance with a better
    (hops, -same) only updates hops and same (the bucket, and so the queue entry,
    is unchanged).
    """
    cs = codes[src]
    dist[src] = 0.0
    hops[src] = 0
    same[src] = 0
    touched[0] = src
    n_touched = 1
    for b in range(n_slots):
        head[b] = -1
    pv[0] = src
    nxt[0] = -1
    head[0] = 0
    used = 1
    pending = 1
    cur = 0
    found = 0
    while pending > 0 and found < n_targets:
        slot = cur % n_slots
        e = head[slot]
        head[slot] = -1
        while e >= 0:
            pending -= 1
            u = pv[e]
            e = nxt[e]
            if settled[u] == stamp:
                continue
            du = dist[u]
            if np.int64(du * inv_delta) != cur:
                continue  # stale: u was improved into an earlier bucket since
            settled[u] = stamp
            found, hu, su = _settle(u, src, cs, class_mode, stamp, codes, tstamp, hops, same, out_v, out_s, found)
            # (the relaxation is written out in both searches on purpose: Numba
            # compiles an inlined helper here into a markedly slower inner loop)
            for q in range(indptr[u], indptr[u + 1]):
                v = nbr[q]
                nd = du + w[q]
                dv = dist[v]
                if nd < dv:
                    if dv == np.inf:
                        touched[n_touched] = v
                        n_touched += 1
                    dist[v] = nd
                    hops[v] = hu
                    same[v] = su
                    bs = np.int64(nd * inv_delta) % n_slots
                    pv[used] = v
                    nxt[used] = head[bs]
                    head[bs] = used
                    used += 1
                    pending += 1
                elif nd == dv and (hu < hops[v] or (hu == hops[v] and su > same[v])):
                    hops[v] = hu  # equally short, better tie-break: no push
                    same[v] = su
        cur += 1
    for t in range(n_touched):
        dist[touched[t]] = np.inf
    return found


@njit(parallel=True, cache=True)
def _run(
    class_mode,
    n_chunks,
    codes,
    indptr,
    nbr,
    w,
    sources,
    tgt_ptr,
    tgt_idx,
    class_sizes,
    inv_delta,
    n_slots,
    pair_out,
    reach_out,
    sums,
    sumsq,
    unreach,
):
    n = codes.shape[0]
    n_src = sources.shape[0]
    for c in prange(n_chunks):
        lo = (c * n_src) // n_chunks
        hi = ((c + 1) * n_src) // n_chunks
        if lo >= hi:
            continue
        dist = np.full(n, np.inf)
        hops = np.zeros(n, np.int32)
        same = np.zeros(n, np.int32)
        # lazy deletion pushes once per successful relaxation: at most E + 1
        hk = np.empty(nbr.shape[0] + 1, np.float64)
        hv = np.empty(nbr.shape[0] + 1, np.int64)
        tk = np.empty(nbr.shape[0] + 1 if n_slots == 0 else 0, np.int64)
        tv = np.empty(nbr.shape[0] + 1 if n_slots == 0 else 0, np.int64)
        touched = np.empty(n, np.int64)
        tstamp = np.zeros(n, np.int64)
        vscore = np.empty(0 if class_mode else n, np.float64)
        vstamp = np.zeros(0 if class_mode else n, np.int64)
        out_v = np.empty(n, np.int64)
        out_s = np.empty(n, np.float64)
        head = np.empty(max(n_slots, 1), np.int64)
        nxt = np.empty(nbr.shape[0] + 1 if n_slots > 0 else 0, np.int64)
        settled = np.zeros(n if n_slots > 0 else 0, np.int64)
        for s in range(lo, hi):
            src = sources[s]
            stamp = s + 1
            if class_mode:
                n_t = class_sizes[codes[src]] - 1
            else:
                a = tgt_ptr[s]
                b = tgt_ptr[s + 1]
                n_t = 0  # distinct targets (a target may be listed twice)
                for p in range(a, b):
                    t = tgt_idx[p]
                    if tstamp[t] != stamp:
                        tstamp[t] = stamp
                        n_t += 1
            if n_slots > 0:
                found = _search_buckets(
                    src,
                    class_mode,
                    n_t,
                    stamp,
                    codes,
                    indptr,
                    nbr,
                    w,
                    inv_delta,
                    n_slots,
                    dist,
                    hops,
                    same,
                    head,
                    nxt,
                    hv,
                    settled,
                    touched,
                    tstamp,
                    out_v,
                    out_s,
                )
            else:
                found = _search(
                    src,
                    class_mode,
                    n_t,
                    stamp,
                    codes,
                    indptr,
                    nbr,
                    w,
                    dist,
                    hops,
                    same,
                    hk,
                    hv,
                    tk,
                    tv,
                    touched,
                    tstamp,
                    out_v,
                    out_s,
                )
            if class_mode:
                acc = 0.0
                acc2 = 0.0
                for f in range(found):
                    acc += out_s[f]
                    acc2 += out_s[f] * out_s[f]
                sums[s] = acc
                sumsq[s] = acc2
                unreach[s] = n_t - found
            else:
                for f in range(found):
                    vscore[out_v[f]] = out_s[f]
                    vstamp[out_v[f]] = stamp
                for p in range(tgt_ptr[s], tgt_ptr[s + 1]):
                    t = tgt_idx[p]
                    if vstamp[t] == stamp:
                        pair_out[p] = vscore[t]
                        reach_out[p] = True


def _chunks(n_sources: int) -> int:
    return max(1, min(n_sources, 4 * numba.get_num_threads()))


def _batches(n_sources: int, progress: Callable[[int], None] | None) -> list[tuple[int, int]]:
    """Source ranges run one ``_run`` call each: one range, or about 20 when
    progress is reported (every source's search is independent of the others,
    so the results are the same)."""
    if progress is None or n_sources == 0:
        return [(0, n_sources)]
    step = max(8 * _chunks(n_sources), -(-n_sources // 20))
    return [(lo, min(n_sources, lo + step)) for lo in range(0, n_sources, step)]


# Buckets pay when the ring is short: weights within this factor of each other.
MAX_WEIGHT_SPREAD = 64.0


def bucket_plan(weights: np.ndarray) -> tuple[float, int]:
    """(1 / bucket width, ring slots) for Dinitz's buckets, or (0.0, 0) when the
    heap is the better choice (zero-length edges, or weights spread over more
    than ``MAX_WEIGHT_SPREAD``)."""
    if weights.shape[0] == 0:
        return 0.0, 0
    w_min = float(weights.min())
    w_max = float(weights.max())
    if not w_min > 0.0 or w_max > MAX_WEIGHT_SPREAD * w_min:
        return 0.0, 0
    # a hair under the smallest weight, so float rounding can never put a
    # relaxed vertex back into the bucket being settled
    delta = w_min * (1.0 - 1e-7)
    return 1.0 / delta, int(w_max / delta) + 2


def pair_scores(
    indptr: np.ndarray,
    neighbours: np.ndarray,
    weights: np.ndarray,
    codes: np.ndarray,
    sources: np.ndarray,
    target_ptr: np.ndarray,
    targets: np.ndarray,
    *,
    buckets: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Path scores of explicit (source, target) pairs.

    Parameters
    ----------
    indptr, neighbours, weights : CSR graph, (N + 1,), (E,), (E,)
    codes : (N,) int64 class code of every vertex (any value for unlabelled ones)
    sources : (S,) int64 distinct source vertices
    target_ptr : (S + 1,) int64; targets of ``sources[s]`` are
        ``targets[target_ptr[s]:target_ptr[s + 1]]`` (never the source; a target
        listed twice gets the same score twice)
    targets : (T,) int64
    buckets : use Dinitz's buckets when the weights allow (see
        :func:`bucket_plan`); False forces the heap (same results).
    progress : optional ``progress(n)``, called with the number of sources
        searched after every batch (same results).

    Returns
    -------
    scores : (T,) float64 path scores (0 where unreachable)
    reachable : (T,) bool
    """
    scores = np.zeros(targets.shape[0], np.float64)
    reachable = np.zeros(targets.shape[0], np.bool_)
    empty_f = np.empty(0, np.float64)
    inv_delta, n_slots = bucket_plan(weights) if buckets else (0.0, 0)
    for lo, hi in _batches(len(sources), progress):
        # target_ptr holds absolute offsets into targets / scores: slice it, not them
        _run(
            False,
            _chunks(hi - lo),
            codes,
            indptr,
            neighbours,
            weights,
            sources[lo:hi],
            target_ptr[lo : hi + 1],
            targets,
            np.empty(0, np.int64),
            inv_delta,
            n_slots,
            scores,
            reachable,
            empty_f,
            empty_f,
            np.empty(0, np.int64),
        )
        if progress is not None:
            progress(hi - lo)
    return scores, reachable


def class_sums(
    indptr: np.ndarray,
    neighbours: np.ndarray,
    weights: np.ndarray,
    codes: np.ndarray,
    sources: np.ndarray,
    class_sizes: np.ndarray,
    *,
    buckets: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum and sum of squares of the path scores from each source to every other
    member of its class.

    Parameters
    ----------
    indptr, neighbours, weights : CSR graph
    codes : (N,) int64 class codes; vertices of code c are the class's members
    sources : (S,) int64 distinct sources
    class_sizes : (C,) int64 members per code (``codes`` must lie in [0, C))
    buckets, progress : as in :func:`pair_scores`

    Returns
    -------
    sums, sumsq : (S,) float64
    n_unreachable : (S,) int64 targets of each source that cannot be reached
    """
    n_src = sources.shape[0]
    sums = np.zeros(n_src, np.float64)
    sumsq = np.zeros(n_src, np.float64)
    unreach = np.zeros(n_src, np.int64)
    inv_delta, n_slots = bucket_plan(weights) if buckets else (0.0, 0)
    for lo, hi in _batches(n_src, progress):
        _run(
            True,
            _chunks(hi - lo),
            codes,
            indptr,
            neighbours,
            weights,
            sources[lo:hi],
            np.zeros(1, np.int64),
            np.empty(0, np.int64),
            class_sizes,
            inv_delta,
            n_slots,
            np.empty(0, np.float64),
            np.empty(0, np.bool_),
            sums[lo:hi],
            sumsq[lo:hi],
            unreach[lo:hi],
        )
        if progress is not None:
            progress(hi - lo)
    return sums, sumsq, unreach
