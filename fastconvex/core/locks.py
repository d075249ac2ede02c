"""One writer per output directory: :func:`output_lock`, a real file lock
(``filelock``) held for the whole run, with a holder file naming who holds it
(foundations: used by ``sweep`` and by ``embed``/``pooled_hidden_states``)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from fastconvex.core.atomic import write_json_atomic

__all__ = ["OutputDirectoryBusy", "output_lock"]


class OutputDirectoryBusy(RuntimeError):
    """Another run holds an output directory's lock (the message names the
    directory and the holder's pid, host and start time). A RuntimeError:
    the command line reports it as one line with exit status 1."""


@contextlib.contextmanager
def output_lock(
    directory: str | os.PathLike[str],
    what: str,
    *,
    name: str = ".fastconvex.lock",
    label: str | None = None,
    remove: bool = False,
) -> Iterator[None]:
    """Hold ``directory``'s lock for the block: one run writes into it at a
    time (two would replace or mix each other's files). A second is refused at
    once with :class:`OutputDirectoryBusy`, naming ``directory`` (as ``label``,
    default its path), ``what`` holds it (e.g. "another sweep") and the
    holder's pid and host, which the holder writes beside the lock
    (``name + ".holder"``).

    The lock is ``filelock``'s ``FileLock``: an ``flock`` on Linux and macOS,
    which the kernel releases when its holder dies, even killed with
    ``kill -9``, so a stale lock or holder file never blocks a rerun. Where
    the file system has no ``flock`` (some network mounts) filelock falls back
    to a ``SoftFileLock``, whose lock file outlives a killed holder (see
    docs/scale.md). ``directory`` must exist.

    ``remove``: delete the lock file when done (for a lock beside the user's
    own files, e.g. next to a store), while still holding it. filelock keeps
    the file so that waiters share one inode; a run here never waits, and one
    that locked a file already removed (it opened it just before) finds the
    path no longer names what it locked and is refused like any second run."""
    from filelock import FileLock, Timeout

    out = Path(directory)
    shown = label or f"{str(out)!r}"
    lock = FileLock(str(out / name), timeout=0)
    holder = out / f"{name}.holder"
    busy = f"{shown} is in use by {what} ({{}}); wait for it to finish, or use another output directory"
    try:
        lock.acquire()
    except Timeout:
        raise OutputDirectoryBusy(busy.format(_holder(holder))) from None
    if remove and not _still_named(lock, out / name):
        lock.release()
        raise OutputDirectoryBusy(busy.format("it finished just now; rerun"))
    try:
        write_json_atomic(
            holder,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        yield
    finally:
        holder.unlink(missing_ok=True)  # before the lock is released: a next holder's file is its own
        if remove:
            (out / name).unlink(missing_ok=True)
        lock.release()


def _still_named(lock: object, path: Path) -> bool:
    """Whether ``path`` still names the file ``lock`` holds (filelock's held
    descriptor; True where this filelock does not expose it)."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if not isinstance(fd, int):
        return True
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _holder(file: Path) -> str:
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
        return f"pid {int(info['pid'])} on host {info['host']}, since {info.get('since', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"holder unknown: {file} is not written yet or unreadable"
