"""The interface every runner implements, and where a task ran."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

K = TypeVar("K")
T = TypeVar("T")

# what a failed task is reported with (the rest -- KeyboardInterrupt, SystemExit,
# MemoryError -- stops the whole run, as it would without a runner)
TASK_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, RuntimeError, OSError)


@dataclass(frozen=True)
class Placement:
    """Where one task runs, passed to the task function as ``placement=``:
    the runner (``"local"`` or ``"ray"``), and on Ray the node and the GPUs Ray
    assigned to the task (a task given a GPU sees only those)."""

    engine: str = "local"
    node: str | None = None
    gpu_ids: tuple[Any, ...] | None = None

    def provenance(self) -> dict[str, Any]:
        """What a result records about where it was computed."""
        if self.engine == "local":
            return {"engine": "local", "gpu_ids": None}
        return {"engine": self.engine, "gpu_ids": list(self.gpu_ids or ()), "node": self.node}


LOCAL = Placement()


class Runner(Protocol):
    """Runs independent calls of one task function and reports each as it ends.

    ``fn(*args, placement=Placement)`` is called once per ``(key, args)`` in
    ``calls``; the order of completion is the runner's. ``on_done(key, result)``
    and ``on_failed(key, error)`` are called in this process as each call ends;
    ``running(n)`` before each wait, with the number of calls not yet ended.
    Returns the ``(key, error)`` of every call that failed (on Ray: after its
    retries), so that a caller keeps what finished and reports the rest.
    """

    name: str

    def share(self, value: T) -> T:
        """``value`` as the calls should receive it when many of them read it:
        itself in this process, one copy in Ray's object store on Ray."""
        ...

    def run(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[K, tuple[Any, ...]]],
        *,
        on_done: Callable[[K, Any], None],
        on_failed: Callable[[K, BaseException], None] | None = None,
        running: Callable[[int], None] | None = None,
    ) -> list[tuple[K, BaseException]]: ...
