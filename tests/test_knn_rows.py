"""The Numba kNN of a block of query rows is exactly that block of the full
result (what the Ray engine's query shards rely on)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconvex.kernels.numba.knn import knn


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 60),
    d=st.integers(1, 5),
    k_frac=st.floats(0, 1),
    seed=st.integers(0, 10**6),
    grid=st.booleans(),
    cut=st.tuples(st.floats(0, 1), st.floats(0, 1)),
)
def test_query_block_equals_rows_of_the_full_result(n, d, k_frac, seed, grid, cut):
    rng = np.random.default_rng(seed)
    # integer grids give many exact ties and duplicate rows
    x = (rng.integers(0, 3, (n, d)) if grid else rng.standard_normal((n, d))).astype(np.float32)
    k = 1 + int(k_frac * (n - 2))
    a, b = sorted(int(c * n) for c in cut)
    b = max(b, a + 1) if a < n else n
    a = min(a, n - 1)
    full_i, full_d, _ = knn(x, k)
    block_i, block_d, _ = knn(x, k, rows=(a, b), block_rows=7, block_cols=11)
    np.testing.assert_array_equal(block_i, full_i[a:b])
    np.testing.assert_array_equal(block_d, full_d[a:b])


def test_bad_rows():
    x = np.zeros((5, 2), np.float32) + np.arange(5)[:, None]
    with pytest.raises(ValueError, match="rows must be"):
        knn(x, 2, rows=(3, 3))
