"""The layer store's format: constants, labels without pickle, hashes, atomic
JSON files and metadata checks (shared by :mod:`._store_write` and
:mod:`._store_read`; the format itself is documented in :mod:`fastconvex.store`)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.core.inputs import check_finite_labels, labels_to_array

FORMAT = "fastconvex-layer-store"
VERSION = 1
MANIFEST = "store.json"
LAYER_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_CHUNK_BYTES = 1 << 26


# ---- labels without pickle ---------------------------------------------------------------------


def _encode_label(value: Any, row: int) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"tuple": [_encode_label(v, row) for v in value]}
    if isinstance(value, frozenset):
        return {"frozenset": [_encode_label(v, row) for v in value]}
    raise TypeError(
        f"labels[{row}] is a {type(value).__name__}: a store keeps labels that are None, "
        "bool, int, float, str, bytes, or tuples/frozensets of those"
    )


def _decode_label(value: Any) -> Any:
    if isinstance(value, dict):
        ((tag, body),) = value.items()
        if tag == "bytes":
            return base64.b64decode(body)
        if tag == "tuple":
            return tuple(_decode_label(v) for v in body)
        if tag == "frozenset":
            return frozenset(_decode_label(v) for v in body)
        raise ValueError(f"unknown label tag {tag!r}")
    return value


def _labels_for_store(labels: Any) -> np.ndarray:
    array = labels_to_array(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {array.shape}")
    if array.dtype.kind not in "biufUSO":
        raise TypeError(f"labels of dtype {array.dtype} cannot be stored")
    check_finite_labels(array)  # refused now, not after the layers are written
    return array


# ---- hashing and atomic files -------------------------------------------------------------------


def _array_sha256(array: np.ndarray) -> str:
    """sha256 of the array's C-order bytes, read in blocks (memmaps never load whole)."""
    digest = hashlib.sha256()
    rows = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, array.shape[0], rows):
        digest.update(np.ascontiguousarray(array[start : start + rows]).data)
    if array.shape[0] == 0:
        digest.update(b"")
    return digest.hexdigest()


def _labels_digest(labels: np.ndarray) -> str:
    if labels.dtype.kind == "O":
        text = json.dumps([_encode_label(v, i) for i, v in enumerate(labels)])
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(labels.dtype.str.encode() + np.ascontiguousarray(labels).tobytes()).hexdigest()


def json_sha256(obj: Any) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys, no spaces, NaN and inf
    as Python writes them): the same for an object and its JSON read back."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_sha256(plan: Any) -> str:
    """sha256 of a pair plan (a dataclass of arrays and scalars): which pairs
    are scored, so results of two draws are never taken for one."""
    import dataclasses

    digest = hashlib.sha256(type(plan).__name__.encode())
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        digest.update(f"\0{f.name}\0".encode())
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    """Versions of the libraries that made the store (read from the installed
    metadata: nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from fastconvex._version import __version__

    out = {"fastconvex": __version__, "numpy": np.__version__}
    for name in ("torch", "transformers", "numba"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _check_meta(meta: Any) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise TypeError(f"meta must be a dict with string keys, got {type(meta).__name__}")
    for key, value in meta.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta[{key!r}] is not JSON-serialisable: {exc}") from None
    return dict(meta)
