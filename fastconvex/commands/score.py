"""``fastconvex score EMBEDDINGS --labels LABELS``: per-layer convexity from files.

EMBEDDINGS is a ``.npy`` of shape (L, N, D) or (N, D), a ``.npz`` (one (N, D)
array per key, or one (L, N, D) array), or a directory of per-layer ``.npy``
files (each (N, D), memory-mapped, in natural order: ``layer_2`` before
``layer_10``).  LABELS is a ``.npy`` (N,), a ``.txt`` with one label per line, or
a ``.csv`` with a header row (``--label-column``, default ``label``).  A
per-layer table goes to stdout; the result, ``LayerScores.to_dict()``, as JSON
to stdout with ``--json`` or to ``--out FILE``. ``--out`` and ``--plot`` are
checked before any scoring, and the JSON is written before the plot.

``--measure euclidean --model DIR`` scores Euclidean convexity instead, through
the classifier's own remaining layers (``fastconvex.commands._euclidean``).
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.commands._args import add_measure_arguments, add_scoring_arguments, check_graph_only, scoring_kwargs
from fastconvex.commands._euclidean import run_score
from fastconvex.commands._files import check_label_count, load_labels, load_npy, natural_key, npy_files
from fastconvex.commands._output import DataError, UsageError, check_plot_file, log, run_with_hf_quiet
from fastconvex.commands._report import emit_result

__all__ = ["add_arguments", "check_outputs", "load_embeddings", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastconvex score``."""
    parser.add_argument(
        "embeddings",
        metavar="EMBEDDINGS",
        help=".npy (L,N,D) or (N,D); .npz; or a directory of per-layer .npy files",
    )
    parser.add_argument(
        "--labels",
        required=True,
        metavar="LABELS",
        help="labels: .npy (N,), .txt (one per line) or .csv (see --label-column)",
    )
    parser.add_argument(
        "--label-column",
        default=None,
        metavar="NAME",
        help="CSV column holding the labels (default: 'label', or the only column)",
    )
    add_scoring_arguments(parser)
    add_measure_arguments(parser)
    parser.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also save the per-layer plot here (.png if no suffix; any format matplotlib writes)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout instead of the table (--out FILE writes the JSON to a file)",
    )


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
            arr = load_npy(f)
            _check_layer(arr, f"{f.name}")
            layers.append(arr)
        return layers, [f.name for f in files]
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = load_npy(p)
        if arr.ndim == 3:
            if arr.shape[0] == 0:
                raise ValueError(f"EMBEDDINGS: {p.name} has shape {arr.shape}: no layer to score")
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
            if arr.shape[0] == 0:
                raise ValueError(f"EMBEDDINGS: {p.name}[{keys[0]!r}] has shape {arr.shape}: no layer to score")
            return [arr[i] for i in range(arr.shape[0])], [f"{keys[0]}[{i}]" for i in range(arr.shape[0])]
        for key in keys:
            _check_layer(arrays[key], f"{p.name}[{key!r}]")
        return [arrays[k] for k in keys], keys
    raise UsageError(f"EMBEDDINGS: {p.name} must be a .npy or .npz file, or a directory of .npy files")


def run(args: argparse.Namespace) -> int:
    """Score every layer of EMBEDDINGS against LABELS: a table on stdout, JSON
    with ``--json`` or to ``--out``; outputs are checked before the scoring."""
    import fastconvex as fc

    # every output path first: a result is never computed only to be lost
    plot_path = check_outputs(args)
    if args.measure == "euclidean":
        return run_with_hf_quiet(args, lambda a: run_score(a, plot_path))  # --quiet: no "Loading weights" bar
    check_graph_only(args)
    kwargs = scoring_kwargs(args)
    try:
        layers, names = load_embeddings(args.embeddings)
        labels = load_labels(args.labels, column=args.label_column)
    except (FileNotFoundError, UsageError):
        raise
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    n = int(layers[0].shape[0])
    for name, layer in zip(names, layers):
        if int(layer.shape[0]) != n:
            raise DataError(
                f"EMBEDDINGS: {name} has {layer.shape[0]} rows but {names[0]} has {n}: every layer must embed the same points"
            )
    check_label_count(labels, n, args.labels, f"EMBEDDINGS {str(args.embeddings)!r} has N = {n} rows per layer")
    log(args, f"scoring {len(layers)} layer(s) of {n} points, dimension {layers[0].shape[1]}")
    try:
        result = fc.layer_scores(layers, labels, **kwargs)
    except (ValueError, TypeError) as exc:  # the data cannot be scored as asked
        raise DataError(str(exc)) from exc
    return emit_result(args, result, names, plot_path)


def check_outputs(args: argparse.Namespace) -> Path | None:
    """Check ``--plot`` (``--out`` was checked by ``cli.main``) before any work,
    and that they differ; the plot's path (or None)."""
    plot = check_plot_file(args.plot, overwrite=args.overwrite) if args.plot else None
    if plot is not None and args.out not in (None, "-") and plot.resolve() == Path(args.out).resolve():
        raise UsageError(f"--out and --plot name the same file, {str(plot)!r}: the plot would replace the JSON")
    return plot
