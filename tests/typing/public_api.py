"""Type-checked, never run: uses the public API the way a user would, so that
mypy (``[tool.mypy] files`` in pyproject.toml) reports a misspelt or removed
public name, or a changed signature, as an error."""

from __future__ import annotations

import numpy as np

import fastconvex as fc


def scores_of_a_model() -> None:
    rng = np.random.default_rng(0)
    layers = [rng.normal(size=(60, 8)) for _ in range(3)]
    labels = np.repeat(np.arange(3), 20)

    result: fc.LayerScores = fc.layer_scores(layers, labels, k=5)
    best: int = result.best_layer
    one: fc.Convexity = fc.graph_convexity(layers[best], labels, k=5)
    print(one.score, one.stderr, fc.__version__, sorted(fc.BACKENDS))

    graph: fc.KNNGraph = fc.knn_graph(layers[0], k=5)
    print(graph)

    def predict(points: np.ndarray) -> np.ndarray:
        return np.zeros(len(points), dtype=int)

    print(fc.euclidean_convexity(layers[0], labels, predict, n_sampled=20))
    print(fc.layer_euclidean_scores(layers, labels, lambda layer, points: predict(points), n_sampled=20))


def a_store_and_a_sweep(out_dir: str) -> None:
    rng = np.random.default_rng(0)
    fc.save_store(f"{out_dir}/store", [rng.normal(size=(60, 8))], np.repeat(np.arange(3), 20))
    store: fc.LayerStore = fc.open_store(f"{out_dir}/store")
    results: fc.SweepResults = fc.sweep([store.path], out_dir=f"{out_dir}/sweep", plot=False)
    print(results)
    print(fc.naive.graph_convexity)
