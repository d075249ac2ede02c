"""Reading the command line's input files: labels (``.npy``, ``.txt``,
``.csv``), ``.npy`` arrays with errors that name the file and say what is wrong
with it, directories of per-layer ``.npy`` files in natural order, and
``--label-map`` JSON files; also the ``--max-per-class`` subsample of listed
audio. A file's contents that cannot be used raise ``ValueError`` (a data
error), a wrong kind of file or option :class:`UsageError`.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.commands._output import DataError, UsageError

__all__ = [
    "check_label_count",
    "load_label_map",
    "load_labels",
    "load_npy",
    "natural_key",
    "npy_files",
    "subsample_per_class",
]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``layer_2`` < ``layer_10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def npy_files(p: Path) -> list[Path]:
    """The ``.npy`` files of directory ``p``, in natural order (at least one)."""
    files = sorted((f for f in p.iterdir() if f.is_file() and f.suffix == ".npy"), key=lambda f: natural_key(f.name))
    if not files:
        raise ValueError(f"EMBEDDINGS: directory {str(p)!r} holds no .npy files")
    return files


def load_npy(p: Path, what: str = "EMBEDDINGS", mmap: bool = True) -> np.ndarray:
    """The array in ``.npy`` file ``p`` (memory-mapped with ``mmap``), never
    unpickled; a ``ValueError`` naming ``what`` and saying what is wrong with
    the file (empty, not a ``.npy``, truncated, Python objects) otherwise."""
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        if p.is_file() and p.stat().st_size == 0:
            raise ValueError(f"{what}: {str(p)!r} is empty (0 bytes)") from None
        if not _has_npy_magic(p):  # numpy would suggest unpickling it
            raise ValueError(f"{what}: {str(p)!r} is not a .npy file (it lacks the NumPy header)") from None
        if "mmap length is greater than file size" in str(exc):
            raise ValueError(f"{what}: {str(p)!r} is truncated: shorter than its .npy header says") from None
        if "allow_pickle" in str(exc):
            raise ValueError(
                f"{what}: {str(p)!r} holds Python objects (dtype object, such as ragged lists), "
                "which fastconvex does not unpickle; save one number or string per row "
                "(a numeric or string numpy array, or a .txt with one label per line)"
            ) from None
        raise ValueError(f"{what}: cannot read {str(p)!r} as a .npy array: {exc}") from exc


def _has_npy_magic(p: Path) -> bool:
    with p.open("rb") as fh:
        return fh.read(6) == b"\x93NUMPY"


def _read_text(p: Path) -> str:
    """A labels text file, decoded as every text input is (:mod:`fastconvex.core.text`)."""
    from fastconvex.core.text import read_text_input

    return read_text_input(p, f"LABELS {str(p)!r}")


def load_labels(path: str | Path, *, column: str | None = None) -> np.ndarray:
    """Labels from a ``.npy`` (N,), a ``.txt`` (one per line) or a ``.csv``.

    Parameters
    ----------
    path : path
    column : str, optional
        CSV only: the column name (the file must have a header row).  Default:
        ``label`` if present, else the only column.

    Returns
    -------
    numpy.ndarray, shape (N,)
        ``.npy`` labels as stored; text labels as strings (never coerced to numbers).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"LABELS {str(p)!r} does not exist")
    if p.is_dir():
        raise UsageError(f"LABELS {str(p)!r} is a directory, expected a .npy, .txt or .csv file")
    suffix = p.suffix.lower()
    if column is not None and suffix != ".csv":
        raise UsageError(f"--label-column applies to .csv labels only, not to {p.name}; leave it out")
    if suffix == ".npy":
        labels = load_npy(p, "LABELS", mmap=False)
        if labels.ndim != 1:
            raise ValueError(f"LABELS: {p.name} has shape {labels.shape}, expected (N,)")
        if labels.shape[0] == 0:
            raise ValueError(f"LABELS: {p.name} holds no labels (shape {labels.shape})")
        from fastconvex.core.inputs import check_finite_labels

        check_finite_labels(labels, name=f"LABELS: {p.name}")  # here, where the file can be named
        return labels
    if suffix == ".txt":
        # split on line ends only: str.splitlines would also split a label at \x85 or \u2028
        lines = _read_text(p).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                raise ValueError(f"LABELS: {p.name} line {n} is empty")
        if not lines:
            raise ValueError(f"LABELS: {p.name} is empty")
        return np.array([line.strip() for line in lines])
    if suffix == ".csv":
        import io

        rows = [r for r in csv.reader(io.StringIO(_read_text(p), newline="")) if r]
        if len(rows) < 2:
            raise ValueError(f"LABELS: {p.name} needs a header row and at least one label")
        header = [c.strip() for c in rows[0]]
        if column is None:
            if "label" in header:
                column = "label"
            elif len(header) == 1:
                # a header-less one-column file would lose its first label to the header
                raise ValueError(
                    f"LABELS: {p.name} has one column and its first row {header[0]!r} is not 'label': "
                    f"if that row is a header, pass --label-column {header[0]!r}; if the file has no "
                    "header, add the line 'label' at the top (or give the labels as a .txt, one per line)"
                )
            else:
                raise UsageError(f"LABELS: {p.name} has columns {header}; choose one with --label-column")
        if column not in header:
            raise UsageError(f"LABELS: {p.name} has no column {column!r} (columns: {header})")
        ci = header.index(column)
        out = []
        for n, row in enumerate(rows[1:], start=2):
            if len(row) <= ci or not row[ci].strip():
                raise ValueError(f"LABELS: {p.name} line {n} has no value in column {column!r}")
            out.append(row[ci].strip())
        return np.array(out)
    raise UsageError(f"LABELS: {p.name} must be .npy, .txt or .csv")


