"""The public entry points: ``knn_graph``, ``graph_convexity``, ``layer_scores``."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from fastconvex.backends.select import get_engine, resolve_backend
from fastconvex.core.inputs import (
    check_embeddings,
    check_k,
    check_labels_length,
    labels_to_array,
    rescaled_for_range,
)
from fastconvex.core.layers import prepare_layers
from fastconvex.core.pairs import (
    DEFAULT_PAIRS,
    aggregate,
)
from fastconvex.core.progress import Progress, show_progress
from fastconvex.core.results import Convexity, KNNGraph, LayerScores, stack_layers
from fastconvex.graph.plan import ScoringPlan, check_engine, plan_scoring


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


def _session(engine: str, address: Any) -> Any:
    if engine == "ray":
        from fastconvex.runners.session import ray_session

        return ray_session(address)
    if address is not None:
        raise ValueError("address is a Ray cluster address: it needs engine='ray'")
    return contextlib.nullcontext()


def score_layer(
    x: Any,
    plan: ScoringPlan,
    *,
    backend: str = "auto",
    device: Any = None,
    engine: str = "local",
    shards: int | None = None,
    address: str | None = None,
    progress: bool = False,
) -> Convexity:
    """Graph convexity of one validated (N, D) layer on ``plan``'s pairs: the one
    per-layer computation behind ``graph_convexity``, ``layer_scores`` and ``sweep``.

    ``engine="ray"`` splits the exact kNN (query blocks) and the shortest paths
    (sources) of the Numba backend over ``shards`` Ray tasks (default: one per
    CPU of the cluster); the result equals the one-process result bit for bit.
    """
    check_labels_length(plan.codes, int(x.shape[0]))
    shards = check_engine(engine, shards)
    name = resolve_backend(backend, x, device)
    with _session(engine, address) as ray:
        kernels = get_engine(name, device, progress=progress, ray=ray, shards=shards, requested=backend)
        stats = kernels.source_stats(rescaled_for_range(x)[0], plan.codes, plan.pairs, plan.k)
    return aggregate(plan.pairs, stats, plan.classes, k=plan.k, n_points=plan.n_points, backend=name, seed=plan.seed)


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
    engine: str = "local",
    shards: int | None = None,
    address: str | None = None,
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
    engine : "local" | "ray"
        "ray" splits the exact kNN into query blocks and the shortest paths by
        source over ``shards`` Ray tasks (Numba kernels; extra ``[ray]``): the
        result is identical to one process.
    shards : int, optional
        Ray tasks per step (default: the cluster's CPU count); ``engine="ray"`` only.
    address : Ray address (default: the running Ray, ``RAY_ADDRESS``, or a new
        local one); ``engine="ray"`` only.

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
    plan = plan_scoring(
        label_array, k=k, pairs=pairs, sources=sources, exact=exact, seed=seed, min_class_size=min_class_size
    )
    return score_layer(x, plan, backend=backend, device=device, engine=engine, shards=shards, address=address)


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
    engine: str = "local",
    shards: int | None = None,
    address: str | None = None,
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
    engine, shards, address
        As in :func:`graph_convexity` (one Ray connection for all layers).
    k, pairs, sources, exact, seed, min_class_size, backend, device
        As in :func:`graph_convexity`; the pairs are drawn once and reused for
        every layer.

    Returns
    -------
    LayerScores
        ``.scores`` (L,), ``.stderr`` (L,), ``.per_class`` (L, C),
        ``.best_layer``, ``.layers``.
    """
    layers, label_array = prepare_layers(hidden_states, labels, attention_mask=attention_mask, lengths=lengths)
    k = check_k(k, int(layers[0].shape[0]))
    plan = plan_scoring(
        label_array,
        k=k,
        pairs=pairs,
        sources=sources,
        exact=exact,
        seed=seed,
        min_class_size=min_class_size,
        n_layers=len(layers),
    )
    name = resolve_backend(backend, layers[0], device)
    show = show_progress(progress)
    shards = check_engine(engine, shards)
    results: list[Convexity] = []
    with _session(engine, address), Progress(len(layers), "layers", desc="layers", enabled=show) as bar:
        for layer in layers:
            results.append(
                score_layer(layer, plan, backend=name, device=device, engine=engine, shards=shards, progress=show)
            )
            bar.update()
    return stack_layers(results, plan.classes)
