"""Launch settings of the path kernel at N = 10⁶ (one layer's graph, the
whole-study setting: D = 768, 40 overlapping classes, ``sources=64``), timed in one
run against the defaults, each checked bit for bit against the defaults' sums.

``python bench/paths_tune.py`` on a CUDA machine (``GPU_CHECK_SMALL=1``: tiny,
on the CPU under the interpreter). Writes ``$OUT/paths_tune.json``.
``PATHS_TUNE_GRID=activity``: only the defaults against the "vertex" activity
rule (interleaved, three runs each) and its wider vertex blocks (~40 s at N = 10⁶).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from _gpu_check_common import CUDA, DEV, OUT, SMALL, K, log, make_data, sync  # noqa: E402

from fastconvex.core.pairs import plan_pairs  # noqa: E402
from fastconvex.kernels.triton.graph import reorder_graph, union_csr  # noqa: E402
from fastconvex.kernels.triton.knn import knn  # noqa: E402
from fastconvex.kernels.triton.paths import class_sums  # noqa: E402

N = int(os.environ.get("PATHS_TUNE_N", 400 if SMALL else 1_000_000))
D, C, S = (24, 5, 4) if SMALL else (768, 40, 64)


def main() -> int:
    x, labels = make_data(N, D, C, seed=31)
    codes_np = labels.cpu().numpy().astype("int64")
    plan = plan_pairs(codes_np, C, estimator="sources", budget=S, seed=0, min_class_size=2)
    idx, dist, _ = knn(x, K)
    del x
    indptr, nbr, w, order, inv = reorder_graph(*union_csr(idx, dist), "degree")
    codes = torch.as_tensor(codes_np, device=DEV)[order]
    src = inv[torch.as_tensor(plan.sources, device=DEV)]
    sizes = torch.as_tensor(plan.class_sizes, device=DEV)
    grid = [
        dict(block_v=bv, block_b=bb, num_warps=nw)
        for bv, bb, nw in itertools.product((8, 16, 32), (16, 32, 64), (2, 4))
    ]
    grid += [dict(block_v=16, block_b=32, num_warps=4, check_every=ce) for ce in (4, 6)]
    # the "vertex" activity rule (only vertices with a changed neighbour are
    # recomputed): the defaults and it alternately, three times each, then
    # wider vertex blocks, which it may favour (clean vertices cost no gathers)
    vertex = [dict(activity="vertex", block_v=bv, block_b=32, num_warps=4) for bv in (8, 16, 32)]
    activity_grid = [vertex[0], {}, vertex[0], {}, vertex[0]] + vertex[1:]
    grid = activity_grid if os.environ.get("PATHS_TUNE_GRID") == "activity" else grid + activity_grid
    if SMALL:
        grid = [dict(block_v=bv, block_b=bb) for bv, bb in ((16, 16), (32, 16))]
        grid += [dict(block_v=bv, block_b=16, activity="vertex") for bv in (16, 32)]
    result = {
        "N": N,
        "D": D,
        "classes": C,
        "sources": int(src.numel()),
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
        "runs": [],
    }
    ref = None
    for opts in [{}] + grid:
        try:
            class_sums(indptr, nbr, w, codes, src[:64], sizes, **opts)  # compile outside the timing
            st: dict = {}
            sync()
            t0 = time.perf_counter()
            got = class_sums(indptr, nbr, w, codes, src, sizes, stats=st, **opts)
            sync()
            t = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            result["runs"].append({"options": opts, "error": f"{type(e).__name__}: {e}"})
            continue
        if ref is None:
            ref = got
        same = all(torch.equal(a, b) for a, b in zip(got, ref))
        run = {
            "options": opts,
            "seconds": t if same else None,
            "bitwise_same_as_defaults": same,
            "sweeps": st.get("sweeps"),
            "batches": st.get("batches"),
            "relaxations": st.get("relaxations"),
            "edge_slots": st.get("edge_slots"),
        }
        result["runs"].append(run)
        log(json.dumps(run))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "paths_tune.json"), "w") as f:
        json.dump(result, f, indent=2)
    ok = [r for r in result["runs"] if r.get("seconds")]
    base = ok[0]["seconds"]
    for r in sorted(ok, key=lambda r: r["seconds"])[:8]:
        print(f"{r['options'] or 'defaults'}: {r['seconds']:.3f} s ({base / r['seconds']:.2f}x the defaults)")
    return 0 if all(r.get("bitwise_same_as_defaults", False) for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
