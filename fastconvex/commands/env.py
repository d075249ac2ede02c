"""``fastconvex env``: versions, available backends and devices (a readable list, or JSON)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["add_arguments", "environment", "format_environment", "run"]

PACKAGES = ("fastconvex", "numpy", "scipy", "numba", "torch", "triton", "transformers", "soundfile", "matplotlib")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``fastconvex env`` takes only the common options."""


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _numba() -> dict[str, Any]:
    try:
        import numba
    except ImportError as exc:
        return {"available": False, "reason": f"numba cannot be imported: {exc}"}
    return {"available": True, "threads": int(numba.config.NUMBA_NUM_THREADS)}


def _triton() -> dict[str, Any]:
    from fastconvex.backends.select import triton_unavailable_reason

    reason = triton_unavailable_reason()
    info: dict[str, Any] = {"available": reason is None}
    if reason is not None:
        info["reason"] = reason
    else:
        info["interpreter"] = os.environ.get("TRITON_INTERPRET") == "1"
    return info


def _devices() -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        return {"cuda_available": False, "reason": str(exc), "cuda": []}
    cuda = bool(torch.cuda.is_available())
    devices = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 2),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    return {
        "cuda_available": cuda,
        "torch_cuda": torch.version.cuda,
        "cuda": devices,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def environment() -> dict[str, Any]:
    """Versions of Python and the packages, the backends that can run here, and devices.

    Returns
    -------
    dict
        ``{"python", "platform", "packages": {name: version or None},
        "backends": {"numba": {...}, "triton": {...}, "naive": {...}, "auto": name},
        "devices": {...}, "environment": {FASTCONVEX_BACKEND, TRITON_INTERPRET}}``.
    """
    from fastconvex.backends.select import ENV_VAR, resolve_backend

    backends: dict[str, Any] = {"numba": _numba(), "triton": _triton(), "naive": {"available": True}}
    try:
        backends["auto"] = resolve_backend("auto")
    except (ValueError, RuntimeError) as exc:
        backends["auto"] = None
        backends["auto_error"] = str(exc)
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "backends": backends,
        "devices": _devices(),
        "environment": {name: os.environ.get(name) for name in (ENV_VAR, "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")},
    }


def format_environment(env: dict[str, Any]) -> str:
    """The readable form of :func:`environment`: one line per item."""
    lines = [f"python    {env['python']} ({env['executable']})", f"platform  {env['platform']}"]
    lines += [f"{name:<13} {version or '- (not installed)'}" for name, version in env["packages"].items()]
    for name, info in env["backends"].items():
        if isinstance(info, dict):
            extra = f" ({info['threads']} threads)" if "threads" in info else ""
            state = f"available{extra}" if info["available"] else f"unavailable: {info.get('reason')}"
            lines.append(f"backend {name:<6} {state}")
    auto, why = env["backends"]["auto"], env["backends"].get("auto_error")
    lines.append(f"backend auto   -> {auto}" + (f" ({why})" if auto is None and why else ""))
    devices = env["devices"]
    gpus = (
        "; ".join(
            f"cuda:{d['index']} {d['name']} ({d['memory_gib']} GiB, sm {d['capability']})"
            for d in devices.get("cuda") or []
        )
        or "none"
    )
    lines.append(
        f"devices   {devices.get('cpu_count')} CPUs ({devices.get('torch_threads')} torch threads); CUDA: {gpus}"
    )
    lines += [f"env {name}={value if value is not None else '(unset)'}" for name, value in env["environment"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print :func:`environment`: readable, or as JSON (``--json``, ``--out``)."""
    from fastconvex.commands._output import emit_report

    env = environment()
    emit_report(args, env, lambda: format_environment(env))
    return 0
