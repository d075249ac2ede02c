"""Shared state and helpers of ``bench/gpu_check.py``: the environment (sizes,
time budget, output folder, device), the results dict every stage writes into,
the stage decorator, timing, logging, the JSON save, the data recipe and the
float64 recall check.

Importing this module switches the Triton interpreter on (``TRITON_INTERPRET=1``)
when there is no CUDA device, so import it before anything imports triton.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback

SMALL = os.environ.get("GPU_CHECK_SMALL") == "1"
T_START = time.perf_counter()
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET", "900" if SMALL else "420"))
OUT = os.environ.get("OUT") or "./gpu_check_out"

import torch  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
DEV = torch.device("cuda" if CUDA else "cpu")

RESULT: dict = {"small": SMALL, "budget_s": BUDGET, "stages": {}}
# the former default kNN tiers, timed as the baseline of the float16-first default
TF32_FIRST = {"precisions": ["tf32", "tf32x3"]}
RECALL_MIN = 0.9999
BEST_CFG: dict = {}
SCORE_TOL = 1e-6

# sizes
if SMALL:
    D_BENCH, N_BENCH, N_CHECK, D_CHECK = 24, [150, 300], 200, 24
    N_PATHS, N_LAYER, N_EXACT, N_CLASSES = 300, 300, 200, 5
    SRC_PATHS, SRC_LAYER = 2, 8
else:
    D_BENCH, N_BENCH, N_CHECK, D_CHECK = 768, [10_000, 100_000, 1_000_000], 20_000, 768
    N_PATHS, N_LAYER, N_EXACT, N_CLASSES = 100_000, 1_000_000, 100_000, 40
    SRC_PATHS, SRC_LAYER = 4, 64
K = 10


def elapsed() -> float:
    return time.perf_counter() - T_START


def left() -> float:
    return BUDGET - elapsed()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def log(*a) -> None:
    print(f"[{elapsed():7.1f}s]", *a, flush=True)


def stage(name: str, min_seconds: float):
    """Decorator: run the stage if ``min_seconds`` fit the budget; record errors."""

    def wrap(fn):
        def run(*args, **kw):
            rec = RESULT["stages"].setdefault(name, {})
            if left() < min_seconds:
                rec["status"] = "skipped: time budget"
                log(f"SKIP {name}: {left():.0f}s left < {min_seconds:.0f}s needed")
                return None
            log(f"=== {name}")
            t0 = time.perf_counter()
            try:
                out = fn(rec, *args, **kw)
                rec.setdefault("status", "ok")
                return out
            except Exception as e:  # noqa: BLE001
                rec["status"] = f"error: {type(e).__name__}: {e}"
                traceback.print_exc()
                log(f"ERROR in {name}: {e}")
                return None
            finally:
                rec["wall_s"] = round(time.perf_counter() - t0, 3)
                save()

        return run

    return wrap


def save() -> None:
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "gpu_check.json"), "w") as f:
        json.dump(RESULT, f, indent=2, default=str)


def timed(fn, *a, **kw):
    sync()
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    sync()
    return out, time.perf_counter() - t0


def make_data(n: int, d: int, n_classes: int, seed: int = 0):
    """Overlapping Gaussian classes, the recipe of
    ``fastconvex.datasets.overlapping_classes`` (centres with standard deviation
    3/sqrt(d), unit noise): a connected kNN graph and a score well below 1 —
    separated blobs would split the graph per class and flatter every method.
    float32 on DEV."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g, device=DEV) * (3.0 / math.sqrt(d))
    labels = torch.randint(0, n_classes, (n,), generator=g, device=DEV)
    x = centres[labels] + torch.randn(n, d, generator=g, device=DEV)
    return x.float().contiguous(), labels


def exact_kth_f64(x: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """float64 brute force: the k-th smallest distance of each row (self excluded)."""
    out = []
    x64 = None
    for r0 in range(0, rows.numel(), 256):
        r = rows[r0 : r0 + 256]
        xr = x[r].double()
        dd = []
        for c0 in range(0, x.shape[0], 65536):
            xc = x[c0 : c0 + 65536].double()
            dd.append(torch.cdist(xr, xc))
        d = torch.cat(dd, 1)
        d[torch.arange(r.numel(), device=x.device), r] = math.inf
        out.append(torch.topk(d, k, dim=1, largest=False).values[:, -1])
    del x64
    return torch.cat(out)


def tie_aware_recall(x, idx, rows, k, kth=None) -> float:
    """Fraction of returned neighbours whose float64 distance is within the
    float64 k-th distance (1e-6 relative): tie-swaps count as correct."""
    if kth is None:
        kth = exact_kth_f64(x, rows, k)
    got = idx[rows]
    d = (x[got].double() - x[rows].double()[:, None, :]).norm(dim=-1)
    ok = d <= kth[:, None] * (1 + 1e-6) + 1e-12
    distinct = torch.tensor([len(set(r)) == k for r in got.cpu().tolist()], device=x.device)
    not_self = (got != rows[:, None]).all(1)
    ok = ok & distinct[:, None] & not_self[:, None]
    return float(ok.double().mean())


def sample_rows(n: int, m: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(n, m)].to(DEV)
