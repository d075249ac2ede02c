"""Shared pytest setup."""

from __future__ import annotations

import os

# --- Triton interpreter (tests/test_triton.py) -------------------------------
# Without a CUDA device the Triton kernels run on CPU tensors through Triton's
# interpreter, which must be switched on before anything imports triton.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        _has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001  # pragma: no cover - torch is a core dependency
        _has_cuda = False
    if not _has_cuda:
        os.environ["TRITON_INTERPRET"] = "1"
# -----------------------------------------------------------------------------
