"""Audio files and their labels: ``DIR/<label>/*.wav|flac|ogg`` or a CSV of path,label."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["AUDIO_SUFFIXES", "AudioFiles", "check_sampling_rate", "find_audio", "load_audio"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _soundfile():  # type: ignore[no-untyped-def]
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading audio needs soundfile: pip install 'fastconvex[hf]'") from exc
    return soundfile


def check_sampling_rate(rate: object, name: str = "sampling_rate") -> int:
    """``rate`` as a positive int (Hz); a float, string or bool is refused, never truncated."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of Hz, got {type(rate).__name__} {rate!r}")
    if rate < 1:
        raise ValueError(f"{name} must be positive, got {int(rate)}")
    return int(rate)


def _resampled_length(n: int, sr_in: int, sr_out: int) -> int:
    if sr_in == sr_out:
        return n
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    return -(-n * up // down)


def load_audio(path: str | os.PathLike[str], sampling_rate: int = 16000) -> np.ndarray:
    """Read an audio file as mono float32 at ``sampling_rate``.

    Multi-channel audio is averaged to mono; other rates are resampled with a
    polyphase filter (``scipy.signal.resample_poly``).

    Parameters
    ----------
    path : path
        A file soundfile can read (wav, flac, ogg, ...).
    sampling_rate : int
        Target rate in Hz.

    Returns
    -------
    numpy.ndarray of float32, shape (T,)
    """
    sampling_rate = check_sampling_rate(sampling_rate)
    sf = _soundfile()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"audio file {str(p)!r} does not exist")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError subclasses
        raise ValueError(f"cannot read audio file {str(p)!r}: {exc}") from exc
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if int(sr) != int(sampling_rate):
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), int(sampling_rate))
        x = resample_poly(x, int(sampling_rate) // g, int(sr) // g).astype(np.float32)
    if x.shape[0] == 0:
        raise ValueError(f"audio file {str(p)!r} is empty")
    return np.ascontiguousarray(x, dtype=np.float32)


class AudioFiles(Sequence[np.ndarray]):
    """A lazily loaded list of audio files (mono float32 at ``sampling_rate``).

    Parameters
    ----------
    paths : sequence of path
    sampling_rate : int
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], sampling_rate: int = 16000) -> None:
        self.paths = [Path(p) for p in paths]
        self.sampling_rate = check_sampling_rate(sampling_rate)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return load_audio(self.paths[i], self.sampling_rate)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def lengths(self) -> np.ndarray:
        """Sample counts after resampling, from the file headers (nothing is decoded).

        Returns
        -------
        numpy.ndarray of int64, shape (len(self),)
        """
        sf = _soundfile()
        out = np.empty(len(self.paths), dtype=np.int64)
        for i, p in enumerate(self.paths):
            if not p.is_file():
                raise FileNotFoundError(f"audio file {str(p)!r} does not exist")
            try:
                info = sf.info(str(p))
            except Exception as exc:
                raise ValueError(f"cannot read audio file {str(p)!r}: {exc}") from exc
            out[i] = _resampled_length(int(info.frames), int(info.samplerate), self.sampling_rate)
        return out


def _natural_key(text: str) -> list[object]:
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def find_audio(
    source: str | os.PathLike[str], *, label_column: str = "label", path_column: str = "path"
) -> tuple[list[Path], list[str]]:
    """Audio files and labels of a dataset.

    Parameters
    ----------
    source : path
        Either a directory laid out like Speech Commands, ``source/<label>/**/*.wav``
        (also ``.flac``, ``.ogg``; subdirectories whose names start with ``_`` or
        ``.``, such as ``_background_noise_``, are skipped), or a CSV file with a
        header row holding ``path_column`` and ``label_column`` (relative paths are
        relative to the CSV's directory).  A CSV without a header of those names is
        read as two columns: path, label.
    label_column, path_column : str
        CSV column names.

    Returns
    -------
    paths : list of pathlib.Path, shape (N,)
    labels : list of str, shape (N,)

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist, or a file the CSV lists does not (checked
        here, before any model is loaded).
    ValueError
        No audio found; a malformed CSV; a header row with other column names.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"audio source {str(src)!r} does not exist")
    paths: list[Path] = []
    labels: list[str] = []
    if src.is_dir():
        classes = sorted(
            (d for d in src.iterdir() if d.is_dir() and not d.name.startswith(("_", "."))),
            key=lambda d: _natural_key(d.name),
        )
        for d in classes:
            files = sorted(
                (f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES),
                key=lambda f: _natural_key(str(f.relative_to(d))),
            )
            paths.extend(files)
            labels.extend([d.name] * len(files))
        if not paths:
            raise ValueError(
                f"audio source {str(src)!r}: no {'/'.join(AUDIO_SUFFIXES)} files in <label>/ subdirectories"
            )
        return paths, labels
    import io

    from fastconvex.core.text import read_text_input

    text = read_text_input(src, f"audio source {str(src)!r}")
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"audio source {str(src)!r}: the CSV is empty")
    header = [c.strip() for c in rows[0]]
    if path_column in header and label_column in header:
        pi, li = header.index(path_column), header.index(label_column)
        body = rows[1:]
        first_line = 2
    else:
        if len(header) != 2:
            raise ValueError(
                f"audio source {str(src)!r}: needs a header with columns {path_column!r} and {label_column!r}, "
                f"or exactly two columns (path, label); got {len(header)} columns"
            )
        pi, li = 0, 1
        body = rows
        first_line = 1
    for n, row in enumerate(body, start=first_line):
        if len(row) <= max(pi, li):
            raise ValueError(f"audio source {str(src)!r}: line {n} has {len(row)} columns")
        p = Path(row[pi].strip())
        if not p.is_absolute():
            p = src.parent / p
        if not p.is_file():
            if n == 1 and p.suffix.lower() not in AUDIO_SUFFIXES:
                raise ValueError(
                    f"audio source {str(src)!r}: line 1 {[c.strip() for c in row]} looks like a header "
                    f"row but does not name the columns {path_column!r} and {label_column!r}: "
                    "rename them so (or remove the header row)"
                )
            raise FileNotFoundError(f"audio source {str(src)!r}: line {n} lists {str(p)!r}, which does not exist")
        label = row[li].strip()
        if not label:
            raise ValueError(f"audio source {str(src)!r}: line {n} has an empty label")
        paths.append(p)
        labels.append(label)
    if not paths:
        raise ValueError(f"audio source {str(src)!r}: the CSV lists no files")
    return paths, labels
