"""Euclidean convexity's machinery: which segments, the points sampled on
them, and how ``predict`` output is matched to the classes (the public entry
points are in ``fastconvex.euclidean.api``).

The definition (docs/score.md, "Euclidean convexity"):

- pairs: *unordered* same-class pairs {a, b}, a < b (a segment is the same both
  ways); per class all of them when there are at most ``pairs``, else ``pairs``
  distinct ones drawn uniformly from ``seed`` on the host; ``exact=True``: all;
- sampled points: ``lam_i * x_a + (1 - lam_i) * x_b`` with
  ``lam_i = i * (1 / (n_sampled + 1))``, i = 1..n_sampled (endpoints excluded;
  the authors' ``nnconvexity`` formula, to the bit);
- pair score: the fraction of its sampled points that ``predict`` labels with
  the pair's class; pooled, macro and standard errors as for graph
  convexity's ``pairs`` estimator (``fastconvex.core.pairs.aggregate``).

Points of many pairs go through ``predict`` together, ``batch_size`` at a
time; with a torch device (``device=``, or ``predict.device``) the endpoints
are gathered and interpolated there, so only pair indices cross the bus.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from fastconvex.core.inputs import (
    check_int,
    encode_labels,
    is_torch_tensor,
    labels_to_array,
    to_numpy,
    warn_float64_losses,
)
from fastconvex.core.pairs import (
    PairPlan,
    aggregate,
    resolve_estimator,
    scored_classes,
    sizes_text,
    stats_from_pair_scores,
)
from fastconvex.core.progress import Progress
from fastconvex.core.results import Convexity

__all__ = ["LabelMatcher", "SegmentScorer", "euclidean_from_plan", "label_matcher", "plan_segments", "score_plan"]


def plan_segments(
    codes: np.ndarray,
    n_classes: int,
    *,
    exact: bool,
    budget: int,
    seed: int | None,
    min_class_size: int,
) -> PairPlan:
    """Draw the unordered same-class pairs {a, b}, a < b, to score.

    Per class (in the order of the class codes) with n_c members and
    M_c = n_c (n_c - 1) / 2 pairs: all of them when ``exact`` or M_c <= ``budget``,
    else ``budget`` distinct pairs drawn uniformly without replacement by
    ``numpy.random.default_rng(seed)``. Returned as a :class:`PairPlan` with
    explicit targets, grouped by the smaller index ``a`` (``population`` holds
    M_c, so :func:`fastconvex.core.pairs.aggregate` applies the finite-population
    correction of unordered pairs).
    """
    rng = np.random.default_rng(seed)
    class_sizes = np.bincount(codes, minlength=n_classes).astype(np.int64)
    population = class_sizes * (class_sizes - 1) // 2
    scored = scored_classes(class_sizes, min_class_size)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(class_sizes)])
    src_parts: list[np.ndarray] = []
    cnt_parts: list[np.ndarray] = []
    tgt_parts: list[np.ndarray] = []
    for c in range(n_classes):
        if not scored[c]:
            continue
        members = order[starts[c] : starts[c + 1]]  # ascending vertex indices
        n_c, m = int(members.shape[0]), int(population[c])
        if exact or m <= budget:
            flat = np.arange(m, dtype=np.int64)
        else:
            flat = np.sort(rng.choice(m, size=budget, replace=False).astype(np.int64))
        # row a of the pair triangle starts at a (2 n_c - a - 1) / 2
        row_start = np.arange(n_c, dtype=np.int64) * (2 * n_c - np.arange(n_c, dtype=np.int64) - 1) // 2
        a = np.searchsorted(row_start, flat, side="right") - 1
        b = a + 1 + (flat - row_start[a])
        src_local, counts = np.unique(a, return_counts=True)
        src_parts.append(members[src_local])
        cnt_parts.append(counts)
        tgt_parts.append(members[b])
    if not src_parts:
        raise ValueError(
            f"no class has at least min_class_size={max(min_class_size, 2)} members: "
            f"nothing to score ({sizes_text(class_sizes)})"
        )
    sources = np.concatenate(src_parts).astype(np.int64)
    target_ptr = np.zeros(sources.shape[0] + 1, np.int64)
    np.cumsum(np.concatenate(cnt_parts), out=target_ptr[1:])
    return PairPlan(
        "exact" if exact else "pairs",
        False,
        sources,
        codes[sources],
        target_ptr,
        np.concatenate(tgt_parts).astype(np.int64),
        class_sizes,
        scored,
        population,
    )


def _torch():
    import torch

    return torch


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def check_items(x: Any, *, name: str = "x") -> Any:
    """Validate representations (N, D) or (N, T, D): real, non-empty, finite."""
    if is_torch_tensor(x):
        if x.ndim not in (2, 3):
            raise ValueError(f"{name} must be (N, D) vectors or (N, T, D) sequences, got shape {_shape(x)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        if 0 in _shape(x):
            raise ValueError(f"{name} is empty (shape {_shape(x)})")
        finite = _torch().isfinite(x).reshape(x.shape[0], -1).all(dim=1).cpu().numpy()
    else:
        if not isinstance(x, np.ndarray):
            if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
                raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
            x = np.asarray(x)
        if x.ndim not in (2, 3):
            raise ValueError(f"{name} must be (N, D) vectors or (N, T, D) sequences, got shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be real numbers, got dtype {x.dtype}")
        if 0 in _shape(x):
            raise ValueError(f"{name} is empty (shape {_shape(x)})")
        if x.dtype.kind != "f":
            warn_float64_losses(x.reshape(x.shape[0], -1), name)  # integers beyond 2**53 round
            x = x.astype(np.float64)
        finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} has a non-finite value (NaN or inf) in item {int(np.flatnonzero(~finite)[0])}")
    return x


def check_frame_mask(x: Any, attention_mask: Any, lengths: Any, *, name: str = "x") -> np.ndarray | None:
    """(N, T) bool mask of real frames of (N, T, D) items, or None (all frames)."""
    if attention_mask is None and lengths is None:
        return None
    if x.ndim != 3:
        raise ValueError(f"attention_mask/lengths apply to (N, T, D) sequences only; {name} has shape {_shape(x)}")
    from fastconvex.core.layers import _valid_frames

    mask = _valid_frames(int(x.shape[0]), int(x.shape[1]), attention_mask, lengths)
    empty = ~mask.any(axis=1)
    if empty.any():
        raise ValueError(f"item {int(np.flatnonzero(empty)[0])} of {name} has no valid frames")
    return mask


def _takes_mask(predict: Callable[..., Any], *, name: str = "predict", layer: bool = False, mask: bool = True) -> None:
    """Fail early when ``predict`` cannot take its arguments: ``(batch)``, with
    ``mask`` ``(batch, mask)``, with ``layer`` ``(layer, batch[, mask])``."""
    try:
        params = inspect.signature(predict).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    wanted = ["layer"] * layer + ["batch"] + ["mask"] * mask
    if len(positional) < len(wanted) or len(required) > len(wanted):
        when = " when attention_mask or lengths is given" if mask else ""
        raise TypeError(
            f"{name} must take ({', '.join(wanted)}){when}, but its signature is {inspect.signature(predict)}"
            + (": the mask (B, T) marks the real frames of each sampled sequence" if mask else "")
        )


def check_known_labels(known_labels: Any) -> None:
    """``known_labels``: None or an iterable of hashable labels (a string is one label, not many)."""
    if known_labels is None:
        return
    if isinstance(known_labels, (str, bytes)) or not isinstance(known_labels, Iterable):
        raise TypeError(
            f"known_labels must be an iterable of labels (a list, array, set), got {type(known_labels).__name__} "
            f"{known_labels!r}"
            + (f"; for one label pass [{known_labels!r}]" if isinstance(known_labels, (str, int)) else "")
        )


class SegmentScorer:
    """Per-pair scores of one plan on one representation; see the module docstring.

    Parameters
    ----------
    x : (N, D) or (N, T, D) array or tensor (validated)
    mask : (N, T) bool or None
    device : torch device to interpolate on, or None (numpy batches; torch
        batches on ``x.device`` for tensor input)
    """

    def __init__(self, x: Any, mask: np.ndarray | None, n_sampled: int, device: Any) -> None:
        lam = np.arange(1, n_sampled + 1, dtype=np.float64) * (1.0 / (n_sampled + 1))
        self.n_sampled = n_sampled
        self.has_mask = mask is not None
        if device is not None or is_torch_tensor(x):
            torch = _torch()
            if is_torch_tensor(x):
                x = x.detach() if device is None else x.detach().to(device)
            else:
                host = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)  # read-only memmaps
                x = torch.as_tensor(host, device=device)
            self.backend = f"torch:{x.device}"
            self.mask = None if mask is None else torch.as_tensor(mask, device=x.device)
            if self.mask is not None:  # padding frames count as zeros of their item
                x = torch.where(self.mask[:, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            self.w1 = torch.as_tensor(lam, device=x.device).to(x.dtype)
            self.w0 = torch.as_tensor(1.0 - lam, device=x.device).to(x.dtype)
            self.as_index = lambda idx: torch.as_tensor(idx, device=x.device)
        else:
            self.backend = "numpy"
            self.mask = mask
            if mask is not None:
                x = np.where(mask[:, :, None], x, np.zeros((), x.dtype))
            self.w1, self.w0 = lam.astype(x.dtype), (1.0 - lam).astype(x.dtype)
            self.as_index = lambda idx: idx
        self.x = x

    def batch(self, a: np.ndarray, b: np.ndarray, step: np.ndarray) -> tuple[Any, Any]:
        """Sampled points ``w1[step] * x[a] + w0[step] * x[b]`` (B, ...) and their
        union mask (B, T) (None without a mask)."""
        ia, ib, st = self.as_index(a), self.as_index(b), self.as_index(step)
        shape = (-1,) + (1,) * (self.x.ndim - 1)
        points = self.w1[st].reshape(shape) * self.x[ia] + self.w0[st].reshape(shape) * self.x[ib]
        mask = None if self.mask is None else self.mask[ia] | self.mask[ib]
        return points, mask


class LabelMatcher:
    """Turn ``predict`` output into class codes (-1: a known label that is no
    class of the data), with clear errors for anything else.

    ``lookup`` maps each ``predict`` output to the class code it stands for
    (default: every class by its own value, the labels matched by name).
    """

    def __init__(
        self,
        classes: list[Hashable],
        known_labels: Iterable[Hashable] | None,
        lookup: dict[Hashable, int] | None = None,
        *,
        mapped: bool = False,
    ) -> None:
        self.classes = classes
        self.lookup = {c: i for i, c in enumerate(classes)} if lookup is None else lookup
        self.mapped = mapped
        self.known = None if known_labels is None else {_plain(v) for v in known_labels}

    def codes(self, out: Any, n: int) -> np.ndarray:
        if is_torch_tensor(out) or isinstance(out, np.ndarray):
            arr = to_numpy(out)
        else:
            if out is None or isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
                raise TypeError(
                    f"predict must return a sequence of {n} labels (array, tensor or list), got {type(out).__name__}"
                )
            arr = labels_to_array(list(out), name="predict output")
        if arr.ndim != 1 or arr.shape[0] != n:
            hint = (
                " (scores per class? return the predicted labels, e.g. argmax)"
                if arr.ndim == 2 and arr.shape[0] == n
                else ""
            )
            raise ValueError(
                f"predict returned shape {arr.shape} for a batch of {n} points: it must return "
                f"{n} labels, one per point{hint}"
            )
        try:
            uniq, inverse = np.unique(arr, return_inverse=True)
        except TypeError:  # unorderable mixed labels
            uniq = np.empty(0, dtype=object)
            inverse = None
        values = list(uniq) if inverse is not None else list(arr)
        mapped = np.empty(len(values), np.int64)
        for i, v in enumerate(values):
            v = _plain(v)
            try:
                code = self.lookup.get(v)
            except TypeError:
                raise TypeError(f"predict returned an unhashable label {v!r}") from None
            if code is None:
                if self.known is None or v not in self.known:
                    what = (
                        "which label_map does not map to a class of labels"
                        if self.mapped
                        else f"which is no class of labels (classes: {_preview(self.classes)})"
                    )
                    raise ValueError(
                        f"predict returned label {v!r}, {what}; predictions must be comparable with labels "
                        "(the same kind: ids or names). If the model can predict classes absent from the data, "
                        "pass known_labels="
                    )
                code = -1
            mapped[i] = code
        return mapped if inverse is None else mapped[inverse.reshape(-1)]


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value it holds (hashes and compares the same)."""
    return v.item() if isinstance(v, np.generic) else v


