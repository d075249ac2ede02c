"""Checks of a ``device`` argument: a device torch knows, and one this
machine has (checked before any work, with a message naming the argument)."""

from __future__ import annotations

from typing import Any

from fastconvex.core.inputs import is_torch_tensor


def check_device(device: Any) -> None:
    """``device``: None, "cpu", "cuda", "cuda:N" or a torch.device of those types."""
    if device is None:
        return
    if is_torch_tensor(device) or (not isinstance(device, str) and type(device).__name__ != "device"):
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
        raise ValueError(
            f"{asked} was requested, but torch sees {torch.cuda.device_count()} CUDA device(s) "
            f"here (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
