"""pytest-benchmark suites for the CPU path (not part of the test run).

    python -m pytest bench/test_bench_cpu.py --benchmark-only

Every benchmark first checks its answer against the oracle and refuses to time
a wrong one. Baselines are imported from the tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracles import scipy_shortest_distances

import fastconvex as fc
from fastconvex.datasets import overlapping_classes
from fastconvex.graph.benchmark import warm_up
from fastconvex.kernels.numba.graph import union_csr
from fastconvex.kernels.numba.knn import knn
from fastconvex.kernels.numba.paths import class_sums


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up("numba")


@pytest.mark.parametrize("backend", ["numba", "naive"])
def test_graph_convexity_n2000(benchmark, backend):
    x, y = overlapping_classes(2000, 256, 10)
    ref = fc.naive.graph_convexity(x, y)
    got = fc.graph_convexity(x, y, backend=backend)
    assert abs(got.score - ref.score) <= 1e-9, "refusing to time a wrong answer"
    benchmark.pedantic(fc.graph_convexity, args=(x, y), kwargs={"backend": backend}, rounds=3)


@pytest.mark.parametrize("what", ["knn", "matmul"])
def test_knn_vs_matmul_n20000(benchmark, what):
    x, _ = overlapping_classes(20000, 768, 10)
    if what == "knn":
        benchmark.pedantic(knn, args=(x, 10), rounds=2)
    else:
        benchmark.pedantic(lambda: x @ x.T, rounds=2)


@pytest.mark.parametrize("what", ["numba", "scipy"])
def test_paths_vs_scipy_n20000(benchmark, what):
    x, _y = overlapping_classes(20000, 768, 10)
    idx, dist, _ = knn(x, 10)
    indptr, nbr, w = union_csr(idx, dist)
    sources = np.random.default_rng(0).choice(20000, 500, replace=False).astype(np.int64)
    codes = np.zeros(20000, np.int64)  # one class: every vertex a target, no early stop
    sizes = np.array([20000])
    if what == "numba":
        benchmark.pedantic(class_sums, args=(indptr, nbr, w, codes, sources, sizes), rounds=2)
    else:
        benchmark.pedantic(scipy_shortest_distances, args=(indptr, nbr, w, sources), rounds=2)
