"""Where the Triton kNN's time goes: wall time per phase (each phase's function
wrapped with a device sync) and the CUDA kernels' own time (torch.profiler).

    python bench/knn_profile.py            # N = 1e6, D = 768, k = 10 on a GPU
    KNN_PROFILE_N=2000 KNN_PROFILE_D=24 TRITON_INTERPRET=1 python bench/knn_profile.py

On a GPU it also times, in the same run, the defaults twice, 8 database
segments (the former split, to check that one segment still wins) and the
same-shape float16 matmul of ``bench/gpu_check.py`` (the kNN target's floor).

Writes $OUT/knn_profile.json (OUT default ./gpu_check_out). Phases: the
candidate kernel with its segment merge (``_candidates``), the exact float64
re-rank of the candidates (``_exact_dist``), their sort; the rest is the
preparation (centring, scaling, norms, float16 copy) and the certificate.
"""

from __future__ import annotations

import json
import os
import time

import torch

# gpu_check's common module switches the interpreter on before triton is imported
# when there is no CUDA device; gpu_check's data, timing and floor are reused here
from _gpu_check_common import CUDA, make_data, sync, timed  # noqa: E402
from _gpu_check_knn import knn_floor

import fastconvex.kernels.triton.knn as knn_mod  # noqa: E402

N = int(os.environ.get("KNN_PROFILE_N", "1000000" if CUDA else "2000"))
D = int(os.environ.get("KNN_PROFILE_D", "768" if CUDA else "24"))
K = 10
OUT = os.environ.get("OUT") or "./gpu_check_out"
PHASES = ("_candidates", "_exact_dist", "_sort_by_dist_then_index", "_brute_force_f64")


def main() -> None:
    x, _ = make_data(N, D, 40, seed=N % 1000 + 5)  # the data of gpu_check's kNN timings
    knn_mod.knn(x, K)  # compile every tier this data needs, warm the caches
    spent = dict.fromkeys(PHASES, 0.0)
    originals = {p: getattr(knn_mod, p) for p in PHASES}
    active: list[str] = []

    def wrapped(name):
        fn = originals[name]

        def run(*a, **kw):
            if active:  # called from another phase (the brute force re-ranks
                return fn(*a, **kw)  # and sorts): counted in that phase alone
            active.append(name)
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                spent[name] += time.perf_counter() - t0
                active.pop()

        return run

    for p in PHASES:
        setattr(knn_mod, p, wrapped(p))
    try:
        (_, _, _, stats), total = timed(lambda: knn_mod.knn(x, K, return_stats=True))
    finally:
        for p in PHASES:
            setattr(knn_mod, p, originals[p])
    rec = {
        "device": torch.cuda.get_device_name() if CUDA else "cpu (interpreter)",
        "N": N,
        "D": D,
        "k": K,
        "total_s": total,
        "phases_s": spent,
        "rest_s": total - sum(spent.values()),
        "stats": stats,
    }
    if CUDA:
        # in the same run: the former split of the database (8 segments), and the
        # floor of bench/gpu_check.py (same-shape float16 matmul, 4096-row chunks)
        knn_mod.knn(x, K, segments=8)
        for label, kw in (("defaults", {}), ("segments=8", {"segments": 8}), ("defaults again", {})):
            rec.setdefault("knn_s", {})[label] = timed(lambda: knn_mod.knn(x, K, **kw))[1]
        rows, t = knn_floor(x, torch.float16, 4096, 30.0)
        rec["matmul_fp16_s"] = t * N / rows
        best = min(rec["knn_s"]["defaults"], rec["knn_s"]["defaults again"])
        rec["defaults_vs_fp16_matmul"] = best / rec["matmul_fp16_s"]
    print(json.dumps(rec, indent=1), flush=True)
    if CUDA:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            knn_mod.knn(x, K)
            sync()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(table, flush=True)
        rec["kernels"] = [
            {"name": e.key[:120], "cuda_s": e.device_time_total / 1e6, "calls": e.count}
            for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:25]
        ]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "knn_profile.json"), "w") as f:
        json.dump(rec, f, indent=1, default=str)


if __name__ == "__main__":
    main()
