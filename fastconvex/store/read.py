"""Reading layer stores: :func:`open_store` checks every file against the
manifest and names the one that is missing, truncated, changed or
inconsistent (format: :mod:`fastconvex.store`).

What is verified, and when: the labels and the utterance index are hashed
against the manifest's sha256 whenever a store is opened (they are small and
read whole anyway); a layer is hashed by :meth:`LayerStore.verify_layer`,
which every sweep task calls as it scores the layer (from the same open file:
:meth:`LayerStore.hold_layer`) and a sweep calls before it reuses a finished
result of it (a layer can be gigabytes: it is read with plain reads into one
reused buffer, never loaded or mapped whole). A store whose content fails a
check raises :class:`StoreError`, a ValueError the command line reports as a
data error (exit status 1)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.store.format import (
    FORMAT,
    MANIFEST,
    VERSION,
    _decode_label,
    _file_sha256,
)

__all__ = ["LayerStore", "StoreError", "open_store"]


class StoreError(ValueError):
    """A layer store's content is missing, malformed, inconsistent or changed
    since it was written (the message names the file): a data error, which the
    command line reports with exit status 1. A ValueError, as before."""

    exit_status = 1


def _fail(file: Path, why: str) -> StoreError:
    return StoreError(f"layer store: {file}: {why}")


def _changed(file: Path) -> StoreError:
    return _fail(
        file,
        f"content differs from {MANIFEST}'s sha256 (the file changed after the store was "
        "written); rerun embed/save_store to rewrite the store",
    )


def _check_inside(root: Path, file: Path) -> None:
    """``file`` (a manifest entry) must not resolve outside the store: a link
    to elsewhere would make the store's content something it does not hold."""
    try:
        target, base = file.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise _fail(file, f"cannot be resolved ({exc})") from None
    if not target.is_relative_to(base):
        raise _fail(
            file,
            f"resolves to {target}, outside the store {base} (a symbolic link?): a store's "
            "files must lie inside its directory",
        )


