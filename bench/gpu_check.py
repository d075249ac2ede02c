"""One-shot GPU check of the Triton backend: correctness against the CPU (Numba)
backend and float64 brute force, then timings against the obvious baselines.

Run through ``bench/gpu_check.sh`` (installs fastconvex, then runs this file).
Environment:
  OUT                 output folder (default ./gpu_check_out); writes gpu_check.json
  GPU_CHECK_SMALL=1   tiny sizes (runs on the CPU under TRITON_INTERPRET=1)
  GPU_CHECK_BUDGET    seconds for the whole script (default 420; small: 900)

Every stage is guarded: an exception is printed, recorded and the script goes on;
a stage that would not fit the remaining time budget is recorded as
"skipped: time budget". Timings of a wrong answer are not reported.

Layout: this file runs the stages in order and prints the summary;
``_gpu_check_common.py`` holds the shared state (results, budget, sizes) and
helpers, ``_gpu_check_correctness.py`` the device, warm-up and correctness
stages, ``_gpu_check_knn.py`` the kNN timings, ``_gpu_check_paths.py`` the
path, layer and exact stages.
"""

from __future__ import annotations

import json
import os
import sys

from _gpu_check_common import (  # first: sets TRITON_INTERPRET before triton loads
    BEST_CFG,
    CUDA,
    DEV,
    N_BENCH,
    N_CHECK,
    N_CLASSES,
    N_EXACT,
    N_LAYER,
    N_PATHS,
    OUT,
    RECALL_MIN,
    RESULT,
    SMALL,
    SRC_LAYER,
    elapsed,
    save,
)

# isort: split
import torch
from _gpu_check_correctness import st_correctness, st_device, st_warmup
from _gpu_check_knn import knn_timings
from _gpu_check_paths import st_exact, st_layer, st_paths


def targets(s: dict) -> list[str]:
    """The four GPU targets (docs/benchmarks.md), each judged from this run's figures only."""

    def verdict(ok):
        if SMALL:
            return "tiny run"  # interpreter sizes: the figures say nothing of the targets
        return "not measured" if ok is None else ("MET" if ok else "not met")

    big = s.get(f"knn_N{N_BENCH[-1]}", {})
    rc = [e["recall_sampled"] for e in big.get("triton_runs", []) if e["config"] == big.get("triton_config")]
    ratio, speed = big.get("ratio_vs_floor"), big.get("speedup_vs_cdist_topk")
    lay, ex = s.get("layer_N1e6_sources64", {}), s.get("exact_N1e5", {})
    c = s.get("correctness", {}).get("recall_vs_f64_bruteforce")
    recalls = [v for v in [c, *rc] if isinstance(v, float)]

    def num(v, lim, below=True):
        return None if not isinstance(v, (int, float)) else (v <= lim if below else v >= lim)

    rows = [
        (
            (
                f"kNN N={N_BENCH[-1]}: <= 1.5x the {big.get('floor', '?')} matmul of the same shape "
                "(operands of the tier that certified most rows)"
            ),
            ratio,
            num(ratio, 1.5),
        ),
        (f"kNN N={N_BENCH[-1]}: >= 3x faster than chunked cdist+topk", speed, num(speed, 3.0, below=False)),
        (
            f"layer N={N_LAYER}, {N_CLASSES} classes, sources={SRC_LAYER}: < 15 s",
            lay.get("seconds"),
            num(lay.get("seconds"), 15.0),
        ),
        (f"exact N={N_EXACT}: < 60 s", ex.get("seconds"), num(ex.get("seconds"), 60.0)),
        (
            "recall vs float64 brute force >= 0.9999 (correctness stage and largest kNN)",
            min(recalls) if recalls else None,
            num(min(recalls), RECALL_MIN, below=False) if recalls else None,
        ),
    ]
    out = ["-" * 78, "TARGETS (this run's figures only" + (", at tiny sizes: no verdicts)" if SMALL else ")")]
    RESULT["targets"] = [{"target": t, "value": v, "verdict": verdict(ok)} for t, v, ok in rows]
    for text, value, ok in rows:
        v = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
        out.append(f"  [{verdict(ok):>12}] {text}: {v}")
    return out


