"""The runner that calls every task in this process, one after another."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastconvex.runners.base import LOCAL, TASK_ERRORS

K = TypeVar("K")
T = TypeVar("T")


class LocalRunner:
    """:class:`~fastconvex.runners.base.Runner` in this process: each call in
    turn; a call that raises one of ``TASK_ERRORS`` is reported and the next
    one runs."""

    name = "local"

    def share(self, value: T) -> T:
        return value

    def run(
        self,
        fn: Callable[..., Any],
        calls: Sequence[tuple[K, tuple[Any, ...]]],
        *,
        on_done: Callable[[K, Any], None],
        on_failed: Callable[[K, BaseException], None] | None = None,
        running: Callable[[int], None] | None = None,
    ) -> list[tuple[K, BaseException]]:
        failures: list[tuple[K, BaseException]] = []
        for key, args in calls:
            if running is not None:
                running(1)
            try:
                result = fn(*args, placement=LOCAL)
            except TASK_ERRORS as exc:
                # the frames of a kept traceback would keep each failed call's
                # arrays (and whatever else its locals hold) alive until the run ends
                traceback.clear_frames(exc.__traceback__)
                failures.append((key, exc))
                if on_failed is not None:
                    on_failed(key, exc)
                continue
            on_done(key, result)
        return failures
