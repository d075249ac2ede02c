"""The CPU kNN against its floor: the Numba kNN's time as a ratio of the torch
float32 and bfloat16 matrix products of the same shape (N x D times D x N),
timed in the same run, and the rows each tier certified.

    python bench/knn_cpu.py [--n 20000] [--dim 768] [--repeat 3] [--frames] [--layer-n 100000] [--out FILE]

Cases: overlapping Gaussian classes (gpu_check's recipe, 40 classes), 200
tight clusters (within-cluster distances small against the norms: the
bfloat16 tier cannot certify them, the float32 one can), and with ``--frames`` every frame of
Whisper tiny.en's last layer on the demo's words task (needs the demo's
assets: ``bash scripts/setup_demo.sh``). Each kNN runs with the bfloat16 tier
automatic (the default), off, and forced on; forced on is timed only where
the CPU has bfloat16 units (elsewhere the products are emulated, slow) or
with ``--force-bf16``. On a CPU without the units, ``auto_as_if_units`` runs
the automatic choice on the tight clusters as if it had them (the probe's
products emulated): what trying the tier costs where the probe turns it down,
an upper bound. There the bfloat16 product is timed once (emulated, far off
the floor). With ``--layer-n`` it also scores one whole layer
(``sources=64``) of that many points with the tier off and automatic.

Nothing is timed that is not checked: every kNN's lists and distances must
equal, bit for bit, those of the run without the tier, and 64 rows of each
must equal a float64 brute force. Writes one JSON object (``--out``, else
stdout); the CPU model and flags are in it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

import fastconvex as fc
from fastconvex.kernels.numba import knn_bf16
from fastconvex.kernels.numba.knn import knn

K = 10


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gaussian_classes(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d)) * (3.0 / math.sqrt(d))
    return (centres[rng.integers(0, 40, n)] + rng.normal(size=(n, d))).astype(np.float32)


def tight_clusters(n: int, d: int, seed: int = 0) -> np.ndarray:
    """200 clusters of spread 0.1 around unit-variance centres: tight enough that
    bfloat16 rounding hides the neighbours' order (its tier certifies no row),
    loose enough for float32's (its tier certifies every row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, d))
    return (centres[rng.integers(0, 200, n)] + 0.1 * rng.normal(size=(n, d))).astype(np.float32)


def whisper_frames() -> np.ndarray:
    """Every frame of Whisper tiny.en's last hidden state on the demo's words
    task, at the demo's context cut."""
    from fastconvex import hf
    from fastconvex.demo.config import DemoConfig
    from fastconvex.demo.experiment import load_task
    from fastconvex.demo.finetune import context_model, context_seconds_for
    from fastconvex.demo.models import load_whisper

    ds = load_task("words", DemoConfig(), lambda line: print(line, file=sys.stderr))
    model, processor = load_whisper("tiny.en")
    ctx_model, ctx_fe = context_model(model, processor.feature_extractor, context_seconds_for(ds, None))
    states, _ = hf.hidden_state_sequences(ctx_model, ds.audio, feature_extractor=ctx_fe, progress=False)
    last = states[-1]
    return np.ascontiguousarray(last.reshape(-1, last.shape[-1]), dtype=np.float32)


def gemm_seconds(x: np.ndarray, dtype: torch.dtype) -> float:
    """N x D times D x N in torch, in blocks of 4096 rows (no N x N array)."""
    xt = torch.from_numpy(x).to(dtype)
    t0 = time.perf_counter()
    for r0 in range(0, xt.shape[0], 4096):
        torch.mm(xt[r0 : r0 + 4096], xt.T)
    return time.perf_counter() - t0


