"""The public Euclidean-convexity entry points: ``euclidean_convexity`` (one
representation) and ``layer_euclidean_scores`` (every layer, the same pairs)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from fastconvex.core.devices import check_device_here
from fastconvex.core.inputs import check_int, check_seed, labels_to_array
from fastconvex.core.layers import _split_layers
from fastconvex.core.pairs import DEFAULT_PAIRS, PairPlan, scored_classes
from fastconvex.core.progress import Progress, show_progress
from fastconvex.core.results import Convexity, LayerScores, stack_layers
from fastconvex.euclidean.segments import (
    _takes_mask,
    check_frame_mask,
    check_items,
    check_known_labels,
    check_settings,
    encode_item_labels,
    euclidean_from_plan,
    label_matcher,
    plan_segments,
)

__all__ = ["euclidean_convexity", "layer_euclidean_scores"]


def plan_euclidean(
    labels: Any, n: int, *, n_sampled: Any, pairs: Any, exact: Any, batch_size: Any, seed: Any, min_class_size: Any
) -> tuple[list[Hashable], PairPlan, int, int, int | None]:
    """Validate the settings and draw the pairs of ``n`` items once: (classes,
    plan, n_sampled, batch_size, seed). The one planning step of
    ``layer_euclidean_scores`` and of Euclidean sweeps."""
    codes, classes = encode_item_labels(labels, n)
    n_sampled, budget, exact, batch_size = check_settings(n_sampled, pairs, exact, batch_size)
    seed = check_seed(seed)
    min_class_size = check_int("min_class_size", min_class_size, minimum=1)
    plan = plan_segments(codes, len(classes), exact=exact, budget=budget, seed=seed, min_class_size=min_class_size)
    return classes, plan, n_sampled, batch_size, seed


def check_label_classes(
    labels: Any, predict: Any, *, min_class_size: Any = 2, label_map: Any = None, known_labels: Any = None
) -> None:
    """That ``labels`` map onto ``predict``'s classes (see ``label_map`` in
    :func:`euclidean_convexity`), without drawing pairs: for callers that run
    forward passes of their own before scoring (``prune``'s hidden states),
    so that a mismatch is refused first."""
    label_array = labels_to_array(labels)
    codes, classes = encode_item_labels(label_array, int(label_array.shape[0]))
    min_class_size = check_int("min_class_size", min_class_size, minimum=1)
    scored = scored_classes(np.bincount(codes, minlength=len(classes)), min_class_size)
    label_matcher(classes, scored, predict, known_labels=known_labels, label_map=label_map)


def _setup(
    x: Any,
    name: str,
    labels: Any,
    predict: Any,
    predict_name: str,
    n_sampled: Any,
    pairs: Any,
    exact: Any,
    batch_size: Any,
    seed: Any,
    min_class_size: Any,
    attention_mask: Any,
    lengths: Any,
    device: Any,
    known_labels: Any,
    label_map: Any,
) -> tuple[list[Hashable], PairPlan, np.ndarray | None, int, int, int | None, list[Hashable] | None]:
    """Validate the settings shared by both entry points (``predict`` called with
    ``(layer, batch[, mask])`` when ``predict_name`` is predict_from_layer) and
    draw the pairs. ``known_labels`` comes back as a list (a generator would be
    used up by the first layer). The labels are matched to ``predict``'s classes
    here, so a mismatch is an error before any forward pass."""
    encode_item_labels(labels, int(x.shape[0]))  # label errors before settings errors, as always
    check_settings(n_sampled, pairs, exact, batch_size)
    check_seed(seed)
    mask = check_frame_mask(x, attention_mask, lengths, name=name)
    if not callable(predict):
        raise TypeError(f"{predict_name} must be callable, got {type(predict).__name__}")
    _takes_mask(predict, name=predict_name, layer=predict_name == "predict_from_layer", mask=mask is not None)
    check_device_here(device)
    check_known_labels(known_labels)
    classes, plan, n_sampled, batch_size, seed = plan_euclidean(
        labels,
        int(x.shape[0]),
        n_sampled=n_sampled,
        pairs=pairs,
        exact=exact,
        batch_size=batch_size,
        seed=seed,
        min_class_size=min_class_size,
    )
    known_labels = None if known_labels is None else list(known_labels)
    label_matcher(classes, plan.scored, predict, known_labels=known_labels, label_map=label_map)
    return classes, plan, mask, n_sampled, batch_size, seed, known_labels


def euclidean_convexity(
    x: Any,
    labels: Any,
    predict: Callable[..., Any],
    *,
    n_sampled: int = 10,
    pairs: int | None = DEFAULT_PAIRS,
    exact: bool = False,
    seed: int | None = 0,
    min_class_size: int = 2,
    batch_size: int = 1024,
    device: Any = None,
    attention_mask: Any = None,
    lengths: Any = None,
    known_labels: Iterable[Hashable] | None = None,
    progress: bool | None = None,
    label_map: Mapping[Hashable, int] | None = None,
) -> Convexity:
    """Euclidean convexity of one representation (docs/score.md).

    For each unordered same-class pair {a, b}, ``n_sampled`` points
    ``lam * x[a] + (1 - lam) * x[b]`` (``lam = i / (n_sampled + 1)``,
    i = 1..n_sampled, endpoints excluded) go through ``predict``; the pair
    scores the fraction predicted as its class.

    Parameters
    ----------
    x : (N, D) or (N, T, D) array or tensor
        Vectors, or one sequence of T frames per item (what the rest of a
        transformer needs).
    labels : (N,) labels, any hashable values (ints, strings, arrays, tensors).
    predict : callable
        ``predict(batch)`` -> B labels comparable with ``labels`` (array,
        tensor or list), for a batch (B, D) or (B, T, D): a numpy array, or a
        torch tensor when ``x`` is a tensor or a device is in play. With
        ``attention_mask``/``lengths``, ``predict(batch, mask)`` with ``mask``
        (B, T) bool marking each sampled sequence's real frames. Optional
        attributes: ``predict.device`` (build batches there, e.g. the GPU of the
        model) and ``predict.labels`` (every label it can return, class
        index k's at position k: the data's labels are checked against them
        before any forward pass).
    n_sampled : int
        Points per segment (default 10, the authors').
    pairs : int
        Per class, every pair when there are at most ``pairs`` (default 5000),
        else this many distinct pairs drawn uniformly from ``seed``.
    exact : bool
        Score every pair.
    seed : int
        Seed of the host-side pair sampling.
    min_class_size : int
        Classes with fewer members are skipped (reported with 0 pairs).
    batch_size : int
        Sampled points per ``predict`` call (points of many pairs together).
    device : None, "cpu", "cuda", torch.device
        Build the sampled points as torch tensors on this device (default:
        ``predict.device`` if it has one, else where ``x`` lives).
    attention_mask, lengths : (N, T) 0/1 or (N,) frames
        Real frames of (N, T, D) items of different lengths. A sampled
        sequence is ``lam * x_a + (1 - lam) * x_b`` with each item's padding
        frames taken as zeros, and its mask is the union of the two masks:
        every real frame of either item is kept, and frames only one item has
        fade linearly to zero along the segment, as on the straight segment
        between the two zero-padded sequences.
    known_labels : iterable, optional
        Labels ``predict`` may return that are no class of ``labels`` (they
        count as wrong); default ``predict.labels``. Any other label raises.
    progress : bool or None
        A progress bar on stderr (None: when stderr is a terminal).
    label_map : mapping, optional
        ``{data label: class index}`` when the data's labels are not what
        ``predict`` returns (e.g. a classifier's ``id2label`` names other than
        the data's): class index k stands for the output ``predict.labels[k]``
        when ``predict`` declares its labels, else for the output k itself.
        Without it the labels are matched by value. Either way, every scored
        class of ``labels`` must map onto a class of the predictor where its
        classes are known (``predict.labels``, or ``label_map``): otherwise a
        ValueError lists both, before any forward pass (such a class could
        never score).

    Returns
    -------
    Convexity
        ``measure="euclidean"``; ``n_pairs`` counts unordered pairs;
        ``stderr`` with finite-population correction (0 when every pair is scored).
    """
    x = check_items(x)
    classes, plan, mask, n_sampled, batch_size, seed, known_labels = _setup(
        x,
        "x",
        labels,
        predict,
        "predict",
        n_sampled,
        pairs,
        exact,
        batch_size,
        seed,
        min_class_size,
        attention_mask,
        lengths,
        device,
        known_labels,
        label_map,
    )
    return euclidean_from_plan(
        x,
        mask,
        plan,
        classes,
        predict,
        n_sampled=n_sampled,
        batch_size=batch_size,
        device=device,
        known_labels=known_labels,
        seed=seed,
        progress=show_progress(progress),
        label_map=label_map,
    )


class _AtLayer:
    """``predict_from_layer`` bound to one layer, keeping its ``device``/``labels``."""

    def __init__(self, predict_from_layer: Callable[..., Any], layer: int) -> None:
        self.fn, self.layer = predict_from_layer, layer
        self.device = getattr(predict_from_layer, "device", None)
        self.labels = getattr(predict_from_layer, "labels", None)

    def __call__(self, batch: Any, *mask: Any) -> Any:
        return self.fn(self.layer, batch, *mask)


def layer_euclidean_scores(
    hidden_states: Any,
    labels: Any,
    predict_from_layer: Callable[..., Any],
    *,
    n_sampled: int = 10,
    pairs: int | None = DEFAULT_PAIRS,
    exact: bool = False,
    seed: int | None = 0,
    min_class_size: int = 2,
    batch_size: int = 1024,
    device: Any = None,
    attention_mask: Any = None,
    lengths: Any = None,
    known_labels: Iterable[Hashable] | None = None,
    progress: bool | None = None,
    label_map: Mapping[Hashable, int] | None = None,
) -> LayerScores:
    """Euclidean convexity of every layer, all scored on the same pairs.

    Parameters
    ----------
    hidden_states : sequence of L arrays/tensors, or one array/tensor
        Per layer (N, D) vectors or (N, T, D) sequences (every layer the same N
        and T), or one (L, N, D) / (L, N, T, D) array (layers first). The
        tuple a Hugging Face model returns with ``output_hidden_states=True``
        is the first form (index 0: the transformer's input).
    labels : (N,) labels.
    predict_from_layer : callable
        ``predict_from_layer(layer, batch)`` (with a mask:
        ``predict_from_layer(layer, batch, mask)``) -> B labels, where
        ``layer`` is the index into ``hidden_states``: sends the batch through
        the rest of the network after that layer.
        :func:`fastconvex.hf.predict_from_layer` builds one for a Hugging Face
        audio classifier.
    n_sampled, pairs, exact, seed, min_class_size, batch_size, device,
    attention_mask, lengths, known_labels, progress, label_map
        As in :func:`euclidean_convexity` (``predict_from_layer.labels`` are
        the predictor's classes); the pairs are drawn once and reused
        for every layer (``progress`` counts layers).

    Returns
    -------
    LayerScores
        ``.scores`` (L,), ``.stderr`` (L,), ``.per_class`` (L, C),
        ``.best_layer``, ``.layers`` (each ``measure="euclidean"``).
    """
    layers = _split_layers(hidden_states)
    if not layers:
        raise ValueError("hidden_states is empty: no layer to score")
    layers = [check_items(h, name=f"hidden_states[{i}]") for i, h in enumerate(layers)]
    lead = tuple(int(s) for s in layers[0].shape[:-1])
    for i, h in enumerate(layers):
        if tuple(int(s) for s in h.shape[:-1]) != lead:
            raise ValueError(
                f"hidden_states[{i}] has shape {tuple(h.shape)}, but hidden_states[0] has "
                f"{tuple(layers[0].shape)}: every layer must hold the same items (and frames)"
            )
    classes, plan, mask, n_sampled, batch_size, seed, known_labels = _setup(
        layers[0],
        "hidden_states[0]",
        labels,
        predict_from_layer,
        "predict_from_layer",
        n_sampled,
        pairs,
        exact,
        batch_size,
        seed,
        min_class_size,
        attention_mask,
        lengths,
        device,
        known_labels,
        label_map,
    )
    results: list[Convexity] = []
    with Progress(len(layers), "layers", enabled=show_progress(progress)) as bar:
        for i, h in enumerate(layers):
            results.append(
                euclidean_layer(
                    h,
                    mask,
                    plan,
                    classes,
                    _AtLayer(predict_from_layer, i),
                    n_sampled=n_sampled,
                    batch_size=batch_size,
                    seed=seed,
                    device=device,
                    known_labels=known_labels,
                    label_map=label_map,
                )
            )
            bar.update()
    return stack_layers(results, classes)


def euclidean_layer(
    h: Any,
    mask: np.ndarray | None,
    plan: PairPlan,
    classes: list[Hashable],
    predict: Callable[..., Any],
    *,
    n_sampled: int,
    batch_size: int,
    seed: int | None,
    device: Any = None,
    known_labels: Iterable[Hashable] | None = None,
    label_map: Mapping[Hashable, int] | None = None,
) -> Convexity:
    """One layer of ``layer_euclidean_scores`` (and one Euclidean sweep task):
    ``h`` checked items, the plan drawn by :func:`plan_euclidean`."""
    return euclidean_from_plan(
        h,
        mask,
        plan,
        classes,
        predict,
        n_sampled=n_sampled,
        batch_size=batch_size,
        device=device,
        known_labels=known_labels,
        seed=seed,
        progress=False,
        label_map=label_map,
    )