def check_label_count(labels: Any, n: int, path: str | Path, rows: str) -> None:
    """A :class:`DataError` naming the labels file when it does not hold one label per row;
    ``rows`` says what the rows are, e.g. ``"EMBEDDINGS 'e.npy' has N = 60 rows per layer"``."""
    if len(labels) != n:
        raise DataError(f"LABELS {str(path)!r} has {len(labels)} labels but {rows}")


def load_label_map(path: str | Path) -> dict[Any, int]:
    """``--label-map FILE.json``: a JSON object {data label: class index}.

    JSON keys are text, so a key that is an integer written in digits ("3",
    "-1", " 07 ") is also entered as that integer: it then matches integer
    labels (a ``.npy`` or a store) as well as text ones. Two keys meaning the
    same integer with different indices ("1" and "01") are refused, naming
    both; a key that matches no data label is never used."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--label-map {str(p)!r} is not a file")
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--label-map {p.name}: not a readable JSON file ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(
            f"--label-map {p.name}: expected a non-empty JSON object {{data label: class index}}, "
            f"got {type(data).__name__}"
        )
    out: dict[Any, int] = {}
    integer_key: dict[int, str] = {}
    for key, index in data.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UsageError(f"--label-map {p.name}: the class index of {key!r} must be an integer >= 0, got {index!r}")
        out[key] = index
        text = key.strip()
        if re.fullmatch(r"-?[0-9]+", text):
            value = int(text)
            if value in integer_key and data[integer_key[value]] != index:
                first = integer_key[value]
                raise UsageError(
                    f"--label-map {p.name}: keys {first!r} and {key!r} both mean the integer label "
                    f"{value} but give it class indices {data[first]} and {index}"
                )
            integer_key.setdefault(value, key)
            out.setdefault(value, index)
    return out


def subsample_per_class(labels: list[str], per_class: int, seed: int) -> np.ndarray:
    """``--max-per-class``: the sorted indices of at most ``per_class`` items
    of each label, drawn with ``seed`` (a label with fewer keeps them all)."""
    from fastconvex.hf.train.splits import per_class_subset

    if per_class < 1:
        raise ValueError(f"--max-per-class must be positive, got {per_class}")
    return per_class_subset(labels, per_class, seed)
