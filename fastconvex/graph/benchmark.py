"""Benchmark harness shared by ``fastconvex bench`` and ``bench/`` scripts.

Every timing compares methods on the same data and the same pairs, measured in
the same run; a method whose score disagrees with the naive scorer is reported
as wrong and not timed further (benchmarks refuse to time a wrong answer).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastconvex.datasets import overlapping_classes
from fastconvex.graph.api import graph_convexity


def machine_info() -> dict[str, Any]:
    """Machine and package versions, for benchmark JSON."""
    import numba
    import scipy

    from fastconvex.kernels.numba.threads import start as start_numba_threads

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "numba_threads": start_numba_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["torch"] = None
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    return info


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best-of-``repeat`` wall time in seconds and the last result."""
    best = np.inf
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def warm_up(backend: str, device: str | None = None) -> None:
    """Compile/load kernels on a tiny input so timings exclude JIT time."""
    x, y = overlapping_classes(64, 8, 4, seed=1)
    for kw in ({"pairs": 50}, {"sources": 2}):
        graph_convexity(x, y, k=5, backend=backend, device=device, **kw)


def compare_to_naive(
    sizes: list[int],
    *,
    dim: int = 256,
    n_classes: int = 10,
    k: int = 10,
    pairs: int = 5000,
    seed: int = 0,
    backend: str = "numba",
    device: str | None = None,
    naive_max: int = 20000,
    repeat: int = 1,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Naive vs ``backend`` (on ``device``) on overlapping classes, same pairs; one row per size."""
    warm_up(backend, device)
    rows = []
    for n in sizes:
        x, y = overlapping_classes(n, dim, n_classes, seed=seed)
        row: dict[str, Any] = {"n": n, "dim": dim, "classes": n_classes, "k": k, "pairs": pairs}
        t_fast, fast = timed(
            functools.partial(graph_convexity, x, y, k=k, pairs=pairs, seed=seed, backend=backend, device=device),
            repeat,
        )
        row.update({f"{backend}_s": t_fast, "score": fast.score, "stderr": fast.stderr})
        if n <= naive_max:
            t_naive, ref = timed(functools.partial(graph_convexity, x, y, k=k, pairs=pairs, seed=seed, backend="naive"))
            agree = abs(ref.score - fast.score) <= 1e-9
            row.update(
                {
                    "naive_s": t_naive,
                    "naive_score": ref.score,
                    "agree": bool(agree),
                    "speedup": t_naive / t_fast if agree else None,
                }
            )
            if not agree:
                row[f"{backend}_s"] = None  # never report the time of a wrong answer
        log(format_row(row, backend))
        rows.append(row)
    return rows


def format_row(row: dict[str, Any], backend: str) -> str:
    fast = row.get(f"{backend}_s")
    naive = row.get("naive_s")
    speed = row.get("speedup")
    return (
        f"N={row['n']:>8} D={row['dim']:>5}  {backend} {fast if fast is None else f'{fast:8.3f}s'}  "
        f"naive {'-' if naive is None else f'{naive:8.3f}s'}  "
        f"speed-up {'-' if speed is None else f'{speed:6.1f}x'}  "
        f"score {100 * row['score']:.2f}%  agree {row.get('agree', '-')}"
    )
