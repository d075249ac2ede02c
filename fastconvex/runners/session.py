"""The Ray connection every Ray user of fastconvex shares (the Ray runner,
the sharded one-layer engine, ``engine="ray"``): connect or start, stop what
was started however the block ends, and the resources a task asks for."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

INSTALL_HINT = 'engine="ray" needs Ray: pip install "fastconvex[ray]" (or pip install ray)'


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
        ray.init(
            address=address,
            log_to_driver=False,
            include_dashboard=False,
            logging_level=logging.ERROR if quiet else logging.INFO,
        )
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


def task_resources(ray: Any, gpu: bool = True) -> dict[str, Any]:
    """One GPU per task when the cluster has GPUs (and ``gpu``), else one CPU."""
    if gpu and ray.cluster_resources().get("GPU", 0) >= 1:
        return {"num_gpus": 1}
    return {"num_cpus": 1}


def check_cluster_device(ray: Any, device: Any) -> None:
    """A CUDA ``device`` needs a cluster with a GPU (RuntimeError otherwise)."""
    if device is not None and str(device).startswith("cuda") and ray.cluster_resources().get("GPU", 0) < 1:
        raise RuntimeError(
            f"device={str(device)!r} was requested, but the Ray cluster has no GPU "
            f"(resources: {_resources(ray)}); leave device unset to score on its CPUs"
        )


def _resources(ray: Any) -> str:
    found = ray.cluster_resources()
    return ", ".join(f"{key} {found[key]:g}" for key in ("CPU", "GPU") if key in found) or "none"