def brute_rows(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force of the given rows: (rows, K) indices and distances."""
    x64 = x.astype(np.float64)
    d = np.stack([np.sqrt(((x64[r] - x64) ** 2).sum(-1)) for r in rows])
    d[np.arange(rows.size), rows] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :K]
    return order, np.take_along_axis(d, order, axis=1)


has_units = knn_bf16.cpu_has_fast_bf16


def run_case(name: str, x: np.ndarray, repeat: int, force: bool, probe_cost: bool = False) -> dict:
    n, dim = x.shape
    print(f"{name}: N={n} D={dim}", file=sys.stderr, flush=True)
    modes: dict[str, bool | None] = {"auto": None, "off": False}
    if force:
        modes["on"] = True
    if probe_cost and not knn_bf16.cpu_has_fast_bf16():
        # what the automatic choice costs where it tries the tier and the probe
        # fails: run as if the CPU had bfloat16 units, products emulated (an
        # upper bound on the probe's cost on real units)
        modes["auto_as_if_units"] = None
    reference = knn(x, K, bf16=False)
    check = np.linspace(0, n - 1, 64).astype(np.int64)
    ref_i, ref_d = brute_rows(x, check)
    if not (np.array_equal(reference[0][check], ref_i) and np.allclose(reference[1][check], ref_d, rtol=1e-12)):
        raise SystemExit(f"{name}: the kNN differs from the float64 brute force; nothing timed")
    times: dict[str, list[float]] = {m: [] for m in modes}
    times["gemm_float32"] = []
    times["gemm_bfloat16"] = []
    tiers: dict[str, dict[str, int]] = {}
    for rep in range(repeat):  # interleaved, so drift of a noisy machine hits all alike
        times["gemm_float32"].append(gemm_seconds(x, torch.float32))
        if rep == 0 or has_units():  # emulated without the units: timed once, it is far off the floor
            times["gemm_bfloat16"].append(gemm_seconds(x, torch.bfloat16))
        for mode, flag in modes.items():
            counts: dict[str, int] = {}
            pretend = mode == "auto_as_if_units"
            if pretend:
                knn_bf16.cpu_has_fast_bf16 = lambda: True  # type: ignore[assignment]
            try:
                t0 = time.perf_counter()
                got = knn(x, K, bf16=flag, tiers=counts)
                times[mode].append(time.perf_counter() - t0)
            finally:
                if pretend:
                    knn_bf16.cpu_has_fast_bf16 = has_units
            if not (np.array_equal(got[0], reference[0]) and np.array_equal(got[1], reference[1])):
                raise SystemExit(f"{name}: bf16={flag} changed a list; nothing timed")
            tiers[mode] = counts
    med = {key: statistics.median(v) for key, v in times.items()}
    floor = med["gemm_float32"]
    out = {
        "n": n,
        "dim": dim,
        "k": K,
        "median_seconds": med,
        "all_seconds": times,
        "ratio_to_float32_gemm": {key: v / floor for key, v in med.items()},
        "rows_certified_per_tier": tiers,
    }
    print(json.dumps({name: out["ratio_to_float32_gemm"]}), file=sys.stderr, flush=True)
    return out


def run_layer(n: int, dim: int) -> dict:
    """One whole layer (kNN, graph, 64 sources' paths) with the tier off and automatic."""
    x = gaussian_classes(n, dim, seed=1)
    labels = np.random.default_rng(1).integers(0, 40, n)
    out: dict = {"n": n, "dim": dim, "sources": 64}
    for mode, value in (("off", "off"), ("auto", "")):
        os.environ[knn_bf16.ENV_VAR] = value
        t0 = time.perf_counter()
        scores = fc.layer_scores([x], labels, k=K, sources=64, backend="numba")
        out[mode] = {"seconds": time.perf_counter() - t0, "score": float(scores.scores[0])}
    os.environ.pop(knn_bf16.ENV_VAR, None)
    if out["off"]["score"] != out["auto"]["score"]:
        raise SystemExit("the layer's score changed with the tier")
    out["ratio_auto_to_off"] = out["auto"]["seconds"] / out["off"]["seconds"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", action="store_true")
    parser.add_argument("--layer-n", type=int, default=0)
    parser.add_argument("--force-bf16", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    units = knn_bf16.cpu_has_fast_bf16()
    force = units or args.force_bf16
    knn(gaussian_classes(3000, 64), K, bf16=True)  # compile every kernel first
    result: dict = {
        "cpu": cpu_model(),
        "cpu_has_bf16_units": units,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cases": {},
    }
    result["cases"]["gaussian_classes"] = run_case(
        "gaussian_classes", gaussian_classes(args.n, args.dim), args.repeat, force
    )
    result["cases"]["tight_clusters"] = run_case(
        "tight_clusters", tight_clusters(args.n, args.dim), args.repeat, force, probe_cost=True
    )
    if args.frames:
        result["cases"]["whisper_tiny_en_frames"] = run_case("whisper_frames", whisper_frames(), args.repeat, force)
    if args.layer_n:
        result["layer"] = run_layer(args.layer_n, args.dim)
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
