"""What every command shares about errors and output: the two error kinds,
the output paths checked before any work, and how a result is printed.

* :class:`UsageError` (exit status 2) and :class:`DataError` (exit status 1):
  :func:`fastconvex.cli.main` prints either as one line on stderr.
* Output paths are checked *before* any work (:func:`check_output_file`,
  :func:`check_plot_file`, :func:`check_output_directory`), results are
  written atomically (:func:`write_text_atomic`: a temporary file in the same
  directory, then a rename, so an interrupted run never leaves half a file),
  and the JSON is written before the plot.
* Results go to stdout (:func:`emit_report`: the table, or the JSON), logs to
  stderr (:func:`log`, silent with ``--quiet``).

Imported by :mod:`fastconvex.cli` before the command is known, so it loads
nothing heavy (numpy only inside :func:`_json_default`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastconvex.core.atomic import write_text_atomic

__all__ = [
    "DataError",
    "UsageError",
    "check_output_directory",
    "check_output_file",
    "check_plot_file",
    "emit_json",
    "emit_report",
    "log",
    "run_with_hf_quiet",
    "write_text_atomic",
]


class UsageError(ValueError):
    """A bad command line (option values, output paths): exit status 2."""

    exit_status = 2


class DataError(ValueError):
    """Input files or data that cannot be scored as given: exit status 1."""

    exit_status = 1


def check_output_directory(
    path: str | os.PathLike[str], option: str, *, overwrite: bool, whole: bool, action: str
) -> Path:
    """:func:`fastconvex.core.atomic.check_output_dir` for a command-line option:
    a :class:`UsageError` naming ``option`` and ``--overwrite``."""
    from fastconvex.core.atomic import check_output_dir

    try:
        return check_output_dir(path, option, overwrite, action=action, whole=whole, hint="--overwrite")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def check_output_file(path: str | os.PathLike[str], option: str, *, overwrite: bool = False) -> Path:
    """``path`` can be written as a file: not a directory, its directory exists
    and is writable, and it does not exist yet unless ``overwrite``
    (``--overwrite``). Raises :class:`UsageError` naming ``option`` otherwise."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(
            f"{option} {str(out)!r} is a directory; give a file name, such as {str(out / 'result.json')!r}"
        )
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {str(out)!r}: directory {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {str(out)!r}: directory {str(parent)!r} is not writable")
    if out.exists() and not overwrite:
        raise UsageError(f"{option} {str(out)!r} already exists (pass --overwrite to replace it)")
    if out.exists() and not os.access(out, os.W_OK):
        raise UsageError(f"{option} {str(out)!r} exists and is not writable")
    return out


def check_plot_file(path: str | os.PathLike[str], option: str = "--plot", *, overwrite: bool = False) -> Path:
    """The file a plot will be written to, checked before any work.

    No suffix: ``.png`` is added (and the returned path says so, for the log).
    Raises :class:`UsageError` for a suffix matplotlib cannot write, when
    matplotlib is missing, or for a path :func:`check_output_file` rejects.
    """
    out = Path(path)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError(
            f"{option} needs matplotlib, which is not installed: pip install 'fastconvex[plot]' (or leave out {option})"
        ) from None
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = out.suffix[1:].lower()
    if fmt not in formats:
        raise UsageError(
            f"{option} {str(path)!r}: matplotlib cannot write {out.suffix!r} files; use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
        )
    return check_output_file(out, option, overwrite=overwrite)


def run_with_hf_quiet(args: Any, body: Callable[[Any], int]) -> int:
    """``body(args)``; with ``--quiet``, transformers' logging and progress bars
    ("Loading weights" ...) are silenced while it runs."""
    if not getattr(args, "quiet", False):
        return body(args)
    from fastconvex.hf.quiet import quiet_transformers

    with quiet_transformers():
        return body(args)


# "out not given": None already means stdout, so the default ``args.out`` needs a sentinel of its own
_FROM_ARGS: Any = object()


def log(args: argparse.Namespace | None, message: str) -> None:
    """A log line on stderr (silent with ``--quiet``)."""
    if args is None or not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def emit_json(obj: Any, args: argparse.Namespace, out: Any = _FROM_ARGS) -> None:
    """Write ``obj`` as JSON to ``out`` (default ``args.out``: a path, or
    None / "-" for stdout); a file is written atomically."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    out = getattr(args, "out", None) if out is _FROM_ARGS else out
    if out in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_text_atomic(out, text)
        log(args, f"wrote {out}")


def emit_report(args: argparse.Namespace, obj: Any, table: Callable[[], str], *, out: Any = _FROM_ARGS) -> None:
    """What every command prints: the readable ``table()`` on stdout, or with
    ``--json`` (or ``--out -``) the JSON of ``obj`` instead. ``--out FILE``
    (``out``, default ``args.out``; None where ``--out`` is not a report
    file) also gets the JSON, written first, so a later step (a plot) that
    fails never loses it."""
    out = getattr(args, "out", None) if out is _FROM_ARGS else out
    if out not in (None, "-"):
        emit_json(obj, args, out)
    if getattr(args, "json", False) or out == "-":
        emit_json(obj, args, None)
    else:
        text = table()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def _json_default(value: Any) -> Any:
    import numpy as np  # here: the module stays light for the command line's start-up

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
