"""The public entry points: ``knn_graph``, ``graph_convexity``, ``layer_scores``."""

from __future__ import annotations

import warnings
from typing import Any, Hashable, Sequence

import numpy as np

from ._backends import get_engine, resolve_backend
from ._inputs import (
    check_embeddings,
    check_int,
    check_k,
    check_labels_length,
    encode_labels,
    labels_to_array,
    rescaled_for_range,
)
from ._layers import prepare_layers
from ._pairs import DEFAULT_PAIRS, PairPlan, aggregate, plan_pairs, resolve_estimator
from ._progress import Progress, show_progress
from ._results import Convexity, KNNGraph, LayerScores


def knn_graph(x: Any, k: int = 10, *, backend: str = "auto", device: Any = None) -> KNNGraph:
    """Exact k nearest *other* points of every row (Euclidean).

    Parameters
    ----------
    x : (N, D) array or tensor
        Embeddings, one per row.
    k : int
        Neighbours per point, 1 <= k < N.
    backend : "auto" | "triton" | "numba" | "naive"
    device : None, "cpu", "cuda", "cuda:1", torch.device

    Returns
    -------
    KNNGraph
        ``.indices`` (N, k) ascending by distance (ties: smaller index first);
        ``.distances`` (N, k) Euclidean. An exact duplicate of a point is its
        neighbour at distance 0; a point never neighbours itself.
    """
    x = check_embeddings(x)
    k = check_k(k, int(x.shape[0]))
    name = resolve_backend(backend, x, device)
    scaled, exponent = rescaled_for_range(x)
    graph = get_engine(name, device).knn(scaled, k)
    if exponent == 0:
        return graph
    return KNNGraph(graph.indices, np.ldexp(graph.distances, exponent), graph.backend)


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    return check_int("seed", seed, minimum=0)


# exact=True at more single-source searches than this warns of its cost
EXACT_WARN_SEARCHES = 20_000


def _plan(codes: np.ndarray, n_classes: int, pairs, sources, exact, seed, min_class_size,
          n_layers: int = 1) -> PairPlan:
    estimator, budget = resolve_estimator(pairs, sources, exact)
    min_class_size = check_int("min_class_size", min_class_size, minimum=1)
    plan = plan_pairs(
        codes, n_classes, estimator=estimator, budget=budget, seed=seed,
        min_class_size=min_class_size,
    )
    if estimator == "exact" and plan.n_sources > EXACT_WARN_SEARCHES:
        per_layer = "" if n_layers == 1 else f" in each of {n_layers} layers ({plan.n_sources * n_layers:,} in all)"
        warnings.warn(
            f"exact=True runs {plan.n_sources:,} single-source shortest-path searches{per_layer}, one "
            f"per point of a scored class, each over the whole {codes.shape[0]:,}-point graph; "
            "sources=S (for example 1000) estimates the same score from S searches per class, "
            "with a standard error",
            UserWarning,
            stacklevel=3,
        )
    return plan


def graph_convexity(
    x: Any,
    labels: Any,
    *,
    k: int = 10,
    pairs: int | None = DEFAULT_PAIRS,
    sources: int | None = None,
    exact: bool = False,
    seed: int | None = 0,
    min_class_size: int = 2,
    backend: str = "auto",
    device: Any = None,
) -> Convexity:
    """Graph convexity of one embedding (how it is defined and computed: docs/score.md).

    Parameters
    ----------
    x : (N, D) array or tensor
        Embeddings (numpy or torch, any device).
    labels : (N,) labels
        Any hashable values: ints, strings, a numpy array or a torch tensor.
    k : int
        Neighbours in the kNN graph (default 10, the paper's).
    pairs : int
        Per class, score all ordered same-class pairs if there are at most
        ``pairs``, else this many distinct pairs drawn uniformly (default 5000).
    sources : int, optional
        Instead: per class, ``min(sources, n_c)`` sources, every same-class
        target of each (cheaper at large N).
    exact : bool
        Score every ordered same-class pair.
        Give one estimator: ``pairs=`` given explicitly together with
        ``sources=`` or ``exact=True`` raises ``ValueError``.
    seed : int
        Seed of the host-side pair sampling (same pairs on every backend).
    min_class_size : int
        Classes with fewer members are skipped (reported with 0 pairs).
    backend, device
        See :func:`knn_graph`.

    Returns
    -------
    Convexity
    """
    x = check_embeddings(x)
    n = int(x.shape[0])
    k = check_k(k, n)
    label_array = labels_to_array(labels)
    if label_array.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {label_array.shape}")
    check_labels_length(label_array, n)
    codes, classes = encode_labels(label_array)
    seed = _check_seed(seed)
    plan = _plan(codes, len(classes), pairs, sources, exact, seed, min_class_size)
    name = resolve_backend(backend, x, device)
    engine = get_engine(name, device)
    stats = engine.source_stats(rescaled_for_range(x)[0], codes, plan, k)
    return aggregate(plan, stats, classes, k=k, n_points=n, backend=name, seed=seed)