def _preview(values: list[Any], limit: int = 10) -> str:
    """``values`` as a list for a message: the first ``limit`` and how many in all."""
    values = list(values)
    if len(values) <= limit:
        return repr(values)
    return repr(values[:limit])[:-1] + f", ... ({len(values)} in all)]"


def predictor_classes(predict: Any) -> list[Hashable] | None:
    """Every label ``predict`` can return, in class-index order (its
    ``labels`` attribute: a :class:`fastconvex.hf.LayerPredictor` has its
    model's ``id2label`` names, or the ids), or None when it declares none."""
    labels = getattr(predict, "labels", None)
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
        raise TypeError(
            f"predict.labels must be a sequence of the labels predict can return, got "
            f"{type(labels).__name__} {labels!r}"
        )
    return [_plain(v) for v in labels]


def check_label_map(
    label_map: Any, n_classes: int | None, used: Iterable[Hashable] | None = None
) -> dict[Hashable, int]:
    """``label_map`` {data label: class index} as a dict of plain values;
    TypeError/ValueError naming the entry that is not one. Every entry must
    be an integer >= 0; only the keys in ``used`` (the data's labels: the
    others are never looked up) must also be below ``n_classes``."""
    if not isinstance(label_map, Mapping):
        raise TypeError(f"label_map must be a mapping {{data label: class index}}, got {type(label_map).__name__}")
    used = None if used is None else set(used)
    out: dict[Hashable, int] = {}
    for key, index in label_map.items():
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"label_map[{key!r}] must be a class index (an int), got {type(index).__name__} {index!r}")
        index = int(index)
        key = _plain(key)
        beyond = n_classes is not None and index >= n_classes and (used is None or key in used)
        if index < 0 or beyond:
            bound = "" if n_classes is None else f" < {n_classes}, the predictor's number of classes"
            raise ValueError(f"label_map[{key!r}] = {index} is no class index (0 <= index{bound})")
        out[key] = index
    return out


