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
import csv
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.commands._output import (
    DataError,
    UsageError,
    check_plot_file,
    positive_int,
)

__all__ = [
    "add_arguments", "run", "load_embeddings", "load_labels", "natural_key", "add_scoring_arguments",
    "format_table",
]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``layer_2`` < ``layer_10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The estimator options shared by ``score`` and ``prune``."""
    group = parser.add_argument_group("scoring")
    group.add_argument("--k", type=positive_int, default=10, help="neighbours in the kNN graph (default 10)")
    group.add_argument(
        "--pairs", type=positive_int, default=None, help="same-class ordered pairs sampled per class (default 5000)"
    )
    group.add_argument(
        "--sources", type=positive_int, default=None,
        help="instead of --pairs: sources per class, each scored against all its class (cheaper at large N)",
    )
    group.add_argument("--exact", action="store_true", help="score every same-class ordered pair")
    group.add_argument(
        "--min-class-size", type=positive_int, default=2, help="skip classes with fewer members (default 2)"
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
    from fastconvex.commands._euclidean import add_measure_arguments

    add_measure_arguments(parser)
    parser.add_argument(
        "--plot", default=None, metavar="FILE.png",
        help="also save the per-layer plot here (.png if no suffix; any format matplotlib writes)",
    )
    parser.add_argument(
        "--json", action="store_true",
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
            arr = _load_npy(f)
            _check_layer(arr, f"{f.name}")
            layers.append(arr)
        return layers, [f.name for f in files]
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _load_npy(p)
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


def npy_files(p: Path) -> list[Path]:
    """The ``.npy`` files of directory ``p``, in natural order (at least one)."""
    files = sorted((f for f in p.iterdir() if f.is_file() and f.suffix == ".npy"), key=lambda f: natural_key(f.name))
    if not files:
        raise ValueError(f"EMBEDDINGS: directory {str(p)!r} holds no .npy files")
    return files


def _load_npy(p: Path, what: str = "EMBEDDINGS", mmap: bool = True) -> np.ndarray:
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
        labels = _load_npy(p, "LABELS", mmap=False)
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


def scoring_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``fastconvex.layer_scores`` from the parsed options."""
    kwargs: dict[str, Any] = {
        "k": args.k,
        "min_class_size": args.min_class_size,
        "seed": args.seed,
        "backend": args.backend,
        "device": args.device,
        # shown unless --quiet: a bar on a terminal, a log line every 30 s in a log file
        "progress": not args.quiet,
    }
    if args.exact:
        if args.pairs is not None or args.sources is not None:
            raise UsageError("--exact scores every pair; do not combine it with --pairs or --sources")
        kwargs.update(exact=True, pairs=None)
    elif args.sources is not None:
        if args.pairs is not None:
            raise UsageError("choose one of --pairs and --sources")
        kwargs.update(sources=args.sources, pairs=None)
    else:
        kwargs["pairs"] = 5000 if args.pairs is None else args.pairs
    return kwargs


def save_plot(scores: Any, path: str | Path, *, cut: int | None, title: str | None = None) -> Path:
    """Save the convexity-per-layer plot (standard-error bars, cut marked) as an image."""
    from fastconvex.core.plotfile import save_figure
    from fastconvex.plot import plot_layer_scores

    out = Path(path)
    if not out.suffix:  # what matplotlib would write: say so instead of guessing
        out = out.with_name(out.name + ".png")
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"--plot: directory {str(out.parent)!r} does not exist")
    fig = plot_layer_scores(scores, cut=cut)
    if title:
        fig.axes[0].set_title(title)
    return save_figure(fig, out, dpi=120)


def format_table(result: Any, names: list[str] | None = None) -> str:
    """The per-layer table ``fastconvex score`` prints: convexity, standard
    error, 95 % interval and macro score in percent (rounded for display only;
    the JSON keeps every digit)."""
    first = result.layers[0]
    names = names if names is not None else [str(i) for i in range(len(result))]
    width = max([5] + [len(n) for n in names])
    head = (f"{'layer':>5}  {'source':<{width}}  {'convexity %':>11}  {'± s.e.':>6}  "
            f"{'95% interval':>15}  {'macro %':>7}")
    graph = first.measure == "graph"
    lines = [
        f"{first.measure} convexity of {len(result)} layer(s): N={first.n_points}, "
        + (f"k={first.k}, " if graph else f"{first.n_sampled} points per segment, ")
        + f"estimator {first.estimator}, {first.total_pairs} pairs per layer"
        + (f", backend {first.backend}" if graph else ""),
        head,
        "-" * len(head),
    ]
    best = result.best_layer
    intervals = result.intervals(0.95)
    for i, (layer, name) in enumerate(zip(result.layers, names)):
        lo, hi = intervals[i]
        ci = "-" if np.isnan(lo) else f"{100 * lo:6.2f}-{100 * hi:6.2f}"
        lines.append(
            f"{i:>5}  {name:<{width}}  {100 * layer.score:>11.2f}  {100 * layer.stderr:>6.2f}  "
            f"{ci:>15}  {100 * layer.macro:>7.2f}" + ("  <- best" if i == best else "")
        )
    if np.isfinite(result.df).any():
        lines.append(f"(interval: Student's t, {first.df:g} degrees of freedom in layer 0; see docs/score.md)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Score every layer of EMBEDDINGS against LABELS: a table on stdout, JSON
    with ``--json`` or to ``--out``; outputs are checked before the scoring."""
    import fastconvex as fc
    from fastconvex.cli import log
    from fastconvex.commands._euclidean import check_graph_only, run_score
    from fastconvex.commands._output import run_with_hf_quiet

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


def emit_result(args: argparse.Namespace, result: Any, names: list[str], plot_path: Path | None) -> int:
    """The table on stdout, or the JSON (``--json``, ``--out``), then the plot:
    the JSON is written first, so a plot that fails never loses the scores."""
    from fastconvex.cli import emit_report, log

    emit_report(args, result.to_dict(), lambda: format_table(result, names))  # before the plot
    if plot_path is not None:
        cut = result.best_layer if result.best_layer > 0 else None
        try:
            log(args, f"wrote {save_plot(result, plot_path, cut=cut)}")
        except Exception as exc:  # noqa: BLE001 - the scores are kept; say why there is no plot
            kept = f"the scores are in {args.out}" if args.out not in (None, "-") else "the scores were printed"
            raise DataError(f"--plot {str(plot_path)!r} could not be written ({exc}); {kept}") from exc
    return 0
