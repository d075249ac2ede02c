"""Stages of ``bench/gpu_check.py`` run first: the device and library versions,
the kernels' compile warm-up, and correctness of the Triton backend against the
Numba backend and float64 brute force."""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import torch
from _gpu_check_common import (
    CUDA,
    D_BENCH,
    D_CHECK,
    DEV,
    N_CHECK,
    N_CLASSES,
    RECALL_MIN,
    SCORE_TOL,
    SMALL,
    K,
    log,
    make_data,
    sample_rows,
    stage,
    sync,
    tie_aware_recall,
    timed,
)

import fastconvex as fc
from fastconvex.backends.triton import TritonEngine


@stage("device", 0)
def st_device(rec):
    import numba
    import triton

    rec.update(
        python=platform.python_version(),
        torch=torch.__version__,
        triton=triton.__version__,
        numba=numba.__version__,
        cuda=CUDA,
        interpreter=os.environ.get("TRITON_INTERPRET") == "1",
        cpu_count=os.cpu_count(),
        numba_threads=numba.get_num_threads(),
    )
    if CUDA:
        p = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        rec.update(
            name=p.name,
            sms=p.multi_processor_count,
            capability=f"{p.major}.{p.minor}",
            mem_total_gb=round(total / 2**30, 1),
            mem_free_gb=round(free / 2**30, 1),
            torch_cuda=torch.version.cuda,
        )
    log(json.dumps(rec))


@stage("warmup_compile", 5)
def st_warmup(rec):
    """Compile the kernels once (small problem) so later timings exclude JIT."""
    x, labels = make_data(300 if not SMALL else 100, D_BENCH, 4, seed=3)
    t0 = time.perf_counter()
    for prec in (("fp16",), ("tf32",), ("tf32x3",), ("ieee",)) if CUDA else (("ieee",),):
        TritonEngine(DEV, knn_options={"precisions": prec}).knn(x, K)
    fc.graph_convexity(x, labels.cpu().numpy(), k=K, sources=4, backend="triton", device=DEV)
    sync()
    rec["seconds"] = time.perf_counter() - t0


@stage("correctness", 20)
def st_correctness(rec):
    from fastconvex.kernels.triton.knn import knn

    n, d = N_CHECK, D_CHECK
    x, labels = make_data(n, d, N_CLASSES, seed=11)
    # duplicates and exact ties must survive too
    # (same labels: duplicates with different labels make equal-length paths whose
    # scores differ, and docs/score.md, step 4, lets each backend pick any of them)
    x[5] = x[6]
    labels[5] = labels[6]
    x[100:104] = x[99]
    labels[100:104] = labels[99]
    (idx, dist, _n_fb, kstats), t = timed(lambda: knn(x, K, return_stats=True))
    rec["knn_seconds"] = t
    rec["knn_tiers"] = kstats
    rows = torch.arange(n, device=DEV) if n <= 20_000 else sample_rows(n, 4096)
    rec["recall_rows"] = int(rows.numel())
    rec["recall_vs_f64_bruteforce"] = tie_aware_recall(x, idx, rows, K)
    # against the Numba backend
    xh = x.cpu().numpy()
    from fastconvex.kernels.numba.knn import knn as cpu_knn

    (ci, cd, _cfb), t = timed(lambda: cpu_knn(xh, K))
    rec["numba_knn_seconds"] = t
    same_sets = np.mean([set(a) == set(b) for a, b in zip(idx.cpu().numpy().tolist(), ci.tolist())])
    rec["rows_same_set_as_numba"] = float(same_sets)
    rec["max_abs_distance_diff_vs_numba"] = float(np.abs(dist.cpu().numpy() - cd).max())
    # the float64 re-rank sums in the CPU loop's order without fused
    # multiply-adds: lists and distances equal Numba's to the bit
    rec["lists_and_distances_equal_numba_bitwise"] = bool(
        np.array_equal(idx.cpu().numpy(), ci) and np.array_equal(dist.cpu().numpy(), cd)
    )
    # scores on the same pairs
    lab = labels.cpu().numpy()
    diffs = {}
    for est in ({"pairs": 2000}, {"sources": 8}):
        a, ta = timed(lambda: fc.graph_convexity(x, lab, k=K, backend="triton", **est))
        b, tb = timed(lambda: fc.graph_convexity(xh, lab, k=K, backend="numba", **est))
        key = next(iter(est))
        diffs[key] = {
            "triton_score": a.score,
            "numba_score": b.score,
            "abs_diff": abs(a.score - b.score),
            "max_class_diff": max(abs(a.per_class[c] - b.per_class[c]) for c in a.per_class),
            "unreachable": [a.n_unreachable, b.n_unreachable],
            "triton_s": ta,
            "numba_s": tb,
        }
    rec["scores"] = diffs
    ok_scores = all(v["max_class_diff"] <= SCORE_TOL and v["abs_diff"] <= SCORE_TOL for v in diffs.values())
    rec["passed"] = bool(rec["recall_vs_f64_bruteforce"] >= RECALL_MIN and ok_scores)
    log(json.dumps(rec, default=str))