def label_matcher(
    classes: list[Hashable],
    scored: np.ndarray,
    predict: Any,
    *,
    known_labels: Iterable[Hashable] | None,
    label_map: Any,
) -> LabelMatcher:
    """How ``predict``'s output is matched to the data's classes, checked
    before any forward pass.

    Without ``label_map`` the labels are matched by value (a classifier's
    ``id2label`` names, or its ids); with it, data label ``d`` is class index
    ``label_map[d]``, whose output is ``predict.labels[index]`` when
    ``predict`` declares its labels, else the index itself. Every scored class
    (``scored``) must map onto a class the predictor can return when that is
    known (``predict.labels``; with ``label_map`` always): otherwise its
    segments could never score and every score would be silently 0, so a
    ValueError lists the data's classes and the predictor's.
    """
    declared = predictor_classes(predict)
    known = known_labels if known_labels is not None else declared
    wanted = [c for c, s in zip(classes, scored) if s]
    if label_map is None:
        if declared is not None:
            have = set(declared)
            missing = [c for c in wanted if c not in have]
            if missing:
                ints = all(isinstance(c, int) for c in wanted) and not all(isinstance(c, int) for c in declared)
                raise ValueError(
                    f"labels: the data's classes {_preview(wanted)} do not match the predictor's classes "
                    f"{_preview(declared)} (no class for {_preview(missing)}), so those segments could never score; "
                    "name the data's labels as the predictor does, or pass label_map={data label: class index}"
                    + (" (or predict_from_layer(model, id2label=False) when the labels are class ids)" if ints else "")
                )
        return LabelMatcher(classes, known)
    mapping = check_label_map(label_map, None if declared is None else len(declared), used=classes)
    missing = [c for c in wanted if c not in mapping]
    if missing:
        raise ValueError(
            f"label_map has no class index for the data's labels {_preview(missing)} (the data's classes: "
            f"{_preview(wanted)}; label_map maps {_preview(list(mapping))}"
            + ("" if declared is None else f"; the predictor's classes: {_preview(declared)}")
            + ")"
        )
    lookup: dict[Hashable, int] = {}
    owner: dict[Hashable, Hashable] = {}
    for code, c in enumerate(classes):
        if c not in mapping:
            continue
        index = mapping[c]
        value = index if declared is None else declared[index]
        if value in lookup and lookup[value] != code:
            raise ValueError(
                f"label_map maps the data's labels {owner[value]!r} and {c!r} onto the same predictor output "
                f"{value!r} (class index {index}): a prediction could not tell them apart"
            )
        lookup[value], owner[value] = code, c
    return LabelMatcher(classes, known, lookup, mapped=True)


