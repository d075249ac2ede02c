"""The runner that sends every task to Ray (extra ``[ray]``, imported lazily):
each call is one Ray remote task of the same function; Ray does the
scheduling, the retries and the placement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastconvex.runners.base import Placement
from fastconvex.runners.session import task_resources

K = TypeVar("K")
T = TypeVar("T")


def on_ray_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """The remote task: ``fn(*args)`` told where it runs (the node, and the
    GPUs Ray assigned: a task given ``num_gpus=1`` sees only its own)."""
    import ray

    gpu_ids = tuple(int(g) if str(g).isdigit() else str(g) for g in ray.get_gpu_ids())
    where = Placement("ray", node=ray.get_runtime_context().get_node_id(), gpu_ids=gpu_ids)
    return fn(*args, placement=where)


class RayRunner:
    """:class:`~fastconvex.runners.base.Runner` on a connected Ray (``ray``:
    the module, inside a :func:`~fastconvex.runners.session.ray_session`).
    Every call is a task with one GPU when the cluster has GPUs (and ``gpu``),
    else one CPU, rerun up to ``retries`` times when its worker dies."""

    name = "ray"

    def __init__(self, ray: Any, *, retries: int = 3, gpu: bool = True) -> None:
        self.ray = ray
        self.retries = retries
        self.gpu = gpu

    def share(self, value: T) -> T:
        return self.ray.put(value)  # type: ignore[no-any-return]

    def run(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[K, tuple[Any, ...]]],
        *,
        on_done: Callable[[K, Any], None],
        on_failed: Callable[[K, BaseException], None] | None = None,
        running: Callable[[int], None] | None = None,
    ) -> list[tuple[K, BaseException]]:
        ray = self.ray
        failures: list[tuple[K, BaseException]] = []
        if not calls:
            return failures
        remote = ray.remote(on_ray_worker).options(max_retries=self.retries, **task_resources(ray, gpu=self.gpu))
        pending = {remote.remote(fn, *args): key for key, args in calls}
        while pending:
            if running is not None:
                running(len(pending))
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task's error, or a worker that died on every retry
                    cause = getattr(exc, "cause", None)
                    error = cause if isinstance(cause, BaseException) else exc
                    failures.append((key, error))
                    if on_failed is not None:
                        on_failed(key, error)
                    continue
                on_done(key, result)
        return failures
