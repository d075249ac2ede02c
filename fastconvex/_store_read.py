"""Reading layer stores: :func:`open_store` checks every file against the
manifest and names the one that is missing, truncated, changed or
inconsistent (format: :mod:`fastconvex.store`).

What is verified, and when: the labels and the utterance index are hashed
against the manifest's sha256 whenever a store is opened (they are small and
read whole anyway); a layer is hashed by :meth:`LayerStore.verify_layer`,
which every sweep task calls before it scores the layer and a sweep calls
before it reuses a finished result of it (a layer can be gigabytes: it is
read in blocks, never loaded whole)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


from ._store_format import FORMAT, MANIFEST, VERSION, _array_sha256, _decode_label, _file_sha256


def _fail(file: Path, why: str) -> ValueError:
    return ValueError(f"layer store: {file}: {why}")


def _changed(file: Path) -> ValueError:
    return _fail(file, f"content differs from {MANIFEST}'s sha256 (the file changed after the store was "
                       "written); rerun embed/save_store to rewrite the store")


def _check_inside(root: Path, file: Path) -> None:
    """``file`` (a manifest entry) must not resolve outside the store: a link
    to elsewhere would make the store's content something it does not hold."""
    try:
        target, base = file.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise _fail(file, f"cannot be resolved ({exc})") from None
    if not target.is_relative_to(base):
        raise _fail(file, f"resolves to {target}, outside the store {base} (a symbolic link?): a store's "
                          "files must lie inside its directory")


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
            raise IndexError(f"store {self.name!r} ({self.path}) has {self.n_layers} layers, no layer {index!r}")
        entry = self.manifest["layers"][int(index)]
        return np.load(self.path / entry["file"], mmap_mode="r", allow_pickle=False)

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
            raise _fail(self.path / "labels" / "utterance.npy",
                        f"the rows of utterance {bad} are not contiguous (a frame store keeps each "
                        "utterance's frames together, in time order)")
        return starts, np.diff(np.append(starts, u.shape[0]))

    def utterance_labels(self) -> np.ndarray:
        """(n_utt,) the label of each utterance of a frame store, in row order.

        Raises ValueError (naming the labels file) when the rows of one
        utterance carry different labels, and for a store without an
        utterance index."""
        starts, counts = self._utterance_runs()
        labels = self.labels
        first = np.repeat(labels[starts], counts)
        same = np.array([a == b for a, b in zip(labels, first)], bool) if labels.dtype.kind == "O" \
            else labels == first
        if not same.all():
            row = int(np.flatnonzero(~same)[0])
            raise _fail(self.path / self.manifest["labels"]["file"],
                        f"the rows of utterance {int(self.utterance[row])} carry different labels "
                        f"({first[row]!r}, and {labels[row]!r} at row {row}): sequence-level scores need "
                        "one label per utterance")
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

    def verify_layer(self, index: int) -> None:
        """Hash layer ``index``'s array bytes (read in blocks) against the
        manifest's sha256; ValueError naming the file when they differ."""
        array = self.layer(index)  # checks the index
        file = self.layer_file(index)
        _check_inside(self.path, file)
        recorded = self.manifest["layers"][int(index)].get("sha256")
        if not isinstance(recorded, str):
            raise _fail(self.path / MANIFEST, f"layer {int(index)}'s entry has no sha256, so it cannot be verified")
        if _array_sha256(array) != recorded:
            raise _changed(file)

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
                raise TypeError(f"{key!r} must be a JSON {'list' if kind is list else 'object'}, "
                                f"got {type(value).__name__}")
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
    full_meta = {**meta, "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes),
                 "versions": manifest.get("versions", {})}
    return LayerStore(
        path=root, name=name, labels=labels, utterance=utterance, meta=full_meta,
        fingerprint=_fingerprint(manifest), manifest=manifest,
    )