def summary() -> None:
    s = RESULT["stages"]
    lines = ["", "=" * 78, f"SUMMARY (device: {s.get('device', {}).get('name', str(DEV))})", "-" * 78]

    def f(v, fmt="{:.3f}"):
        return fmt.format(v) if isinstance(v, (int, float)) and v == v else str(v)

    c = s.get("correctness", {})
    lines.append(
        f"correctness N={N_CHECK}: {c.get('status')} passed={c.get('passed')} "
        f"recall={f(c.get('recall_vs_f64_bruteforce'), '{:.6f}')} "
        f"scores={ {k: f(v.get('abs_diff'), '{:.2e}') for k, v in c.get('scores', {}).items()} } "
        f"bitwise=numba: {c.get('lists_and_distances_equal_numba_bitwise')}"
    )
    lines.append(
        f"{'kNN':<14}{'triton s':>10}{'TFLOP/s':>9}{'recall':>10}{'x bf16mm':>10}"
        f"{'x fp16mm':>10}{'x tf32mm':>10}{'vs cdist':>10}  floor  status"
    )
    for n in N_BENCH:
        r = s.get(f"knn_N{n}", {})
        rc = None
        for e in r.get("triton_runs", []):
            if e["config"] == r.get("triton_config"):
                rc = e["recall_sampled"]
        lines.append(
            f"{f'N={n:d}':<14}{f(r.get('triton_seconds')):>10}{f(r.get('triton_tflops'), '{:.1f}'):>9}"
            f"{f(rc, '{:.6f}'):>10}{f(r.get('ratio_vs_bf16_matmul'), '{:.2f}'):>10}"
            f"{f(r.get('ratio_vs_fp16_matmul'), '{:.2f}'):>10}"
            f"{f(r.get('ratio_vs_tf32_matmul'), '{:.2f}'):>10}"
            f"{f(r.get('speedup_vs_cdist_topk'), '{:.2f}'):>10}  {r.get('floor')!s:<6} "
            f"{r.get('status')}"
        )
    p = s.get("paths_vs_numba", {})
    for key in [k for k, v in p.items() if isinstance(v, dict) and "seconds" in v]:
        q = p.get(key, {})
        lines.append(
            f"paths N={N_PATHS} S={p.get('sources')} order={key}: triton {f(q.get('seconds'))}s "
            f"numba {f(p.get('numba_seconds'))}s speedup {f(q.get('speedup_vs_numba'), '{:.2f}')} "
            f"relax/s {f(q.get('relaxations_per_s'), '{:.3g}')} "
            f"busy lanes {f(q.get('busy_lanes'), '{:.2f}')} correct={q.get('correct')} "
            f"[{p.get('status')}]"
        )
    timed_ok = {k: v for k, v in p.items() if isinstance(v, dict) and v.get("correct") and v.get("seconds")}
    if timed_ok and "none+state=wide+block_v=32" in timed_ok:
        fastest = min(timed_ok, key=lambda k: timed_ok[k]["seconds"])
        lines.append(
            f"  fastest correct path variant: {fastest}, "
            f"{timed_ok['none+state=wide+block_v=32']['seconds'] / timed_ok[fastest]['seconds']:.2f}x "
            "the run-4 settings (input order, wide state, 32 x 32 tiles) in this run"
        )
    lay = s.get("layer_N1e6_sources64", {})
    lines.append(
        f"layer N={N_LAYER} C={N_CLASSES} sources={SRC_LAYER} order={lay.get('order')}: "
        f"{f(lay.get('seconds'))}s busy lanes {f(lay.get('busy_lanes'), '{:.2f}')} "
        f"[{lay.get('status')}]"
    )
    for key in [
        k for k, v in lay.items() if isinstance(v, dict) and ("seconds" in v or "status" in v) and k != "breakdown"
    ]:
        q = lay[key]
        lines.append(
            f"  same layer, {key}: {f(q.get('seconds'))}s busy lanes "
            f"{f(q.get('busy_lanes'), '{:.2f}')}; defaults' paths "
            f"{f(q.get('paths_speedup_of_first'), '{:.2f}')}x faster {q.get('status', '')}"
        )
    ex = s.get("exact_N1e5", {})
    lines.append(f"exact N={N_EXACT}: {f(ex.get('seconds'))}s pairs={ex.get('pairs')} [{ex.get('status')}]")
    lines += targets(s)
    lines.append(f"total wall {elapsed():.1f}s; JSON: {os.path.join(OUT, 'gpu_check.json')}")
    lines.append("=" * 78)
    print("\n".join(lines), flush=True)


def main() -> int:
    st_device()
    st_warmup()
    st_correctness()
    # GPU_CHECK_KNN_CONFIG='{"segments": 8}' fixes the kNN launch settings;
    # GPU_CHECK_SKIP_KNN_TIMING=1 skips the kNN timing sweep (e.g. a second
    # device call after a first one measured it).
    if os.environ.get("GPU_CHECK_KNN_CONFIG"):
        BEST_CFG.update(json.loads(os.environ["GPU_CHECK_KNN_CONFIG"]))
        RESULT["best_knn_config"] = dict(BEST_CFG)
    skip_knn = os.environ.get("GPU_CHECK_SKIP_KNN_TIMING") == "1"
    # GPU_CHECK_SKIP=paths,exact skips those stages (layer, paths, exact)
    skip = set(filter(None, os.environ.get("GPU_CHECK_SKIP", "").split(",")))
    knn_timings(skip_knn)
    for name, key, fn in (
        ("paths", "paths_vs_numba", st_paths),
        ("layer", "layer_N1e6_sources64", st_layer),
        ("exact", "exact_N1e5", st_exact),
    ):
        if name in skip:
            RESULT["stages"][key] = {"status": "skipped: GPU_CHECK_SKIP"}
            continue
        fn()
        if CUDA:
            torch.cuda.empty_cache()
    RESULT["total_wall_s"] = elapsed()
    summary()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
