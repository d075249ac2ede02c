"""Sweep benchmark (a script, not a test): the local engine against Ray, and
the driver's peak memory as the number of layers grows.

    python bench/bench_sweep.py                      # CPU: 16-layer store, N=3e4, D=256
    python bench/bench_sweep.py --n 3000 --layers 4  # quick
    python bench/bench_sweep.py --gpu                # CUDA machine: num_gpus=1 tasks vs layer_scores
    python bench/bench_sweep.py --shard-bench --n 20000  # one layer: one process vs Ray shards
    python bench/bench_sweep.py --verify-bench --layers 4  # integrity checks' share of a local sweep

CPU mode, in one run: writes a 16-layer and a 2-layer store of the same data,
then, each in a fresh process (so peak memory is that run's alone):
  1. ``sweep(engine="local")`` of the 16 layers (the baseline);
  2. ``sweep(engine="ray")`` of the 16 layers on ``ray.init(num_cpus=2)``
     (two workers, one task each at a time);
  3. ``sweep(engine="ray")`` of the 2-layer store;
and reports wall times, their ratio, the driver's peak RSS (ru_maxrss) of 2 and
3, and whether every number equals the local run's. GPU mode: one store on
one GPU, the sweep's num_gpus=1 Ray tasks against ``layer_scores(...,
device="cuda")`` in one process, per-layer times and equality. JSON to stdout
(and ``--json FILE``).

Verify mode (``--verify-bench``), in one process on one store: the time to
verify the store as a sweep does (open it, which hashes the labels, and hash
every layer against store.json), a local sweep's time (which verifies each
layer in its task), the same sweep with the layer check switched off, and a
rerun that reuses every result (which verifies every layer again); the
verification's share of the sweep is ``verify_s / sweep_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_layers(n: int, d: int, n_layers: int, n_classes: int, seed: int):
    """Layers whose class structure sharpens then fades (a convexity peak mid-way)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.standard_normal((n_classes, d))
    for layer in range(n_layers):
        sep = 0.6 + 1.2 * np.sin(np.pi * (layer + 0.5) / n_layers)
        x = rng.standard_normal((n, d)) + sep * centres[labels]
        yield x.astype(np.float32)


def child(args: argparse.Namespace) -> None:
    """One measured sweep in this (fresh) process; prints a JSON line."""
    import fastconvex as fc

    if args.engine == "ray":
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    rss_before = _rss_mib()
    start = time.perf_counter()
    result = fc.sweep([args.store], out_dir=args.out_dir, engine=args.engine, verbose=False, plot=False)
    wall = time.perf_counter() - start
    if args.engine == "ray":
        import ray

        ray.shutdown()
    ((_name, scores),) = result.items()
    print(
        json.dumps(
            {
                "engine": args.engine,
                "layers": len(scores),
                "wall_s": wall,
                "driver_rss_before_mib": rss_before,
                "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "scores": scores.scores.tolist(),
                "stderr": scores.stderr.tolist(),
            }
        )
    )