def score_plan(
    scorer: SegmentScorer,
    plan: PairPlan,
    predict: Callable[..., Any],
    matcher: LabelMatcher,
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """(P,) fraction of each planned pair's sampled points predicted as its class."""
    a = np.repeat(plan.sources, np.diff(plan.target_ptr))
    b = plan.targets
    pair_class = np.repeat(plan.source_class, np.diff(plan.target_ptr))
    n_pairs, ns = int(a.shape[0]), scorer.n_sampled
    hits = np.zeros(n_pairs, np.int64)
    total = n_pairs * ns
    for start in range(0, total, batch_size):
        flat = np.arange(start, min(start + batch_size, total), dtype=np.int64)
        pair, step = flat // ns, flat % ns
        points, mask = scorer.batch(a[pair], b[pair], step)
        out = predict(points) if mask is None else predict(points, mask)
        codes = matcher.codes(out, int(flat.shape[0]))
        np.add.at(hits, pair, codes == pair_class[pair])
        if progress is not None:
            progress.update(int(flat.shape[0]))
    return hits / ns


def target_device(x: Any, predict: Any, device: Any) -> Any:
    """Where the sampled points are built: ``device``, else ``predict.device``,
    else None (numpy input: numpy batches; tensor input: its own device)."""
    if device is None:
        device = getattr(predict, "device", None)
    if device is None:
        return None
    return _torch().device(device)


def euclidean_from_plan(
    x: Any,
    mask: np.ndarray | None,
    plan: PairPlan,
    classes: list[Hashable],
    predict: Callable[..., Any],
    *,
    n_sampled: int,
    batch_size: int,
    device: Any,
    known_labels: Iterable[Hashable] | None,
    seed: int | None,
    progress: bool,
    label_map: Any = None,
) -> Convexity:
    """Score one representation on a drawn plan (shared by the single-layer and
    per-layer entry points)."""
    matcher = label_matcher(classes, plan.scored, predict, known_labels=known_labels, label_map=label_map)
    scorer = SegmentScorer(x, mask, n_sampled, target_device(x, predict, device))
    total = int(plan.targets.shape[0]) * n_sampled
    with Progress(total, "points", enabled=progress) as bar:
        scores = score_plan(scorer, plan, predict, matcher, batch_size=batch_size, progress=bar)
    stats = stats_from_pair_scores(plan, scores, np.ones(scores.shape[0], bool))
    result = aggregate(plan, stats, classes, k=0, n_points=int(x.shape[0]), backend=scorer.backend, seed=seed)
    return dataclasses.replace(result, k=None, measure="euclidean", n_sampled=n_sampled)


def check_settings(n_sampled: Any, pairs: Any, exact: Any, batch_size: Any) -> tuple[int, int, bool, int]:
    n_sampled = check_int("n_sampled", n_sampled, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if pairs is None and exact is False:
        raise ValueError("pairs=None needs exact=True")  # (no sources= estimator here)
    # one estimator, as for graph convexity: pairs= and exact=True together is an error
    estimator, budget = resolve_estimator(pairs, None, exact)
    return n_sampled, budget, estimator == "exact", batch_size


def encode_item_labels(labels: Any, n: int) -> tuple[np.ndarray, list[Hashable]]:
    label_array = labels_to_array(labels)
    if label_array.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), one per item, got shape {label_array.shape}")
    if label_array.shape[0] != n:
        raise ValueError(f"labels has {label_array.shape[0]} entries but there are N={n} items")
    return encode_labels(label_array)
