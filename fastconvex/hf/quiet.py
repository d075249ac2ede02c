"""transformers' logging and progress bars, silenced for a while."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["quiet_transformers"]


@contextlib.contextmanager
def quiet_transformers(progress_bars: bool = False) -> Iterator[None]:
    """transformers' logging at error level and, unless ``progress_bars``, its own
    progress bars ("Loading weights", "Writing model shards") off; restored after."""
    import transformers

    tlog = transformers.utils.logging
    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    if not progress_bars:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()
