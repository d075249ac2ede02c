"""The Ray engine (extra ``[ray]``, imported lazily): sweep tasks as Ray
remote tasks. Each task is :func:`fastconvex._sweep.run_layer_task` itself,
wrapped by ``ray.remote``; Ray does the scheduling, retries and placement."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

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


def ray_layer_task(task: "LayerTask", plan: "ScoringPlan", backend: str, device: Any) -> "Convexity":
    """The remote task: :func:`run_layer_task` (plus the test suite's fault hook)."""
    from ._sweep import run_layer_task

    crash_dir = os.environ.get(CRASH_ENV)
    if crash_dir:
        marker = os.path.join(crash_dir, f"crash_{task.store_name}_{task.layer}")
        if os.path.exists(marker):
            os.remove(marker)
            os._exit(1)
    return run_layer_task(task, plan, backend, device)


def task_resources(ray: Any) -> dict[str, Any]:
    """One GPU per task when the cluster has GPUs, else one CPU."""
    if ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1}
    return {"num_cpus": 1}


def run_on_ray(
    tasks: list["LayerTask"],
    plans: dict[str, "ScoringPlan"],
    *,
    backend: str,
    device: Any,
    address: str | None,
    retries: int,
    report: Any,
    on_done: Callable[["LayerTask", "Convexity"], None],
) -> list[tuple["LayerTask", BaseException]]:
    """Run ``tasks`` as Ray tasks; returns the (task, error) of those that failed
    after ``retries`` reruns. Connects to ``address`` (or the running Ray, or
    starts a local one, which it shuts down again)."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
        started = True
    failures: list[tuple[LayerTask, BaseException]] = []
    try:
        if not tasks:
            return failures
        remote = ray.remote(ray_layer_task).options(max_retries=retries, **task_resources(ray))
        plan_refs = {name: ray.put(plan) for name, plan in plans.items()}  # once per store
        pending = {remote.remote(t, plan_refs[t.store_name], backend, device): t for t in tasks}
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
    finally:
        if started:
            ray.shutdown()
    return failures