def _rss_mib() -> float:
    """Resident memory of this process now (Linux /proc)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def run_child(store: Path, out_dir: Path, engine: str, workers: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--store",
        str(store),
        "--out-dir",
        str(out_dir),
        "--engine",
        engine,
        "--workers",
        str(workers),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed ({engine}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_bench(args: argparse.Namespace, root: Path) -> dict:
    import fastconvex as fc

    t0 = time.perf_counter()
    big = fc.save_store(root / "store16", make_layers(args.n, args.d, args.layers, 10, 0), _labels(args.n))
    small = fc.save_store(root / "store2", (big.layer(i) for i in range(2)), big.labels)
    write_s = time.perf_counter() - t0
    local = run_child(big.path, root / "out_local", "local", args.workers)
    on_ray = run_child(big.path, root / "out_ray", "ray", args.workers)
    ray_small = run_child(small.path, root / "out_ray2", "ray", args.workers)
    return {
        "store_write_s": write_s,
        "local": {k: local[k] for k in ("wall_s", "driver_rss_before_mib", "driver_peak_rss_mib")},
        "ray": {k: on_ray[k] for k in ("wall_s", "driver_rss_before_mib", "driver_peak_rss_mib")},
        "ray_2_layers": {k: ray_small[k] for k in ("wall_s", "driver_rss_before_mib", "driver_peak_rss_mib")},
        "wall_ratio_ray_over_local": on_ray["wall_s"] / local["wall_s"],
        "per_layer_local_s": local["wall_s"] / args.layers,
        "driver_rss_16_over_2_layers": on_ray["driver_peak_rss_mib"] / ray_small["driver_peak_rss_mib"],
        "ray_equals_local_bit_for_bit": on_ray["scores"] == local["scores"] and on_ray["stderr"] == local["stderr"],
        "two_layers_equal_first_two": ray_small["scores"] == local["scores"][:2],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor()


def _labels(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, n)


def gpu_bench(args: argparse.Namespace, root: Path) -> dict:
    import ray
    import torch

    import fastconvex as fc

    store = fc.save_store(root / "gpu", make_layers(args.n, args.d, args.layers, 10, 0), _labels(args.n))
    # warm-up (Triton and Numba compiles) on a small problem, not timed
    fc.layer_scores([store.layer(0)[:5000]], store.labels[:5000], device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    direct = fc.layer_scores(store.layers, store.labels, device="cuda")
    direct_s = time.perf_counter() - t0
    ray.init(num_gpus=1, num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    resources = ray.cluster_resources()
    fc.sweep([store.path], out_dir=root / "warm", engine="ray", layers=[0], verbose=False, plot=False)
    t0 = time.perf_counter()
    swept = fc.sweep([store.path], out_dir=root / "out", engine="ray", verbose=False, plot=False)["gpu"]
    sweep_s = time.perf_counter() - t0
    ray.shutdown()
    ran_on = [json.loads(p.read_text())["ran_on"] for p in sorted((root / "out").glob("tasks/*/*.json"))]
    return {
        "tasks_ran_on": sorted({json.dumps({k: w[k] for k in ("gpu_ids", "device")}) for w in ran_on}),
        "gpu": torch.cuda.get_device_name(0),
        "ray_resources": {k: resources[k] for k in ("CPU", "GPU")},
        "layer_scores_cuda_s": direct_s,
        "sweep_ray_num_gpus_1_s": sweep_s,
        "per_layer_s": {"layer_scores": direct_s / args.layers, "sweep": sweep_s / args.layers},
        "backends": sorted({c.backend for c in swept.layers}),
        "sweep_equals_layer_scores_bit_for_bit": swept.to_dict() == direct.to_dict(),
        "max_abs_diff": float(np.max(np.abs(swept.scores - direct.scores))),
        "scores": swept.scores.tolist(),
    }


def shard_bench(args: argparse.Namespace) -> dict:
    """One layer: one process against engine="ray" with ``--workers`` shards."""
    import ray

    import fastconvex as fc

    x = next(make_layers(args.n, args.d, 1, 10, 1))
    labels = _labels(args.n)
    fc.graph_convexity(x[:2000], labels[:2000])  # compile
    t0 = time.perf_counter()
    one = fc.graph_convexity(x, labels)
    one_s = time.perf_counter() - t0
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    fc.graph_convexity(x[:2000], labels[:2000], engine="ray", shards=args.workers)  # workers compile
    t0 = time.perf_counter()
    sharded = fc.graph_convexity(x, labels, engine="ray", shards=args.workers)
    sharded_s = time.perf_counter() - t0
    ray.shutdown()
    return {
        "one_process_s": one_s,
        "sharded_s": sharded_s,
        "shards": args.workers,
        "ratio_sharded_over_one": sharded_s / one_s,
        "identical": sharded.to_dict() == one.to_dict(),
    }


def verify_bench(args: argparse.Namespace, root: Path) -> dict:
    """What verifying a store costs next to the sweep that needs it (one process)."""
    import fastconvex as fc
    from fastconvex.store import LayerStore

    store = fc.save_store(root / "verify", make_layers(args.n, args.d, args.layers, 10, 0), _labels(args.n))
    fc.layer_scores([store.layer(0)[:2000]], store.labels[:2000])  # compile, not timed
    t0 = time.perf_counter()
    opened = fc.open_store(store.path)
    for i in range(opened.n_layers):
        opened.verify_layer(i)
    verify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    swept = fc.sweep(store.path, out_dir=root / "out", verbose=False, plot=False)
    sweep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fc.sweep(store.path, out_dir=root / "out", verbose=False, plot=False)
    reuse_s = time.perf_counter() - t0
    checked = LayerStore.verify_layer
    LayerStore.verify_layer = lambda self, index: None  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        unchecked = fc.sweep(store.path, out_dir=root / "out_unchecked", verbose=False, plot=False)
        unchecked_s = time.perf_counter() - t0
    finally:
        LayerStore.verify_layer = checked  # type: ignore[method-assign]
    layer_mib = store.layer(0).nbytes / 2**20
    return {
        "layer_file_mib": layer_mib,
        "verify_s": verify_s,
        "sweep_s": sweep_s,
        "sweep_without_layer_check_s": unchecked_s,
        "rerun_reusing_all_s": reuse_s,
        "verify_share_of_sweep": verify_s / sweep_s,
        "sweep_over_unchecked_sweep": sweep_s / unchecked_s,
        "verify_mib_per_s": layer_mib * args.layers / verify_s,
        "same_numbers": all(a.to_dict() == b.to_dict() for a, b in zip(swept.values(), unchecked.values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--shard-bench", action="store_true", help="one layer, one process vs engine='ray' shards")
    parser.add_argument("--verify-bench", action="store_true", help="integrity checks' share of a local sweep")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help="where the stores go (default: a temporary directory)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        import fastconvex as fc

        report = {
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": _cpu_model(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "fastconvex": fc.__version__,
            },
            "n": args.n,
            "d": args.d,
            "layers": args.layers,
            "workers": args.workers,
            "estimator": "pairs=5000, k=10",
        }
        if args.shard_bench:
            report.update(shard_bench(args))
        elif args.verify_bench:
            report.update(verify_bench(args, Path(tmp)))
        else:
            report.update(gpu_bench(args, Path(tmp)) if args.gpu else cpu_bench(args, Path(tmp)))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
