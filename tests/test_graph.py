"""Union symmetrization into CSR: against a scipy-built reference."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconvex.kernels.numba.graph import union_csr
from fastconvex.kernels.numba.knn import knn


def _reference_edges(indices, distances):
    edges = {}
    for i, (row, drow) in enumerate(zip(indices, distances)):
        for j, d in zip(row, drow):
            edges[(i, int(j))] = d
            edges[(int(j), i)] = d
    return edges


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 60), st.integers(1, 5), st.integers(0, 10_000))
def test_union_csr_is_the_symmetric_union(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=(n, d)).astype(np.float64)  # many ties and duplicates
    k = int(rng.integers(1, n))
    idx, dist, _ = knn(x, k)
    indptr, nbr, w = union_csr(idx, dist)
    got = {}
    for i in range(n):
        row = nbr[indptr[i] : indptr[i + 1]]
        assert np.all(np.diff(row) > 0), "rows sorted, no repeated neighbour"
        for j, wij in zip(row, w[indptr[i] : indptr[i + 1]]):
            got[(i, int(j))] = wij
    ref = _reference_edges(idx, dist)
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert got[key] == value
    # symmetric, with zero-length edges kept as stored entries
    m = sp.csr_matrix((w, nbr, indptr), shape=(n, n))
    assert (m != m.T).nnz == 0
    assert m.nnz == len(ref)


def test_zero_length_edges_are_kept():
    x = np.array([[0.0], [0.0], [5.0], [5.0]])
    idx, dist, _ = knn(x, 1)
    indptr, nbr, w = union_csr(idx, dist)
    assert indptr.tolist() == [0, 1, 2, 3, 4]
    assert nbr.tolist() == [1, 0, 3, 2]
    assert w.tolist() == [0.0, 0.0, 0.0, 0.0]
