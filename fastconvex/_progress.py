"""A dependency-free progress bar on stderr."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Progress:
    """``with Progress(total, "layers", enabled=True) as bar: bar.update()``."""

    def __init__(self, total: int, unit: str, *, enabled: bool = True, width: int = 30) -> None:
        self.total = max(int(total), 0)
        self.unit = unit
        self.enabled = enabled
        self.width = width
        self.done = 0
        self.start = time.perf_counter()

    def __enter__(self) -> "Progress":
        self._draw()
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        if not self.enabled or self.total == 0:
            return
        frac = self.done / self.total
        fill = int(self.width * frac)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} "
            f"{self.unit} {elapsed:6.1f}s"
        )
        sys.stderr.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled and self.total:
            sys.stderr.write("\n")
            sys.stderr.flush()
