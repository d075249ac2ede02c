"""Result types: small typed dataclasses with ``to_dict``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _plain(value: Any) -> Any:
    """Numpy/torch scalars to plain Python (for dict keys and JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_float(v: float) -> float | None:
    """A float for JSON: NaN (e.g. a standard error that one sampled pair or
    source cannot give) becomes null, since NaN is not valid JSON."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def label_keys(labels: list[Hashable]) -> list[str]:
    """JSON object keys for class labels: ``str`` of the label, or, when two
    labels would share a key (``1`` and ``"1"``, ``None`` and ``"None"``),
    ``repr`` of every label (``1`` and ``'1'``), so no class is lost."""
    plain = [_plain(c) for c in labels]
    keys = [str(c) for c in plain]
    if len(set(keys)) < len(keys):
        keys = [repr(c) for c in plain]
        if len(set(keys)) < len(keys):
            raise ValueError(f"class labels {labels!r} have no distinct string form for JSON")
    return keys


def t_interval(center: float, stderr: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """``center ± q * stderr`` clipped to [0, 1], ``q`` Student's t quantile
    at ``df`` degrees of freedom (the normal quantile when ``df`` is inf)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
    if math.isnan(stderr) or math.isnan(df):
        return math.nan, math.nan
    if stderr == 0.0:
        return center, center
    from scipy.stats import norm, t

    q = float(norm.ppf(0.5 + level / 2) if math.isinf(df) else t.ppf(0.5 + level / 2, df))
    return max(0.0, center - q * stderr), min(1.0, center + q * stderr)


@dataclass(frozen=True)
class KNNGraph:
    """k nearest *other* points of every row.

    Attributes
    ----------
    indices : (N, k) int64 array, ascending by distance (ties: smaller index first)
    distances : (N, k) float array, Euclidean (not squared)
    backend : name of the backend that computed it
    """

    indices: Any
    distances: Any
    backend: str = "numba"

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def n_points(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class Convexity:
    """Graph or Euclidean convexity of one embedding (one layer).

    Attributes
    ----------
    score : float
        Mean path score over every ordered same-class pair of the scored
        classes, in [0, 1]: exactly that for ``exact`` (and whenever every pair
        is scored), else estimated from the sampled pairs, each class's mean
        weighted by its number of pairs n_c (n_c - 1).
    stderr : float
        Standard error of ``score`` (0 for ``exact``; NaN where a class has a
        single sampled pair or source, so no variance can be estimated).
    macro : float
        Unweighted mean of the class scores.
    macro_stderr : float
        Standard error of ``macro``.
    per_class : dict label -> float
        Class score (NaN for classes skipped by ``min_class_size``).
    per_class_stderr : dict label -> float
    n_pairs : dict label -> int
        Pairs scored per class (0 for skipped classes).
    n_unreachable : int
        Scored pairs whose target was unreachable (scored 0).
    estimator : "pairs" | "sources" | "exact"
    k, n_points, backend, seed : the settings that produced it (``k`` is None
        for the Euclidean measure, which builds no graph).
    measure : "graph" | "euclidean"
        Which convexity: graph convexity (docs/score.md) or Euclidean convexity
        (:func:`fastconvex.euclidean_convexity`, scored on unordered pairs).
    n_sampled : int or None
        Euclidean measure only: points sampled on each segment.
    df : float
        Degrees of freedom of :meth:`interval` (Student's t): the fewest
        sampled units (pairs, or sources) minus one over the classes whose
        variance is estimated; ``inf`` when nothing was sampled (``exact``, or
        every pair scored), NaN where ``stderr`` is NaN.
    """

    score: float
    stderr: float
    macro: float
    macro_stderr: float
    per_class: dict[Hashable, float]
    per_class_stderr: dict[Hashable, float]
    n_pairs: dict[Hashable, int]
    n_unreachable: int
    estimator: str
    k: int | None
    n_points: int
    backend: str
    seed: int | None = None
    df: float = math.inf
    measure: str = "graph"
    n_sampled: int | None = None

    def interval(self, level: float = 0.95, *, macro: bool = False) -> tuple[float, float]:
        """Confidence interval of ``score`` (or ``macro``): ``score ± t * stderr``
        with Student's t quantile at :attr:`df` degrees of freedom, clipped to
        [0, 1]. ``(score, score)`` when nothing was sampled; NaN ends where the
        standard error is NaN. See docs/score.md, "Uncertainty"."""
        return t_interval(
            self.macro if macro else self.score, self.macro_stderr if macro else self.stderr, self.df, level
        )

    @property
    def total_pairs(self) -> int:
        return int(sum(self.n_pairs.values()))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: fractions in [0, 1], NaN as None, class
        labels as string keys (see :func:`label_keys`)."""
        keys = dict(zip(self.per_class, label_keys(list(self.per_class))))
        return {
            "score": _json_float(self.score),
            "stderr": _json_float(self.stderr),
            "macro": _json_float(self.macro),
            "macro_stderr": _json_float(self.macro_stderr),
            "per_class": {keys[c]: _json_float(v) for c, v in self.per_class.items()},
            "per_class_stderr": {keys[c]: _json_float(v) for c, v in self.per_class_stderr.items()},
            "n_pairs": {keys[c]: int(v) for c, v in self.n_pairs.items()},
            "n_unreachable": int(self.n_unreachable),
            "estimator": self.estimator,
            "k": None if self.k is None else int(self.k),
            "n_points": int(self.n_points),
            "backend": self.backend,
            "seed": self.seed,
            # null: nothing sampled (the interval is the score itself)
            "df": None if math.isinf(self.df) else _json_float(self.df),
            "interval95": [_json_float(v) for v in self.interval(0.95)],
            "measure": self.measure,
            "n_sampled": self.n_sampled,
        }

    def __str__(self) -> str:
        if self.measure == "euclidean":
            return (
                f"Convexity(measure=euclidean, score={100 * self.score:.2f}% ± {100 * self.stderr:.2f}, "
                f"macro={100 * self.macro:.2f}%, pairs={self.total_pairs}, "
                f"estimator={self.estimator}, n_sampled={self.n_sampled})"
            )
        return (
            f"Convexity(score={100 * self.score:.2f}% ± {100 * self.stderr:.2f}, "
            f"macro={100 * self.macro:.2f}%, pairs={self.total_pairs}, "
            f"unreachable={self.n_unreachable}, estimator={self.estimator}, k={self.k})"
        )


@dataclass(frozen=True)
class LayerScores:
    """Convexity (graph or Euclidean) of every layer, scored on the same pairs.

    Attributes
    ----------
    scores : (L,) float64 array, pooled score per layer
    stderr : (L,) float64 array
    classes : list of the class labels (columns of ``per_class``)
    per_class : (L, C) float64 array (NaN for skipped classes)
    layers : list of L :class:`Convexity`
    """

    scores: np.ndarray
    stderr: np.ndarray
    classes: list[Hashable]
    per_class: np.ndarray
    layers: list[Convexity] = field(repr=False)

    @property
    def best_layer(self) -> int:
        """Index of the layer with the highest score (the first, on ties)."""
        return int(np.argmax(self.scores))

    @property
    def macro(self) -> np.ndarray:
        """(L,) unweighted mean of class scores per layer."""
        return np.array([c.macro for c in self.layers])

    @property
    def df(self) -> np.ndarray:
        """(L,) degrees of freedom of each layer's interval (see :class:`Convexity`)."""
        return np.array([c.df for c in self.layers], dtype=np.float64)

    def intervals(self, level: float = 0.95) -> np.ndarray:
        """(L, 2) confidence interval of every layer's score (Student's t; see
        :meth:`Convexity.interval`)."""
        return np.array([c.interval(level) for c in self.layers], dtype=np.float64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": [_json_float(s) for s in self.scores],
            "stderr": [_json_float(s) for s in self.stderr],
            "best_layer": self.best_layer,
            "classes": [c if isinstance(c, (str, int, float, bool)) else str(c) for c in map(_plain, self.classes)],
            "class_keys": label_keys(list(self.classes)),
            "per_class": [[_json_float(float(v)) for v in row] for row in self.per_class],
            "layers": [c.to_dict() for c in self.layers],
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically (the old file
        or the whole new one, never a part; see :func:`fastconvex.core.atomic.atomic_file`)."""
        from fastconvex.core.atomic import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def plot(self, *, cut: int | None = None, ax: Any = None) -> Figure:
        """Convexity per layer with standard-error bars (needs ``[plot]``).

        Returns a matplotlib Figure; never calls ``show()``.
        """
        from fastconvex.plot import plot_layer_scores

        return plot_layer_scores(self, cut=cut, ax=ax)

    def __str__(self) -> str:
        from fastconvex.core.table import Column, layer_table, percent

        columns = [
            Column("layer", ">5", lambda i: i),
            Column("convexity %", ">11", percent(lambda i: self.scores[i]), ".2f"),
            Column("± s.e.", ">7", percent(lambda i: self.stderr[i]), ".2f"),
        ]
        return "\n".join(layer_table(columns, range(len(self.scores)), best=lambda i: i == self.best_layer))


def stack_layers(results: Sequence[Convexity], classes: list[Hashable]) -> LayerScores:
    """Per-layer :class:`Convexity` results (same classes) as one :class:`LayerScores`."""
    return LayerScores(
        scores=np.array([r.score for r in results]),
        stderr=np.array([r.stderr for r in results]),
        classes=list(classes),
        per_class=np.array([[r.per_class[c] for c in classes] for r in results]),
        layers=list(results),
    )


_PER_CLASS = ("per_class", "per_class_stderr", "n_pairs")


def convexity_fields(result: Convexity) -> dict[str, Any]:
    """Every field of ``result`` as JSON-ready values (per-class dicts as lists
    in class order; NaN and inf kept, as Python's json writes and reads them),
    so :func:`convexity_from_fields` rebuilds it exactly."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Convexity):
        value = getattr(result, f.name)
        out[f.name] = list(value.values()) if f.name in _PER_CLASS else value
    return json.loads(json.dumps(out, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def convexity_from_fields(fields: dict[str, Any], classes: Sequence[Hashable]) -> Convexity:
    """Inverse of :func:`convexity_fields` given the class list."""
    values = dict(fields)
    for name in _PER_CLASS:
        if len(values[name]) != len(classes):
            raise ValueError(f"{name} has {len(values[name])} classes, expected {len(classes)}")
        values[name] = dict(zip(classes, values[name]))
    return Convexity(**values)
