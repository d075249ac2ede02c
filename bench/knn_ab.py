"""The one-sided kNN kernel against the symmetric one (``knn(..., symmetric=True)``:
every pair of rows computed once), at the study's setting, in one run.

For each N (default 10⁵ then 10⁶; D = 768, 40 overlapping classes, k = 10,
float32 on the device): both kernels compiled outside the timing, then timed
alternately (defaults, symmetric, defaults, symmetric, ...), every symmetric
result compared with the defaults' bit for bit (indices and distances), and
the float16 matmul of the same shape timed in the same run as the floor. A
symmetric timing is reported only when its result was identical.

``python bench/knn_ab.py`` on a CUDA machine (``GPU_CHECK_SMALL=1``: tiny, on
the CPU under the interpreter). Environment: ``KNN_AB_N`` (comma list),
``KNN_AB_REPEATS`` (default 3), ``KNN_AB_CONFIGS`` (JSON list of extra
symmetric launch options, default ``[{}, {"stagger": true}, {"block_n": 128}]``).
Writes ``$OUT/knn_ab.json`` (read by ``bench/gpu_study.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from _gpu_check_common import CUDA, OUT, SMALL, K, log, make_data, sync  # noqa: E402  (sets TRITON_INTERPRET)
from _gpu_check_knn import knn_floor  # noqa: E402

from fastconvex.kernels.triton.knn import knn  # noqa: E402

D = 24 if SMALL else 768
SIZES = [int(v) for v in os.environ.get("KNN_AB_N", "300" if SMALL else "100000,1000000").split(",")]
REPEATS = int(os.environ.get("KNN_AB_REPEATS", "2" if SMALL else "3"))
SMALL_BLOCKS = {"block_m": 16, "block_n": 32, "block_k": 16}
CONFIGS = json.loads(os.environ.get("KNN_AB_CONFIGS", '[{}, {"stagger": true}, {"block_n": 128}]'))


def timed_knn(x, opts):
    sync()
    t0 = time.perf_counter()
    idx, dist, _, st = knn(x, K, return_stats=True, **opts)
    sync()
    return time.perf_counter() - t0, idx, dist, st


def main() -> int:
    result = {
        "D": D,
        "k": K,
        "repeats": REPEATS,
        "device": torch.cuda.get_device_name(0) if CUDA else "cpu",
        "sizes": {},
    }
    path = os.path.join(OUT, "knn_ab.json")
    os.makedirs(OUT, exist_ok=True)
    ok_all = True
    for n in SIZES:
        x, _ = make_data(n, D, 5 if SMALL else 40, seed=n % 1000 + 7)
        base_opts = dict(SMALL_BLOCKS) if SMALL else {}
        variants = {"defaults": base_opts}
        for cfg in CONFIGS:
            name = "symmetric" + "".join(f"+{k}={v}" for k, v in cfg.items())
            variants[name] = {**base_opts, **cfg, "symmetric": True}
        rec: dict = {"runs": {name: [] for name in variants}}
        ref = None
        for opts in variants.values():  # compile outside the timing
            knn(x[: min(n, 4096)], K, **opts)
        for _ in range(REPEATS):
            for name, opts in variants.items():
                try:
                    t, idx, dist, st = timed_knn(x, opts)
                except Exception as e:  # noqa: BLE001
                    rec["runs"][name].append({"error": f"{type(e).__name__}: {e}"})
                    continue
                if ref is None:
                    ref = (idx, dist)
                same = torch.equal(idx, ref[0]) and torch.equal(dist, ref[1])
                rec["runs"][name].append(
                    {
                        "seconds": t if same else None,
                        "identical_to_defaults": same,
                        "tiers": st["tiers"],
                        "brute_force_rows": st["brute_force_rows"],
                    }
                )
                log(f"N={n} {name}: {t:.3f}s identical={same} tiers={st['tiers']}")
                del idx, dist
        summary = {}
        for name, runs in rec["runs"].items():
            times = [r["seconds"] for r in runs if r.get("seconds") is not None]
            identical = bool(runs) and all(r.get("identical_to_defaults") for r in runs)
            summary[name] = {
                "median_s": statistics.median(times) if times and identical else None,
                "identical": identical,
            }
            ok_all &= identical
        base = summary["defaults"]["median_s"]
        for s in summary.values():
            s["speedup_vs_defaults"] = base / s["median_s"] if base and s["median_s"] else None
        rec["summary"] = summary
        if CUDA:
            done, t = knn_floor(x, torch.float16, 4096 if n > 100_000 else 8192, 15.0)
            rec["matmul_fp16"] = {"rows": done, "seconds": t, "seconds_full": t * n / done}
            for s in summary.values():
                if s["median_s"]:
                    s["vs_fp16_matmul"] = s["median_s"] / rec["matmul_fp16"]["seconds_full"]
        result["sizes"][str(n)] = rec
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2, default=str)
        os.replace(path + ".tmp", path)
        log(f"N={n} summary: {json.dumps(summary)}")
        del x, ref
        if CUDA:
            torch.cuda.empty_cache()
    print(f"knn_ab ({result['device']}):", flush=True)
    for n, rec in result["sizes"].items():
        for name, s in rec["summary"].items():
            sp = s.get("speedup_vs_defaults")
            print(
                f"  N={n} {name}: median {s['median_s']} s, identical={s['identical']}"
                + (f", {sp:.2f}x the defaults" if sp else "")
                + (f", {s['vs_fp16_matmul']:.2f}x the fp16 matmul" if s.get("vs_fp16_matmul") else ""),
                flush=True,
            )
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
