"""How a per-layer result (:class:`~fastconvex.LayerScores`) is shown on the
command line: the table ``score`` and ``prune`` print, the convexity-per-layer
plot, and the two together in the order that never loses the scores (the
JSON first, then the plot).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.commands._output import DataError, emit_report, log

__all__ = ["emit_result", "format_table", "save_plot"]


def format_table(result: Any, names: list[str] | None = None) -> str:
    """The per-layer table ``fastconvex score`` prints: convexity, standard
    error, 95 % interval and macro score in percent (rounded for display only;
    the JSON keeps every digit)."""
    from fastconvex.core.table import Column, layer_table, percent

    first = result.layers[0]
    names = names if names is not None else [str(i) for i in range(len(result))]
    width = max([5] + [len(n) for n in names])
    intervals = result.intervals(0.95)

    def interval(i: int) -> str:
        lo, hi = intervals[i]
        return "-" if np.isnan(lo) else f"{100 * lo:6.2f}-{100 * hi:6.2f}"

    columns = [
        Column("layer", ">5", lambda i: i),
        Column("source", f"<{width}", lambda i: names[i]),
        Column("convexity %", ">11", percent(lambda i: result.layers[i].score), ".2f"),
        Column("± s.e.", ">6", percent(lambda i: result.layers[i].stderr), ".2f"),
        Column("95% interval", ">15", interval),
        Column("macro %", ">7", percent(lambda i: result.layers[i].macro), ".2f"),
    ]
    head, *rows = layer_table(
        columns, range(min(len(result.layers), len(names))), best=lambda i: i == result.best_layer
    )
    graph = first.measure == "graph"
    lines = [
        f"{first.measure} convexity of {len(result)} layer(s): N={first.n_points}, "
        + (f"k={first.k}, " if graph else f"{first.n_sampled} points per segment, ")
        + f"estimator {first.estimator}, {first.total_pairs} pairs per layer"
        + (f", backend {first.backend}" if graph else ""),
        head,
        "-" * len(head),
        *rows,
    ]
    if np.isfinite(result.df).any():
        lines.append(f"(interval: Student's t, {first.df:g} degrees of freedom in layer 0; see docs/score.md)")
    return "\n".join(lines)


def save_plot(scores: Any, path: str | Path, *, cut: int | None, title: str | None = None) -> Path:
    """Save the convexity-per-layer plot (standard-error bars, cut marked) as an image."""
    from fastconvex.core.plotfile import save_figure
    from fastconvex.plot import plot_layer_scores

    out = Path(path)
    if not out.suffix:  # what matplotlib would write: say so instead of guessing
        out = out.with_name(out.name + ".png")
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"--plot: directory {str(out.parent)!r} does not exist")
    fig = plot_layer_scores(scores, cut=cut)
    if title:
        fig.axes[0].set_title(title)
    return save_figure(fig, out, dpi=120)


def emit_result(args: argparse.Namespace, result: Any, names: list[str], plot_path: Path | None) -> int:
    """The table on stdout, or the JSON (``--json``, ``--out``), then the plot:
    the JSON is written first, so a plot that fails never loses the scores."""
    emit_report(args, result.to_dict(), lambda: format_table(result, names))  # before the plot
    if plot_path is not None:
        cut = result.best_layer if result.best_layer > 0 else None
        try:
            log(args, f"wrote {save_plot(result, plot_path, cut=cut)}")
        except Exception as exc:  # noqa: BLE001 - the scores are kept; say why there is no plot
            kept = f"the scores are in {args.out}" if args.out not in (None, "-") else "the scores were printed"
            raise DataError(f"--plot {str(plot_path)!r} could not be written ({exc}); {kept}") from exc
    return 0
