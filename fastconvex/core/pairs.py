"""Which pairs are scored (host-side sampling shared by every backend) and how
their path scores become a score with a standard error.

Sampling draws from ``numpy.random.default_rng(seed)``, class by class in the
order of the sorted class list, so every backend and device scores the same
pairs, and :func:`fastconvex.layer_scores` reuses one plan for all layers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from fastconvex.core.inputs import check_bool, check_int
from fastconvex.core.results import Convexity


@dataclass(frozen=True)
class PairPlan:
    """The scored pairs, grouped by source.

    Attributes
    ----------
    estimator : "pairs" | "sources" | "exact"
    class_mode : bool
        True: every other member of a source's class is a target (``sources``,
        ``exact``, and ``pairs`` classes small enough to be scored whole);
        False: explicit targets in ``target_ptr`` / ``targets``.
    sources : (S,) int64 distinct source vertices, grouped by class
    source_class : (S,) int64 class code of each source
    target_ptr : (S + 1,) int64, explicit mode only (else None)
    targets : (T,) int64, explicit mode only (else None)
    class_sizes : (C,) int64 members per class code
    scored : (C,) bool, classes that meet ``min_class_size``
    population : (C,) int64 ordered same-class pairs per class (n_c (n_c - 1))
    """

    estimator: str
    class_mode: bool
    sources: np.ndarray
    source_class: np.ndarray
    target_ptr: np.ndarray | None
    targets: np.ndarray | None
    class_sizes: np.ndarray
    scored: np.ndarray
    population: np.ndarray

    @property
    def n_sources(self) -> int:
        return int(self.sources.shape[0])

    def pairs(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every scored (source, target) pair as two (P,) int64 arrays, grouped by
        source in the order of ``sources`` (``codes``: the (N,) class codes)."""
        if not self.class_mode:
            return np.repeat(self.sources, np.diff(self.target_ptr)), self.targets.copy()
        src_parts, tgt_parts = [], []
        for s, c in zip(self.sources, self.source_class):
            members = np.flatnonzero(codes == c)
            members = members[members != s]
            src_parts.append(np.full(members.shape[0], s, np.int64))
            tgt_parts.append(members.astype(np.int64))
        return np.concatenate(src_parts), np.concatenate(tgt_parts)


def scored_classes(class_sizes: np.ndarray, min_class_size: int) -> np.ndarray:
    """(C,) bool: the classes that are scored -- those with at least
    ``min_class_size`` members, and at least two (a pair needs two). The one
    rule of graph and Euclidean convexity, and of the label checks before them."""
    return np.asarray(class_sizes) >= max(int(min_class_size), 2)


def sizes_text(class_sizes: np.ndarray) -> str:
    """The class sizes for an error message: listed for up to 10 classes, else
    summarised (one label per row must not make a message of N numbers)."""
    sizes = [int(s) for s in class_sizes]
    if len(sizes) <= 10:
        return f"class sizes {sizes}"
    return f"{len(sizes)} classes, the largest with {max(sizes)} member(s)"


class _DefaultPairs(int):
    """The default ``pairs=5000``: an int that is told apart from a caller's
    explicit ``pairs=5000``, so that ``pairs`` given beside ``sources`` or
    ``exact`` is an error while the default quietly yields to them."""

    def __repr__(self) -> str:
        return int.__repr__(self)


DEFAULT_PAIRS = _DefaultPairs(5000)


def resolve_estimator(pairs: int | None, sources: int | None, exact: bool) -> tuple[str, int]:
    """Which estimator the keywords ask for, validated.

    Exactly one estimator: ``pairs`` (the default), ``sources=S`` or
    ``exact=True``. Two given explicitly (``pairs=100, sources=8``, or
    ``exact=True`` with ``pairs=`` or ``sources=``) is an error rather than a
    silent choice; the default ``pairs`` (:data:`DEFAULT_PAIRS`) or
    ``pairs=None`` yields to the other one.
    """
    check_bool("exact", exact)
    explicit_pairs = pairs is not None and pairs is not DEFAULT_PAIRS
    if pairs is not None:  # validated even where it is an error to combine
        pairs = check_int("pairs", pairs, minimum=1)
    if exact:
        if sources is not None:
            raise ValueError("give either exact=True or sources=S, not both")
        if explicit_pairs:
            raise ValueError(f"give either exact=True (every pair) or pairs={pairs} (sampled pairs), not both")
        return "exact", 0
    if sources is not None:
        if explicit_pairs:
            raise ValueError(
                f"give either pairs={pairs} or sources={sources!r}, not both: they are two estimators of the same score"
            )
        return "sources", check_int("sources", sources, minimum=1)
    if pairs is None:
        raise ValueError("pairs=None needs sources=S or exact=True")
    return "pairs", pairs


