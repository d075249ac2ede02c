"""kNN timing stages of ``bench/gpu_check.py``: the Triton kNN per size and
launch configuration (recall checked against float64 brute force), beside the
same-shape matmul floors and chunked ``torch.cdist`` + ``torch.topk``."""

from __future__ import annotations

import json
import math
import time

import torch
from _gpu_check_common import (
    BEST_CFG,
    CUDA,
    D_BENCH,
    N_BENCH,
    N_CLASSES,
    RECALL_MIN,
    RESULT,
    TF32_FIRST,
    K,
    exact_kth_f64,
    left,
    log,
    make_data,
    sample_rows,
    stage,
    sync,
    tie_aware_recall,
    timed,
)


def knn_floor(x: torch.Tensor, dtype, chunk: int, time_cap: float):
    """Same-shape matrix product x @ x.T in row chunks (bf16, fp16 or TF32)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == torch.float32
    try:
        xd = x.to(dtype)
        n = x.shape[0]
        out = torch.empty((min(chunk, n), n), dtype=dtype, device=x.device)
        torch.mm(xd[: min(chunk, n)], xd.T, out=out[: min(chunk, n)])  # warm
        sync()
        t0 = time.perf_counter()
        done = 0
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            torch.mm(xd[r0:r1], xd.T, out=out[: r1 - r0])
            done = r1
            if time.perf_counter() - t0 > time_cap:
                break
        sync()
        return done, time.perf_counter() - t0
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def floor_of(stats: dict) -> str:
    """Which matmul is the like-for-like floor of a kNN run: that of the operand
    type of the tier that certified the most rows."""
    tiers = stats.get("tiers", [])
    if not tiers:
        return "tf32"
    top = max(tiers, key=lambda t: t["certified"])["precision"]
    return "fp16" if top == "fp16" else "tf32"


def cdist_topk(x: torch.Tensor, k: int, chunk: int, time_cap: float):
    """What a user would write: chunked torch.cdist + torch.topk (float32)."""
    n = x.shape[0]
    idx = torch.empty((n, k), dtype=torch.int64, device=x.device)
    sync()
    t0 = time.perf_counter()
    done = 0
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        d = torch.cdist(x[r0:r1], x)
        d[torch.arange(r1 - r0, device=x.device), torch.arange(r0, r1, device=x.device)] = math.inf
        idx[r0:r1] = torch.topk(d, k, dim=1, largest=False).indices
        done = r1
        if time.perf_counter() - t0 > time_cap:
            break
    sync()
    return idx, done, time.perf_counter() - t0


def knn_timing(n: int, configs: list[dict] | None = None):
    name = f"knn_N{n}"
    est = 2.0 * n * n * D_BENCH / 50e12 * 3 + 5 if CUDA else 30

    @stage(name, min(est, 120))
    def run(rec):
        from fastconvex.kernels.triton.knn import knn

        x, _ = make_data(n, D_BENCH, N_CLASSES, seed=n % 1000 + 5)
        flops = 2.0 * n * n * D_BENCH
        rec.update(N=n, D=D_BENCH, k=K, flops=flops)
        rows = sample_rows(n, 512 if n > 20_000 else n)
        kth = exact_kth_f64(x, rows, K)
        best = None
        for cfg in configs or [{}]:
            try:
                knn(x[: min(n, 2048)], K, **cfg)  # compile this config outside the timing
                (res, t) = timed(lambda: knn(x, K, return_stats=True, **cfg))
            except Exception as e:  # noqa: BLE001
                rec.setdefault("config_errors", []).append(f"{cfg}: {type(e).__name__}: {e}")
                continue
            idx, _, _n_fb, st = res
            rc = tie_aware_recall(x, idx, rows, K, kth)
            entry = {"config": cfg, "seconds": t, "recall_sampled": rc, "tiers": st, "tflops": flops / t / 1e12}
            rec.setdefault("triton_runs", []).append(entry)
            log(f"{name} triton {cfg} {t:.3f}s recall {rc:.6f} tiers {st}")
            if rc >= RECALL_MIN and (best is None or t < best["seconds"]):
                best = entry
            del idx
        if best is None:
            rec["status"] = "wrong answer: no timing reported"
            return None
        rec["triton_seconds"] = best["seconds"]
        rec["triton_config"] = best["config"]
        rec["triton_tflops"] = best["tflops"]
        # what every engine call adds before the kernel: the duplicate-row search
        from fastconvex.backends.duplicates import duplicate_groups

        groups, t_dup = timed(lambda: duplicate_groups(x))
        rec["duplicate_search"] = {
            "seconds": t_dup,
            "vs_knn": t_dup / best["seconds"],
            "distinct_rows": n if groups is None else int(groups[1].shape[0]),
        }
        log(f"{name} duplicate-row search {t_dup:.4f}s ({t_dup / best['seconds']:.1%} of the kNN)")
        if CUDA:
            cap = min(15.0, max(2.0, left() / 8))
            for dt, label in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "tf32")):
                done, t = knn_floor(x, dt, 4096 if n > 100_000 else 8192, cap)
                rec[f"matmul_{label}"] = {"rows": done, "seconds": t, "tflops": 2.0 * done * n * D_BENCH / t / 1e12}
            idx, done, t = cdist_topk(x, K, 4096 if n > 100_000 else 8192, cap)
            sub = rows[rows < done]
            rc = tie_aware_recall(x, idx, sub, K, kth[rows < done]) if sub.numel() else float("nan")
            rec["cdist_topk"] = {"rows": done, "seconds": t, "recall_sampled": rc, "rows_per_s": done / t}
            # ratios on the rows actually timed
            t_per_row = best["seconds"] / n
            fl = rec["matmul_bf16"]
            rec["ratio_vs_bf16_matmul"] = t_per_row / (fl["seconds"] / fl["rows"])
            fl = rec["matmul_tf32"]
            rec["ratio_vs_tf32_matmul"] = t_per_row / (fl["seconds"] / fl["rows"])
            fl = rec["matmul_fp16"]
            rec["ratio_vs_fp16_matmul"] = t_per_row / (fl["seconds"] / fl["rows"])
            # the like-for-like floor: the matmul in the operand type of the tier
            # that certified the most rows (fp16 tier -> fp16 matmul, TF32 tiers -> TF32)
            rec["floor"] = floor_of(best["tiers"])
            rec["ratio_vs_floor"] = rec[f"ratio_vs_{rec['floor']}_matmul"]
            rec["speedup_vs_cdist_topk"] = (t / done) / t_per_row
            rec["note"] = (
                "matmul / cdist baselines timed on the first 'rows' query rows "
                "(all rows unless the time cap hit); ratios are per query row"
            )
        log(json.dumps({k: v for k, v in rec.items() if k != "triton_runs"}, default=str))
        return x

    return run


def knn_timings(skip_knn: bool) -> None:
    """Time the kNN at each size of N_BENCH: the defaults at the smallest, the
    tuning configurations at the second (its fastest correct one becomes
    BEST_CFG), and variants of BEST_CFG above."""
    configs_small = [{}]
    # kNN configurations timed at N = 1e5 (keep bench/studies/triton_compile_check.py's
    # CONFIGS in sync). {} = the launcher's defaults: 128 x 256 x 32 tiles for
    # the fp16 tier at k <= 16, 8 warps, 3 stages, segments only to fill the
    # GPU (one at N >= 1e5), exclusion masks only on the tiles that need them,
    # and the default tiers (fp16, then tf32x3). Beside it, in the same run: the
    # former defaults (8 segments; 128 x 128 with masks on every tile) and the
    # variants that were slower, so that a card or Triton version on which a
    # choice no longer holds shows it.
    configs_tune = (
        [
            {},
            {"mask_every_tile": True},
            {"block_n": 128},
            {"block_n": 128, "mask_every_tile": True},
            {"num_stages": 4},
            {"block_k": 64},
            {"flat_loop": True},
            {"segments": 8},
            dict(TF32_FIRST),
        ]
        if CUDA
        else [
            {},
            {"block_m": 16, "block_n": 64, "block_k": 16},
            dict(TF32_FIRST),
            {"block_m": 16, "block_n": 64, "block_k": 16, "flat_loop": True},
        ]
    )

    def at_scale(cfg):
        """N = 1e6: the best N = 1e5 configuration, the same with the other
        epilogue (masks on every tile or not), and with the TF32-first tiers."""
        base = {k: v for k, v in cfg.items() if k != "precisions"}
        other = {**base, "mask_every_tile": not base.get("mask_every_tile", False)}
        if not other["mask_every_tile"]:
            del other["mask_every_tile"]
        return [base, other, {**base, **TF32_FIRST}]

    for i, n in enumerate([] if skip_knn else N_BENCH):
        cfgs = configs_tune if i == 1 else (at_scale(BEST_CFG) if i > 1 else configs_small)
        x = knn_timing(n, cfgs)()
        rec = RESULT["stages"].get(f"knn_N{n}", {})
        if i == 1 and rec.get("triton_config") is not None:
            BEST_CFG.clear()
            BEST_CFG.update(rec["triton_config"])
            RESULT["best_knn_config"] = dict(BEST_CFG)
        del x
        if CUDA:
            torch.cuda.empty_cache()
