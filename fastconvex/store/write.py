"""Writing layer stores: :class:`StoreWriter` (streamed, resumable), :func:`save_store`
and the done markers of partial writes (format: :mod:`fastconvex.store`)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.core.atomic import (
    WriteError,
    as_output_error,
    atomic_file,
    swap_directory,
    write_json_atomic,
    writing,
)
from fastconvex.core.inputs import check_bool, is_torch_tensor, to_numpy
from fastconvex.core.locks import output_lock
from fastconvex.store.format import (
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
from fastconvex.store.read import LayerStore, open_store


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


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``.npy`` header ``np.save`` and ``open_memmap`` write for a C-order array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    )
    return buf.getvalue()


def _reserve(fd: int, size: int, *, new: bool) -> None:
    """Reserve ``size`` bytes of disk for the open file ``fd``, so that a full
    disk is an ``OSError`` now rather than a SIGBUS when a memory-mapped page
    is first written. ``posix_fallocate`` where there is one (glibc emulates
    it by writing where the file system cannot allocate); elsewhere a new
    file is filled with zeros explicitly."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    if not new:
        return  # an existing file's holes cannot be filled without overwriting its rows
    end = os.fstat(fd).st_size
    os.lseek(fd, end, os.SEEK_SET)
    zeros = bytes(min(_CHUNK_BYTES, 1 << 20))
    while end < size:
        end += os.write(fd, zeros[: size - end])


