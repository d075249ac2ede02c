"""The bfloat16 first tier of the CPU kNN: candidates from bfloat16 matrix
products (float32 accumulation) on CPUs that multiply bfloat16 fast (Intel
AMX, AVX512-BF16), certified by a rigorous rounding bound and re-ranked
exactly like the float tiers; the rows it cannot certify go on to the float32
tier.

The product computes squared distances directly, not dot products: row i is
``[-2 x~_i, n_i (three bfloat16 parts), 1, 1, 1]`` and column j is
``[x~_j, 1, 1, 1, n_j (three parts)]`` with ``x~`` the bfloat16 data and ``n``
its squared norm, so ``A_i . B_j = |x~_i - x~_j|^2`` up to the parts' remainder.
Every product of two bfloat16 numbers is exact in float32, and the result is
rounded to bfloat16 once, relative to the *distance* rather than to the
norms: that is what lets a format with an 8-bit significand certify rows at
all. The bound, term by term (scaled units, |x_t| < 1, norms < 1):

1. float32 accumulation of K = D + 6 exact products, any order:
   ``gamma_K (1 + 2**-6) (|x~_i| + |x~_j|)**2`` with ``gamma_K`` taken at twice
   float32's unit roundoff (hardware may accumulate blocks of products in an
   order and rounding we do not control), plus ``4 K 2**-126`` for bfloat16 and
   float32 values flushed to zero (the instructions run with DAZ/FTZ);
2. the squared norms' three-part split and their float64 sums: ``sigma_i``;
3. the result's rounding to bfloat16: ``s >= out / (1 + 2**-8)``;
4. the bfloat16 rounding of the data, in distances: ``| |x~_i - x~_j| - |x_i - x_j| |
   <= rho_i + rho_j`` with ``rho = |x - x~|`` computed per row (float64, rounded
   up by the sum's relative error, (D + 2) 2**-52);
5. the float32 rounding of the centred data (as in the float32 tier):
   ``delta = (1 + 1e-6) 2**-24 |x| + sqrt(D) 2**-149`` per row.

The limit of a row is then
``sqrt(max(0, R/(1+2**-8) - (1) - sigma_i - sigma_max)) - rho_i - rho_max -
delta_i - delta_max`` with ``R`` the row's heap root (the largest bfloat16
squared distance kept), times ``1 - 1e-9`` for the float64 rounding of the
exact distances and of this arithmetic.
"""

from __future__ import annotations

import functools
import math
import os
import platform
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from fastconvex.kernels.numba.candidates import _replace_root, certify

if TYPE_CHECKING:  # torch is imported on first use: importing the kNN stays cheap
    import torch

# "on" / "off" force the tier (benchmarks, tests); anything else: automatic
ENV_VAR = "FASTCONVEX_KNN_BF16"
# rows scored first, spread over the query rows; the tier goes on only if at
# least MIN_CERTIFIED of them certify (a row it cannot certify costs its
# bfloat16 pass on top of the float32 one)
PROBE_ROWS = 256
MIN_CERTIFIED = 0.6
# below this many multiply-adds (query rows x N x D) the float32 pass takes
# well under a second and the tier is not tried
MIN_WORK = 4 * 10**10
_PAD = 32  # K rounded up to whole 64-byte lines of bfloat16
_EMPTY_KEY = np.iinfo(np.int32).max
_U_BF16 = 2.0**-8
_U_F32 = 2.0**-24
CPUINFO = "/proc/cpuinfo"


