"""One-off A/B: the CPU kNN of this tree against the one of an earlier git
revision, interleaved in one process, with the torch float32 product of the
same shape as the yardstick (float32 path only: the bfloat16 tier is off).

    python bench/studies/knn_cpu_before_after.py [--rev 7faf6d8] [--data gaussian|tight] [--n 20000]
        [--dim 768] [--repeat 3] [--block-cols 16384 4096 ...]

``--block-cols`` times this tree's kernel at each tile width (the first is
``after``; the others ``after_cols<W>``), all in the same interleaved run.

The earlier kernel is read with ``git show REV:kernels/numba/knn.py`` (and,
where that revision had it, ``kernels/numba/candidates.py``) into a scratch
package, so both compile and run side by side. Both must return the same
lists and distances, bit for bit, or nothing is timed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from knn_cpu import K, cpu_model, gaussian_classes, gemm_seconds, tight_clusters  # noqa: E402

from fastconvex.kernels.numba.knn import knn  # noqa: E402


def kernel_at(rev: str, where: Path):
    """The kNN function of revision ``rev``, importable from ``where``."""
    root = Path(__file__).resolve().parents[2]
    pkg = where / "knn_before"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("knn.py", "candidates.py", "knn_bf16.py"):
        shown = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:kernels/numba/{name}"], capture_output=True, text=True
        )
        if shown.returncode == 0:
            text = shown.stdout.replace("fastconvex.kernels.numba", "knn_before")
            (pkg / name).write_text(text)
    sys.path.insert(0, str(where))
    return importlib.import_module("knn_before.knn").knn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="7faf6d8")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", choices=("gaussian", "tight"), default="gaussian")
    parser.add_argument("--block-cols", type=int, nargs="+", default=[16384])
    args = parser.parse_args()
    data = {"gaussian": gaussian_classes, "tight": tight_clusters}[args.data]
    with tempfile.TemporaryDirectory() as tmp:
        before = kernel_at(args.rev, Path(tmp))
        x = data(args.n, args.dim)
        small = gaussian_classes(2000, 32)
        before(small, K)  # compile both
        knn(small, K, bf16=False)
        a = before(x, K)
        b = knn(x, K, bf16=False)
        if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])):
            raise SystemExit("the two kernels disagree; nothing timed")
        runs = {"before": before}
        for i, cols in enumerate(args.block_cols):
            runs["after" if i == 0 else f"after_cols{cols}"] = lambda x, k, c=cols: knn(x, k, bf16=False, block_cols=c)
        for name, fn in runs.items():
            got = fn(x, K)
            if not (np.array_equal(got[0], b[0]) and np.array_equal(got[1], b[1])):
                raise SystemExit(f"{name} disagrees; nothing timed")
        times: dict[str, list[float]] = {name: [] for name in runs}
        times["gemm_float32"] = []
        for _ in range(args.repeat):
            times["gemm_float32"].append(gemm_seconds(x, torch.float32))
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn(x, K)
                times[name].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in times.items()}
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "rev_before": args.rev,
                "data": args.data,
                "block_cols": args.block_cols,
                "n": args.n,
                "dim": args.dim,
                "median_seconds": med,
                "all_seconds": times,
                "ratio_to_float32_gemm": {key: v / med["gemm_float32"] for key, v in med.items()},
                "after_over_before": med["after"] / med["before"],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
