"""Union symmetrization of a kNN list into an undirected CSR graph, on the device
(torch ops: both directions concatenated, sorted by (row, col), deduplicated).

Zero-length edges (exact duplicates) are kept, as on the CPU.

Public entry points: :func:`union_csr`, the vertex orders :func:`degree_order`
and :func:`rcm_order`, :func:`permute_csr` and :func:`reorder_graph`.
"""

from __future__ import annotations

import numpy as np
import torch


def union_csr(indices: torch.Tensor, distances: torch.Tensor):
    """Undirected kNN graph in CSR form (same content as the CPU ``union_csr``).

    Parameters
    ----------
    indices : (N, k) int64 tensor of neighbour indices
    distances : (N, k) float64 tensor of distances matching ``indices``

    Returns
    -------
    indptr : (N + 1,) int64 tensor
    neighbours : (E,) int64 tensor, ascending within each row, no repeats
    weights : (E,) float64 tensor of edge lengths (zero for duplicates)
    """
    n, k = indices.shape
    device = indices.device
    rows = torch.arange(n, device=device, dtype=torch.int64).repeat_interleave(k)
    cols = indices.reshape(-1).to(torch.int64)
    w = distances.reshape(-1).to(torch.float64)
    src = torch.cat([rows, cols])
    dst = torch.cat([cols, rows])
    ww = torch.cat([w, w])
    key = src * n + dst
    key, order = torch.sort(key, stable=True)
    ww = ww[order]
    keep = torch.ones_like(key, dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    key = key[keep]
    ww = ww[keep]
    src = key // n
    nbr = key - src * n
    counts = torch.bincount(src, minlength=n)
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=indptr[1:])
    return indptr, nbr, ww


def rcm_order(indptr: torch.Tensor, neighbours: torch.Tensor) -> np.ndarray:
    """Reverse Cuthill-McKee vertex order (scipy, on the host): ``order[new] = old``."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    ip = indptr.cpu().numpy()
    nb = neighbours.cpu().numpy()
    n = ip.shape[0] - 1
    mat = csr_matrix((np.ones(nb.shape[0], np.int8), nb, ip), shape=(n, n))
    return np.asarray(reverse_cuthill_mckee(mat, symmetric_mode=True), dtype=np.int64)


DEGREE_BINS_PER_OCTAVE = 4


def degree_order(indptr: torch.Tensor) -> torch.Tensor:
    """Vertices grouped by degree (on the device): ``order[new] = old``.

    The path kernel gives each program a block of consecutive vertices and runs
    its edge loop to the block's largest degree. kNN graphs of high-dimensional
    embeddings have hubs (in-degree in the thousands beside a median near k),
    so in the input order most loop slots are idle. Degrees are binned in
    steps of 2**(1/4) and vertices keep their input order inside a bin, so
    consecutive frames of one utterance stay close where they share a bin.
    """
    return torch.sort(degree_bins(indptr), stable=True).indices


# 2**(j / 4), j = 1, 2, 3: the bin edges inside an octave (float64, rounded)
_OCTAVE_EDGES = tuple(2.0 ** (j / DEGREE_BINS_PER_OCTAVE) for j in range(1, DEGREE_BINS_PER_OCTAVE))


def degree_bins(indptr: torch.Tensor) -> torch.Tensor:
    """floor(4 log2(degree)) of every vertex (degree 0 counts as 1), exactly.

    ``torch.log2`` is not exact on every device (on CUDA log2(8) can round
    below 3, moving degree 8 to the bin below), so the octave comes from the
    float's exponent and the quarter from comparisons of the mantissa with the
    edges 2**(j/4): an integer degree's mantissa (any degree below 2**52) never
    equals an edge's rounded value, so each comparison is that of the exact
    real numbers.
    """
    deg = (indptr[1:] - indptr[:-1]).clamp_min(1).to(torch.float64)
    mantissa, exponent = torch.frexp(deg)  # deg = mantissa * 2**exponent, mantissa in [0.5, 1)
    frac = 2.0 * mantissa  # in [1, 2): deg / 2**(exponent - 1)
    key = DEGREE_BINS_PER_OCTAVE * (exponent.to(torch.int64) - 1)
    for edge in _OCTAVE_EDGES:
        key = key + (frac >= edge).to(torch.int64)
    return key


def permute_csr(indptr: torch.Tensor, neighbours: torch.Tensor, weights: torch.Tensor, order: torch.Tensor):
    """The same graph with vertex ``order[new]`` renamed ``new`` (rows re-sorted)."""
    n = indptr.shape[0] - 1
    device = indptr.device
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n, device=device, dtype=order.dtype)
    deg = indptr[1:] - indptr[:-1]
    rows_old = torch.arange(n, device=device).repeat_interleave(deg)
    src = inv[rows_old]
    dst = inv[neighbours]
    key, p = torch.sort(src * n + dst)
    new_src = key // n
    counts = torch.bincount(new_src, minlength=n)
    ip = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=ip[1:])
    return ip, key - new_src * n, weights[p], inv


VERTEX_ORDERS = ("none", "degree", "rcm")


def reorder_graph(indptr: torch.Tensor, neighbours: torch.Tensor, weights: torch.Tensor, how: str):
    """Renumber the graph's vertices by ``how`` (one of :data:`VERTEX_ORDERS`).

    Returns ``(indptr, neighbours, weights, order, inverse)``: ``order[new] = old``,
    ``inverse[old] = new``; both None for ``"none"`` (the graph is returned as is).
    """
    if how == "none":
        return indptr, neighbours, weights, None, None
    if how == "degree":
        order = degree_order(indptr)
    elif how == "rcm":
        order = torch.as_tensor(rcm_order(indptr, neighbours), device=indptr.device)
    else:
        raise ValueError(f"vertex order must be one of {VERTEX_ORDERS}, got {how!r}")
    ip, nb, w, inverse = permute_csr(indptr, neighbours, weights, order)
    return ip, nb, w, order, inverse
