"""``fastconvex score EMBEDDINGS --labels LABELS``: per-layer convexity from files.

EMBEDDINGS is a ``.npy`` of shape (L, N, D) or (N, D), a ``.npz`` (one (N, D)
array per key, or one (L, N, D) array), or a directory of per-layer ``.npy``
files (each (N, D), memory-mapped, in natural order: ``layer_2`` before
``layer_10``).  LABELS is a ``.npy`` (N,), a ``.txt`` with one label per line, or
a ``.csv`` with a header row (``--label-column``, default ``label``).  The
result, ``LayerScores.to_dict()``, goes to stdout or ``--out``.

``--measure euclidean --model DIR`` scores Euclidean convexity instead, through
the classifier's own remaining layers (``fastconvex.commands._euclidean``).
"""

from __future__ import annotations

import argparse
import csv
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_arguments", "run", "load_embeddings", "load_labels", "natural_key", "add_scoring_arguments"]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``layer_2`` < ``layer_10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The estimator options shared by ``score`` and ``prune``."""
    group = parser.add_argument_group("scoring")
    group.add_argument("--k", type=int, default=10, help="neighbours in the kNN graph (default 10)")
    group.add_argument(
        "--pairs", type=int, default=None, help="same-class ordered pairs sampled per class (default 5000)"
    )
    group.add_argument(
        "--sources", type=int, default=None,
        help="instead of --pairs: sources per class, each scored against all its class (cheaper at large N)",
    )
    group.add_argument("--exact", action="store_true", help="score every same-class ordered pair")
    group.add_argument(
        "--min-class-size", type=int, default=2, help="skip classes with fewer members (default 2)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastconvex score``."""
    parser.add_argument(
        "embeddings", metavar="EMBEDDINGS",
        help=".npy (L,N,D) or (N,D); .npz; or a directory of per-layer .npy files",
    )
    parser.add_argument(
        "--labels", required=True, metavar="LABELS",
        help="labels: .npy (N,), .txt (one per line) or .csv (see --label-column)",
    )
    parser.add_argument(
        "--label-column", default=None, metavar="NAME",
        help="CSV column holding the labels (default: 'label', or the only column)",
    )
    add_scoring_arguments(parser)
    from ._euclidean import add_measure_arguments

    add_measure_arguments(parser)
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also save the per-layer plot here")


def _check_layer(arr: Any, what: str) -> None:
    if arr.ndim != 2:
        raise ValueError(f"EMBEDDINGS: {what} has shape {arr.shape}, expected (N, D)")


def load_embeddings(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """Per-layer (N, D) arrays from a ``.npy``, ``.npz`` or a directory of ``.npy`` files.

    Parameters
    ----------
    path : path
        ``.npy`` of shape (L, N, D) or (N, D) (memory-mapped); ``.npz`` whose arrays
        are (N, D) layers (keys in natural order) or a single (L, N, D) array; or a
        directory whose ``*.npy`` files are (N, D) layers (natural order, memory-mapped).

    Returns
    -------
    layers : list of numpy.ndarray, each shape (N, D)
    names : list of str
        Where each layer came from (file name, npz key, or ``path[i]``).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Wrong shapes, an empty directory, an unreadable or unsupported file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"EMBEDDINGS {str(p)!r} does not exist")
    if p.is_dir():
        files = npy_files(p)
        layers = []
        for f in files:
            arr = _load_npy(f)
            _check_layer(arr, f"{f.name}")
            layers.append(arr)
        return layers, [f.name for f in files]
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _load_npy(p)
        if arr.ndim == 3:
            return [arr[i] for i in range(arr.shape[0])], [f"{p.name}[{i}]" for i in range(arr.shape[0])]
        if arr.ndim == 2:
            return [arr], [p.name]
        raise ValueError(f"EMBEDDINGS: {p.name} has shape {arr.shape}, expected (L, N, D) or (N, D)")
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as data:
                keys = sorted(data.files, key=natural_key)
                arrays = {key: data[key] for key in keys}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"EMBEDDINGS: cannot read {str(p)!r}: {exc}") from exc
        if not keys:
            raise ValueError(f"EMBEDDINGS: {p.name} holds no arrays")
        if len(keys) == 1 and arrays[keys[0]].ndim == 3:
            arr = arrays[keys[0]]
            return [arr[i] for i in range(arr.shape[0])], [f"{keys[0]}[{i}]" for i in range(arr.shape[0])]
        for key in keys:
            _check_layer(arrays[key], f"{p.name}[{key!r}]")
        return [arrays[k] for k in keys], keys
    raise ValueError(f"EMBEDDINGS: {p.name} must be a .npy or .npz file, or a directory of .npy files")


def npy_files(p: Path) -> list[Path]:
    """The ``.npy`` files of directory ``p``, in natural order (at least one)."""
    files = sorted((f for f in p.iterdir() if f.is_file() and f.suffix == ".npy"), key=lambda f: natural_key(f.name))
    if not files:
        raise ValueError(f"EMBEDDINGS: directory {str(p)!r} holds no .npy files")
    return files


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {str(p)!r} as a .npy array: {exc}") from exc


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
        raise ValueError(f"LABELS {str(p)!r} is a directory, expected a .npy, .txt or .csv file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            labels = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"LABELS: cannot read {str(p)!r} as a .npy array: {exc}") from exc
        if labels.ndim != 1:
            raise ValueError(f"LABELS: {p.name} has shape {labels.shape}, expected (N,)")
        return labels
    if column is not None and suffix != ".csv":
        raise ValueError("--label-column applies to .csv labels only")
    if suffix == ".txt":
        lines = p.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                raise ValueError(f"LABELS: {p.name} line {n} is empty")
        if not lines:
            raise ValueError(f"LABELS: {p.name} is empty")
        return np.array([line.strip() for line in lines])
    if suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r]
        if len(rows) < 2:
            raise ValueError(f"LABELS: {p.name} needs a header row and at least one label")
        header = [c.strip() for c in rows[0]]
        if column is None:
            if "label" in header:
                column = "label"
            elif len(header) == 1:
                column = header[0]
            else:
                raise ValueError(f"LABELS: {p.name} has columns {header}; choose one with --label-column")
        if column not in header:
            raise ValueError(f"LABELS: {p.name} has no column {column!r} (columns: {header})")
        ci = header.index(column)
        out = []
        for n, row in enumerate(rows[1:], start=2):
            if len(row) <= ci or not row[ci].strip():
                raise ValueError(f"LABELS: {p.name} line {n} has no value in column {column!r}")
            out.append(row[ci].strip())
        return np.array(out)
    raise ValueError(f"LABELS: {p.name} must be .npy, .txt or .csv")


def scoring_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``fastconvex.layer_scores`` from the parsed options."""
    kwargs: dict[str, Any] = {
        "k": args.k,
        "min_class_size": args.min_class_size,
        "seed": args.seed,
        "backend": args.backend,
        "device": args.device,
        "progress": False if args.quiet else None,
    }
    if args.exact:
        if args.pairs is not None or args.sources is not None:
            raise ValueError("--exact scores every pair; do not combine it with --pairs or --sources")
        kwargs.update(exact=True, pairs=None)
    elif args.sources is not None:
        if args.pairs is not None:
            raise ValueError("choose one of --pairs and --sources")
        kwargs.update(sources=args.sources, pairs=None)
    else:
        kwargs["pairs"] = 5000 if args.pairs is None else args.pairs
    return kwargs


def save_plot(scores: Any, path: str | Path, *, cut: int | None, title: str | None = None) -> Path:
    """Save the convexity-per-layer plot (standard-error bars, cut marked) as an image."""
    from fastconvex.plot import plot_layer_scores

    out = Path(path)
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"--plot: directory {str(out.parent)!r} does not exist")
    fig = plot_layer_scores(scores, cut=cut)
    if title:
        fig.axes[0].set_title(title)
    fig.savefig(out, dpi=120)
    return out


def run(args: argparse.Namespace) -> int:
    """Score every layer of EMBEDDINGS against LABELS; JSON to stdout or ``--out``."""
    import fastconvex as fc
    from fastconvex.cli import emit_json, log

    from ._euclidean import check_graph_only, run_score

    if args.measure == "euclidean":
        return run_score(args)
    check_graph_only(args)
    kwargs = scoring_kwargs(args)
    layers, names = load_embeddings(args.embeddings)
    labels = load_labels(args.labels, column=args.label_column)
    n = int(layers[0].shape[0])
    for name, layer in zip(names, layers):
        if int(layer.shape[0]) != n:
            raise ValueError(
                f"EMBEDDINGS: {name} has {layer.shape[0]} rows but {names[0]} has {n}: every layer must embed the same points"
            )
    if labels.shape[0] != n:
        raise ValueError(f"LABELS has {labels.shape[0]} labels but EMBEDDINGS has N = {n} rows per layer")
    log(args, f"scoring {len(layers)} layer(s) of {n} points, dimension {layers[0].shape[1]}")
    result = fc.layer_scores(layers, labels, **kwargs)
    if args.plot:
        cut = result.best_layer if result.best_layer > 0 else None
        log(args, f"wrote {save_plot(result, args.plot, cut=cut)}")
    emit_json(result.to_dict(), args)
    return 0
