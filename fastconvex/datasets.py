"""Synthetic labelled embeddings for tests, benchmarks and examples."""

from __future__ import annotations

import numpy as np


def overlapping_classes(
    n: int,
    dim: int,
    n_classes: int = 10,
    *,
    separation: float = 1.0,
    seed: int = 0,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes whose regions overlap: a connected kNN graph and a
    convexity score well below 1 (unlike separated blobs, which split the
    graph into one component per class and make every method look fast).

    Class centres are drawn with standard deviation ``separation * 3 / sqrt(dim)``
    around the origin, the points with unit variance per dimension; at
    ``separation=1`` and k=10 the graph convexity is roughly 0.2-0.5.

    Returns
    -------
    x : (n, dim) array of ``dtype``
    labels : (n,) int64, balanced over ``n_classes``
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % n_classes
    rng.shuffle(labels)
    centres = rng.normal(size=(n_classes, dim)) * (separation * 3.0 / np.sqrt(dim))
    x = centres[labels] + rng.normal(size=(n, dim))
    return x.astype(dtype), labels
