"""What every layer of one dataset is scored with: the class codes, the
pair plan drawn once from the labels and the seed, k -- made once and shared
by ``layer_scores``, ``graph_convexity`` and every task of a sweep, so that all
layers are scored on the same pairs -- and the check of the engine options."""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastconvex.core.inputs import (
    check_int,
    check_k,
    check_seed,
    encode_labels,
    labels_to_array,
)
from fastconvex.core.pairs import (
    DEFAULT_PAIRS,
    PairPlan,
    plan_pairs,
    resolve_estimator,
)

# exact=True at more single-source searches than this warns of its cost
EXACT_WARN_SEARCHES = 20_000


def _plan(
    codes: np.ndarray, n_classes: int, pairs, sources, exact, seed, min_class_size, n_layers: int = 1
) -> PairPlan:
    estimator, budget = resolve_estimator(pairs, sources, exact)
    min_class_size = check_int("min_class_size", min_class_size, minimum=1)
    plan = plan_pairs(
        codes,
        n_classes,
        estimator=estimator,
        budget=budget,
        seed=seed,
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


@dataclass(frozen=True)
class ScoringPlan:
    """What every layer of one dataset is scored with: the labels' class codes,
    the class list, the pair plan (drawn once from the labels and the seed), k
    and the seed. Made by :func:`plan_scoring`; used by :func:`score_layer`."""

    codes: np.ndarray
    classes: list[Hashable]
    pairs: PairPlan
    k: int
    seed: int | None

    @property
    def n_points(self) -> int:
        return int(self.codes.shape[0])


def plan_scoring(
    labels: Any,
    *,
    k: int = 10,
    pairs: int | None = DEFAULT_PAIRS,
    sources: int | None = None,
    exact: bool = False,
    seed: int | None = 0,
    min_class_size: int = 2,
    n_layers: int = 1,
) -> ScoringPlan:
    """Encode (N,) ``labels`` and draw the pairs, exactly as ``layer_scores`` does
    (``n_layers``: how many layers will be scored on them, for the cost warning)."""
    label_array = labels_to_array(labels)
    if label_array.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {label_array.shape}")
    k = check_k(k, int(label_array.shape[0]))
    codes, classes = encode_labels(label_array)
    seed = check_seed(seed)
    plan = _plan(codes, len(classes), pairs, sources, exact, seed, min_class_size, n_layers)
    return ScoringPlan(codes, classes, plan, k, seed)


ENGINES = ("local", "ray")


def check_engine(engine: Any, shards: Any) -> int | None:
    """Validate ``engine`` ("local" | "ray") and ``shards`` (Ray only)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if shards is None:
        return None
    if engine != "ray":
        raise ValueError("shards=S splits one layer over Ray workers: it needs engine='ray'")
    return check_int("shards", shards, minimum=1)
