"""The layer store: one model's hidden states on one dataset, on disk.

A store is a directory::

    STORE/
      store.json            the manifest (below), written last
      layer_000.npy ...     one (N, D) .npy per layer, float16/float32/float64,
                            memory-mappable (``numpy.load(..., mmap_mode="r")``)
      labels/labels.npy     the (N,) labels when they form a plain numpy array
                            (ints, floats, bools, strings, bytes) ...
      labels/labels.json    ... or, for mixed or other hashable labels, a JSON list
                            with tagged values (tuples, bytes; no pickle, ever)
      labels/utterance.npy  optional (N,) int64: the utterance of each row when
                            the rows are frames

``store.json`` holds ``format`` ("fastconvex-layer-store"), ``version`` (1),
``n_points``, one entry per layer (``file``, ``shape``, ``dtype``, ``sha256`` of
the array's bytes), the labels' and utterance index's file and ``sha256``,
``meta`` (the caller's metadata: model, checkpoint, pooling ...) and
``versions`` (library versions). The store's fingerprint is a sha256 over the
files' hashes and shapes (the content, not when it was written).

Writes are atomic: everything goes to a hidden sibling directory that is renamed
onto ``STORE`` once complete, so a store is either whole or absent. An existing
path is never replaced without ``overwrite=True``. ``open_store`` checks every
file against the manifest (shapes, dtypes, sizes) and names the file that is
missing, truncated or inconsistent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ._inputs import is_torch_tensor, labels_to_array, to_numpy

FORMAT = "fastconvex-layer-store"
VERSION = 1
MANIFEST = "store.json"
LAYER_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_CHUNK_BYTES = 1 << 26

__all__ = ["LayerStore", "StoreWriter", "open_store", "save_store"]


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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, allow_nan=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    """Versions of the libraries that made the store (read from the installed
    metadata: nothing heavy is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

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


def _layer_array(layer: Any, index: int) -> np.ndarray:
    if is_torch_tensor(layer):
        layer = to_numpy(layer)
    array = np.asarray(layer)
    if array.ndim != 2:
        raise ValueError(f"layers[{index}] must be 2-D (N, D), got shape {array.shape}")
    if array.dtype not in LAYER_DTYPES:
        raise TypeError(
            f"layers[{index}] has dtype {array.dtype}; a store holds float16, float32 or float64 "
            "layers (cast it yourself: nothing is converted silently)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"layers[{index}] is empty (shape {array.shape})")
    return array


# ---- writing ------------------------------------------------------------------------------------


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists (pass overwrite=True / --overwrite to replace it)")
    if not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a directory; not replacing it")
    if not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise FileExistsError(
            f"{str(path)!r} is a non-empty directory that is not a layer store; not replacing it"
        )


def mark_block_done(partial_dir: str | os.PathLike[str], block: int, payload: Any = None) -> None:
    """Record row block ``block`` of a partial store as written (its data
    flushed first): one small file per block, written atomically, so writers
    of disjoint blocks (Ray workers) never race."""
    folder = Path(partial_dir) / "done"
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"block_{int(block):06d}.json", payload)


class StoreWriter:
    """Write a store row block by row block (memory bounded by one block).

    ``StoreWriter(path, n_points, labels)`` then :meth:`layer` (one whole layer)
    or :meth:`allocate` + :meth:`write_rows`, then :meth:`finish`. Everything
    lives in ``<parent>/.<name>.partial`` until :meth:`finish` renames it onto
    ``path``; with ``resume=True`` an existing partial directory from an
    interrupted writer is reused (see :meth:`done_blocks`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        labels: Any,
        *,
        meta: dict[str, Any] | None = None,
        utterance: Any = None,
        overwrite: bool = False,
        resume: bool = False,
        job: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        _check_target(self.path, self.overwrite)
        self.meta = _check_meta(meta)
        self.labels = _labels_for_store(labels)
        self.n_points = int(self.labels.shape[0])
        if self.n_points == 0:
            raise ValueError("labels is empty: a store needs at least one row")
        self.utterance = None
        if utterance is not None:
            u = to_numpy(utterance) if is_torch_tensor(utterance) else np.asarray(utterance)
            if u.shape != (self.n_points,) or u.dtype.kind not in "iu":
                raise ValueError(
                    f"utterance must be ({self.n_points},) integers, got shape {u.shape} dtype {u.dtype}"
                )
            self.utterance = u.astype(np.int64, copy=False)
        suffix = "partial" if resume else f"tmp-{uuid.uuid4().hex[:8]}"
        self.tmp = self.path.parent / f".{self.path.name}.{suffix}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layers: list[dict[str, Any]] = []
        job_file = self.tmp / "job.json"
        signature = json.loads(json.dumps(
            {"job": job, "n_points": self.n_points, "labels": _labels_digest(self.labels),
             "utterance": None if self.utterance is None else _array_sha256(self.utterance)}, default=str))
        if self.tmp.exists():
            try:
                with open(job_file, encoding="utf-8") as fh:
                    old = json.load(fh)
            except (OSError, ValueError):
                old = None
            if old != signature:
                raise ValueError(
                    f"{self.tmp} holds an interrupted write of a different job (model, audio, labels or "
                    "options differ, see its job.json); remove it to start over"
                )
            if (self.tmp / "info.json").is_file():
                with open(self.tmp / "info.json", encoding="utf-8") as fh:
                    self.meta = {**json.load(fh), **self.meta}
        else:
            self.tmp.mkdir()
            write_json_atomic(job_file, signature)

    # -- whole layers
    def layer(self, layer: Any) -> None:
        """Append one (N, D) layer."""
        index = len(self.layers)
        array = _layer_array(layer, index)
        if array.shape[0] != self.n_points:
            raise ValueError(
                f"layers[{index}] has N={array.shape[0]} rows but labels has {self.n_points} entries"
            )
        out = self.allocate(array.shape[1], array.dtype)[0]
        rows = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, array.shape[0], rows):
            out[start : start + rows] = array[start : start + rows]
        out.flush()
        del out

    # -- row blocks
    def allocate(self, dim: int, dtype: Any, count: int = 1) -> list[np.memmap]:
        """``count`` new (N, dim) layers as writable memmaps (reopened, not
        cleared, when resuming)."""
        dtype = np.dtype(dtype)
        if dtype not in LAYER_DTYPES:
            raise TypeError(f"layer dtype must be float16, float32 or float64, got {dtype}")
        out = []
        for _ in range(count):
            name = f"layer_{len(self.layers):03d}.npy"
            file = self.tmp / name
            shape = (self.n_points, int(dim))
            if file.exists():
                arr = np.load(file, mmap_mode="r+", allow_pickle=False)
                if arr.shape != shape or arr.dtype != dtype:
                    raise ValueError(f"{file}: shape {arr.shape} {arr.dtype} differs from {shape} {dtype}; "
                                     "remove the partial directory to start over")
            else:
                arr = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)
            self.layers.append({"file": name, "shape": list(shape), "dtype": dtype.name})
            out.append(arr)
        return out

    def done_blocks(self) -> dict[int, Any]:
        """Blocks marked finished by :meth:`mark_done` (kept across a resume),
        with the payload each was marked with."""
        folder = self.tmp / "done"
        if not folder.is_dir():
            return {}
        out = {}
        for f in folder.glob("block_*.json"):
            with open(f, encoding="utf-8") as fh:
                out[int(f.stem.split("_")[1])] = json.load(fh)
        return out

    def mark_done(self, block: int, arrays: Iterable[np.memmap] = (), payload: Any = None) -> None:
        """Record ``block`` as written (after flushing ``arrays``); see
        :func:`mark_block_done`."""
        for arr in arrays:
            arr.flush()
        mark_block_done(self.tmp, block, payload)

    def set_info(self, **info: Any) -> None:
        """Store metadata learnt while writing (kept across a resume)."""
        self.meta.update(info)
        write_json_atomic(self.tmp / "info.json", self.meta)

    def reopen_layers(self) -> list[Any]:
        """After a resume that had nothing left to compute: register the layer
        files already in the partial directory; returns ``meta["hidden_states"]``."""
        for file in sorted(self.tmp.glob("layer_*.npy")):
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
            self.layers.append({"file": file.name, "shape": list(arr.shape), "dtype": arr.dtype.name})
            del arr
        return list(self.meta.get("hidden_states", range(len(self.layers))))

    # -- the end
    def finish(self) -> "LayerStore":
        """Hash, write labels and manifest, and move the store into place."""
        if not self.layers:
            raise ValueError("no layer was written: a store needs at least one layer")
        labels_dir = self.tmp / "labels"
        labels_dir.mkdir(exist_ok=True)
        if self.labels.dtype.kind == "O":
            label_file = labels_dir / "labels.json"
            values = [_encode_label(v, i) for i, v in enumerate(self.labels)]
            with open(label_file, "w", encoding="utf-8") as fh:
                json.dump(values, fh)
            kind = "json"
        else:
            label_file = labels_dir / "labels.npy"
            np.save(label_file, self.labels, allow_pickle=False)
            kind = "npy"
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "n_points": self.n_points,
            "layers": [],
            "labels": {"file": f"labels/{label_file.name}", "kind": kind,
                       "sha256": _file_sha256(label_file)},
            "utterance": None,
            "meta": self.meta,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.utterance is not None:
            ufile = labels_dir / "utterance.npy"
            np.save(ufile, self.utterance, allow_pickle=False)
            manifest["utterance"] = {"file": "labels/utterance.npy", "sha256": _file_sha256(ufile)}
        for entry in self.layers:
            arr = np.load(self.tmp / entry["file"], mmap_mode="r", allow_pickle=False)
            manifest["layers"].append({**entry, "sha256": _array_sha256(arr)})
            del arr
        for leftover in ("done", "job.json", "info.json"):
            target = self.tmp / leftover
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        write_json_atomic(self.tmp / MANIFEST, manifest)
        _check_target(self.path, self.overwrite)
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self.tmp, self.path)
        return open_store(self.path)

    def abort(self) -> None:
        """Remove the temporary directory (not the resumable ``.partial`` one)."""
        if self.tmp.exists() and not self.tmp.name.endswith(".partial"):
            shutil.rmtree(self.tmp, ignore_errors=True)


def save_store(
    path: str | os.PathLike[str],
    layers: Any,
    labels: Any,
    *,
    meta: dict[str, Any] | None = None,
    utterance: Any = None,
    overwrite: bool = False,
) -> "LayerStore":
    """Write a layer store (see the module docstring for the format).

    Parameters
    ----------
    path : directory to create (must not exist unless ``overwrite=True``)
    layers : a sequence or any iterable of (N, D) arrays/tensors (float16,
        float32 or float64; nothing is cast), or one (L, N, D) array. An iterable
        is consumed one layer at a time (a generator never holds two layers).
    labels : (N,) labels of any hashable kind (ints, strings, tuples ...); they
        come back from :func:`open_store` exactly (ints as ints, strings as strings).
    meta : JSON-serialisable dict (model, checkpoint, pooling, ...)
    utterance : optional (N,) int utterance index of each row (frame-level rows)
    overwrite : replace an existing store at ``path``

    Returns
    -------
    LayerStore
        The store, opened.
    """
    writer = StoreWriter(path, labels, meta=meta, utterance=utterance, overwrite=overwrite)
    try:
        if isinstance(layers, np.ndarray) or is_torch_tensor(layers):
            if layers.ndim != 3:
                raise ValueError(f"layers as one array must be 3-D (L, N, D), got shape {tuple(layers.shape)}")
            stacked = layers
            layers = (stacked[i] for i in range(stacked.shape[0]))
        elif isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
            raise TypeError(f"layers must be an iterable of (N, D) arrays, got {type(layers).__name__}")
        for layer in layers:
            writer.layer(layer)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


# ---- reading ------------------------------------------------------------------------------------


def _fail(file: Path, why: str) -> ValueError:
    return ValueError(f"layer store: {file}: {why}")


def _npy_header(file: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, without reading the data."""
    try:
        with open(file, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except (OSError, ValueError, EOFError) as exc:
        raise _fail(file, f"not a readable .npy file ({exc})") from None
    if fortran or dtype.hasobject:
        raise _fail(file, "must be a C-ordered array without Python objects")
    return tuple(int(s) for s in shape), dtype, offset


def _check_npy(file: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if not file.is_file():
        raise _fail(file, "is missing")
    got_shape, got_dtype, offset = _npy_header(file)
    if got_shape != shape:
        raise _fail(file, f"has shape {got_shape}, the manifest says {shape}")
    if got_dtype != dtype:
        raise _fail(file, f"has dtype {got_dtype}, the manifest says {dtype}")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    size = file.stat().st_size
    if size != expected:
        raise _fail(file, f"is {size} bytes, expected {expected} (truncated or half-written)")


@dataclass
class LayerStore:
    """An opened layer store (see :func:`open_store`).

    Attributes
    ----------
    path : the store's directory
    name : ``meta["name"]`` if given, else the directory's name
    labels : (N,) numpy array, exactly as saved (object dtype for mixed labels)
    utterance : (N,) int64 utterance index of each row, or None
    meta : the saved metadata plus ``dtype`` and ``versions``
    fingerprint : sha256 of the content (every file's sha256 and shape)
    """

    path: Path
    name: str
    labels: np.ndarray
    utterance: np.ndarray | None
    meta: dict[str, Any]
    fingerprint: str
    manifest: dict[str, Any] = field(repr=False)

    @property
    def n_layers(self) -> int:
        return len(self.manifest["layers"])

    @property
    def n_points(self) -> int:
        return int(self.manifest["n_points"])

    def __len__(self) -> int:
        return self.n_layers

    def layer(self, index: int) -> np.ndarray:
        """Layer ``index`` as a read-only (N, D) memmap."""
        if not isinstance(index, (int, np.integer)) or not -self.n_layers <= index < self.n_layers:
            raise IndexError(f"store {self.name!r} has {self.n_layers} layers, no layer {index!r}")
        entry = self.manifest["layers"][int(index)]
        return np.load(self.path / entry["file"], mmap_mode="r", allow_pickle=False)

    @property
    def layers(self) -> list[np.ndarray]:
        """Every layer as a read-only (N, D) memmap (nothing is loaded)."""
        return [self.layer(i) for i in range(self.n_layers)]

    def verify(self) -> None:
        """Recompute every file's sha256 against the manifest (reads everything)."""
        for entry in self.manifest["layers"]:
            if _array_sha256(np.load(self.path / entry["file"], mmap_mode="r")) != entry["sha256"]:
                raise _fail(self.path / entry["file"], "content differs from the manifest's sha256")
        for key in ("labels", "utterance"):
            entry = self.manifest.get(key)
            if entry and _file_sha256(self.path / entry["file"]) != entry["sha256"]:
                raise _fail(self.path / entry["file"], "content differs from the manifest's sha256")


def _fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 over what the store holds (layer, label and utterance hashes and
    shapes), not when or by what it was written."""
    content = {key: manifest.get(key) for key in ("n_points", "layers", "labels", "utterance")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def open_store(path: str | os.PathLike[str]) -> LayerStore:
    """Open a layer store, checking every file against the manifest.

    Nothing is unpickled and no layer is read: layers are memory-mapped on access.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Not a store, or a missing, truncated or inconsistent file (the message
        names it).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"layer store {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"layer store {str(root)!r} is not a directory")
    mfile = root / MANIFEST
    if not mfile.is_file():
        partial = root.parent / f".{root.name}.partial"
        hint = f" (an unfinished write is in {partial}; rerun it to resume)" if partial.exists() else ""
        raise _fail(mfile, f"is missing: not a complete fastconvex layer store{hint}")
    try:
        raw = mfile.read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise _fail(mfile, f"is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(mfile, f"is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise _fail(mfile, f"has format version {manifest.get('version')!r}; this fastconvex reads {VERSION}")
    try:
        n = int(manifest["n_points"])
        entries = list(manifest["layers"])
        label_entry = manifest["labels"]
        meta = dict(manifest.get("meta") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(mfile, f"lacks a field ({exc})") from None
    if not entries:
        raise _fail(mfile, "lists no layers")
    dtypes = set()
    for i, entry in enumerate(entries):
        file = root / entry["file"]
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(s) for s in entry["shape"])
        if len(shape) != 2 or shape[0] != n:
            raise _fail(mfile, f"layer {i} has shape {shape}, expected ({n}, D)")
        _check_npy(file, shape, dtype)
        dtypes.add(dtype.name)
    lfile = root / label_entry["file"]
    if not lfile.is_file():
        raise _fail(lfile, "is missing")
    if label_entry["kind"] == "npy":
        try:
            labels = np.load(lfile, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _fail(lfile, f"is not a readable .npy array without pickled objects ({exc})") from None
    else:
        try:
            with open(lfile, encoding="utf-8") as fh:
                values = [_decode_label(v) for v in json.load(fh)]
        except (OSError, ValueError, AttributeError) as exc:
            raise _fail(lfile, f"is not a valid label list ({exc})") from None
        labels = np.empty(len(values), dtype=object)
        labels[:] = values
    if labels.shape != (n,):
        raise _fail(lfile, f"holds {labels.shape} labels, the layers have N={n} rows")
    utterance = None
    if manifest.get("utterance"):
        ufile = root / manifest["utterance"]["file"]
        _check_npy(ufile, (n,), np.dtype(np.int64))
        utterance = np.load(ufile, allow_pickle=False)
    name = str(meta.get("name") or root.resolve().name)
    full_meta = {**meta, "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes),
                 "versions": manifest.get("versions", {})}
    return LayerStore(
        path=root, name=name, labels=labels, utterance=utterance, meta=full_meta,
        fingerprint=_fingerprint(manifest), manifest=manifest,
    )