def _write_npy(file: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` atomically (:func:`atomic_file`) with plain
    file writes, block by block (no memory map, so a full disk is an
    ``OSError``, never a SIGBUS)."""
    with atomic_file(file) as fh:
        fh.write(_npy_header(array.shape, array.dtype))
        rows = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, array.shape[0], rows):
            fh.write(np.ascontiguousarray(array[start : start + rows]).data)


def _layer_file_error(file: Path) -> str | None:
    """Why the ``.npy`` layer file ``file`` of a partial write cannot be
    reopened (no complete header, or shorter than its header says), or None."""
    try:
        with open(file, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            need = fh.tell() + int(np.prod(shape)) * dtype.itemsize
        size = file.stat().st_size
    except (OSError, ValueError, EOFError) as exc:
        return f"unreadable ({exc})"
    if fortran or len(shape) != 2:
        return f"not an (N, D) C-order array (shape {shape})"
    if size < need:
        return f"{size} bytes, shorter than the {need} its header says"
    return None


def _open_allocated(file: Path, shape: tuple[int, int], dtype: np.dtype) -> np.memmap:
    """``file`` as a writable (N, D) ``.npy`` memmap whose blocks are reserved
    on disk first (see :func:`_reserve`); an existing file (a resume) is
    reopened, checked and reserved, never cleared. A new file is made under a
    temporary name (``<file>.alloc``) and takes its final name only once its
    header is written and its space reserved, so a kill in between leaves
    nothing a resume would reopen."""
    if file.exists():
        why = _layer_file_error(file)
        if why is not None:
            raise ValueError(
                f"{file}: {why}; remove {file.parent} (or pass overwrite=True / --overwrite) to start over"
            )
        arr = np.load(file, mmap_mode="r", allow_pickle=False)
        if arr.shape != shape or arr.dtype != dtype:
            raise ValueError(
                f"{file}: shape {arr.shape} {arr.dtype} differs from {shape} {dtype}; "
                f"remove {file.parent} (or pass overwrite=True / --overwrite) to start over"
            )
        del arr
        with writing(file):
            fd = os.open(file, os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
            try:
                _reserve(fd, file.stat().st_size, new=False)
            finally:
                os.close(fd)
        return np.load(file, mmap_mode="r+", allow_pickle=False)
    header = _npy_header(shape, dtype)
    size = len(header) + int(np.prod(shape)) * dtype.itemsize
    staging = file.with_name(file.name + ".alloc")  # one left by a killed run is started again
    try:
        fd = os.open(
            staging,
            os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0),
            0o666,
        )
        try:
            os.write(fd, header)
            _reserve(fd, size, new=True)
        finally:
            os.close(fd)
        os.replace(staging, file)
    except BaseException as exc:
        staging.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.errno is not None:
            # named as the layer file, not its staging name
            raise as_output_error(exc, file, staging) from exc
        raise
    return np.load(file, mmap_mode="r+", allow_pickle=False)


def _changed(old: Any, new: dict[str, Any]) -> str:
    """What differs between the signature of an interrupted write (``old``,
    from its job.json) and this job's, in words."""
    if not isinstance(old, dict):
        return "its job.json is missing or unreadable"
    names = {
        "weights_sha256": "the model's weights",
        "feature_extractor_sha256": "the feature extractor",
        "config_sha256": "the model's configuration",
        "model_class": "the model's class",
        "lengths_sha256": "the audio lengths",
        "labels": "the labels",
        "utterance": "the utterance index",
        "n_points": "the number of rows",
    }
    old_job, new_job = old.get("job") or {}, new.get("job") or {}
    if isinstance(old_job, dict) and isinstance(new_job, dict):
        for key in ("weights_sha256", "feature_extractor_sha256"):
            if key in new_job and key not in old_job:
                return f"it was made by an older fastconvex, which did not record {names[key]}"
        diff = [names.get(k, k) for k in sorted(set(old_job) | set(new_job)) if old_job.get(k) != new_job.get(k)]
    else:
        diff = ["the job"]
    diff += [names[k] for k in ("n_points", "labels", "utterance") if old.get(k) != new.get(k)]
    return "it differs in " + ", ".join(dict.fromkeys(diff)) if diff else "it differs"


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists (pass overwrite=True / --overwrite to replace it)")
    if not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a directory; not replacing it")
    if not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise FileExistsError(f"{str(path)!r} is a non-empty directory that is not a layer store; not replacing it")


def mark_block_done(partial_dir: str | os.PathLike[str], block: int, payload: Any = None) -> None:
    """Record row block ``block`` of a partial store as written (its data
    flushed first): one small file per block, written atomically, so writers
    of disjoint blocks (Ray workers) never race."""
    folder = Path(partial_dir) / "done"
    with writing(folder):
        folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"block_{int(block):06d}.json", payload)


class StoreWriter:
    """Write a store row block by row block (memory bounded by one block).

    ``StoreWriter(path, n_points, labels)`` then :meth:`layer` (one whole layer)
    or :meth:`allocate` + :meth:`write_rows`, then :meth:`finish`. Everything
    lives in ``<parent>/.<name>.partial`` until :meth:`finish` renames it onto
    ``path``; with ``resume=True`` an existing partial directory from an
    interrupted writer of the same job (``job``, labels, utterance index) is
    reused (see :meth:`done_blocks`); one of another job is refused, saying
    what differs, or removed and started over with ``overwrite=True``.

    Layer files are written with plain file writes (:meth:`layer`) or
    reserved on disk before they are memory-mapped (:meth:`allocate`), so a
    full disk is a :class:`~fastconvex.core.atomic.WriteError` naming the file,
    never a SIGBUS; :meth:`abort` removes what was written.
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
        self._given_meta = dict(self.meta)
        self.labels = _labels_for_store(labels)
        self.n_points = int(self.labels.shape[0])
        if self.n_points == 0:
            raise ValueError("labels is empty: a store needs at least one row")
        self.utterance = None
        if utterance is not None:
            u = to_numpy(utterance) if is_torch_tensor(utterance) else np.asarray(utterance)
            if u.shape != (self.n_points,) or u.dtype.kind not in "iu":
                raise ValueError(f"utterance must be ({self.n_points},) integers, got shape {u.shape} dtype {u.dtype}")
            self.utterance = u.astype(np.int64, copy=False)
        suffix = "partial" if resume else f"tmp-{uuid.uuid4().hex[:8]}"
        self.tmp = self.path.parent / f".{self.path.name}.{suffix}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layers: list[dict[str, Any]] = []
        self.created = False  # this writer made self.tmp (not a resumed partial write)
        job_file = self.tmp / "job.json"
        signature = json.loads(
            json.dumps(
                {
                    "job": job,
                    "n_points": self.n_points,
                    "labels": _labels_digest(self.labels),
                    "utterance": None if self.utterance is None else _array_sha256(self.utterance),
                },
                default=str,
            )
        )
        if self.tmp.exists():
            try:
                with open(job_file, encoding="utf-8") as fh:
                    old = json.load(fh)
            except (OSError, ValueError):
                old = None
            if old != signature:
                if not self.overwrite:
                    raise ValueError(
                        f"{self.tmp} holds an interrupted write of a different job ({_changed(old, signature)}; "
                        "see its job.json): pass overwrite=True / --overwrite to start over, or remove it"
                    )
                shutil.rmtree(self.tmp)
            else:
                self._check_layer_files()
        self._signature = signature
        if self.tmp.exists():
            if (self.tmp / "info.json").is_file():
                with open(self.tmp / "info.json", encoding="utf-8") as fh:
                    self.meta = {**json.load(fh), **self.meta}
        else:
            self._create()

    def _check_layer_files(self) -> None:
        """The layer files of the interrupted write this writer resumes, each
        checked to reopen (a file damaged outside fastconvex, or cut short by a
        full disk): one that does not is refused, naming it, or with
        ``overwrite=True`` the write is started over. Staging files of a
        layer whose allocation was killed are removed."""
        for leftover in self.tmp.glob("layer_*.npy.alloc"):
            leftover.unlink(missing_ok=True)
        for file in sorted(self.tmp.glob("layer_*.npy")):
            why = _layer_file_error(file)
            if why is None:
                continue
            if self.overwrite:
                shutil.rmtree(self.tmp)
                return
            raise ValueError(
                f"{file}: {why}, so the interrupted write in {self.tmp} cannot be resumed; "
                "pass overwrite=True / --overwrite to start over, or remove it"
            )

    def _create(self) -> None:
        with writing(self.tmp):
            self.tmp.mkdir()
        self.created = True
        try:
            write_json_atomic(self.tmp / "job.json", self._signature)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def restart(self) -> None:
        """Drop the interrupted write this writer resumed (before anything was
        allocated) and start an empty one."""
        if self.layers:
            raise RuntimeError("restart() after layers were allocated")
        shutil.rmtree(self.tmp)
        self.meta = dict(self._given_meta)
        self._create()

    # -- whole layers
    def layer(self, layer: Any) -> None:
        """Append one (N, D) layer."""
        index = len(self.layers)
        array = _layer_array(layer, index)
        if array.shape[0] != self.n_points:
            raise ValueError(f"layers[{index}] has N={array.shape[0]} rows but labels has {self.n_points} entries")
        name = f"layer_{index:03d}.npy"
        _write_npy(self.tmp / name, array)
        self.layers.append({"file": name, "shape": list(array.shape), "dtype": array.dtype.name})

    # -- row blocks
    def allocate(self, dim: int, dtype: Any, count: int = 1) -> list[np.memmap]:
        """``count`` new (N, dim) layers as writable memmaps (reopened, not
        cleared, when resuming), their disk space reserved first."""
        dtype = np.dtype(dtype)
        if dtype not in LAYER_DTYPES:
            raise TypeError(f"layer dtype must be float16, float32 or float64, got {dtype}")
        out = []
        for _ in range(count):
            name = f"layer_{len(self.layers):03d}.npy"
            file = self.tmp / name
            shape = (self.n_points, int(dim))
            arr = _open_allocated(file, shape, dtype)
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
            with writing(getattr(arr, "filename", None) or self.tmp):
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
    def finish(self) -> LayerStore:
        """Hash, write labels and manifest, and move the store into place."""
        if not self.layers:
            raise ValueError("no layer was written: a store needs at least one layer")
        labels_dir = self.tmp / "labels"
        with writing(labels_dir):
            labels_dir.mkdir(exist_ok=True)
        if self.labels.dtype.kind == "O":
            label_file = labels_dir / "labels.json"
            values = [_encode_label(v, i) for i, v in enumerate(self.labels)]
            with atomic_file(label_file, "w", encoding="utf-8") as fh:
                json.dump(values, fh)
            kind = "json"
        else:
            label_file = labels_dir / "labels.npy"
            _write_npy(label_file, self.labels)
            kind = "npy"
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "n_points": self.n_points,
            "layers": [],
            "labels": {"file": f"labels/{label_file.name}", "kind": kind, "sha256": _file_sha256(label_file)},
            "utterance": None,
            "meta": self.meta,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.utterance is not None:
            ufile = labels_dir / "utterance.npy"
            _write_npy(ufile, self.utterance)
            manifest["utterance"] = {"file": "labels/utterance.npy", "sha256": _file_sha256(ufile)}
        for entry in self.layers:
            arr = np.load(self.tmp / entry["file"], mmap_mode="r", allow_pickle=False)
            manifest["layers"].append({**entry, "sha256": _array_sha256(arr)})
            del arr
        # The manifest before the resume records go: a failed manifest write
        # leaves a partial write that a rerun still resumes.
        write_json_atomic(self.tmp / MANIFEST, manifest)
        for leftover in ("done", "info.json", "job.json"):
            target = self.tmp / leftover
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        _check_target(self.path, self.overwrite)
        with writing(self.path):
            swap_directory(self.tmp, self.path)
        return open_store(self.path)

    def abort(self) -> None:
        """Remove the temporary directory; a resumable ``.partial`` one only
        when this writer made it and no block of it was finished (nothing to
        resume)."""
        if not self.tmp.exists():
            return
        if self.tmp.name.endswith(".partial"):
            try:
                keep = not self.created or bool(self.done_blocks())
            except (OSError, ValueError):
                keep = True
            if keep:
                return
        shutil.rmtree(self.tmp, ignore_errors=True)


def save_store(
    path: str | os.PathLike[str],
    layers: Any,
    labels: Any,
    *,
    meta: dict[str, Any] | None = None,
    utterance: Any = None,
    overwrite: bool = False,
) -> LayerStore:
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

    Raises
    ------
    fastconvex.core.atomic.WriteError
        (an ``OSError``) a file could not be written (no space left, an I/O
        error): the message names it, and nothing is left behind.
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


@contextlib.contextmanager
def store_lock(
    path: str | os.PathLike[str], what: str = "another embed", *, overwrite: bool | None = None
) -> Iterator[None]:
    """The lock of the store written at ``path`` (``embed``,
    ``pooled_hidden_states(out_dir=...)``): ``<parent>/.<name>.lock``, beside
    the store and its ``.<name>.partial`` write, removed when done. The path is
    resolved first (``os.path.realpath``), so a store named through a symlink
    has the lock of the store it names. With ``overwrite`` given, ``path`` is
    first checked as the store writer checks it (FileExistsError), before
    anything is created. The parent directories are created for the lock; the
    ones created here are removed again (when still empty) if the block fails,
    so a refused call (e.g. its other arguments checked inside) leaves nothing."""
    store = Path(os.path.realpath(path))
    if overwrite is not None:
        from fastconvex.store.write import _check_target

        _check_target(store, overwrite)
    created = []
    parent = store.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        with output_lock(store.parent, what, name=f".{store.name}.lock", label=f"the store {str(path)!r}", remove=True):
            yield
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the store, or something else put there meanwhile)
                break
        raise
