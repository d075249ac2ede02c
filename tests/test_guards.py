"""Guards at scale (issue 13): the naive scorer refuses a size that would
exhaust memory, naming the fast backends; exact=True at large N warns with the
number of searches it will run."""

from __future__ import annotations

import warnings

import pytest

import fastconvex as fc
import fastconvex.backends.naive as naive_engine
import fastconvex.graph.plan
import fastconvex.naive as naive
from fastconvex.datasets import overlapping_classes


def test_naive_memory_estimate_is_quadratic():
    assert naive.naive_memory_bytes(6000) == 16 * 6000**2  # 576 MB before any Dijkstra row
    assert naive.naive_memory_bytes(6000, 100) == 16 * 6000**2 + 16 * 100 * 6000
    assert naive.naive_memory_bytes(12000) == 4 * naive.naive_memory_bytes(6000)


@pytest.mark.parametrize("call", ["graph_convexity", "knn_graph", "naive_module"])
def test_naive_refuses_what_would_exhaust_memory(monkeypatch, call):
    x, y = overlapping_classes(300, 4, 3, seed=0)
    # 300 points need 1.44 MB of dense matrices: pretend 1 MB is available
    monkeypatch.setattr(naive_engine, "available_memory_bytes", lambda: 1_000_000)
    run = {
        "graph_convexity": lambda: fc.graph_convexity(x, y, k=5, backend="naive"),
        "knn_graph": lambda: fc.knn_graph(x, 5, backend="naive"),
        "naive_module": lambda: naive.graph_convexity(x, y, k=5),
    }[call]
    with pytest.raises(RuntimeError) as info:
        run()
    message = str(info.value)
    assert "for N=300 points (O(N^2) dense distances" in message
    assert "backend='naive' would need about " in message and "more than the 1.0 MB available" in message
    assert "backend='numba' (CPU) or backend='triton' (GPU)" in message
    # the fast backend runs the same request in the same (pretended) memory
    assert fc.graph_convexity(x, y, k=5, backend="numba").n_points == 300


def test_naive_runs_when_memory_suffices(monkeypatch):
    x, y = overlapping_classes(120, 4, 3, seed=0)
    monkeypatch.setattr(naive_engine, "available_memory_bytes", lambda: 10**9)
    a = fc.graph_convexity(x, y, k=5, backend="naive")
    b = fc.graph_convexity(x, y, k=5, backend="numba")
    assert abs(a.score - b.score) <= 1e-9
    monkeypatch.setattr(naive_engine, "available_memory_bytes", lambda: None)  # unknown: no guard
    assert fc.graph_convexity(x, y, k=5, backend="naive").score == a.score


def test_exact_warns_with_the_number_of_searches(monkeypatch):
    x, y = overlapping_classes(90, 4, 3, seed=0)
    y[0] = 99  # a one-member class: skipped, so 89 searches
    monkeypatch.setattr(fastconvex.graph.plan, "EXACT_WARN_SEARCHES", 50)
    with pytest.warns(UserWarning, match=r"exact=True runs 89 single-source shortest-path searches, one per point"):
        fc.graph_convexity(x, y, k=5, exact=True)
    with pytest.warns(UserWarning, match=r"runs 89 single-source .* in each of 3 layers \(267 in all\)"):
        fc.layer_scores([x, x, x], y, k=5, exact=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.graph_convexity(x, y, k=5, sources=10)  # not exact: no warning
        monkeypatch.setattr(fastconvex.graph.plan, "EXACT_WARN_SEARCHES", 89)
        fc.graph_convexity(x, y, k=5, exact=True)  # at the threshold: none
