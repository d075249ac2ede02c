"""Saving a figure: the one plot writer of fastconvex (``score --plot``,
``prune --plot``, the sweep's ``sweep.png``, the demo's figures)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastconvex.core.atomic import atomic_file

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Save the matplotlib figure ``fig`` to ``path`` atomically (see
    :func:`fastconvex.core.atomic.atomic_file`): an earlier plot there stays whole
    until the new one is complete, and an I/O error is a
    :class:`~fastconvex.core.atomic.WriteError` naming ``path``. The format is
    ``path``'s suffix (PNG without one), as matplotlib would pick it from the
    name, which it cannot see through the open file."""
    out = Path(path)
    with atomic_file(out) as fh:
        fig.savefig(fh, format=out.suffix[1:].lower() or "png", dpi=dpi)
    return out