def candidate_count(k: int, n: int) -> int:
    """Candidates kept per row by the bfloat16 tier: more than the float
    tiers keep, since its keys are coarse (256 steps per octave)."""
    return min(n - 1, k + max(2 * k, 32))


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (x86 AMX-BF16
    or AVX512-BF16; Arm's BF16 extension), read from /proc/cpuinfo. False where
    that cannot be read: the tier is then tried only when forced."""
    try:
        with open(CPUINFO) as f:
            text = f.read()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def operand_width(dim: int) -> int:
    """Columns of the bfloat16 operands: D + 6, padded to whole 64-byte lines."""
    return -(-(dim + 6) // _PAD) * _PAD


@functools.lru_cache(maxsize=8)
def products_are_sound(width: int) -> bool:
    """Whether torch's bfloat16 matrix product here keeps the two properties
    the bound rests on, checked at the tier's operand width and in a matrix
    shape (not a vector product, which may take another kernel):

    - partial sums are float32, not rounded to bfloat16 as they grow (a
      bfloat16 accumulator would drop every 2**-9 added to 1): 1 + (K - 1) 2**-9
      must come out as that sum rounded once, to nearest or toward zero;
    - the result is rounded to nearest or toward zero, never up: 1 + 2**-10
      must come out as 1.

    Rounding the result up would let a computed squared distance exceed the
    exact one by more than the bound's ``2**-8`` share."""
    import torch

    a = torch.zeros(64, width, dtype=torch.float32)
    a[:, 0] = 1.0
    a[0::2, 1:] = 2.0**-9
    a[1::2, 1] = 2.0**-10
    b = torch.ones(96, width, dtype=torch.bfloat16)
    out = torch.mm(a.to(torch.bfloat16), b.T).double()
    total = 1.0 + (width - 1) * 2.0**-9
    nearest = float(torch.tensor(total, dtype=torch.float64).to(torch.float32).to(torch.bfloat16).double())
    spacing = 2.0 ** (math.frexp(total)[1] - 8)  # bfloat16's spacing at total
    toward_zero = math.floor(total / spacing) * spacing
    even = out[0::2]
    sums_ok = bool(((even == nearest) | (even == toward_zero)).all())
    return sums_ok and bool((out[1::2] == 1.0).all())


def mode(requested: bool | None) -> bool | None:
    """True / False when the caller or ``FASTCONVEX_KNN_BF16`` forces the tier,
    None to decide from the CPU and the probe."""
    if requested is not None:
        if not isinstance(requested, (bool, np.bool_)):
            raise TypeError(f"bf16 must be True, False or None, got {requested!r}")
        return bool(requested)
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("on", "1", "true"):
        return True
    if value in ("off", "0", "false"):
        return False
    return None


@njit(parallel=True, cache=True)
def _fold_bf16_tile(tile, row0, self_idx, col0, heap_k, heap_i):
    """Fold one tile of bfloat16 squared distances into the per-row heaps.

    tile   : (br, bc) int16, the bfloat16 bit patterns; for values >= 0 they
             order as the values do, negatives (rounding below zero) count as 0
    heap_k : (H, kc) int32 keys, max-heap per row (_EMPTY_KEY = empty slot)
    """
    br, bc = tile.shape
    kc = heap_k.shape[1]
    for r in prange(br):
        i = self_idx[r]
        hk = heap_k[row0 + r]
        hi = heap_i[row0 + r]
        worst = hk[0]
        for c in range(bc):
            v = max(np.int32(tile[r, c]), np.int32(0))
            if v < worst:
                j = col0 + c
                if j == i:
                    continue
                worst = _replace_root(hk, hi, v, j, kc)


class Bf16Operands:
    """The bfloat16 operands of every row and what the bound needs of them.

    xf : (N, D) float32, the centred, scaled data the float32 tier multiplies
    xf_norm : (N,) float64, its rows' norms (the kNN has them already)
    """

    def __init__(self, xf: np.ndarray, xf_norm: np.ndarray) -> None:
        import torch

        n, dim = xf.shape
        width = operand_width(dim)
        self.k_terms = dim + 6
        xb = torch.from_numpy(xf).to(torch.bfloat16)  # round to nearest even
        xbd = xb.double().numpy()
        norm_sq = np.einsum("ij,ij->i", xbd, xbd)
        # three bfloat16 parts of each squared norm; each remainder is exact in
        # float64 (Sterbenz: the part is within a factor 2 of what it rounds)
        parts = []
        rest = norm_sq.copy()
        for _ in range(3):
            part = torch.from_numpy(rest).to(torch.bfloat16)
            parts.append(part)
            rest = rest - part.double().numpy()
        # the remainder, plus the float64 sums' own error (D products and
        # additions of non-negative terms)
        self.sigma = np.abs(rest) + 2.0 * dim * 2.0**-53 * norm_sq
        # the float64 sums' relative error (D terms) on the norms, rounded up
        up = 1.0 + (dim + 2) * 2.0**-52
        self.norm = np.sqrt(norm_sq) * up
        resid = xf.astype(np.float64) - xbd  # exact: both are float32 values
        self.rho = np.sqrt(np.einsum("ij,ij->i", resid, resid)) * up
        self.delta = (1.0 + 1e-6) * _U_F32 * xf_norm + math.sqrt(dim) * 2.0**-149
        one = torch.ones(n, 3, dtype=torch.bfloat16)
        norm_parts = torch.stack(parts, dim=1)
        pad = torch.zeros(n, width - dim - 6, dtype=torch.bfloat16)
        self.dim = dim
        # one (N, K) array, the column operand; a block of row operands is
        # rearranged from it when needed (half the memory of keeping both)
        self.cols = torch.cat([xb, one, norm_parts, pad], dim=1).contiguous()

    def row_block(self, index: torch.Tensor) -> torch.Tensor:
        """``[-2 x~, n parts, 1, 1, 1]`` of the given rows, so that its product
        with a column ``[x~, 1, 1, 1, n parts]`` is the squared distance
        (the factor -2 is exact in bfloat16)."""
        import torch

        d = self.dim
        c = self.cols.index_select(0, index)
        return torch.cat([c[:, :d] * -2, c[:, d + 3 : d + 6], c[:, d : d + 3], c[:, d + 6 :]], dim=1)

    def limit(self, rows: np.ndarray, root_key: np.ndarray) -> np.ndarray:
        """Lower bound on the exact distance of every non-candidate of each row."""
        k_terms = self.k_terms
        u_acc = 2.0 * _U_F32
        gamma = k_terms * u_acc / (1.0 - k_terms * u_acc)
        decoded = (root_key.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)
        root = np.where(root_key == _EMPTY_KEY, np.inf, decoded)
        big = float(self.norm.max())
        # sum |products| <= |parts of n_i| + |parts of n_j| + 2 |x~_i||x~_j|, and
        # |n1| + |n2| + |n3| <= (1 + 2u + 2u^2 + u^3) n with u = 2**-8
        accumulation = gamma * (1.0 + 2.0**-6) * (self.norm[rows] + big) ** 2 + 4.0 * k_terms * 2.0**-126
        lower_sq = root / (1.0 + _U_BF16) - accumulation - self.sigma[rows] - float(self.sigma.max())
        lower = np.sqrt(np.maximum(lower_sq, 0.0))
        lower -= self.rho[rows] + float(self.rho.max()) + self.delta[rows] + float(self.delta.max())
        lower *= 1.0 - 1e-9
        return np.where(lower_sq > 0.0, lower, 0.0)


def bf16_tier(
    ops: Bf16Operands,
    x: np.ndarray,
    scale: float,
    rows: np.ndarray,
    k: int,
    block_rows: int,
    block_cols: int,
    out_i: np.ndarray,
    out_d: np.ndarray,
    report: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Candidates of ``rows`` from bfloat16 products, re-ranked and certified;
    writes the certified rows' lists into ``out_i`` / ``out_d`` and returns
    the rows left uncertified."""
    import torch

    n = x.shape[0]
    m = rows.shape[0]
    kc = candidate_count(k, n)
    heap_k = np.full((m, kc), _EMPTY_KEY, np.int32)
    heap_i = np.full((m, kc), -1, np.int64)
    index = torch.from_numpy(rows)
    for r0 in range(0, m, block_rows):
        r1 = min(m, r0 + block_rows)
        a = ops.row_block(index[r0:r1])
        for c0 in range(0, n, block_cols):
            c1 = min(n, c0 + block_cols)
            tile = torch.mm(a, ops.cols[c0:c1].T)
            _fold_bf16_tile(tile.view(torch.int16).numpy(), r0, rows[r0:r1], c0, heap_k, heap_i)
        if report is not None:
            report(r1)
    return certify(x, scale, rows, heap_i, ops.limit(rows, heap_k[:, 0]), k, out_i, out_d)
