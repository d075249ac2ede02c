"""Scores: the Numba backend against the naive scorer, hand-built cases with
known answers, the authors' package, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import (
    nnconvexity_all_pairs,
    reference_exact_convexity,
    reference_pair_scores,
)

import fastconvex as fc
from fastconvex.datasets import overlapping_classes

ESTIMATORS = [
    pytest.param({"pairs": 5000}, id="pairs-census"),
    pytest.param({"pairs": 37}, id="pairs-sampled"),
    pytest.param({"sources": 3}, id="sources"),
    pytest.param({"exact": True}, id="exact"),
]


def assert_same_result(a: fc.Convexity, b: fc.Convexity, tol: float = 1e-9) -> None:
    assert a.n_pairs == b.n_pairs
    assert a.n_unreachable == b.n_unreachable
    assert math.isclose(a.score, b.score, abs_tol=tol)
    assert math.isclose(a.macro, b.macro, abs_tol=tol)
    assert math.isclose(a.stderr, b.stderr, abs_tol=tol)
    assert a.per_class.keys() == b.per_class.keys()
    for c in a.per_class:
        va, vb = a.per_class[c], b.per_class[c]
        assert (math.isnan(va) and math.isnan(vb)) or math.isclose(va, vb, abs_tol=tol)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize(
    "n,d,k,classes",
    [(11, 3, 1, 2), (57, 1, 4, 3), (101, 8, 10, 5), (40, 1000, 5, 4), (23, 6, 22, 3), (203, 16, 7, 7)],
)
def test_numba_equals_naive(estimator, n, d, k, classes):
    x, y = overlapping_classes(n, d, classes, seed=n + d, dtype=np.float64)
    fast = fc.graph_convexity(x, y, k=k, backend="numba", **estimator)
    slow = fc.naive.graph_convexity(x, y, k=k, **estimator)
    assert fast.backend == "numba" and slow.backend == "naive"
    assert_same_result(fast, slow)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_label_types_give_the_same_score(estimator):
    x, y = overlapping_classes(90, 5, 3, seed=2, dtype=np.float64)
    # order-preserving relabelings: classes are sampled in sorted order, so the
    # same pairs are drawn and the scores are identical
    names = np.array(["cat", "dog", "owl"])[y]
    spread = np.array([-4, 10, 77])[y]  # non-contiguous ints
    ref = fc.graph_convexity(x, y, k=5, **estimator)
    for labels in (names, list(names), spread, torch.from_numpy(spread), [int(v) for v in spread]):
        got = fc.graph_convexity(x, labels, k=5, **estimator)
        assert got.score == ref.score and got.stderr == ref.stderr
        assert sorted(got.n_pairs.values()) == sorted(ref.n_pairs.values())
    assert set(fc.graph_convexity(x, names, k=5, **estimator).per_class) == {"cat", "dog", "owl"}
    naive = fc.naive.graph_convexity(x, names, k=5, **estimator)
    assert math.isclose(naive.score, ref.score, abs_tol=1e-9)


def test_torch_embeddings_equal_numpy():
    x, y = overlapping_classes(80, 6, 4, seed=9)
    a = fc.graph_convexity(x, y, k=4)
    b = fc.graph_convexity(torch.from_numpy(x), torch.from_numpy(y), k=4)
    assert a.score == b.score


# ----------------------------------------------------------------------------------
# hand-built cases


@pytest.mark.parametrize("backend", ["numba", "naive"])
def test_path_graph_known_answer(backend):
    # 0-1-2-3-4 on a line, k=1 gives the path graph; labels A A B A A
    x = np.arange(5, dtype=np.float64)[:, None]
    labels = ["A", "A", "B", "A", "A"]
    r = fc.graph_convexity(x, labels, k=1, exact=True, backend=backend)
    # pairs of A: (0,1)=1, (0,3)=1/2, (0,4)=2/3, (1,3)=0, (1,4)=1/2, (3,4)=1; both orders
    expected = (1 + 0.5 + 2 / 3 + 0 + 0.5 + 1) / 6
    assert math.isclose(r.score, expected, rel_tol=1e-12)
    assert r.n_pairs == {"A": 12, "B": 0}  # a class of one member: skipped, 0 pairs
    assert math.isnan(r.per_class["B"])
    assert r.stderr == 0.0 and r.n_unreachable == 0
    assert math.isclose(r.macro, expected)


@pytest.mark.parametrize("backend", ["numba", "naive"])
def test_two_far_blobs_of_one_class_are_unreachable(backend):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(5, 3)), 1000 + rng.normal(size=(5, 3))])
    labels = np.zeros(10, dtype=int)
    r = fc.graph_convexity(x, labels, k=2, exact=True, backend=backend)
    # 40 within-blob ordered pairs score 1 (only class members around), 50 cross pairs 0
    assert r.n_pairs == {0: 90}
    assert r.n_unreachable == 50
    assert math.isclose(r.score, 40 / 90, rel_tol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "naive"])
def test_duplicates_connect_through_zero_length_edges(backend):
    # x = [0, 5, 5], k=1: 0-1 (length 5) and the duplicate edge 1-2 (length 0).
    # The published code drops the zero-length edge and would leave 2 unreachable.
    x = np.array([[0.0], [5.0], [5.0]])
    r = fc.graph_convexity(x, ["A", "B", "A"], k=1, exact=True, backend=backend)
    assert r.n_unreachable == 0
    assert r.score == 0.0  # the path 0-1-2 runs through B
    r2 = fc.graph_convexity(x, ["A", "A", "A"], k=1, exact=True, backend=backend)
    assert r2.score == 1.0


@pytest.mark.parametrize("backend", ["numba", "naive"])
def test_interior_fraction_counts_only_same_label(backend):
    # x = [0, 1, 1, 2], k=1: 0-1, 1-2 (0 length), 3-1 ; path 0->3 = 0-1-3 through B
    x = np.array([[0.0], [1.0], [1.0], [2.0]])
    r = fc.graph_convexity(x, ["A", "B", "C", "A"], k=1, exact=True, backend=backend)
    assert r.per_class["A"] == 0.0
    assert r.n_pairs == {"A": 2, "B": 0, "C": 0}


def test_min_class_size_skips_small_classes():
    x, y = overlapping_classes(60, 4, 3, seed=1)
    y = y.copy()
    y[:3] = 7  # a class of three
    r = fc.graph_convexity(x, y, k=4, exact=True, min_class_size=4)
    assert r.n_pairs[7] == 0 and math.isnan(r.per_class[7])
    kept = fc.graph_convexity(x, y, k=4, exact=True, min_class_size=2)
    assert kept.n_pairs[7] == 6


# ----------------------------------------------------------------------------------
# the authors' package


@pytest.mark.parametrize("seed,n,d,k", [(0, 45, 4, 3), (1, 60, 12, 5), (2, 38, 2, 10)])
def test_exact_agrees_with_nnconvexity(seed, n, d, k):
    """nnconvexity 0.1.1 on tie-free, duplicate-free data, every ordered pair."""
    x, y = overlapping_classes(n, d, 3, seed=seed, dtype=np.float64)
    ref_score, ref_per_class = nnconvexity_all_pairs(x, y, k)
    r = fc.graph_convexity(x, y, k=k, exact=True)
    assert abs(r.score - ref_score) <= 1e-9
    for c, v in ref_per_class.items():
        assert abs(r.per_class[c] - v) <= 1e-9


# ----------------------------------------------------------------------------------
# estimators and standard errors


def _all_pair_scores(x, y, k):
    """Every ordered same-class pair's score, per class (pairs with a ascending,
    then b), from the independent oracle (tests/oracles.py: scipy's Dijkstra,
    nothing from fastconvex)."""
    per = reference_pair_scores(x, y, k)
    return {c: [v for _, v, _ in per[c]] for c in per}


def test_exact_is_the_mean_over_all_pairs_and_pairs_census_is_exact():
    x, y = overlapping_classes(50, 5, 3, seed=4, dtype=np.float64)
    per = _all_pair_scores(x, y, 4)
    pooled = np.mean([s for v in per.values() for s in v])
    exact = fc.graph_convexity(x, y, k=4, exact=True)
    census = fc.graph_convexity(x, y, k=4, pairs=10_000)
    everything = fc.graph_convexity(x, y, k=4, sources=1000)
    for r in (exact, census, everything):
        assert math.isclose(r.score, pooled, rel_tol=1e-12)
        assert r.stderr == 0.0
    assert math.isclose(exact.macro, np.mean([np.mean(v) for v in per.values()]), rel_tol=1e-12)


def test_pairs_stderr_is_the_finite_population_formula():
    x, y = overlapping_classes(60, 5, 2, seed=6, dtype=np.float64)
    per = _all_pair_scores(x, y, 5)
    r = fc.graph_convexity(x, y, k=5, pairs=300, seed=3)
    # sampled scores are a subset of the population scores: recompute the
    # stratified standard error from the sampled pairs the plan drew
    from fastconvex.core.inputs import encode_labels
    from fastconvex.graph.plan import _plan

    codes, classes = encode_labels(y)
    plan = _plan(codes, 2, 300, None, False, 3, 2)
    src, tgt = plan.pairs(codes)
    score_of = {}
    for c in classes:
        m = np.flatnonzero(y == c)
        pairs = [(a, b) for a in m for b in m if a != b]
        score_of.update(dict(zip(pairs, per[c])))
    var = 0.0
    total = len(src)
    for c in classes:
        s = np.array([score_of[(a, b)] for a, b in zip(src, tgt) if y[a] == c])
        m_pop = np.sum(y == c) * (np.sum(y == c) - 1)
        var += (len(s) / total) ** 2 * s.var(ddof=1) / len(s) * (1 - len(s) / m_pop)
        assert math.isclose(r.per_class[c], s.mean(), rel_tol=1e-12)
    assert math.isclose(r.stderr, math.sqrt(var), rel_tol=1e-9)
    assert r.n_pairs == {0: 300, 1: 300}


def test_sources_stderr_is_clustered_by_source():
    x, y = overlapping_classes(60, 5, 2, seed=7, dtype=np.float64)
    per_source = {}
    from fastconvex.core.inputs import encode_labels
    from fastconvex.graph.plan import _plan

    codes, _ = encode_labels(y)
    plan = _plan(codes, 2, None, 6, False, 0, 2)
    per = _all_pair_scores(x, y, 5)
    r = fc.graph_convexity(x, y, k=5, sources=6, seed=0)
    var = 0.0
    for c in (0, 1):
        m = np.flatnonzero(y == c)
        n_c = len(m)
        scores = np.array(per[c]).reshape(n_c, n_c - 1)  # row a: a's targets
        chosen = plan.sources[plan.source_class == c]
        means = scores[np.searchsorted(m, chosen)].mean(axis=1)
        var += 0.25 * means.var(ddof=1) / 6 * (1 - 6 / n_c)
        assert math.isclose(r.per_class[c], means.mean(), rel_tol=1e-12)
        per_source[c] = means
    assert math.isclose(r.stderr, math.sqrt(var), rel_tol=1e-9)
    assert r.n_pairs == {0: 6 * 29, 1: 6 * 29}


def test_same_seed_same_pairs_other_seed_other_pairs():
    from fastconvex.graph.plan import _plan

    codes = np.repeat(np.arange(3), 40)
    a = _plan(codes, 3, 100, None, False, 5, 2)
    b = _plan(codes, 3, 100, None, False, 5, 2)
    c = _plan(codes, 3, 100, None, False, 6, 2)
    pa, pb, pc = a.pairs(codes), b.pairs(codes), c.pairs(codes)
    np.testing.assert_array_equal(pa[0], pb[0])
    np.testing.assert_array_equal(pa[1], pb[1])
    assert not (np.array_equal(pa[0], pc[0]) and np.array_equal(pa[1], pc[1]))
    # P same-class pairs per class, never (a, a); searched from whichever end
    # serves more pairs, so as unordered pairs each appears at most twice
    # (twice only when both orders were drawn)
    from collections import Counter

    assert pa[0].shape == (300,)
    assert all(s != t and codes[s] == codes[t] for s, t in zip(pa[0], pa[1]))
    unordered = Counter(frozenset(p) for p in zip(pa[0].tolist(), pa[1].tolist()))
    assert max(unordered.values()) <= 2
    assert np.bincount(codes[pa[0]]).tolist() == [100, 100, 100]


def test_sampled_pairs_and_sources_are_uniform():
    """SPEC 1.6: P distinct pairs, or S distinct sources, drawn uniformly. Over
    2000 seeds in a class of 7 (42 ordered pairs, 21 unordered), every
    unordered pair is drawn about equally often (the plan may orient a pair
    either way, so only the unordered pair is observable), every member is a
    source about equally often: a chi-square test against the uniform counts."""
    from collections import Counter

    from scipy.stats import chisquare

    from fastconvex.core.pairs import plan_pairs

    codes = np.r_[np.zeros(7, np.int64), np.ones(3, np.int64)]  # class 1: 6 pairs, scored whole
    pair_counts, source_counts = Counter(), Counter()
    for seed in range(2000):
        plan = plan_pairs(codes, 2, estimator="pairs", budget=12, seed=seed, min_class_size=2)
        s, t = plan.pairs(codes)
        drawn = [frozenset(p) for p in zip(s.tolist(), t.tolist()) if codes[p[0]] == 0]
        assert len(drawn) == 12 and all(v <= 2 for v in Counter(drawn).values())
        pair_counts.update(drawn)
        plan = plan_pairs(codes, 2, estimator="sources", budget=3, seed=seed, min_class_size=2)
        chosen = plan.sources[plan.source_class == 0].tolist()
        assert len(set(chosen)) == 3
        source_counts.update(chosen)
    assert len(pair_counts) == 21 and len(source_counts) == 7
    assert chisquare(list(pair_counts.values())).pvalue > 1e-3
    assert chisquare(list(source_counts.values())).pvalue > 1e-3


def test_orientation_keeps_the_drawn_pairs_and_saves_searches():
    from collections import Counter

    from fastconvex.core.pairs import orient_pairs

    rng = np.random.default_rng(1)
    n = 300
    flat = np.sort(rng.choice(n * (n - 1), 2000, replace=False))
    a = flat // (n - 1)
    r = flat % (n - 1)
    b = r + (r >= a)
    s, t = orient_pairs(a, b, n)
    assert Counter(map(frozenset, zip(s.tolist(), t.tolist()))) == Counter(map(frozenset, zip(a.tolist(), b.tolist())))
    assert len(np.unique(s)) < 0.9 * len(np.unique(a))


def test_a_pair_drawn_in_both_orders_scores_like_two_pairs():
    # two classes of 3 on a line; pairs budget smaller than the 6 ordered pairs
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    y = np.array([0, 1, 0, 1, 0, 1])
    for seed in range(20):
        fast = fc.graph_convexity(x, y, k=2, pairs=5, seed=seed)
        slow = fc.naive.graph_convexity(x, y, k=2, pairs=5, seed=seed)
        assert_same_result(fast, slow)
        assert sum(fast.n_pairs.values()) == 10


@settings(max_examples=25, deadline=None)
@given(
    st.integers(4, 40),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(0, 2**16),
    st.sampled_from(["pairs", "sources", "exact"]),
)
def test_scores_in_unit_interval_and_backends_agree(n, d, n_classes, seed, estimator):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.integers(0, n_classes, size=n)
    if np.bincount(y).max() < 2:
        y[:2] = 0
    k = int(rng.integers(1, n))
    kw = {"pairs": {"pairs": 7}, "sources": {"sources": 2}, "exact": {"exact": True}}[estimator]
    a = fc.graph_convexity(x, y, k=k, **kw)
    b = fc.naive.graph_convexity(x, y, k=k, **kw)
    assert 0.0 <= a.score <= 1.0 and 0.0 <= a.macro <= 1.0 and a.stderr >= 0.0
    assert_same_result(a, b)


# ----------------------------------------------------------------------------------
# exact mode against the independent oracle (tests/oracles.py), and invariances


LABEL_POOL = ["cat", "dog", 7, -3, "owl", 0]  # strings and ints mixed: an object array


@st.composite
def _tie_free_problem(draw):
    """Continuous data in 2-4 dimensions (no duplicate rows, no equal-length
    paths almost surely), one cluster or two far apart (k small: often two
    components), labels from a mixed pool (one-member classes likely), any k."""
    n = draw(st.integers(3, 28))
    d = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if draw(st.booleans()):
        x[: n // 2] += 1000.0
    pool = LABEL_POOL[: draw(st.integers(1, len(LABEL_POOL)))]
    labels = [pool[i] for i in rng.integers(0, len(pool), n)]
    if max(labels.count(v) for v in pool) < 2:
        labels[1] = labels[0]
    k = draw(st.integers(1, n - 1))
    return x, labels, k


def _assert_matches_reference(r, ref, tol=1e-12):
    assert r.n_pairs == ref["n_pairs"]
    assert r.n_unreachable == ref["n_unreachable"]
    assert abs(r.score - ref["score"]) <= tol
    assert abs(r.macro - ref["macro"]) <= tol
    assert r.per_class.keys() == ref["per_class"].keys()
    for c, v in ref["per_class"].items():
        assert (math.isnan(v) and math.isnan(r.per_class[c])) or abs(r.per_class[c] - v) <= tol, c
    assert r.stderr == 0.0
    assert 0.0 <= r.score <= 1.0 and 0.0 <= r.macro <= 1.0


@pytest.mark.parametrize("backend", ["numba", "naive"])
@settings(max_examples=40, deadline=None)
@given(problem=_tie_free_problem())
def test_exact_equals_the_independent_oracle(backend, problem):
    """exact=True is the mean over every ordered same-class pair (SPEC 1.4-1.6):
    string and int labels mixed, one-member classes (0 pairs, NaN), two
    components (unreachable pairs score 0), any k."""
    x, labels, k = problem
    ref = reference_exact_convexity(x, labels, k)
    r = fc.graph_convexity(x, labels, k=k, exact=True, backend=backend)
    _assert_matches_reference(r, ref)
    # every pair scored by the other two estimators too: the same population value
    for kw in ({"pairs": 10**6}, {"sources": len(x)}):
        assert abs(fc.graph_convexity(x, labels, k=k, backend=backend, **kw).score - ref["score"]) <= 1e-12


@settings(max_examples=30, deadline=None)
@given(problem=_tie_free_problem(), data=st.data())
def test_exact_is_invariant_to_row_order_and_label_names(problem, data):
    """Permuting the rows (labels along) and renaming the classes by any
    bijection (not order-preserving, strings to ints and back) changes nothing
    but the class keys."""
    x, labels, k = problem
    n = len(labels)
    perm = data.draw(st.permutations(range(n)))
    classes = list(dict.fromkeys(labels))
    new_names = data.draw(st.permutations(["z", "a", 99, -5, "m", 3, "q"]))[: len(classes)]
    rename = dict(zip(classes, new_names))
    ref = fc.graph_convexity(x, labels, k=k, exact=True)
    got = fc.graph_convexity(x[list(perm)], [rename[labels[i]] for i in perm], k=k, exact=True)
    assert got.n_unreachable == ref.n_unreachable
    assert math.isclose(got.score, ref.score, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(got.macro, ref.macro, rel_tol=0, abs_tol=1e-12)
    assert got.n_pairs == {rename[c]: v for c, v in ref.n_pairs.items()}
    for c, v in ref.per_class.items():
        w = got.per_class[rename[c]]
        assert (math.isnan(v) and math.isnan(w)) or math.isclose(w, v, rel_tol=0, abs_tol=1e-12)


# ----------------------------------------------------------------------------------
# exactly equal-length shortest paths (tie-heavy data): every backend takes the
# path with the fewest hops, then the most interior vertices labelled like the
# source, so all of them give the same scores


def _permuted(x, labels, perm):
    return x[perm], [labels[i] for i in perm]


TIE_KNOWN = [
    # 1-D 0, 1, 2 (k=2: all three edges): 0-2 directly (1 hop) and 0-1-2 have
    # the same length; the direct edge wins -> 1 (through B it would be 0)
    pytest.param(np.array([[0.0], [1.0], [2.0]]), ["A", "B", "A"], 2, 1.0, id="1d-chord"),
    # an exact duplicate of 0 labelled B: 0-2 directly and 0-1-2 (0 + 1): direct -> 1
    pytest.param(np.array([[0.0], [0.0], [1.0]]), ["A", "B", "A"], 2, 1.0, id="duplicate-chord"),
    # unit square (k=2: the four sides): the corner-to-corner pair has two 2-hop
    # paths, through B at (1, 0) and through A at (0, 1); A wins -> every A pair 1
    pytest.param(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), ["A", "B", "A", "A"], 2, 1.0, id="square"),
    # 0, 1 (B), 1 (A duplicate), 2 (k=2): 0 -> 2 through either copy of 1 (2 hops,
    # length 2; the 3-hop paths over the zero-length edge lose): through A -> 1
    pytest.param(np.array([[0.0], [1.0], [1.0], [2.0]]), ["A", "B", "A", "A"], 2, 1.0, id="duplicates-mixed-labels"),
]


@pytest.mark.parametrize("backend", ["numba", "naive"])
@pytest.mark.parametrize("x,labels,k,expected", TIE_KNOWN)
def test_equal_length_paths_known_answers(backend, x, labels, k, expected):
    import itertools

    # whatever the point order, i.e. whichever path a search meets first
    for perm in itertools.permutations(range(len(x))):
        xp, yp = _permuted(x, labels, list(perm))
        r = fc.graph_convexity(xp, yp, k=k, exact=True, backend=backend)
        assert r.per_class["A"] == expected, perm
        assert r.n_unreachable == 0


def _int_grid(rng):
    x = np.stack(np.meshgrid(np.arange(8), np.arange(9)), -1).reshape(-1, 2).astype(np.float64)
    return x, rng.integers(0, 3, len(x))


def _int_duplicates(rng):
    x = rng.integers(0, 4, (120, 2)).astype(np.float64)  # ~7 copies of each point
    return x, rng.integers(0, 3, len(x))  # copies carry different labels


def _one_dim(rng):
    return rng.normal(size=(150, 1)), rng.integers(0, 4, 150)


def _one_dim_int(rng):
    return rng.integers(0, 40, (100, 1)).astype(np.float64), rng.integers(0, 3, 100)


def _one_dim_float32(rng):
    x, y = overlapping_classes(150, 1, 4, seed=int(rng.integers(1000)))
    return x, y


TIE_HEAVY = [
    pytest.param(_int_grid, 4, id="grid-k4"),
    pytest.param(_int_grid, 8, id="grid-k8"),
    pytest.param(_int_duplicates, 5, id="duplicates"),
    pytest.param(_one_dim, 4, id="1d"),
    pytest.param(_one_dim_int, 3, id="1d-int"),
    pytest.param(_one_dim_float32, 6, id="1d-float32"),
]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("make,k", TIE_HEAVY)
def test_numba_equals_naive_on_tie_heavy_data(make, k, estimator):
    x, y = make(np.random.default_rng(k))
    fast = fc.graph_convexity(x, y, k=k, backend="numba", **estimator)
    slow = fc.naive.graph_convexity(x, y, k=k, **estimator)
    assert_same_result(fast, slow, tol=1e-12)


def _triton_devices():
    """As in tests/test_triton.py: CPU tensors through Triton's interpreter when
    tests/conftest.py switched it on (no CUDA device), else the CUDA device."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return ["cpu"]
    return [pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.triton
@pytest.mark.parametrize("device", _triton_devices())
def test_triton_follows_the_same_rule_on_exact_ties(device):
    """Ties whose distance sums are exact (integer weights, duplicates), and
    ties that only float rounding makes (1-D float64 data; a grid with sqrt(2)
    diagonals): Triton's Bellman-Ford gives the Numba backend's scores."""
    rng = np.random.default_rng(3)
    cases = [p.values for p in TIE_KNOWN]
    x = rng.integers(0, 25, (55, 1)).astype(np.float64)  # 1-D, duplicates, mixed labels
    cases.append((x, rng.integers(0, 3, 55), 4, None))
    x = np.stack(np.meshgrid(np.arange(6), np.arange(7)), -1).reshape(-1, 2).astype(np.float64)
    cases.append((x, rng.integers(0, 2, 42), 2, None))  # k=2 on a grid: unit edges only
    cases.append((x, rng.integers(0, 2, 42), 8, None))  # k=8: sqrt(2) diagonals, rounded sums
    for seed in (0, 1, 2):  # 1-D float64: collinear paths tie up to rounding
        r = np.random.default_rng(seed)
        cases.append((r.normal(size=(50, 1)), r.integers(0, 3, 50), 3, None))
    for x, y, k, expected in cases:
        a = fc.graph_convexity(x, y, k=k, exact=True, backend="triton", device=device)
        b = fc.graph_convexity(x, y, k=k, exact=True, backend="numba")
        assert a.backend == "triton"
        assert_same_result(a, b, tol=1e-12)
        if expected is not None:
            assert a.per_class["A"] == expected


@pytest.mark.triton
@pytest.mark.parametrize("device", _triton_devices())
def test_triton_rounding_tie_follows_the_rule(device):
    """From 0.1: 0.1-0.7 (0.6000000000000001) then 0.7-1.1 (0.4) sums to 1.0, and
    so does 0.1-0.2-0.7-1.1 (0.1 + 0.5 = 0.6 < 0.6000000000000001, + 0.4). The
    shortest distance to 0.7 is 0.6, reached in 2 hops, so the rule takes the
    3-hop path (interior 0.2 (A), 0.7 (B): 1/2). Triton's sweeps used to keep
    the 2-hop offer of the first sweeps (interior 0.7: 0) because each vertex
    started from its own state; now it is recomputed from its neighbours."""
    x = np.array([1.0, 1.1, 0.2, 0.1, 0.7000000000000001])[:, None]
    y = ["A", "A", "A", "A", "B"]
    b = fc.graph_convexity(x, y, k=2, exact=True, backend="numba")
    assert b.score == fc.naive.graph_convexity(x, y, k=2, exact=True).score
    a = fc.graph_convexity(x, y, k=2, exact=True, backend="triton", device=device)
    assert_same_result(a, b, tol=1e-12)
