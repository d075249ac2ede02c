"""How much path-search work a finer activity rule or another vertex order could
save: a CPU simulation of the Triton path kernel's schedule (no GPU needed).

The Triton kernel (``kernels/triton/paths.py``) runs Jacobi Bellman-Ford sweeps
over (BV vertices x BB sources) tiles and recomputes a tile only when one of its
vertices has a neighbour that changed, for one of the tile's sources, in the
previous sweep. This script replays, per source, the kernel's sweeps (the same
state, offers and tie rule: distance, then fewest hops, then most same-label
vertices), records in which sweep every (vertex, source) entry changed, and
counts the edge relaxations of three activity rules on the same sweeps:

* ``tile``: the kernel's rule (a tile is active when any of its entries may
  change); the count equals the kernel's own ``relaxations`` statistic
  (``--check`` compares them under ``TRITON_INTERPRET=1``);
* ``vertex``: one flag per (vertex, source block), i.e. a tile's inactive
  vertices skipped (the kernel's ``activity="vertex"``, also checked by
  ``--check``);
* ``entry``: one flag per (vertex, source), the least work any pull schedule
  on these sweeps can do.

Counts are per edge and source (relaxations / (E x B)): a full sweep over every
edge for every source is 1. Vertex orders: ``degree`` (the default), ``rcm``,
and degree bins with the RCM position inside each bin. Source orders: as the
pair plan groups them (by class), or sorted by vertex.

    python bench/studies/paths_schedule_sim.py --n 20000 --d 256
    TRITON_INTERPRET=1 python bench/studies/paths_schedule_sim.py --check   # simulator == kernel
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numba as nb
import numpy as np

MAX_SWEEPS = 62  # change masks are uint64 bits; bit 0 marks the source itself


@nb.njit(parallel=True, cache=True)
def change_masks(indptr, nbr, w, codes, src, max_sweeps):
    """(N, B) uint64: bit t set when entry (v, b) changed in sweep t (bit 0: the
    source), and the sweeps each source took, replaying the kernel's packed
    state (hops * 2**16 + 2**16 - 1 - same) and its offers."""
    n = indptr.shape[0] - 1
    n_src = src.shape[0]
    masks = np.zeros((n, n_src), np.uint64)
    sweeps = np.zeros(n_src, np.int64)
    for b in nb.prange(n_src):
        s = src[b]
        sc = codes[s]
        d = np.full(n, np.inf)
        key = np.full(n, 0x7FFFFFFF, np.int64)
        d[s] = 0.0
        key[s] = 0xFFFF
        d2 = d.copy()
        k2 = key.copy()
        masks[s, b] |= np.uint64(1)
        t = 0
        while True:
            t += 1
            changed = False
            for v in range(n):
                if v == s:
                    d2[v] = 0.0
                    k2[v] = 0xFFFF
                    continue
                best_d = np.inf
                best_k = 0x7FFFFFFF
                for e in range(indptr[v], indptr[v + 1]):
                    u = nbr[e]
                    if d[u] == np.inf:
                        continue
                    add = 1 if (codes[u] == sc and u != s) else 0
                    cd = d[u] + w[e]
                    ck = key[u] + (65536 - add)
                    if cd < best_d or (cd == best_d and ck < best_k):
                        best_d = cd
                        best_k = ck
                d2[v] = best_d
                k2[v] = best_k
                if best_d != d[v] or best_k != key[v]:
                    masks[v, b] |= np.uint64(1) << np.uint64(t)
                    changed = True
            d, d2 = d2, d
            key, k2 = k2, key
            if not changed or t >= max_sweeps:
                break
        sweeps[b] = t
    return masks, sweeps


@nb.njit(cache=True)
def relaxations(indptr, nbr, masks, block_v, block_b, max_sweeps):
    """Edge relaxations (edges x sources) of the tile, vertex and entry rules,
    for one batch whose columns are ``masks``' columns in order."""
    n = indptr.shape[0] - 1
    n_src = masks.shape[1]
    nvb = (n + block_v - 1) // block_v
    nbb = (n_src + block_b - 1) // block_b
    deg = indptr[1:] - indptr[:-1]
    degsum = np.zeros(nvb, np.int64)
    for v in range(n):
        degsum[v // block_v] += deg[v]
    tile = 0
    vertex = 0
    for t in range(1, max_sweeps + 2):
        bit = np.uint64(1) << np.uint64(t - 1)
        act = np.zeros((nvb, nbb), np.bool_)
        vdirty = np.zeros((n, nbb), np.bool_)
        any_change = False
        for u in range(n):
            for bb in range(nbb):
                changed = False
                for b in range(bb * block_b, min(n_src, bb * block_b + block_b)):
                    if masks[u, b] & bit:
                        changed = True
                        break
                if changed:
                    any_change = True
                    for e in range(indptr[u], indptr[u + 1]):
                        act[nbr[e] // block_v, bb] = True
                        vdirty[nbr[e], bb] = True
        if not any_change:
            break
        for vb in range(nvb):
            for bb in range(nbb):
                if act[vb, bb]:
                    tile += degsum[vb] * min(block_b, n_src - bb * block_b)
        for v in range(n):
            for bb in range(nbb):
                if vdirty[v, bb]:
                    vertex += deg[v] * min(block_b, n_src - bb * block_b)
    entry = 0
    for v in range(n):
        for b in range(n_src):
            m = np.uint64(0)
            for e in range(indptr[v], indptr[v + 1]):
                m |= masks[nbr[e], b]
            count = 0
            while m:
                count += 1
                m &= m - np.uint64(1)
            entry += count * deg[v]
    return tile, vertex, entry


def build_graph(n: int, d: int, n_classes: int, seed: int):
    import torch

    import fastconvex as fc
    import fastconvex.datasets
    from fastconvex.kernels.triton.graph import union_csr

    x, labels = fastconvex.datasets.overlapping_classes(n, d, n_classes, seed=seed)
    g = fc.knn_graph(x, 10, backend="numba")
    ip, nbr, w = union_csr(torch.as_tensor(g.indices), torch.as_tensor(g.distances, dtype=torch.float64))
    return ip, nbr, w, labels


def vertex_orders(ip, nbr) -> dict:
    import torch

    from fastconvex.kernels.triton.graph import degree_bins, degree_order, rcm_order

    n = ip.shape[0] - 1
    rcm = torch.as_tensor(rcm_order(ip, nbr))
    pos = np.empty(n, np.int64)
    pos[rcm.numpy()] = np.arange(n)
    bins = degree_bins(ip).numpy()
    return {"degree": degree_order(ip), "rcm": rcm, "degree+rcm": torch.as_tensor(np.lexsort((pos, bins)))}


def simulate(args) -> dict:
    from fastconvex.kernels.triton.graph import permute_csr

    t0 = time.perf_counter()
    ip, nbr, w, labels = build_graph(args.n, args.d, args.classes, args.seed)
    rng = np.random.default_rng(args.seed)
    per_class = -(-args.batch // args.classes)
    src_all = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(args.classes)]
    )[: args.batch]
    out = {
        "n": args.n,
        "d": args.d,
        "classes": args.classes,
        "sources": int(src_all.size),
        "block_v": args.block_v,
        "block_b": args.block_b,
        "edges": int(ip[-1]),
        "results": [],
    }
    for name, order in vertex_orders(ip, nbr).items():
        ipo, nbo, wo, inv = permute_csr(ip, nbr, w, order.long())
        ipo, nbo, wo, inv = ipo.numpy(), nbo.numpy(), wo.numpy(), inv.numpy()
        codes = labels[order.numpy()]
        src = inv[src_all]
        masks, sweeps = change_masks(ipo, nbo, wo, codes, src, MAX_SWEEPS)
        if sweeps.max() >= MAX_SWEEPS:
            raise SystemExit(f"a source needed {MAX_SWEEPS} sweeps or more: the uint64 masks cannot hold it")
        full = float(ipo[-1]) * src.size
        for src_order, perm in (("plan", np.arange(src.size)), ("by_vertex", np.argsort(src, kind="stable"))):
            tile, vertex, entry = relaxations(
                ipo, nbo, np.ascontiguousarray(masks[:, perm]), args.block_v, args.block_b, MAX_SWEEPS
            )
            row = {
                "vertex_order": name,
                "source_order": src_order,
                "sweeps_max": int(sweeps.max()),
                "sweeps_mean": float(sweeps.mean()),
                "tile": tile / full,
                "vertex": vertex / full,
                "entry": entry / full,
            }
            out["results"].append(row)
            print(
                f"{name:11s} sources {src_order:9s}  per edge and source: tile {row['tile']:.3f}  "
                f"vertex {row['vertex']:.3f}  entry {row['entry']:.3f}  (sweeps max {row['sweeps_max']})",
                flush=True,
            )
    out["seconds"] = time.perf_counter() - t0
    return out


def check(args) -> dict:
    """The simulator's tile count against the Triton kernel's own counter
    (interpreter on the CPU, or CUDA), same graph, sources and tiles."""
    import torch

    from fastconvex.kernels.triton.graph import degree_order, permute_csr
    from fastconvex.kernels.triton.paths import shortest_path_batches

    ip, nbr, w, labels = build_graph(args.n, args.d, args.classes, args.seed)
    ip, nbr, w, inv = permute_csr(ip, nbr, w, degree_order(ip))
    order = np.empty_like(inv.numpy())
    order[inv.numpy()] = np.arange(order.size)
    codes = labels[order]
    src = np.random.default_rng(args.seed).choice(args.n, args.batch, replace=False)
    dev = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    masks, _ = change_masks(ip.numpy(), nbr.numpy(), w.numpy(), codes, src, MAX_SWEEPS)
    tile, vertex, _ = relaxations(ip.numpy(), nbr.numpy(), masks, args.block_v, args.block_b, MAX_SWEEPS)
    result = {"simulated": {"tile": int(tile), "vertex": int(vertex)}, "kernel": {}}
    for activity in ("tile", "vertex"):
        stats: dict = {}
        for _ in shortest_path_batches(
            ip.to(dev),
            nbr.to(dev),
            w.to(dev),
            torch.as_tensor(codes, device=dev),
            torch.as_tensor(src, device=dev),
            block_v=args.block_v,
            block_b=args.block_b,
            max_batch=args.batch,
            stats=stats,
            activity=activity,
        ):
            pass
        if stats["batches"] != 1:
            raise SystemExit("--check needs one batch: lower --batch")
        result["kernel"][activity] = stats["relaxations"]
    result["equal"] = result["kernel"] == result["simulated"]
    print(json.dumps(result))
    if not result["equal"]:
        raise SystemExit("simulator and kernel disagree")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--batch", type=int, default=640, help="sources in the batch (640: the study's batch at N = 1e6)")
    p.add_argument("--block-v", type=int, default=8)
    p.add_argument("--block-b", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true", help="compare the tile count with the kernel's counter")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.check:
        if os.environ.get("TRITON_INTERPRET") != "1":
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("--check runs the Triton kernel: set TRITON_INTERPRET=1 on a CPU machine")
        out = check(args)
    else:
        out = simulate(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
