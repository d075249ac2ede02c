"""Labels as class ids, and the train / held-out split for fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["encode_labels", "per_class_subset", "probe_of", "split_indices"]


def _plain(value: Any, i: int, name: str) -> Any:
    """A label as a Python ``str`` or ``int`` (what ``config.id2label`` keeps through JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(
            f"{name}[{i}] is {type(value).__name__} {value!r}: fine-tuning keeps the classes in "
            "config.id2label (saved as JSON), so labels must be strings or integers"
        )
    return value


def encode_labels(labels: Any, n: int, name: str = "labels") -> tuple[np.ndarray, list[Any]]:
    """Class ids (N,) and the classes (sorted) of ``labels``: strings or integers, not mixed.

    Raises
    ------
    ValueError
        A length other than ``n``, fewer than two classes, labels of mixed types.
    TypeError
        A label that is neither a string nor an integer.
    """
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().to("cpu").numpy()
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise TypeError(f"{name} must be a sequence with one label per clip, got {type(labels).__name__}")
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per clip), got shape {labels.shape}")
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} entries but audio has {n} clips")
    values = [_plain(v, i, name) for i, v in enumerate(labels)]
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise ValueError(f"{name} mix strings and integers; use one type (they would collide in config.label2id)")
    classes = sorted(set(values))
    if len(classes) < 2:
        raise ValueError(f"{name} has {len(classes)} class(es); classification needs at least 2")
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def _check_index(idx: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"eval_split: the {what} indices must be a 1-D array of integers, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size == 0:
        raise ValueError(f"eval_split: the {what} indices are empty")
    if arr.min() < 0 or arr.max() >= n:
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise ValueError(f"eval_split: {what} index {bad} is out of range for {n} clips")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"eval_split: the {what} indices have duplicates")
    return arr


def _stratified(ids: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Held-out rows: ``round(fraction * n_c)`` per class by largest remainder, at least one
    training row per class."""
    n = ids.shape[0]
    classes, counts = np.unique(ids, return_counts=True)
    target = min(max(int(round(fraction * n)), 1), n - classes.size)
    quota = fraction * counts
    take = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    for k in order:
        if take.sum() >= target:
            break
        if take[k] < counts[k] - 1:
            take[k] += 1
    held = [rng.permutation(np.flatnonzero(ids == c))[: take[j]] for j, c in enumerate(classes)]
    return np.sort(np.concatenate(held))


def _by_group(ids: np.ndarray, groups: Sequence[Any], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Held-out rows: whole groups, in a seeded random order, until about ``fraction`` of the
    rows; a group whose removal would leave a class without training rows is skipped."""
    n = ids.shape[0]
    keys = [g.item() if isinstance(g, np.generic) else g for g in groups]
    try:
        names = list(dict.fromkeys(keys))
    except TypeError as exc:
        raise TypeError(f"groups must be hashable values (speaker ids, file stems ...): {exc}") from None
    if len(names) < 2:
        raise ValueError(f"groups has {len(names)} group(s); holding out whole groups needs at least 2")
    code = {g: k for k, g in enumerate(names)}
    gid = np.array([code[g] for g in keys], dtype=np.int64)
    train_count = np.bincount(ids, minlength=int(ids.max()) + 1)
    target = fraction * n
    held: list[np.ndarray] = []
    n_held = 0
    for g in rng.permutation(len(names)):
        if n_held >= target:
            break
        rows = np.flatnonzero(gid == g)
        if n_held + rows.size / 2 > target and n_held > 0:
            continue  # too big for what is left of the quota
        lost = np.bincount(ids[rows], minlength=train_count.size)
        if np.any((train_count - lost <= 0) & (train_count > 0)):
            continue  # it holds the last training clips of a class
        train_count -= lost
        held.append(rows)
        n_held += rows.size
    if not held:
        raise ValueError(
            f"eval_split={fraction} with groups: no group can be held out without leaving a class "
            "with no training clip; give more groups per class or explicit (train_idx, eval_idx)"
        )
    return np.sort(np.concatenate(held))


def split_indices(
    ids: np.ndarray,
    eval_split: Any,
    *,
    groups: Sequence[Any] | None = None,
    seed: int = 0,
    classes: Sequence[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, eval_idx)``, sorted, from a fraction (stratified by class, or by whole
    ``groups``) or from explicit indices; every class keeps a training clip.

    Raises
    ------
    ValueError
        A fraction outside (0, 1), overlapping or bad explicit indices, a class with no
        training clip, groups of the wrong length, an empty side.  ``classes`` (id -> label)
        names the class in the message.
    """
    n = ids.shape[0]
    if groups is not None:
        if isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__"):
            raise TypeError(f"groups must be a sequence with one group per clip, got {type(groups).__name__}")
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries but audio has {n} clips")
    if isinstance(eval_split, (tuple, list)) and len(eval_split) == 2 and not np.isscalar(eval_split[0]):
        train = _check_index(eval_split[0], n, "train")
        held = _check_index(eval_split[1], n, "eval")
        both = np.intersect1d(train, held)
        if both.size:
            raise ValueError(f"eval_split: clip {int(both[0])} is in both the train and the eval indices")
        if groups is not None:
            g = np.asarray([str(x) for x in groups], dtype=object)
            shared = set(g[train]) & set(g[held])
            if shared:
                raise ValueError(f"eval_split: group {sorted(shared)[0]!r} has clips on both sides")
    else:
        if isinstance(eval_split, bool) or not isinstance(eval_split, (float, int, np.floating, np.integer)):
            raise TypeError(
                f"eval_split must be a fraction in (0, 1) or (train_idx, eval_idx), got {type(eval_split).__name__}"
            )
        fraction = float(eval_split)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"eval_split must be a fraction in (0, 1), got {eval_split!r}")
        rng = np.random.default_rng(seed)
        held = _stratified(ids, fraction, rng) if groups is None else _by_group(ids, groups, fraction, rng)
        train = np.setdiff1d(np.arange(n), held)
    missing = np.setdiff1d(np.unique(ids), np.unique(ids[train]))
    if missing.size:
        name = classes[int(missing[0])] if classes is not None else int(missing[0])
        raise ValueError(f"eval_split: class {name!r} has no training clip")
    if held.size == 0:
        raise ValueError("eval_split leaves no clip to evaluate on")
    return np.sort(train), np.sort(held)


def per_class_subset(labels: Sequence[Any], per_class: int, seed: int) -> np.ndarray:
    """The sorted indices of at most ``per_class`` items of each label, drawn with
    ``seed`` (a label with fewer keeps them all)."""
    if per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels)
    keep = []
    for cls in dict.fromkeys(labels):
        idx = np.flatnonzero(lab == cls)
        if idx.shape[0] > per_class:
            idx = np.sort(rng.choice(idx, size=per_class, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def probe_of(labels: Sequence[Any], held_out: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A probe of about ``size`` of the ``held_out`` clips (indices into ``labels``):
    the same number of each class, ``size // classes`` and at least two (a class
    with fewer keeps all), drawn with ``seed``; sorted. The probe that
    ``fastconvex finetune --track-convexity`` and the demo follow through training."""
    held = [labels[i] for i in held_out]
    per_class = max(2, size // len(set(held)))
    return np.asarray(held_out)[per_class_subset(held, per_class, seed)]
