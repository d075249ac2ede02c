"""The per-layer table: the one implementation behind every printed table of
per-layer scores (``str(LayerScores)``, ``sweep``'s and ``score``'s tables).

A table is a list of :class:`Column` s over rows of any kind; each printout
chooses its columns, the layout (right-aligned numbers in fixed widths, the
best layer marked) is the same everywhere. Numbers are rounded for display
only; the JSON outputs keep every digit."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

BEST_MARK = "  <- best"


@dataclass(frozen=True)
class Column:
    """One column: its ``title``, a format ``spec`` applied to the title and
    to every value (alignment and width, e.g. ``">11"``), ``number``: the
    format of a value after that (e.g. ``".2f"``), ``value(row)``: the value
    shown, and ``gap``: the text before the column."""

    title: str
    spec: str
    value: Callable[[Any], Any]
    number: str = ""
    gap: str = "  "


def percent(get: Callable[[Any], float]) -> Callable[[Any], float]:
    """A column value in percent: ``100 * get(row)``."""
    return lambda row: 100 * get(row)


def layer_table(columns: Sequence[Column], rows: Iterable[Any], *, best: Callable[[Any], bool]) -> list[str]:
    """The header line and one line per row; ``best(row)`` marks the best layer."""
    lines = ["".join((c.gap if i else "") + format(c.title, c.spec) for i, c in enumerate(columns))]
    for row in rows:
        cells = "".join((c.gap if i else "") + format(c.value(row), c.spec + c.number) for i, c in enumerate(columns))
        lines.append(cells + (BEST_MARK if best(row) else ""))
    return lines