def layer_scores(
    hidden_states: Any,
    labels: Any,
    *,
    k: int = 10,
    pairs: int | None = DEFAULT_PAIRS,
    sources: int | None = None,
    exact: bool = False,
    seed: int | None = 0,
    min_class_size: int = 2,
    backend: str = "auto",
    device: Any = None,
    attention_mask: Any = None,
    lengths: Any = None,
    progress: bool | None = None,
) -> LayerScores:
    """Graph convexity of every layer, all scored on the same pairs.

    Parameters
    ----------
    hidden_states : sequence of L arrays/tensors, or one array/tensor
        - per layer (N, D) with ``labels`` (N,);
        - per layer (B, T, D) with ``labels`` (B,): mean over valid frames
          (``attention_mask`` (B, T) or ``lengths`` (B,) in frames; neither:
          all frames);
        - per layer (B, T, D) with ``labels`` (B, T): frame-level scoring;
          frames labelled -100 (and padding) are left out;
        - one (L, N, D) array (layers first, as ``torch.stack`` gives) or one
          (L, B, T, D) array.
        The tuple a Hugging Face model returns with ``output_hidden_states=True``
        is the first form: index 0 is the transformer's input, index i the
        output of block i.
    labels : see above; any hashable values.
    attention_mask, lengths : which frames of (B, T, D) inputs are real.
    progress : None (progress on stderr only when it is a terminal), True, False.
        tqdm bars over layers and, for layers of 20 000 points or more, inside
        each layer (kNN rows, path searches); where stderr is not a terminal
        (a log, CI) a plain line every 30 s instead of a redrawn bar.
    k, pairs, sources, exact, seed, min_class_size, backend, device
        As in :func:`graph_convexity`; the pairs are drawn once and reused for
        every layer.

    Returns
    -------
    LayerScores
        ``.scores`` (L,), ``.stderr`` (L,), ``.per_class`` (L, C),
        ``.best_layer``, ``.layers``.
    """
    layers, label_array = prepare_layers(
        hidden_states, labels, attention_mask=attention_mask, lengths=lengths
    )
    n = int(layers[0].shape[0])
    k = check_k(k, n)
    codes, classes = encode_labels(label_array)
    seed = _check_seed(seed)
    plan = _plan(codes, len(classes), pairs, sources, exact, seed, min_class_size, len(layers))
    name = resolve_backend(backend, layers[0], device)
    show = show_progress(progress)
    engine = get_engine(name, device, progress=show)
    results: list[Convexity] = []
    with Progress(len(layers), "layers", desc="layers", enabled=show) as bar:
        for layer in layers:
            stats = engine.source_stats(rescaled_for_range(layer)[0], codes, plan, k)
            results.append(aggregate(plan, stats, classes, k=k, n_points=n, backend=name, seed=seed))
            bar.update()
    return _stack(results, classes)


def _stack(results: Sequence[Convexity], classes: list[Hashable]) -> LayerScores:
    return LayerScores(
        scores=np.array([r.score for r in results]),
        stderr=np.array([r.stderr for r in results]),
        classes=list(classes),
        per_class=np.array([[r.per_class[c] for c in classes] for r in results]),
        layers=list(results),
    )
