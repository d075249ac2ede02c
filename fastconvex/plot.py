"""Plots (extra ``[plot]``: matplotlib, imported lazily). Never calls ``show()``.

Duck-typed: anything with per-layer ``scores``, ``stderr`` and ``layers``
(a :class:`fastconvex.LayerScores`) is plotted, so this module imports nothing
of fastconvex and ``LayerScores.plot`` can call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


class PerLayerScores(Protocol):
    """What a plot reads of a :class:`fastconvex.LayerScores`."""

    @property
    def scores(self) -> np.ndarray: ...
    @property
    def stderr(self) -> np.ndarray: ...
    @property
    def layers(self) -> Sequence[Any]: ...


def _figure() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("plotting needs matplotlib: pip install 'fastconvex[plot]'") from exc
    return Figure(figsize=(6.4, 3.8), layout="constrained")


def plot_layer_scores(
    scores: PerLayerScores | Sequence[PerLayerScores],
    *,
    cut: int | Sequence[int | None] | None = None,
    labels: Sequence[str] | None = None,
    ax: Any = None,
) -> Figure:
    """Convexity (%) per layer with standard-error bars, one line per task.

    Parameters
    ----------
    scores : LayerScores or a sequence of them (one per task)
    cut : hidden-state index of the chosen cut (one per task, or one for all);
        drawn as a dashed vertical line
    labels : legend entries, one per task
    ax : matplotlib Axes to draw into (default: a new Figure)

    Returns
    -------
    matplotlib.figure.Figure
    """
    tasks = [cast(PerLayerScores, scores)] if hasattr(scores, "scores") else list(scores)
    if not tasks:
        raise ValueError("scores is empty: nothing to plot")
    if labels is not None and len(labels) != len(tasks):
        raise ValueError(f"labels has {len(labels)} entries for {len(tasks)} tasks")
    cuts = list(cut) if isinstance(cut, (list, tuple)) else [cut] * len(tasks)
    if len(cuts) != len(tasks):
        raise ValueError(f"cut has {len(cuts)} entries for {len(tasks)} tasks")
    if ax is None:
        fig = _figure()
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    for i, task in enumerate(tasks):
        layers = np.arange(len(task.scores))
        name = labels[i] if labels is not None else (None if len(tasks) == 1 else f"task {i}")
        line = ax.errorbar(layers, 100 * task.scores, yerr=100 * task.stderr, marker="o", ms=4, capsize=3, label=name)
        if cuts[i] is not None:
            ax.axvline(
                cuts[i],
                ls="--",
                color=line[0].get_color(),
                alpha=0.7,
                label=f"cut at {cuts[i]}" + (f" ({name})" if name else ""),
            )
    ax.set_xlabel("hidden state (0 = transformer input, i = output of block i)")
    measures = {getattr(layer, "measure", "graph") for task in tasks for layer in task.layers[:1]}
    ax.set_ylabel(f"{measures.pop()} convexity (%)" if len(measures) == 1 else "convexity (%)")
    ax.grid(alpha=0.3)
    if len(tasks) > 1 or any(c is not None for c in cuts):
        ax.legend(fontsize="small")
    return fig


def plot_convexity_history(points: Sequence[Any], *, ax: Any = None) -> Figure:
    """Convexity (%) of each layer against the optimizer step, one line per
    layer: a :class:`fastconvex.hf.ConvexityCallback`'s ``history`` (points
    with ``step``, ``layers`` and per-layer ``scores``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    points = sorted(points, key=lambda p: p.step)
    if not points:
        raise ValueError("the history is empty: nothing to plot (no point was scored yet)")
    if ax is None:
        fig = _figure()
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    steps = np.array([p.step for p in points])
    layers = list(points[0].layers)
    values = np.array([[100 * s for s in p.scores.scores] for p in points])  # (points, layers)
    colours = _layer_colours(len(layers))
    for j, h in enumerate(layers):
        ax.plot(steps, values[:, j], marker="o", ms=3, color=colours[j], label=f"layer {h}")
    measures = {getattr(layer, "measure", "graph") for layer in points[0].scores.layers[:1]}
    ax.set_xlabel("optimizer step (0 = before training)")
    ax.set_ylabel(f"{measures.pop()} convexity (%)" if len(measures) == 1 else "convexity (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(layers) > 6 else 1)
    return fig


def _layer_colours(n: int) -> list[Any]:
    """One colour per layer, shallow to deep along a sequential colour map."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * i / max(1, n - 1)) for i in range(n)]
