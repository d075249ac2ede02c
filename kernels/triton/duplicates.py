"""Finding exact duplicate rows of a device tensor (torch ops, on the data's own
device): the same two steps as :mod:`fastconvex.kernels.numba.duplicates` —
a 64-bit hash per row, and a row-by-row equality check — so the data never
leave the device; only the (N,) hashes do.

Public entry points: :func:`row_hashes`, :func:`rows_equal`.
"""

from __future__ import annotations

import torch

from fastconvex.kernels.numba.duplicates import hash_coefficients

# elements per chunk (int64 temporaries of this size)
_CHUNK_ELEMENTS = 1 << 24
_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64


def _row_step(dim: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(dim, 1))


def row_hashes(x: torch.Tensor) -> torch.Tensor:
    """(N,) int64 hash of each row of a (N, D) float32/float64 tensor (rows
    equal as numbers hash alike: -0.0 as 0.0). Integer products wrap."""
    n, dim = x.shape
    bits_dtype = torch.int32 if x.dtype == torch.float32 else torch.int64
    coeffs = torch.from_numpy(hash_coefficients(dim).view("int64")).to(x.device)
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    step = _row_step(dim)
    for r0 in range(0, n, step):
        # + 0.0 turns -0.0 into 0.0
        b = (x[r0 : r0 + step] + 0.0).view(bits_dtype).to(torch.int64)
        b *= _MIX
        b ^= b >> 29
        b *= coeffs
        out[r0 : r0 + step] = b.sum(dim=1)
    return out


def rows_equal(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M,) bool: whether rows ``a[p]`` and ``b[p]`` of ``x`` are equal as numbers."""
    out = torch.empty(a.shape[0], dtype=torch.bool, device=x.device)
    step = _row_step(x.shape[1])
    for r0 in range(0, a.shape[0], step):
        out[r0 : r0 + step] = (x[a[r0 : r0 + step]] == x[b[r0 : r0 + step]]).all(dim=1)
    return out
