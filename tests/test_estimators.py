"""Which estimator runs, and how well its interval covers (issue 13).

Two estimators given explicitly are an error, never a silent choice; the
t interval of a sampled score covers the exact score about as often as its
level says, in a seeded simulation against the value ``exact=True`` computes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastconvex as fc
from fastconvex.backends.numba import NumbaEngine
from fastconvex.core.inputs import encode_labels
from fastconvex.core.pairs import SourceStats, aggregate, plan_pairs
from fastconvex.datasets import overlapping_classes


@pytest.fixture(scope="module")
def four_classes():
    return overlapping_classes(240, 8, 4, seed=3)


@pytest.mark.parametrize(
    "keywords,message",
    [
        ({"pairs": 100, "sources": 8}, "give either pairs=100 or sources=8, not both"),
        ({"pairs": 5000, "sources": 8}, "give either pairs=5000 or sources=8, not both"),
        ({"pairs": 100, "exact": True}, "give either exact=True (every pair) or pairs=100"),
        ({"sources": 8, "exact": True}, "give either exact=True or sources=S, not both"),
    ],
)
@pytest.mark.parametrize("entry", ["graph_convexity", "layer_scores", "naive"])
def test_two_explicit_estimators_are_an_error(four_classes, keywords, message, entry):
    x, y = four_classes
    call = {
        "graph_convexity": lambda: fc.graph_convexity(x, y, k=5, **keywords),
        "layer_scores": lambda: fc.layer_scores([x, x], y, k=5, **keywords),
        "naive": lambda: fc.naive.graph_convexity(x, y, k=5, **keywords),
    }[entry]
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


def test_the_default_pairs_yields_to_sources_and_exact(four_classes):
    """Only the *default* pairs=5000 yields: sources=/exact=True alone run
    that estimator, and pairs=None is accepted beside them as before."""
    x, y = four_classes
    assert fc.graph_convexity(x, y, k=5, sources=8).estimator == "sources"
    assert fc.graph_convexity(x, y, k=5, exact=True).estimator == "exact"
    assert fc.graph_convexity(x, y, k=5, sources=8, pairs=None).estimator == "sources"
    assert fc.graph_convexity(x, y, k=5, exact=True, pairs=None).estimator == "exact"
    assert fc.graph_convexity(x, y, k=5).estimator == "pairs"
    assert repr(fc.graph_convexity.__kwdefaults__["pairs"]) == "5000"


def _per_source_stats(x, y, k):
    """Every vertex's path statistics (sum over its class, one Dijkstra each),
    from which any sampled plan's statistics are a subset."""
    codes, classes = encode_labels(np.asarray(y))
    full = plan_pairs(codes, len(classes), estimator="exact", budget=0, seed=0, min_class_size=2)
    stats = NumbaEngine().source_stats(x, codes, full, k)
    at = {int(s): i for i, s in enumerate(full.sources)}
    return codes, classes, stats, at


def _sampled(codes, classes, stats, at, *, sources, seed, k, n):
    plan = plan_pairs(codes, len(classes), estimator="sources", budget=sources, seed=seed, min_class_size=2)
    rows = np.array([at[int(s)] for s in plan.sources])
    sub = SourceStats(stats.sums[rows], stats.sumsq[rows], stats.n_targets[rows], stats.n_unreachable[rows])
    return aggregate(plan, sub, classes, k=k, n_points=n, backend="numba", seed=seed)


def test_the_simulation_shortcut_is_the_public_estimator(four_classes):
    """The coverage simulation below reuses one exact run's per-source sums;
    for these seeds it returns exactly what graph_convexity(sources=8) does."""
    x, y = four_classes
    parts = _per_source_stats(x, y, 5)
    for seed in (0, 1, 2):
        public = fc.graph_convexity(x, y, k=5, sources=8, seed=seed)
        shortcut = _sampled(*parts, sources=8, seed=seed, k=5, n=x.shape[0])
        assert math.isclose(public.score, shortcut.score, rel_tol=1e-12)
        assert math.isclose(public.stderr, shortcut.stderr, rel_tol=1e-12)
        assert public.df == shortcut.df == 7.0
        assert public.interval() == shortcut.interval()


@pytest.mark.parametrize("data_seed", [3, 11])
def test_t_interval_covers_the_exact_score_at_its_level(data_seed):
    """Seeded simulation, sources=8 in each of 4 classes of 60: 2000 samples
    of the sources estimator against the exact score. The normal interval
    (score ± 1.96 s.e.) covers about 91 %; the t interval on
    ``df = min_c (S_c - 1)`` covers 95 % within simulation error."""
    x, y = overlapping_classes(240, 8, 4, seed=data_seed)
    exact = fc.graph_convexity(x, y, k=5, exact=True)
    assert exact.df == math.inf and exact.interval() == (exact.score, exact.score)
    parts = _per_source_stats(x, y, 5)
    runs = [_sampled(*parts, sources=8, seed=s, k=5, n=x.shape[0]) for s in range(2000)]
    score = np.array([r.score for r in runs])
    stderr = np.array([r.stderr for r in runs])
    bounds = np.array([r.interval(0.95) for r in runs])
    t_cover = np.mean((bounds[:, 0] <= exact.score) & (exact.score <= bounds[:, 1]))
    normal_cover = np.mean(np.abs(score - exact.score) <= 1.959964 * stderr)
    # binomial s.e. of a coverage estimate over 2000 runs: about 0.005
    assert 0.935 <= t_cover <= 0.97, t_cover
    assert normal_cover < t_cover  # the t interval is the wider, as it must be
    assert np.all(bounds[:, 0] <= score) and np.all(score <= bounds[:, 1])


def test_interval_serialises_and_levels_nest(four_classes):
    x, y = four_classes
    r = fc.graph_convexity(x, y, k=5, pairs=30, seed=4)
    assert r.df == 29.0  # 30 sampled pairs in every class
    lo90, hi90 = r.interval(0.90)
    lo99, hi99 = r.interval(0.99)
    assert lo99 < lo90 < r.score < hi90 < hi99
    from scipy.stats import t

    assert math.isclose(hi90 - r.score, t.ppf(0.95, 29) * r.stderr, rel_tol=1e-12)
    d = r.to_dict()
    assert d["df"] == 29.0 and d["interval95"] == list(r.interval(0.95))
    layers = fc.layer_scores([x, 2 * x], y, k=5, pairs=30, seed=4)
    assert layers.df.tolist() == [29.0, 29.0]
    assert layers.intervals().shape == (2, 2)
    with pytest.raises(ValueError, match="level"):
        r.interval(1.5)
    assert fc.graph_convexity(x, y, k=5, exact=True).to_dict()["df"] is None
