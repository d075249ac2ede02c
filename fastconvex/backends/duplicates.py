"""Exact duplicate rows: found once, searched once.

A group of m identical rows makes every kNN list near it a run of exact ties
(distance 0 inside the group, one common distance from outside). The float32
candidate pass cannot certify such lists once m outgrows them, and every row
it cannot certify is recomputed by brute force against all N points. So the
backends search the distinct rows only and expand the lists afterwards
(:func:`fastconvex.kernels.numba.duplicates.expand_knn`); the result is the
same graph, ties broken by the smaller row index.

Rows are grouped by a 64-bit hash of their values (computed where the data
live: Numba for arrays, torch for tensors) and every grouped row is compared
with its group's first row, so a hash collision can only leave identical rows
apart (still exact: they are then neighbours at distance 0), never put
different rows together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fastconvex.core.inputs import is_torch_tensor


def group_rows(
    hashes: np.ndarray, rows_equal: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Group rows by hash, each grouping checked row against row.

    Parameters
    ----------
    hashes : (N,) integer array, equal for equal rows
    rows_equal : ``rows_equal(a, b)`` -> (M,) bool, whether rows ``a[p]`` and
        ``b[p]`` are equal

    Returns
    -------
    None when every row is distinct; else ``(inverse, first)``: ``inverse``
    (N,) int64, the group of each row; ``first`` (G,) int64, each group's
    smallest row, ascending (groups are numbered in that order).
    """
    n = hashes.shape[0]
    if n < 2:
        return None
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    repeat = sorted_hashes[1:] == sorted_hashes[:-1]
    if not repeat.any():
        return None
    run_start = np.ones(n, np.bool_)
    run_start[1:] = ~repeat
    # each row's candidate group: the first (smallest) row of its run of equal hashes
    rep_sorted = order[run_start][np.cumsum(run_start) - 1]
    check = np.flatnonzero(~run_start)
    same = rows_equal(order[check], rep_sorted[check])
    rep_sorted[check[~same]] = order[check[~same]]  # a collision: its own group
    rep = np.empty(n, np.int64)
    rep[order] = rep_sorted
    first = np.flatnonzero(rep == np.arange(n))
    if first.shape[0] == n:
        return None
    return np.searchsorted(first, rep).astype(np.int64), first.astype(np.int64)


def _transfers(x: Any) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]:
    """``(to_x, to_host)``: numpy array -> the kind of ``x`` (a tensor on its
    device, or an array), and back."""
    if is_torch_tensor(x):
        import torch

        return (lambda a: torch.from_numpy(a).to(x.device)), (lambda t: t.cpu().numpy())
    return np.asarray, np.asarray


def duplicate_groups(x: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`group_rows` of a (N, D) float array (Numba) or tensor (torch, on
    its device)."""
    if is_torch_tensor(x):
        from fastconvex.kernels.triton.duplicates import row_hashes, rows_equal

        to_x, to_host = _transfers(x)
        return group_rows(to_host(row_hashes(x)), lambda a, b: to_host(rows_equal(x, to_x(a), to_x(b))))
    from fastconvex.kernels.numba.duplicates import row_hashes, rows_equal

    x = np.ascontiguousarray(x)
    return group_rows(row_hashes(x), lambda a, b: rows_equal(x, a, b))


def knn_over_distinct_rows(x: Any, k: int, knn: Callable[[Any, int], tuple[Any, Any]]) -> tuple[Any, Any, int]:
    """``knn(x, k)`` run on the distinct rows of ``x`` only, expanded to every row.

    Parameters
    ----------
    x : (N, D) float32/float64 numpy array, or torch tensor (any device)
    k : neighbours per row, 1 <= k <= N - 1
    knn : ``knn(rows, k) -> (indices, distances)``, the backend's exact kNN of
        rows of ``x`` (of the same kind as ``x``), ascending by (distance,
        index): numpy arrays, or tensors on ``x``'s device.

    Returns
    -------
    indices (N, k) int64, distances (N, k) float64 -- numpy arrays, or tensors
    on ``x``'s device for a tensor ``x`` -- and the number of distinct rows.
    """
    groups = duplicate_groups(x)
    if groups is None:
        idx, dist = knn(x, k)
        return idx, dist, int(x.shape[0])
    from fastconvex.kernels.numba.duplicates import expand_knn

    inverse, first = groups
    n_groups = int(first.shape[0])
    ku = min(k, n_groups - 1)
    to_x, to_host = _transfers(x)
    if ku > 0:
        u_idx, u_dist = (to_host(t) for t in knn(x[to_x(first)], ku))
    else:  # every row is the same point
        u_idx, u_dist = np.empty((1, 0), np.int64), np.empty((1, 0), np.float64)
    idx, dist = expand_knn(u_idx, u_dist, inverse, k)
    return to_x(idx), to_x(dist), n_groups
