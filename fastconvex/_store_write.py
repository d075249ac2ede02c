"""Writing layer stores: :class:`StoreWriter` (streamed, resumable), :func:`save_store`
and the done markers of partial writes (format: :mod:`fastconvex.store`)."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ._atomic import write_json_atomic
from ._inputs import check_bool, is_torch_tensor, to_numpy
from ._store_format import (
    _CHUNK_BYTES,
    FORMAT,
    LAYER_DTYPES,
    MANIFEST,
    VERSION,
    _array_sha256,
    _check_meta,
    _encode_label,
    _file_sha256,
    _labels_digest,
    _labels_for_store,
    _versions,
)
from ._store_read import LayerStore, open_store


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
        self.overwrite = check_bool("overwrite", overwrite)
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
