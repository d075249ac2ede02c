"""The Ray engine (extra ``[ray]``, imported lazily): sweep tasks as Ray
remote tasks. Each task is :func:`fastconvex._sweep.run_layer_task` itself,
wrapped by ``ray.remote``; Ray does the scheduling, retries and placement."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from ._backends import ENV_VAR, NumbaEngine, source_sums

if TYPE_CHECKING:  # pragma: no cover
    from ._core import ScoringPlan
    from ._results import Convexity
    from ._sweep import LayerTask

INSTALL_HINT = 'engine="ray" needs Ray: pip install "fastconvex[ray]" (or pip install ray)'

# Fault injection for the test suite only: "DIR" makes each task's worker exit
# (os._exit) on its first attempt at a layer listed in DIR/crash_<store>_<layer>,
# removing the file first so Ray's retry then succeeds.
CRASH_ENV = "FASTCONVEX_TEST_CRASH_DIR"


def require_ray() -> Any:
    """The ``ray`` module, or an ImportError saying what to install."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


def _unwinder(doing: str) -> Callable[[int, Any], None]:
    """The SIGTERM handler while fastconvex's Ray runs: one line saying what
    happens (``doing``), then ``SystemExit(143)`` raised in the main thread,
    so every ``finally`` runs (the one of :func:`ray_session` stops the Ray
    this process started, or disconnects from a cluster it joined)."""

    def _unwind(signum: int, frame: Any) -> None:
        import sys

        print(f"fastconvex: terminated (SIGTERM): {doing}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    return _unwind


@contextlib.contextmanager
def ray_session(address: str | None = None, *, quiet: bool = False) -> Iterator[Any]:
    """The running Ray (inside a Ray task, or one the caller started), else a
    connection to ``address`` (None: ``RAY_ADDRESS`` or a new local Ray) that
    is shut down again on exit. ``quiet``: Ray's own log lines below ERROR
    stay off stderr (``--quiet``).

    A Ray this call started is shut down however the block ends: normally,
    on an error, on Ctrl-C (KeyboardInterrupt) and on SIGTERM, also when
    either arrives while Ray is still starting.

    SIGTERM (in the main thread, the only one Python delivers signals to):
    ``ray.init`` installs handlers of its own (``sys.exit``, and for a head it
    starts, killing its processes first). While Ray starts those apply (the
    process exits, its Ray stopped); once it has started, the handler the
    program had is put back -- or, where it had none (Python's default, dying
    on the spot), one that prints one line and raises ``SystemExit(143)`` so
    that ``ray.shutdown`` runs. On exit the program's own handler is
    restored, whatever Ray installed; a handler installed from C (which
    Python cannot put back) is left alone. What ``kill -9`` of this process
    leaves is in docs/scale.md."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    import logging

    main = threading.current_thread() is threading.main_thread()
    # getsignal is None for a handler installed from C: it cannot be put back
    # once replaced, so SIGTERM is then left alone (Ray's own handlers apply)
    previous = signal.getsignal(signal.SIGTERM) if main else None
    main = main and previous is not None
    joins = address or os.environ.get("RAY_ADDRESS", "").strip()  # else ray.init starts a local Ray
    doing = f"disconnecting from the Ray cluster at {joins}" if joins else "stopping the Ray it started"
    during = _unwinder(doing) if previous == signal.SIG_DFL else previous
    before = _children()
    started = False
    try:
        if main:
            signal.signal(signal.SIGTERM, during)  # until ray.init replaces it
        ray.init(address=address, log_to_driver=False, include_dashboard=False,
                 logging_level=logging.ERROR if quiet else logging.INFO)
        started = True
        if main:
            signal.signal(signal.SIGTERM, during)  # Ray's would exit 1 or 15 without a word
        yield ray
    finally:
        try:
            ray.shutdown()
            if not started:
                _stop_new_ray_processes(before)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)


def _children() -> set[int]:
    import psutil  # a dependency of Ray

    try:
        return {child.pid for child in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _stop_new_ray_processes(before: set[int]) -> None:
    """Stop the Ray processes this process started since ``before`` (its
    descendants then). ``ray.init`` interrupted before it has registered its
    node leaves ``ray.shutdown`` nothing to stop: the head's own processes die
    with this one (Ray starts them with the kernel's parent-death signal), but
    the agents the raylet starts would poll for a minute before exiting."""
    import psutil

    try:
        new = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    except psutil.Error:
        return
    mine = []
    for child in new:
        try:
            if "ray" in " ".join(child.cmdline()):
                mine.append(child)
        except psutil.Error:  # already exiting: waited for below, not signalled
            continue
    for child in mine:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(new, timeout=5)
    for child in alive:
        if child in mine:
            with contextlib.suppress(psutil.Error):
                child.kill()
    psutil.wait_procs(alive, timeout=2)


def knn_block(x: np.ndarray, k: int, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of query rows q0..q1-1 of ``x`` against all of ``x`` (a shard's task)."""
    from .kernels.numba.knn import knn

    indices, distances, _ = knn(x, k, rows=(q0, q1))
    return indices, distances


def _blocks(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, min(shards, n) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class ShardedEngine(NumbaEngine):
    """The Numba engine with its two heavy steps split over Ray tasks: the
    exact kNN by query rows (each block against the whole database, which is
    put into the object store once) and the shortest paths by sources (the
    union graph put into the object store once). Both splits are exact, so the
    result is the one-process result, bit for bit."""

    def __init__(self, ray: Any, shards: int) -> None:
        super().__init__(progress=False)  # the work is in Ray tasks: no bars inside the layer
        self.ray = ray
        self.shards = shards
        self.opts = task_resources(ray, gpu=False)

    def distinct_knn(self, rows: np.ndarray, k: int, progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
        ray = self.ray
        ref = ray.put(np.ascontiguousarray(rows))
        task = ray.remote(knn_block).options(**self.opts)
        parts = ray.get([task.remote(ref, k, a, b) for a, b in _blocks(int(rows.shape[0]), self.shards)])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def source_parts(self, csr, codes, plan, progress=None):  # type: ignore[no-untyped-def]
        ray = self.ray
        csr_ref, codes_ref, plan_ref = ray.put(csr), ray.put(codes), ray.put(plan)
        task = ray.remote(source_sums).options(**self.opts)
        return ray.get([task.remote(csr_ref, codes_ref, plan_ref, a, b)
                        for a, b in _blocks(plan.n_sources, self.shards)])


def ray_layer_task(task: "LayerTask", plan: "ScoringPlan", backend: str, device: Any,
                   shards: int | None = None) -> "Convexity":
    """The remote task: :func:`run_layer_task` (plus the test suite's fault hook).
    A task given a GPU (``num_gpus=1``) scores on it: ``device="cuda"`` (the
    GPU Ray assigned) unless a device was named."""
    import ray

    from ._sweep import run_layer_task

    gpu_ids = [int(g) if str(g).isdigit() else str(g) for g in ray.get_gpu_ids()]
    device = task_device(backend, device, gpu_ids)

    crash_dir = os.environ.get(CRASH_ENV)
    if crash_dir:
        marker = os.path.join(crash_dir, f"crash_{task.store_name}_{task.layer}")
        if os.path.exists(marker):
            os.remove(marker)
            os._exit(1)
    ran_on = {"engine": "ray", "node": ray.get_runtime_context().get_node_id(), "gpu_ids": gpu_ids}
    return run_layer_task(task, plan, backend, device, shards, ran_on=ran_on)


def task_device(backend: str, device: Any, gpu_ids: list[Any]) -> Any:
    """Where a Ray task scores: the device the caller named, else ``"cuda"``
    (the GPU Ray assigned, the only one the task sees) when Ray gave it one and
    the backend can use it, else None (the backend's own choice). "auto" is
    resolved through FASTCONVEX_BACKEND first, as ``resolve_backend`` does on
    the worker (``FASTCONVEX_BACKEND=numba`` scores on the CPU, GPU or not)."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
    if device is None and backend in ("auto", "triton") and gpu_ids:
        return "cuda"
    return device


def task_resources(ray: Any, gpu: bool = True) -> dict[str, Any]:
    """One GPU per task when the cluster has GPUs (and ``gpu``), else one CPU."""
    if gpu and ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1}
    return {"num_cpus": 1}


def check_cluster_device(ray: Any, device: Any) -> None:
    """A CUDA ``device`` needs a cluster with a GPU (RuntimeError otherwise)."""
    if device is not None and str(device).startswith("cuda") and ray.cluster_resources().get("GPU", 0) < 1:
        raise RuntimeError(f"device={str(device)!r} was requested, but the Ray cluster has no GPU "
                           f"(resources: {_resources(ray)}); leave device unset to score on its CPUs")


def _resources(ray: Any) -> str:
    found = ray.cluster_resources()
    return ", ".join(f"{key} {found[key]:g}" for key in ("CPU", "GPU") if key in found) or "none"


def run_on_ray(
    tasks: list["LayerTask"],
    plans: dict[str, "ScoringPlan"],
    *,
    backend: str,
    device: Any,
    shards: int | None,
    address: str | None,
    retries: int,
    report: Any,
    on_done: Callable[["LayerTask", "Convexity"], None],
) -> list[tuple["LayerTask", BaseException]]:
    """Run ``tasks`` as Ray tasks; returns the (task, error) of those that failed
    after ``retries`` reruns. Connects to ``address`` (or the running Ray, or
    starts a local one, which it shuts down again)."""
    failures: list[tuple[LayerTask, BaseException]] = []
    if not tasks:
        return failures
    with ray_session(address, quiet=not getattr(report, "verbose", True)) as ray:
        check_cluster_device(ray, device)
        remote = ray.remote(ray_layer_task).options(max_retries=retries, **task_resources(ray))
        plan_refs = {name: ray.put(plan) for name, plan in plans.items()}  # once per store
        pending = {remote.remote(t, plan_refs[t.store_name], backend, device, shards): t for t in tasks}
        while pending:
            report.running(len(pending))
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # a task error or a worker that died on every retry
                    cause = getattr(exc, "cause", None)
                    failures.append((task, cause if isinstance(cause, BaseException) else exc))
                    report.finished(task, None, failures[-1][1])
                    continue
                on_done(task, result)
                report.finished(task, result)
    return failures
