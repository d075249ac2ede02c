"""fastconvex: fast graph convexity of layer embeddings, and convexity-guided
layer pruning of speech transformers.

>>> import fastconvex as fc
>>> result = fc.layer_scores(hidden_states, labels)   # doctest: +SKIP
>>> result.best_layer                                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING

from fastconvex._version import __version__

# Public names are imported on first use (PEP 562): ``import fastconvex`` costs
# nothing, so the command line (``fastconvex = fastconvex.cli:main``) is inside
# its own error handling -- Ctrl-C included -- before numpy, scipy and numba load.
_EXPORTS = {
    "BACKENDS": ".backends.select",
    "graph_convexity": ".graph.api",
    "knn_graph": ".graph.api",
    "layer_scores": ".graph.api",
    "euclidean_convexity": ".euclidean.api",
    "layer_euclidean_scores": ".euclidean.api",
    "Convexity": ".core.results",
    "KNNGraph": ".core.results",
    "LayerScores": ".core.results",
    "SweepResults": ".sweeps.api",
    "sweep": ".sweeps.api",
    "LayerStore": ".store",
    "open_store": ".store",
    "save_store": ".store",
}

if TYPE_CHECKING:
    from fastconvex import naive
    from fastconvex.backends.select import BACKENDS
    from fastconvex.core.results import Convexity, KNNGraph, LayerScores
    from fastconvex.euclidean.api import euclidean_convexity, layer_euclidean_scores
    from fastconvex.graph.api import graph_convexity, knn_graph, layer_scores
    from fastconvex.store import LayerStore, open_store, save_store
    from fastconvex.sweeps.api import SweepResults, sweep


# Hidden from type checkers: a module-level __getattr__ would make every unknown
# name (a typo such as ``fc.graph_convexty``) an ``object`` instead of an error.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """A public name (or a submodule, as ``fastconvex.naive``), imported when first asked for."""
        if name in _EXPORTS:
            value = getattr(_importlib.import_module(_EXPORTS[name], __name__), name)
        elif not name.startswith("__"):
            try:
                value = _importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
                raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        """The public names and the module's dunders, not the helpers of the lazy import."""
        return sorted(set(__all__) | {k for k in globals() if k.startswith("__") and k.endswith("__")})


__all__ = [
    "BACKENDS",
    "Convexity",
    "KNNGraph",
    "LayerScores",
    "LayerStore",
    "SweepResults",
    "__version__",
    "euclidean_convexity",
    "graph_convexity",
    "knn_graph",
    "layer_euclidean_scores",
    "layer_scores",
    "naive",
    "open_store",
    "save_store",
    "sweep",
]
