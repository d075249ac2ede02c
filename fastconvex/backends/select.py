"""Backend selection and the engines that run one layer's pipeline.

An engine turns (embeddings, class codes, pair plan, k) into per-source path
statistics; everything before (validation, sampling) and after (aggregation)
is shared host code, so every backend scores the same pairs the same way.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from fastconvex.backends.numba import NumbaEngine
from fastconvex.core.devices import check_device
from fastconvex.core.inputs import is_torch_tensor
from fastconvex.core.pairs import (
    PairPlan,
    SourceStats,
)
from fastconvex.core.results import KNNGraph

BACKENDS = ("auto", "triton", "numba", "naive")
ENV_VAR = "FASTCONVEX_BACKEND"


class Engine(Protocol):
    name: str

    def knn(self, x: Any, k: int) -> KNNGraph: ...

    def source_stats(self, x: Any, codes: np.ndarray, plan: PairPlan, k: int) -> SourceStats: ...


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


def get_engine(
    name: str,
    device: Any = None,
    *,
    progress: bool = False,
    ray: Any = None,
    shards: int | None = None,
    requested: str | None = None,
) -> Engine:
    """The engine of backend ``name``; ``progress``: bars inside a layer (Numba).

    With ``ray`` (a connected Ray, ``engine="ray"``) the Numba engine's two
    heavy steps are split over ``shards`` Ray tasks (default: one per CPU of
    the cluster): :class:`~fastconvex.backends.ray.ShardedEngine`, which gives
    the one-process result bit for bit. It shards the Numba kernels only
    (``requested``: the backend the caller asked for, named in that error).
    """
    if ray is not None:
        if name != "numba":
            raise ValueError(
                f"engine='ray' shards the Numba kernels: backend={requested or name!r} resolved to "
                f"{name!r}; use backend='numba' (or 'auto' on CPU data)"
            )
        from fastconvex.backends.ray import ShardedEngine

        return ShardedEngine(ray, shards or max(1, int(ray.cluster_resources().get("CPU", 1))))
    if name == "numba":
        return NumbaEngine(progress=progress)
    if name == "naive":
        from fastconvex.backends.naive import NaiveEngine

        return NaiveEngine()
    if name == "triton":
        from fastconvex.backends.triton import TritonEngine

        return TritonEngine(device)
    raise ValueError(f"unknown backend {name!r}")  # pragma: no cover
