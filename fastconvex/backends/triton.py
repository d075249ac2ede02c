"""The Triton engine: fused exact kNN, union CSR built with torch, batched
Bellman-Ford path statistics — all on the device (CUDA, or CPU tensors under
``TRITON_INTERPRET=1``, where the same kernels run in Triton's interpreter).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from fastconvex.core.inputs import as_kernel_float, is_torch_tensor
from fastconvex.core.pairs import (
    PairPlan,
    SourceStats,
    stats_from_class_sums,
    stats_from_pair_scores,
)
from fastconvex.core.results import KNNGraph


def _now() -> float:
    import time

    return time.perf_counter()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _current_device(device):
    """Make ``device`` CUDA's current device for the block: Triton launches on
    the current device and its current stream, not on its arguments' device
    (inputs on cuda:1 would otherwise be read by a kernel running on cuda:0)."""
    import torch

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _resolve_device(device: Any):
    import torch

    if device is not None:
        return torch.device(device)
    if os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class TritonEngine:
    """GPU engine (Triton kernels); see ``docs/gpu.md``.

    Parameters
    ----------
    device : None | str | torch.device
        None: the input tensor's device when it is CUDA, else ``cuda`` if
        available, else the CPU (only under ``TRITON_INTERPRET=1``).
    options : keyword arguments forwarded to the kernels' launchers
        (``knn_options`` for :func:`fastconvex.kernels.triton.knn.knn`,
        ``path_options`` for the shortest-path driver).
    reorder : {"degree", "rcm", "none"} or None
        How to renumber the graph's vertices before the path search: "degree"
        (the default; groups vertices of similar degree so the kernel's edge
        loops are not held up by hubs), "rcm" (reverse Cuthill-McKee, on the
        host) or "none". None reads ``FASTCONVEX_TRITON_REORDER``, else "degree".
    """

    name = "triton"

    def __init__(
        self,
        device: Any = None,
        *,
        knn_options: dict | None = None,
        path_options: dict | None = None,
        reorder: str | None = None,
    ):
        self._device_arg = device
        self.knn_options = dict(knn_options or {})
        self.path_options = dict(path_options or {})
        from fastconvex.kernels.triton.graph import VERTEX_ORDERS

        self.reorder = reorder or os.environ.get("FASTCONVEX_TRITON_REORDER") or "degree"
        if self.reorder not in VERTEX_ORDERS:
            raise ValueError(
                f"reorder must be one of {VERTEX_ORDERS}, got {self.reorder!r}"
                + ("" if reorder else " (from FASTCONVEX_TRITON_REORDER)")
            )
        self.last_stats: dict = {}

    def _device_for(self, x: Any):

        if self._device_arg is None and is_torch_tensor(x) and x.is_cuda:
            return x.device
        dev = _resolve_device(self._device_arg)
        if dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on the CPU needs TRITON_INTERPRET=1 set before triton is imported")
        return dev

    def _to_device(self, x: Any):
        import torch

        dev = self._device_for(x)
        if is_torch_tensor(x):
            t = x.detach()
        else:
            t = torch.from_numpy(np.ascontiguousarray(as_kernel_float(np.asarray(x))))
        if t.dtype not in (torch.float32, torch.float64):
            # float16/bfloat16 -> float32 (exact); integers -> float64 as on the CPU
            t = t.float() if t.dtype.is_floating_point else t.double()
        return t.to(dev).contiguous()

    def _knn_device(self, x: Any, k: int):
        from fastconvex.backends.duplicates import knn_over_distinct_rows
        from fastconvex.kernels.triton.knn import knn

        t0 = _now()
        xt = self._to_device(x)
        # (the defaults stand when every row is the same point: no search runs)
        stats: dict = {"tiers": [], "brute_force_rows": 0, "n_fallback": 0}

        def distinct_knn(rows, kd):
            idx, dist, n_fallback, knn_stats = knn(rows, kd, return_stats=True, **self.knn_options)
            stats.update(knn_stats, n_fallback=n_fallback)
            return idx, dist

        idx, dist, stats["distinct_rows"] = knn_over_distinct_rows(xt, k, distinct_knn)
        _sync(xt.device)
        stats["seconds"] = _now() - t0
        self.last_stats = {"knn": stats}
        return xt, idx, dist

    def knn(self, x: Any, k: int) -> KNNGraph:
        with _current_device(self._device_for(x)):
            _, idx, dist = self._knn_device(x, k)
        return KNNGraph(idx.cpu().numpy(), dist.cpu().numpy(), self.name)

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats:
        with _current_device(self._device_for(x)):
            return self._source_stats(x, codes, plan, k)

    def _source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats:
        import torch

        from fastconvex.kernels.triton.graph import reorder_graph, union_csr
        from fastconvex.kernels.triton.paths import class_sums, pair_scores

        xt, idx, dist = self._knn_device(x, k)
        dev = xt.device
        del xt
        t0 = _now()
        indptr, nbr, w = union_csr(idx, dist)
        del idx, dist
        codes_t = torch.as_tensor(np.asarray(codes, np.int64), device=dev)
        sources = torch.as_tensor(plan.sources, device=dev)
        targets = None if plan.class_mode else torch.as_tensor(plan.targets, device=dev)
        indptr, nbr, w, order, inv = reorder_graph(indptr, nbr, w, self.reorder)
        if order is not None:
            codes_t = codes_t[order]
            sources = inv[sources]
            if targets is not None:
                targets = inv[targets]
        _sync(dev)
        self.last_stats["graph"] = {"seconds": _now() - t0, "edges": int(nbr.shape[0]), "reorder": self.reorder}
        t0 = _now()
        path_stats: dict = {}
        opts = dict(self.path_options)
        opts["stats"] = path_stats
        if plan.class_mode:
            sizes = torch.as_tensor(plan.class_sizes, device=dev)
            sums, sumsq, unreach = class_sums(indptr, nbr, w, codes_t, sources, sizes, **opts)
            path_stats["seconds"] = _now() - t0
            self.last_stats["paths"] = path_stats
            return stats_from_class_sums(plan, sums.cpu().numpy(), sumsq.cpu().numpy(), unreach.cpu().numpy())
        ptr = torch.as_tensor(plan.target_ptr, device=dev)
        scores, reachable = pair_scores(indptr, nbr, w, codes_t, sources, ptr, targets, **opts)
        path_stats["seconds"] = _now() - t0
        self.last_stats["paths"] = path_stats
        return stats_from_pair_scores(plan, scores.cpu().numpy(), reachable.cpu().numpy())
