"""The naive scorer, the test suite's oracle and the benchmarks' baseline:
the published algorithm written plainly (dense distances, scipy's Dijkstra).

How it computes, and where it differs from the authors' ``nnconvexity`` on
purpose: :mod:`fastconvex.backends.naive`, the engine behind ``backend="naive"``.
Its memory is O(N^2): it refuses, naming the fast backends, when
:func:`naive_memory_bytes` exceeds what the machine has available.
"""

from __future__ import annotations

from typing import Any

from fastconvex.backends.naive import NaiveEngine, naive_memory_bytes
from fastconvex.core.results import Convexity, KNNGraph

__all__ = ["NaiveEngine", "graph_convexity", "knn_graph", "naive_memory_bytes"]


def graph_convexity(x: Any, labels: Any, **keywords: Any) -> Convexity:
    """The naive scorer; same keywords and result as :func:`fastconvex.graph_convexity`."""
    from fastconvex.graph.api import graph_convexity as _graph_convexity

    backend = keywords.pop("backend", "naive")
    if backend not in ("naive", "auto"):
        raise ValueError(f"fastconvex.naive.graph_convexity runs backend='naive', got {backend!r}")
    return _graph_convexity(x, labels, backend="naive", **keywords)


def knn_graph(x: Any, k: int = 10) -> KNNGraph:
    """Dense-matrix kNN (full sort per row); see :func:`fastconvex.knn_graph`."""
    from fastconvex.graph.api import knn_graph as _knn_graph

    return _knn_graph(x, k, backend="naive")
