"""Progress on stderr, through tqdm.

Helpers any part of fastconvex (the API, the CLI, the Ray layer) can reuse:

* :func:`show_progress` — what ``progress=None | True | False`` means:
  None shows progress only when stderr is a terminal.
* :func:`progress_bar` — a ``tqdm`` bar on a terminal; where stderr is not a
  terminal (a log file, CI), a plain log line every ``log_every`` seconds and
  one at the end instead of carriage-return redraws.
* :class:`Progress` — the context manager the code has always used
  (``with Progress(total, "layers", enabled=True) as bar: bar.update()``),
  now a thin wrapper of :func:`progress_bar`.
* :func:`announce_compilation` — says once, on stderr, that Numba is compiling
  the CPU kernels when its on-disk cache is cold (a fresh install).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any

import numpy as np

__all__ = [
    "LOG_EVERY_S",
    "Progress",
    "announce_compilation",
    "progress_bar",
    "quiet_compilation_notice",
    "show_progress",
]

# seconds between log lines when stderr is not a terminal
LOG_EVERY_S = 30.0

# "kNN:  40%|####      | 4096/10240 rows [00:03<00:04, 1234.00 rows/s]"
_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]"


def show_progress(progress: bool | None) -> bool:
    """``progress`` resolved: None means "only when stderr is a terminal".
    Anything but None, True or False is a TypeError (``progress="no"`` would
    otherwise be truthy and show the bars)."""
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be None, True or False, got {type(progress).__name__} {progress!r}")
    return bool(progress)


class _LogLines:
    """A file for tqdm that turns its carriage-return redraws into log lines
    (for stderr that is not a terminal)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(
    total: int | None,
    unit: str,
    *,
    enabled: bool = True,
    desc: str | None = None,
    leave: bool = True,
    position: int | None = None,
    log_every: float | None = None,
) -> Any:
    """A tqdm bar on stderr (``update(n)``, ``close()``, a context manager).

    Parameters
    ----------
    total : number of steps (None: unknown)
    unit : what a step is ("layers", "batches", "sources" ...)
    enabled : False gives a bar that prints nothing
    desc : text before the bar
    leave : keep the finished bar on screen (inner bars: False)
    position : line of a nested bar (tqdm's ``position``)
    log_every : seconds between log lines when stderr is not a terminal
        (default :data:`LOG_EVERY_S`)
    """
    from tqdm.auto import tqdm

    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    terminal = bool(isatty and isatty())
    if terminal or not enabled:
        return tqdm(
            total=total,
            unit=f" {unit}",
            desc=desc,
            leave=leave,
            position=position,
            disable=not enabled,
            file=stream,
            dynamic_ncols=True,
            bar_format=_FORMAT,
        )
    # not a terminal: one line per interval, and the final one
    from tqdm import tqdm as plain_tqdm

    return plain_tqdm(
        total=total,
        unit=f" {unit}",
        desc=desc,
        leave=True,
        file=_LogLines(stream),
        bar_format=_FORMAT,
        mininterval=LOG_EVERY_S if log_every is None else log_every,
        maxinterval=float("inf"),
        ncols=100,
        ascii=True,
    )


class Progress:
    """``with Progress(total, "layers", enabled=True) as bar: bar.update()``."""

    def __init__(
        self,
        total: int,
        unit: str,
        *,
        enabled: bool = True,
        desc: str | None = None,
        leave: bool = True,
        position: int | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.unit = unit
        self.enabled = enabled and self.total > 0
        self._bar = progress_bar(self.total, unit, enabled=self.enabled, desc=desc, leave=leave, position=position)

    @property
    def done(self) -> int:
        return int(self._bar.n)

    def __enter__(self) -> Progress:
        return self

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set(self, done: int, total: int) -> None:
        """Jump to ``done`` of ``total`` steps (the total may grow as work is
        discovered, e.g. rows the kNN certificate sends to the exact pass)."""
        if total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()


_ANNOUNCED = False


def quiet_compilation_notice() -> None:
    """No "compiling CPU kernels" line in this process (``--quiet``)."""
    global _ANNOUNCED
    _ANNOUNCED = True


def announce_compilation(dispatchers: list[Any], *, enabled: bool = True) -> bool:
    """Say once per process, on stderr, that the CPU kernels are being compiled,
    when any of ``dispatchers`` (Numba ``cache=True`` functions) has no cache
    index on disk yet: the first call in a fresh install compiles them for
    ~10-30 s, which otherwise looks like a hang. Returns whether it spoke."""
    global _ANNOUNCED
    if _ANNOUNCED or not enabled:
        return False
    cold = False
    for fn in dispatchers:
        try:
            index = fn._cache._cache_file._index_path
        except AttributeError:  # not a caching dispatcher, or Numba's internals moved
            continue
        if not os.path.exists(index):
            cold = True
            break
    if cold:
        _ANNOUNCED = True
        print("fastconvex: compiling CPU kernels, once per install (about 10-30 s)...", file=sys.stderr, flush=True)
    return cold