def _npy_header(file: Path, fh: Any = None) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, without reading the data
    (from ``fh``, an open binary file at its start, when given)."""
    try:
        with contextlib.nullcontext(fh) if fh is not None else open(file, "rb") as fh:
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


def _member(root: Path, name: Any) -> Path:
    """A file the manifest names, which must lie inside the store (a relative
    path without ``..``)."""
    if not isinstance(name, str):
        raise TypeError(f"a file name must be a string, got {type(name).__name__}")
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"file {name!r} is not a path inside the store")
    return root / rel


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


# One buffer per hashing thread, reused: hashing a layer allocates nothing
# per block, and a block this size keeps sha256's per-call overhead negligible.
_HASH_BLOCK = 16 << 20
_buffers = threading.local()


class _Stopped(Exception):
    """A hash abandoned because its caller no longer needs it (Ctrl-C)."""


def _data_sha256(
    fd: int, offset: int, nbytes: int, file: Path, array: np.ndarray | None = None, stop: threading.Event | None = None
) -> str:
    """sha256 of ``nbytes`` bytes of the open file ``fd`` from ``offset``, read
    with ``os.preadv`` into this thread's reused buffer: plain reads, so the
    page cache holds the bytes and this process's memory does not grow by the
    layer (hashing through a memmap maps every page of it), and the file
    offset is never moved (another thread may use the same descriptor). For a
    C-ordered .npy file from its data offset these are the array's C-order
    bytes, so the digest equals ``_store_format._array_sha256`` of the array
    (the manifest's). Where ``os.preadv`` does not exist (Windows) the bytes
    are read through ``array``, the memmap of the same open file, block by
    block. ``stop``, once set, abandons the hash between blocks
    (:class:`_Stopped`), so an interrupted task does not wait for the rest of
    a large file."""
    if not hasattr(os, "preadv"):
        return _memmap_sha256(array, nbytes, file, stop)
    buf = getattr(_buffers, "block", None)
    if buf is None or len(buf) != _HASH_BLOCK:
        buf = _buffers.block = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    digest = hashlib.sha256()
    done = 0
    try:
        while done < nbytes:
            if stop is not None and stop.is_set():
                raise _Stopped(str(file))
            want = min(len(buf), nbytes - done)
            got = os.preadv(fd, [view[:want]], offset + done)
            if got <= 0:
                raise _fail(file, f"ended after {done} of its {nbytes} data bytes (truncated while read)")
            digest.update(view[:got])  # hashlib releases the GIL for large blocks: threads hash in parallel
            done += got
    except OSError as exc:
        raise _fail(file, f"cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _memmap_sha256(array: np.ndarray | None, nbytes: int, file: Path, stop: threading.Event | None) -> str:
    """``_data_sha256`` without ``os.preadv``: the held memmap's bytes in
    ``_HASH_BLOCK`` blocks (one block's pages are mapped at a time)."""
    digest = hashlib.sha256()
    if not nbytes:
        return digest.hexdigest()
    flat = np.asarray(array).reshape(-1).view(np.uint8)
    try:
        for start in range(0, nbytes, _HASH_BLOCK):
            if stop is not None and stop.is_set():
                raise _Stopped(str(file))
            digest.update(flat[start : start + _HASH_BLOCK].data)
    except OSError as exc:
        raise _fail(file, f"cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


class _LayerFile:
    """One open layer file: the memmap that is scored and the hash that
    verifies it come from the same open file (a file renamed over the path
    meanwhile -- how every atomic writer replaces one -- changes neither)."""

    def __init__(self, file: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.file = file
        try:
            self.fh = open(file, "rb")  # noqa: SIM115 - held open for the store's lifetime, closed by close()
        except OSError as exc:
            raise _fail(file, f"cannot be opened ({exc.strerror or exc})") from None
        try:
            got_shape, got_dtype, self.offset = _npy_header(file, self.fh)
            if got_shape != shape or got_dtype != dtype:  # replaced since the store was opened
                raise _fail(
                    file,
                    f"holds a {got_dtype} array of shape {got_shape}; the manifest says {dtype} "
                    f"{shape} (the file changed after the store was opened)",
                )
            self.nbytes = int(np.prod(shape)) * dtype.itemsize
            size = os.fstat(self.fh.fileno()).st_size
            if size != self.offset + self.nbytes:
                raise _fail(file, f"is {size} bytes, expected {self.offset + self.nbytes} (truncated or half-written)")
            # np.memmap of the open file object: it maps this very file (its own
            # duplicate of the descriptor), whatever the path names later
            self.array = (
                np.memmap(self.fh, dtype=dtype, mode="r", offset=self.offset, shape=shape, order="C")
                if self.nbytes
                else np.empty(shape, dtype)
            )
        except BaseException:
            self.fh.close()
            raise

    def sha256(self, stop: threading.Event | None = None) -> str:
        return _data_sha256(self.fh.fileno(), self.offset, self.nbytes, self.file, self.array, stop)


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

    Frame stores (rows are frames, ``utterance`` given) also read back per
    utterance: :meth:`sequences` (a layer as padded (n_utt, T_max, D)
    sequences and their lengths) and :meth:`utterance_labels`.
    """

    path: Path
    name: str
    labels: np.ndarray
    utterance: np.ndarray | None
    meta: dict[str, Any]
    fingerprint: str
    manifest: dict[str, Any] = field(repr=False)
    _held: dict[int, _LayerFile] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.manifest["layers"])

    @property
    def n_points(self) -> int:
        return int(self.manifest["n_points"])

    def __len__(self) -> int:
        return self.n_layers

    def _layer_index(self, index: int) -> int:
        """``index`` checked against the layers (IndexError naming the store),
        as a non-negative int; opens nothing."""
        if not isinstance(index, (int, np.integer)) or not -self.n_layers <= index < self.n_layers:
            raise IndexError(f"store {self.name!r} ({self.path}) has {self.n_layers} layers, no layer {index!r}")
        return int(index) % self.n_layers

    def layer(self, index: int) -> np.ndarray:
        """Layer ``index`` as a read-only (N, D) memmap."""
        index = self._layer_index(index)
        held = self._held.get(index)
        if held is not None:
            return held.array
        entry = self.manifest["layers"][index]
        return np.load(self.path / entry["file"], mmap_mode="r", allow_pickle=False)

    def _open_layer_file(self, index: int) -> _LayerFile:
        file = self.layer_file(index)
        _check_inside(self.path, file)
        entry = self.manifest["layers"][int(index)]
        return _LayerFile(file, tuple(int(s) for s in entry["shape"]), np.dtype(entry["dtype"]))

    def hold_layer(self, index: int) -> np.ndarray:
        """Open layer ``index``'s file once and keep it open: from now on
        :meth:`layer`, :meth:`sequences` and :meth:`verify_layer` of this
        LayerStore read that one open file, so the bytes verified are the bytes
        scored even if the path is replaced meanwhile. Returns the layer (a
        read-only memmap). :meth:`release_layers` closes the files."""
        index = self._layer_index(index)
        if index not in self._held:
            self._held[index] = self._open_layer_file(index)
        return self._held[index].array

    def release_layers(self) -> None:
        """Close the files :meth:`hold_layer` opened (a sweep task holds one
        layer at a time, and a failed task's traceback must not keep its file
        open). Memmaps already returned stay valid: each maps its own
        duplicate of the descriptor."""
        held, self._held = self._held, {}
        for opened in held.values():
            opened.fh.close()

    @property
    def layers(self) -> list[np.ndarray]:
        """Every layer as a read-only (N, D) memmap (nothing is loaded)."""
        return [self.layer(i) for i in range(self.n_layers)]

    # -- frame stores: each utterance's rows as one sequence
    def _utterance_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row, row count) of each utterance, in row order."""
        if self.utterance is None:
            raise ValueError(
                f"store {self.name!r} ({self.path}) holds one row per utterance (no labels/utterance.npy): "
                "frame sequences need a frame store, e.g. `fastconvex embed MODEL --frames ...` or "
                "hf.pooled_hidden_states(..., frame_labels=..., out_dir=...)"
            )
        ignored = int(self.meta.get("ignored_frames", 0) or 0)
        if ignored:
            raise ValueError(
                f"store {self.name!r} ({self.path}) dropped {ignored} ignored frame(s) (-100 frame labels): "
                "its utterances are no longer whole sequences; embed every frame (`fastconvex embed --frames`)"
            )
        u = self.utterance
        starts = np.flatnonzero(np.concatenate([[True], u[1:] != u[:-1]]))
        ids = u[starts]
        values, runs = np.unique(ids, return_counts=True)
        if (runs > 1).any():
            bad = int(values[runs > 1][0])
            raise _fail(
                self.path / "labels" / "utterance.npy",
                f"the rows of utterance {bad} are not contiguous (a frame store keeps each "
                "utterance's frames together, in time order)",
            )
        return starts, np.diff(np.append(starts, u.shape[0]))

    def utterance_labels(self) -> np.ndarray:
        """(n_utt,) the label of each utterance of a frame store, in row order.

        Raises ValueError (naming the labels file) when the rows of one
        utterance carry different labels, and for a store without an
        utterance index."""
        starts, counts = self._utterance_runs()
        assert self.utterance is not None  # _utterance_runs raised for a store without one
        labels = self.labels
        first = np.repeat(labels[starts], counts)
        same = np.array([a == b for a, b in zip(labels, first)], bool) if labels.dtype.kind == "O" else labels == first
        if not same.all():
            row = int(np.flatnonzero(~same)[0])
            raise _fail(
                self.path / self.manifest["labels"]["file"],
                f"the rows of utterance {int(self.utterance[row])} carry different labels "
                f"({first[row]!r}, and {labels[row]!r} at row {row}): sequence-level scores need "
                "one label per utterance",
            )
        return labels[starts]

    def sequences(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer ``index`` of a frame store as padded sequences.

        Returns
        -------
        x : (n_utt, T_max, D) array of the layer's dtype
            Utterance u's frames (rows of ``utterance == u``, in row order)
            first, zeros after them; utterances in row order.
        lengths : (n_utt,) int64
            Real frames of each utterance.

        Loads the layer (n_utt * T_max * D values); the labels of the
        utterances are :meth:`utterance_labels`.
        """
        starts, counts = self._utterance_runs()
        rows = self.layer(index)
        x = np.zeros((starts.shape[0], int(counts.max()), rows.shape[1]), dtype=rows.dtype)
        for u, (s, c) in enumerate(zip(starts, counts)):
            x[u, :c] = rows[s : s + c]
        return x, counts.astype(np.int64)

    def layer_file(self, index: int) -> Path:
        """The .npy file of layer ``index``."""
        return self.path / self.manifest["layers"][int(index)]["file"]

    def verify_layer(self, index: int, *, _stop: threading.Event | None = None) -> None:
        """Hash layer ``index``'s array bytes against the manifest's sha256
        (plain reads in blocks into one reused buffer: the layer is never
        loaded or mapped whole); :class:`StoreError` naming the file when they
        differ. A layer held by :meth:`hold_layer` is hashed from that open
        file, the one it is scored from. ``_stop`` (private): an event that,
        once set, abandons the hash between blocks."""
        index = self._layer_index(index)
        recorded = self.manifest["layers"][index].get("sha256")
        if not isinstance(recorded, str):
            raise _fail(self.path / MANIFEST, f"layer {index}'s entry has no sha256, so it cannot be verified")
        held = self._held.get(index)
        opened = held or self._open_layer_file(index)
        try:
            if opened.sha256(_stop) != recorded:
                raise _changed(opened.file)
        finally:
            if held is None:
                opened.fh.close()

    def verify(self) -> None:
        """Recompute every file's sha256 against the manifest (reads everything)."""
        for i in range(self.n_layers):
            self.verify_layer(i)
        for key in ("labels", "utterance"):
            entry = self.manifest.get(key)
            if entry and _file_sha256(self.path / entry["file"]) != entry["sha256"]:
                raise _changed(self.path / entry["file"])


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise _fail(file, f"cannot be read ({exc.strerror or exc})") from None


def _fingerprint(manifest: dict[str, Any]) -> str:
    """sha256 over what the store holds (layer, label and utterance hashes and
    shapes), not when or by what it was written."""
    content = {key: manifest.get(key) for key in ("n_points", "layers", "labels", "utterance")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def open_store(path: str | os.PathLike[str]) -> LayerStore:
    """Open a layer store, checking every file against the manifest.

    Nothing is unpickled and no layer is read: layers are memory-mapped on
    access (:meth:`LayerStore.verify_layer` hashes one). The labels and the
    utterance index are read whole and must match the manifest's sha256, and
    no file may resolve outside the store (a symbolic link to elsewhere).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Not a store, or a missing, truncated, changed or inconsistent file,
        or one outside the store (the message names it).
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
        entries, label_entry, meta = manifest["layers"], manifest["labels"], manifest.get("meta") or {}
        for key, value, kind in (("layers", entries, list), ("labels", label_entry, dict), ("meta", meta, dict)):
            if not isinstance(value, kind):
                raise TypeError(
                    f"{key!r} must be a JSON {'list' if kind is list else 'object'}, got {type(value).__name__}"
                )
        if not all(isinstance(entry, dict) for entry in entries):
            raise TypeError("'layers' must list JSON objects")
        meta = dict(meta)
    except KeyError as exc:
        raise _fail(mfile, f"lacks the field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise _fail(mfile, f"has a malformed field ({exc})") from None
    if not entries:
        raise _fail(mfile, "lists no layers")
    dtypes = set()
    for i, entry in enumerate(entries):
        try:
            file = _member(root, entry["file"])
            dtype = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _fail(mfile, f"layer {i}'s entry is malformed ({type(exc).__name__}: {exc})") from None
        if len(shape) != 2 or shape[0] != n:
            raise _fail(mfile, f"layer {i} has shape {shape}, expected ({n}, D)")
        _check_inside(root, file)
        _check_npy(file, shape, dtype)
        dtypes.add(dtype.name)
    try:
        lfile, label_kind = _member(root, label_entry["file"]), label_entry["kind"]
        ufile = _member(root, manifest["utterance"]["file"]) if manifest.get("utterance") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(mfile, f"the labels or utterance entry is malformed ({type(exc).__name__}: {exc})") from None
    if not lfile.is_file():
        raise _fail(lfile, "is missing")
    _check_inside(root, lfile)
    # read once: the bytes parsed are the bytes hashed
    raw_labels = _read(lfile)
    if label_kind == "npy":
        try:
            labels = np.load(io.BytesIO(raw_labels), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _fail(lfile, f"is not a readable .npy array without pickled objects ({exc})") from None
    else:
        try:
            values = [_decode_label(v) for v in json.loads(raw_labels.decode("utf-8"))]
        except (ValueError, TypeError, AttributeError) as exc:
            raise _fail(lfile, f"is not a valid label list ({exc})") from None
        labels = np.empty(len(values), dtype=object)
        labels[:] = values
    if labels.shape != (n,):
        raise _fail(lfile, f"holds {labels.shape} labels, the layers have N={n} rows")
    for key, entry in (("labels", label_entry), ("utterance", manifest.get("utterance"))):
        if entry and not isinstance(entry.get("sha256"), str):
            raise _fail(mfile, f"the {key} entry has no sha256, so the file cannot be verified")
    if hashlib.sha256(raw_labels).hexdigest() != label_entry["sha256"]:
        raise _changed(lfile)
    utterance = None
    if ufile is not None:
        _check_inside(root, ufile)
        _check_npy(ufile, (n,), np.dtype(np.int64))
        raw_utterance = _read(ufile)
        if hashlib.sha256(raw_utterance).hexdigest() != manifest["utterance"]["sha256"]:
            raise _changed(ufile)
        utterance = np.load(io.BytesIO(raw_utterance), allow_pickle=False)
    name = str(meta.get("name") or root.resolve().name)
    full_meta = {
        **meta,
        "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes),
        "versions": manifest.get("versions", {}),
    }
    return LayerStore(
        path=root,
        name=name,
        labels=labels,
        utterance=utterance,
        meta=full_meta,
        fingerprint=_fingerprint(manifest),
        manifest=manifest,
    )
