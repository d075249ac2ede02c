"""The CPU figures quoted in the README and docs/benchmarks.md (the CPU targets), measured in one run.

    python bench/sweep_cpu.py [--quick] [--out bench/results/cpu.json]

Every ratio compares two methods measured in this same run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from oracles import scipy_shortest_distances  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex.backends.duplicates import duplicate_groups  # noqa: E402
from fastconvex.datasets import overlapping_classes  # noqa: E402
from fastconvex.graph.benchmark import machine_info, timed, warm_up  # noqa: E402
from fastconvex.graph.plan import _plan  # noqa: E402
from fastconvex.kernels.numba.graph import union_csr  # noqa: E402
from fastconvex.kernels.numba.knn import knn  # noqa: E402
from fastconvex.kernels.numba.paths import pair_scores  # noqa: E402


def vs_nnconvexity(n: int, results: dict) -> None:
    from nnconvexity.graph import compute_graph_convexity

    x, y = overlapping_classes(n, 256, 10)
    t_fast, fast = timed(lambda: fc.graph_convexity(x, y), repeat=3)
    t_naive, naive = timed(lambda: fc.naive.graph_convexity(x, y))
    assert abs(fast.score - naive.score) <= 1e-9, "refusing to time a wrong answer"
    np.random.seed(0)  # noqa: NPY002 - nnconvexity draws its pairs from numpy's global random state
    t_nn, (nn_score, _) = timed(lambda: compute_graph_convexity(x.astype(np.float64), y, 10, 5000, 1))
    results["n2000"] = {
        "n": n,
        "dim": 256,
        "classes": 10,
        "k": 10,
        "pairs": 5000,
        "numba_s": t_fast,
        "naive_s": t_naive,
        "nnconvexity_s": t_nn,
        "score": fast.score,
        "stderr": fast.stderr,
        "nnconvexity_score_percent": nn_score,
        "speedup_vs_naive": t_naive / t_fast,
        "speedup_vs_nnconvexity": t_nn / t_fast,
    }


def knn_and_paths(n: int, n_sources: int, results: dict) -> None:
    x, y = overlapping_classes(n, 768, 10)
    t_mm, _ = timed(lambda: x @ x.T, repeat=2)
    t_knn, (idx, dist, n_fallback) = timed(lambda: knn(x, 10), repeat=2)
    results["knn"] = {
        "n": n,
        "dim": 768,
        "k": 10,
        "knn_s": t_knn,
        "matmul_f32_s": t_mm,
        "ratio_to_matmul": t_knn / t_mm,
        "fallback_rows": n_fallback,
    }
    indptr, nbr, w = union_csr(idx, dist)
    plan = _plan(y, 10, 5000, None, False, 0, 2)
    s = min(n_sources, plan.n_sources)
    ptr = plan.target_ptr[: s + 1]
    targets = plan.targets[: ptr[-1]]
    sources = plan.sources[:s]
    t_ours, (_scores, _) = timed(lambda: pair_scores(indptr, nbr, w, y, sources, ptr, targets), repeat=2)
    t_scipy, _dist_sp = timed(lambda: scipy_shortest_distances(indptr, nbr, w, sources))
    results["paths"] = {
        "n": n,
        "edges": int(indptr[-1]),
        "sources": int(s),
        "pairs": int(ptr[-1]),
        "numba_s": t_ours,
        "scipy_dijkstra_s": t_scipy,
        "speedup_vs_scipy": t_scipy / t_ours,
    }


def duplicates(n: int, n_copies: int, results: dict) -> None:
    """Exact duplicates: ``n_copies`` rows replaced by the data's mean (the
    worst case for the certificate: every row's nearest points become one run
    of exact ties). ``knn_graph`` searches the distinct rows once; the kernel
    over all rows is the baseline."""
    x, _ = overlapping_classes(n, 256, 10)
    dup = x.copy()
    dup[np.random.default_rng(0).choice(n, n_copies, replace=False)] = x.mean(axis=0)
    t_distinct, _ = timed(lambda: fc.knn_graph(x, 10, backend="numba"), repeat=2)
    t_dedup, graph = timed(lambda: fc.knn_graph(dup, 10, backend="numba"), repeat=2)
    t_all_rows, (idx, _, n_fallback) = timed(lambda: knn(dup, 10))
    assert np.array_equal(graph.indices, idx), "refusing to time a wrong answer"
    _, first = duplicate_groups(dup)
    _, _, distinct_fallback = knn(dup[first], 10)
    results["duplicates"] = {
        "n": n,
        "dim": 256,
        "k": 10,
        "copies_of_mean": n_copies,
        "distinct_rows": int(first.shape[0]),
        "distinct_fallback_rows": distinct_fallback,
        "knn_graph_s": t_dedup,
        "kernel_all_rows_s": t_all_rows,
        "kernel_fallback_rows": n_fallback,
        "knn_graph_distinct_data_s": t_distinct,
        "speedup_vs_all_rows": t_all_rows / t_dedup,
    }


MEMORY_SNIPPET = """
import fastconvex as fc
from fastconvex.datasets import overlapping_classes
x, y = overlapping_classes({n}, 256, 10)
r = fc.graph_convexity(x, y)
# VmHWM: this process image's peak RSS (ru_maxrss would also count the parent's
# pages at fork time, which Linux carries across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024.0, r.score)
"""


def peak_memory(n: int, results: dict) -> None:
    """Peak RSS of a fresh process scoring N points (default estimator), after
    this process has compiled the kernels into Numba's on-disk cache (a user's
    second and later runs)."""
    runs = []
    for _ in range(1):
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SNIPPET.format(n=n)], check=True, capture_output=True, text=True
        ).stdout.split()
        runs.append({"peak_rss_mb": float(out[0]), "score": float(out[1]), "wall_s": time.perf_counter() - t0})
    results["memory"] = {"n": n, "dim": 256, **runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu.json"))
    args = parser.parse_args()
    warm_up("numba")
    results: dict = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
    q = args.quick
    vs_nnconvexity(300 if q else 2000, results)
    knn_and_paths(3000 if q else 20000, 300 if q else 3000, results)
    duplicates(3000 if q else 20000, 300 if q else 2000, results)
    peak_memory(5000 if q else 50000, results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
    a, b, c, m = results["n2000"], results["knn"], results["paths"], results["memory"]
    e = results["duplicates"]
    print(
        f"| N={a['n']}, D=256, pairs=5000 | fastconvex {a['numba_s']:.2f} s | naive {a['naive_s']:.2f} s "
        f"({a['speedup_vs_naive']:.1f}x) | nnconvexity 0.1.1 {a['nnconvexity_s']:.1f} s "
        f"({a['speedup_vs_nnconvexity']:.0f}x) |"
    )
    print(
        f"| kNN N={b['n']}, D=768 | {b['knn_s']:.2f} s | float32 matmul {b['matmul_f32_s']:.2f} s "
        f"| ratio {b['ratio_to_matmul']:.2f} |"
    )
    print(
        f"| paths N={c['n']}, {c['sources']} sources | {c['numba_s']:.2f} s | scipy dijkstra "
        f"{c['scipy_dijkstra_s']:.2f} s | {c['speedup_vs_scipy']:.1f}x |"
    )
    print(
        f"| kNN N={e['n']}, D=256, {e['copies_of_mean']} copies of the mean | {e['knn_graph_s']:.2f} s "
        f"| kernel over all rows {e['kernel_all_rows_s']:.2f} s ({e['kernel_fallback_rows']} rows brute-forced) "
        f"| {e['speedup_vs_all_rows']:.1f}x | (distinct data: {e['knn_graph_distinct_data_s']:.2f} s)"
    )
    print(f"| peak memory N={m['n']}, D=256 | {m['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
