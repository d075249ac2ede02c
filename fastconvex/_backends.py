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


# layers with at least this many points get progress bars inside the layer
# (kNN rows, searches): below it a layer takes a few seconds at most
INNER_PROGRESS_MIN_POINTS = 20_000


def _announce_numba_compilation() -> None:
    """On a cold Numba cache (a fresh install), say once that the kernels compile."""
    from ._progress import announce_compilation
    from .kernels.numba import cover, graph, knn, paths

    announce_compilation([knn._update_topk_from_gram, knn._rerank_exact, graph.union_csr,
                          paths._run, cover.greedy_pair_cover])


class NumbaEngine:
    """CPU: BLAS-blocked exact kNN, CSR union graph, parallel Dijkstra.

    ``progress=True`` shows bars inside the layer (kNN rows, then searches)
    for layers of at least :data:`INNER_PROGRESS_MIN_POINTS` points.

    The kNN of the distinct rows (:meth:`distinct_knn`) and the per-source path
    sums (:meth:`source_parts`) are the two steps the Ray engine
    (:class:`fastconvex._ray.ShardedEngine`) splits over workers; both split
    exactly (query rows, sources), so its results equal this engine's.
    """

    name = "numba"

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress
        _announce_numba_compilation()

    @staticmethod
    def _host(x: Any) -> np.ndarray:
        return as_kernel_float(to_numpy(x) if is_torch_tensor(x) else np.asarray(x))

    def _inner(self, n: int) -> bool:
        return bool(self.progress) and n >= INNER_PROGRESS_MIN_POINTS

    def distinct_knn(self, rows: np.ndarray, k: int, progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact kNN of every row of ``rows`` (no duplicate rows)."""
        from .kernels.numba.knn import knn

        indices, distances, _ = knn(rows, k, progress=progress)
        return indices, distances

    def knn(self, x: Any, k: int) -> KNNGraph:
        from ._duplicates import knn_over_distinct_rows
        from ._progress import Progress

        host = self._host(x)
        with Progress(host.shape[0], "rows", desc="kNN", leave=False,
                      enabled=self._inner(host.shape[0])) as bar:
            report = bar.set if bar.enabled else None
            indices, distances, _ = knn_over_distinct_rows(
                host, k, lambda rows, kd: self.distinct_knn(rows, kd, report))
        return KNNGraph(indices, distances, self.name)

    def source_parts(self, csr: tuple[np.ndarray, np.ndarray, np.ndarray], codes: np.ndarray,
                     plan: PairPlan, progress: Any = None) -> list[tuple[np.ndarray, ...]]:
        """Path sums of every source, as one part (see :func:`source_sums`)."""
        return [source_sums(csr, codes, plan, 0, plan.n_sources, progress)]

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats:
        from ._progress import Progress
        from .kernels.numba.graph import union_csr

        graph = self.knn(x, k)
        csr = union_csr(graph.indices, graph.distances)
        with Progress(plan.n_sources, "sources", desc="paths", leave=False,
                      enabled=self._inner(graph.n_points)) as bar:
            parts = self.source_parts(csr, codes, plan, bar.update if bar.enabled else None)
        return stats_from_parts(plan, parts)


def source_sums(csr: tuple[np.ndarray, np.ndarray, np.ndarray], codes: np.ndarray, plan: PairPlan,
                s0: int, s1: int, progress: Any = None) -> tuple[np.ndarray, ...]:
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
        return tuple(np.asarray(a) for a in class_sums(indptr, nbr, w, codes, sources, plan.class_sizes,
                                                       progress=progress))
    t0, t1 = int(plan.target_ptr[s0]), int(plan.target_ptr[s1])
    ptr = plan.target_ptr[s0 : s1 + 1] - t0
    scores, reachable = pair_scores(indptr, nbr, w, codes, sources, ptr, plan.targets[t0:t1], progress=progress)
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


def check_device_here(device: Any, what: str = "device") -> None:
    """``device`` (None, "cpu", "cuda", "cuda:N" or a torch.device) must be
    valid and exist on this machine: a CUDA device without CUDA, or beyond the
    devices torch sees, is a ValueError naming the argument ``what`` (a usage
    error: the request cannot be met here), raised before any work rather than
    by torch after it."""
    check_device(device)
    if device is None:
        return
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return
    asked = f"{what} {str(device)!r}" if what.startswith("--") else f"{what}={str(device)!r}"
    if not torch.cuda.is_available():
        why = " (this torch is built without CUDA)" if torch.version.cuda is None else ""
        cpu = f"{what} cpu" if what.startswith("--") else f"{what}='cpu'"
        raise ValueError(f"{asked} was requested, but no CUDA device is visible to torch here{why}; use {cpu}")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{asked} was requested, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                         f"here (cuda:0..cuda:{torch.cuda.device_count() - 1})")


def check_backend_name(backend: Any) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ValueError."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, x: Any = None, device: Any = None) -> str:
    """The concrete backend name for ``backend`` ("auto" resolved)."""
    check_backend_name(backend)
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


def get_engine(name: str, device: Any = None, *, progress: bool = False) -> Engine:
    """The engine of backend ``name``; ``progress``: bars inside a layer (Numba)."""
    if name == "numba":
        return NumbaEngine(progress=progress)
    if name == "naive":
        from .naive import NaiveEngine

        return NaiveEngine()
    if name == "triton":
        from ._triton_backend import TritonEngine

        return TritonEngine(device)
    raise ValueError(f"unknown backend {name!r}")  # pragma: no cover
