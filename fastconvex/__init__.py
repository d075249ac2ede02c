"""fastconvex: fast graph convexity of layer embeddings, and convexity-guided
layer pruning of speech transformers.

>>> import fastconvex as fc
>>> result = fc.layer_scores(hidden_states, labels)   # doctest: +SKIP
>>> result.best_layer                                  # doctest: +SKIP
"""

from __future__ import annotations

from . import naive
from ._backends import BACKENDS
from ._core import graph_convexity, knn_graph, layer_scores
from ._euclidean import euclidean_convexity, layer_euclidean_scores
from ._results import Convexity, KNNGraph, LayerScores
from ._sweep import sweep
from .store import LayerStore, open_store, save_store

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Convexity",
    "KNNGraph",
    "LayerScores",
    "LayerStore",
    "euclidean_convexity",
    "graph_convexity",
    "knn_graph",
    "layer_euclidean_scores",
    "layer_scores",
    "naive",
    "open_store",
    "save_store",
    "sweep",
    "__version__",
]
