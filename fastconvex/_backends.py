"""Backend selection and the engines that run one layer's pipeline.

An engine turns (embeddings, class codes, pair plan, k) into per-source path
statistics; everything before (validation, sampling) and after (aggregation)
is shared host code, so every backend scores the same pairs the same way.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from ._inputs import as_kernel_float, is_torch_tensor, to_numpy
from ._pairs import PairPlan, SourceStats, stats_from_class_sums, stats_from_pair_scores
from ._results import KNNGraph

BACKENDS = ("auto", "triton", "numba", "naive")
ENV_VAR = "FASTCONVEX_BACKEND"


class Engine(Protocol):
    name: str

    def knn(self, x: Any, k: int) -> KNNGraph: ...

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats: ...


class NumbaEngine:
    """CPU: BLAS-blocked exact kNN, CSR union graph, parallel Dijkstra.

    The kNN of the distinct rows (:meth:`distinct_knn`) and the per-source path
    sums (:meth:`source_parts`) are the two steps the Ray engine
    (:class:`fastconvex._ray.ShardedEngine`) splits over workers; both split
    exactly (query rows, sources), so its results equal this engine's.
    """

    name = "numba"

    @staticmethod
    def _host(x: Any) -> np.ndarray:
        return as_kernel_float(to_numpy(x) if is_torch_tensor(x) else np.asarray(x))

    def distinct_knn(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN of every row of ``rows`` (no duplicate rows)."""
        from .kernels.numba.knn import knn

        indices, distances, _ = knn(rows, k)
        return indices, distances

    def knn(self, x: Any, k: int) -> KNNGraph:
        from ._duplicates import knn_over_distinct_rows

        indices, distances, _ = knn_over_distinct_rows(self._host(x), k, self.distinct_knn)
        return KNNGraph(indices, distances, self.name)

    def source_parts(self, csr: tuple[np.ndarray, np.ndarray, np.ndarray], codes: np.ndarray,
                     plan: PairPlan) -> list[tuple[np.ndarray, ...]]:
        """Path sums of every source, as one part (see :func:`source_sums`)."""
        return [source_sums(csr, codes, plan, 0, plan.n_sources)]

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats:
        from .kernels.numba.graph import union_csr

        graph = self.knn(x, k)
        csr = union_csr(graph.indices, graph.distances)
        return stats_from_parts(plan, self.source_parts(csr, codes, plan))


def source_sums(csr: tuple[np.ndarray, np.ndarray, np.ndarray], codes: np.ndarray, plan: PairPlan,
                s0: int, s1: int) -> tuple[np.ndarray, ...]:
    """Shortest-path sums of sources ``plan.sources[s0:s1]`` on the union graph
    ``csr`` (indptr, neighbours, weights). Each source is independent, so parts
    over consecutive source ranges concatenate to the whole.

    Returns
    -------
    class mode: (sums, sumsq, n_unreachable), each (s1 - s0,)
    explicit targets: (scores, reachable), each of the ranges' pairs
    """
    from .kernels.numba.paths import class_sums, pair_scores

    indptr, nbr, w = csr
    sources = plan.sources[s0:s1]
    if plan.class_mode:
        return tuple(np.asarray(a) for a in class_sums(indptr, nbr, w, codes, sources, plan.class_sizes))
    t0, t1 = int(plan.target_ptr[s0]), int(plan.target_ptr[s1])
    ptr = plan.target_ptr[s0 : s1 + 1] - t0
    scores, reachable = pair_scores(indptr, nbr, w, codes, sources, ptr, plan.targets[t0:t1])
    return np.asarray(scores), np.asarray(reachable)


def stats_from_parts(plan: PairPlan, parts: list[tuple[np.ndarray, ...]]) -> SourceStats:
    """Concatenate :func:`source_sums` parts (in source order) into SourceStats."""
    joined = [np.concatenate(column) for column in zip(*parts)]
    if plan.class_mode:
        return stats_from_class_sums(plan, *joined)
    return stats_from_pair_scores(plan, *joined)


def _wants_cuda(x: Any, device: Any) -> bool:
    if device is not None:
        return str(device).startswith("cuda")
    return is_torch_tensor(x) and x.is_cuda


def triton_unavailable_reason(device: Any = None) -> str | None:
    """Why the Triton backend cannot run here (None if it can)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed (pip install 'fastconvex[gpu]')"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if not torch.cuda.is_available():
        return (
            "no CUDA device is visible to torch (set TRITON_INTERPRET=1 before importing "
            "triton to run the kernels on the CPU through Triton's interpreter)"
        )
    if device is not None and not str(device).startswith("cuda"):
        return f"device={device!r} is not a CUDA device"
    return None


def check_device(device: Any) -> None:
    """``device``: None, "cpu", "cuda", "cuda:N" or a torch.device of those types."""
    if device is None:
        return
    if is_torch_tensor(device) or not isinstance(device, str) and type(device).__name__ != "device":
        raise TypeError(f"device must be None, a string such as 'cuda:0', or a torch.device; got {device!r}")
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a device torch knows") from None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: fastconvex runs on 'cpu' or 'cuda' devices, not {kind!r}")


def resolve_backend(backend: str, x: Any = None, device: Any = None) -> str:
    """The concrete backend name for ``backend`` ("auto" resolved)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_device(device)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        wants_cuda = _wants_cuda(x, device)
        reason = triton_unavailable_reason(device) if wants_cuda else None
        if wants_cuda and device is not None and reason is not None:
            # the caller named a CUDA device: running on the CPU instead would
            # silently answer a different request
            raise RuntimeError(f"device={device!r} was requested, but the GPU backend cannot run: {reason}")
        backend = "triton" if wants_cuda and reason is None else "numba"
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}")
    if device is not None and backend in ("numba", "naive") and str(device).startswith("cuda"):
        raise RuntimeError(f"backend={backend!r} runs on the CPU; it cannot use device={device!r}")
    return backend


def get_engine(name: str, device: Any = None) -> Engine:
    if name == "numba":
        return NumbaEngine()
    if name == "naive":
        from .naive import NaiveEngine

        return NaiveEngine()
    if name == "triton":
        from ._triton_backend import TritonEngine

        return TritonEngine(device)
    raise ValueError(f"unknown backend {name!r}")  # pragma: no cover
