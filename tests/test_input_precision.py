"""Nothing is silently converted into different numbers (issue 13): long
double embeddings and 64-bit integers beyond 2**53 are computed in float64
with a PrecisionWarning that says what was rounded; exact conversions are silent."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fastconvex as fc
from fastconvex.core.inputs import PrecisionWarning, as_kernel_float


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(40, 3)), np.repeat([0, 1], 20)


def test_long_double_is_computed_in_float64_not_float32():
    x, y = _data()
    assert as_kernel_float(x.astype(np.longdouble)).dtype == np.float64
    # float64 values held in long double convert exactly: same score, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = fc.graph_convexity(x.astype(np.longdouble), y, k=3, exact=True)
    assert same.score == fc.graph_convexity(x, y, k=3, exact=True).score


@pytest.mark.skipif(np.finfo(np.longdouble).nmant <= 52, reason="long double is float64 on this platform")
def test_long_double_that_rounds_warns_with_the_count_and_row():
    x, y = _data()
    xl = x.astype(np.longdouble)
    xl[7, 2] += np.longdouble(2.0) ** -60  # below float64's resolution at |x| ~ 1
    with pytest.warns(
        PrecisionWarning, match=r"x has dtype float128: 1 value\(s\) \(long double values, the first in row 7\)"
    ):
        r = fc.graph_convexity(xl, y, k=3, exact=True)
    # computed on the float64-rounded values (not float32's)
    assert r.score == fc.graph_convexity(xl.astype(np.float64), y, k=3, exact=True).score
    with pytest.warns(PrecisionWarning, match=r"hidden_states\[1\] has dtype float128"):
        fc.layer_scores([x, xl], y, k=3, exact=True)


@pytest.mark.parametrize("to_torch", [False, True])
def test_int64_beyond_2_53_warns(to_torch):
    x, y = _data()
    xi = np.round(x * 1000).astype(np.int64)
    exact_ints = torch.from_numpy(xi) if to_torch else xi
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within 2**53: exact, silent
        ref = fc.graph_convexity(exact_ints, y, k=3, exact=True)
    assert ref.score == fc.graph_convexity(xi.astype(np.float64), y, k=3, exact=True).score
    big = xi.copy()
    big[5, 1] = 2**60 + 1
    big[9, 0] = -(2**55) - 3
    arg = torch.from_numpy(big) if to_torch else big
    dtype = "torch.int64" if to_torch else "int64"
    with pytest.warns(
        PrecisionWarning, match=rf"x has dtype {dtype}: 2 value\(s\) \(integers beyond 2\*\*53, the first in row 5\)"
    ):
        fc.graph_convexity(arg, y, k=3, exact=True)


def test_float16_and_small_integers_stay_silent():
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc.graph_convexity(x.astype(np.float16), y, k=3)
        fc.graph_convexity(np.round(x * 100).astype(np.int32), y, k=3)
        fc.layer_scores([np.round(x * 100).astype(np.uint64) + 1000], y, k=3)