def orient_pairs(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Which end of each sampled pair to search from, so fewer searches serve
    all pairs.

    The path score is symmetric — the reverse of a shortest path from b to a is
    a shortest path from a to b, with the same interior vertices, and a and b
    share a label — so the ordered pair (a, b) may be scored by a search from b.
    Each pair is assigned to one endpoint by a greedy vertex cover of the pair
    graph (repeatedly take the vertex touching most unassigned pairs). Where
    both (a, b) and (b, a) were drawn, both may become the same oriented pair:
    it is then scored once and counted twice, as drawn. The drawn pairs, and so
    the estimator, are unchanged; only the searches that score them are:
    typically 10-35 % fewer searches.

    Parameters
    ----------
    a, b : (P,) int64 class-local endpoints of distinct ordered pairs, a != b
    n : class size (endpoints lie in [0, n))

    Returns
    -------
    source, target : (P,) int64 oriented pairs (in the order drawn)
    """
    from fastconvex.kernels.numba.cover import greedy_pair_cover

    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    source = greedy_pair_cover(a, b, n)
    target = a + b - source
    return source, target


def plan_pairs(
    codes: np.ndarray,
    n_classes: int,
    *,
    estimator: str,
    budget: int,
    seed: int,
    min_class_size: int,
) -> PairPlan:
    """Draw the pairs to score.

    Parameters
    ----------
    codes : (N,) int64 class codes in [0, n_classes)
    estimator : "pairs" (``budget`` = P), "sources" (``budget`` = S) or "exact"
    seed : seed of ``numpy.random.default_rng``
    min_class_size : classes with fewer members are skipped (0 pairs)
    """
    rng = np.random.default_rng(seed)
    class_sizes = np.bincount(codes, minlength=n_classes).astype(np.int64)
    population = class_sizes * (class_sizes - 1)
    scored = scored_classes(class_sizes, min_class_size)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(class_sizes)])

    whole = estimator == "exact" or (estimator == "pairs" and bool(np.all(population[scored] <= budget)))
    src_parts: list[np.ndarray] = []
    tgt_parts: list[np.ndarray] = []
    cnt_parts: list[np.ndarray] = []
    for c in range(n_classes):
        if not scored[c]:
            continue
        members = order[starts[c] : starts[c + 1]]  # ascending vertex indices
        n_c = members.shape[0]
        if whole or (estimator == "sources" and budget >= n_c):
            src_parts.append(members)
            continue
        if estimator == "sources":
            pick = np.sort(rng.choice(n_c, size=budget, replace=False))
            src_parts.append(members[pick])
            continue
        # estimator == "pairs", explicit targets
        m = int(population[c])
        if m <= budget:
            flat = np.arange(m, dtype=np.int64)
        else:
            flat = np.sort(rng.choice(m, size=budget, replace=False).astype(np.int64))
        a = flat // (n_c - 1)
        r = flat % (n_c - 1)
        b = r + (r >= a)
        if m > budget:
            a, b = orient_pairs(a, b, n_c)
        order_ab = np.lexsort((b, a))
        a, b = a[order_ab], b[order_ab]
        src_local, counts = np.unique(a, return_counts=True)
        src_parts.append(members[src_local])
        tgt_parts.append(members[b])
        cnt_parts.append(counts)

    if not src_parts:
        raise ValueError(
            f"no class has at least min_class_size={max(min_class_size, 2)} members: "
            f"nothing to score ({sizes_text(class_sizes)})"
        )
    sources = np.concatenate(src_parts).astype(np.int64)
    if whole or estimator == "sources":
        return PairPlan(estimator, True, sources, codes[sources], None, None, class_sizes, scored, population)
    target_ptr = np.zeros(sources.shape[0] + 1, np.int64)
    np.cumsum(np.concatenate(cnt_parts), out=target_ptr[1:])
    return PairPlan(
        estimator,
        False,
        sources,
        codes[sources],
        target_ptr,
        np.concatenate(tgt_parts).astype(np.int64),
        class_sizes,
        scored,
        population,
    )


@dataclass(frozen=True)
class SourceStats:
    """Per-source sums of path scores, what every backend returns."""

    sums: np.ndarray  # (S,) float64
    sumsq: np.ndarray  # (S,) float64
    n_targets: np.ndarray  # (S,) int64
    n_unreachable: np.ndarray  # (S,) int64


def stats_from_pair_scores(plan: PairPlan, scores: np.ndarray, reachable: np.ndarray) -> SourceStats:
    """Reduce explicit per-pair scores (T,) to per-source sums."""
    counts = np.diff(plan.target_ptr)
    seg = plan.target_ptr[:-1]
    return SourceStats(
        np.add.reduceat(scores, seg) if scores.size else np.zeros(0),
        np.add.reduceat(scores * scores, seg) if scores.size else np.zeros(0),
        counts,
        np.add.reduceat((~reachable).astype(np.int64), seg) if scores.size else np.zeros(0, np.int64),
    )


def stats_from_class_sums(plan: PairPlan, sums, sumsq, n_unreachable) -> SourceStats:
    n_targets = plan.class_sizes[plan.source_class] - 1
    return SourceStats(
        np.asarray(sums, np.float64),
        np.asarray(sumsq, np.float64),
        n_targets.astype(np.int64),
        np.asarray(n_unreachable, np.int64),
    )


def aggregate(
    plan: PairPlan,
    stats: SourceStats,
    classes: list[Hashable],
    *,
    k: int,
    n_points: int,
    backend: str,
    seed: int | None,
) -> Convexity:
    """Class scores, the pooled and macro scores, and their standard errors.

    Standard errors: ``pairs`` — of the mean of a simple random sample without
    replacement, with finite-population correction ``(1 - n/M)``, per class;
    ``sources`` — clustered by source (source means as the sampled units, with
    finite-population correction ``(1 - S/n_c)``); ``exact`` — 0.

    The pooled score is the mean over every ordered same-class pair of the
    scored classes: class means weighted by their *population* of pairs,
    ``W_c = M_c / sum M`` with ``M_c = n_c (n_c - 1)`` (a stratified estimator).
    When every pair is scored this is the plain mean over the scored pairs (as
    the published package pools them); when classes are sampled, weighting by
    the *sampled* counts instead would estimate a different value — close to
    the macro score once every class is capped at the same budget — rather than
    the population value ``exact=True`` computes. Its variance is
    ``sum_c W_c^2 var_c``; the macro score's is ``sum_c var_c / C^2``.

    Intervals (:meth:`Convexity.interval`) use Student's t with ``df`` = the
    smallest ``units_c - 1`` over the classes whose variance is estimated
    (units: sampled pairs, or sampled sources), a conservative bound on the
    Welch-Satterthwaite degrees of freedom: with 8 sources per class the
    normal quantile covers about 91 % instead of 95 % (tests/test_estimators.py).
    """
    n_classes = len(classes)
    sc = plan.source_class
    sums = np.bincount(sc, weights=stats.sums, minlength=n_classes)
    sumsq = np.bincount(sc, weights=stats.sumsq, minlength=n_classes)
    n_pairs = np.bincount(sc, weights=stats.n_targets, minlength=n_classes).astype(np.int64)
    n_src = np.bincount(sc, minlength=n_classes)
    unreach = int(stats.n_unreachable.sum())

    mean = np.full(n_classes, np.nan)
    var = np.full(n_classes, np.nan)
    dof = np.full(n_classes, math.inf)  # sampled units - 1 of each class's variance
    has = n_pairs > 0
    mean[has] = sums[has] / n_pairs[has]
    for c in np.flatnonzero(has):
        n = int(n_pairs[c])
        if plan.estimator == "exact" or (plan.class_mode and plan.estimator == "pairs"):
            var[c] = 0.0
        elif plan.estimator == "pairs":
            m = int(plan.population[c])
            if n >= m:
                var[c] = 0.0
            elif n < 2:
                var[c] = np.nan
            else:
                s2 = max(sumsq[c] - n * mean[c] ** 2, 0.0) / (n - 1)
                var[c] = s2 / n * (1.0 - n / m)
                dof[c] = n - 1
        else:  # sources: cluster = source, equal cluster sizes within a class
            s = int(n_src[c])
            size = int(plan.class_sizes[c])
            if s >= size:
                var[c] = 0.0
            elif s < 2:
                var[c] = np.nan
            else:
                means = stats.sums[sc == c] / stats.n_targets[sc == c]
                var[c] = means.var(ddof=1) / s * (1.0 - s / size)
                dof[c] = s - 1
    population = plan.population[has].astype(np.float64)
    weights = population / population.sum()
    if bool(np.all(n_pairs[has] == plan.population[has])):  # every pair scored
        score = float(sums[has].sum() / n_pairs[has].sum())
    else:
        score = float(np.sum(weights * mean[has]))
    stderr = float(math.sqrt(np.sum(weights**2 * var[has])))
    macro = float(mean[has].mean())
    macro_stderr = float(math.sqrt(np.sum(var[has]) / has.sum() ** 2))
    # degrees of freedom of the t interval: the fewest of any class whose
    # variance enters (a conservative bound on Welch-Satterthwaite's, which
    # under-covers with a few sources per class)
    sampled = has & (var != 0.0)
    df = float(np.min(dof[sampled])) if sampled.any() else math.inf
    if np.isnan(var[has]).any():
        df = math.nan
    return Convexity(
        score=score,
        stderr=stderr,
        macro=macro,
        macro_stderr=macro_stderr,
        per_class={c: float(mean[i]) for i, c in enumerate(classes)},
        per_class_stderr={c: float(math.sqrt(var[i])) if has[i] else math.nan for i, c in enumerate(classes)},
        n_pairs={c: int(n_pairs[i]) for i, c in enumerate(classes)},
        n_unreachable=unreach,
        estimator=plan.estimator,
        k=k,
        n_points=n_points,
        backend=backend,
        seed=seed,
        df=df,
    )
