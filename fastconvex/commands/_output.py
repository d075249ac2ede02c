"""What every subcommand shares about errors and output files.

* :class:`UsageError` (exit status 2) and :class:`DataError` (exit status 1):
  :func:`fastconvex.cli.main` prints either as one line on stderr.
* Output paths are checked *before* any work (:func:`check_output_file`,
  :func:`check_plot_file`), results are written atomically
  (:func:`write_text_atomic`: a temporary file in the same directory, then a
  rename, so an interrupted run never leaves half a file), and the JSON is
  written before the plot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from fastconvex.core.atomic import write_text_atomic

__all__ = [
    "UsageError",
    "DataError",
    "check_output_file",
    "check_plot_file",
    "write_text_atomic",
    "positive_int",
    "non_negative_int",
    "run_with_hf_quiet",
]


class UsageError(ValueError):
    """A bad command line (option values, output paths): exit status 2."""

    exit_status = 2


class DataError(ValueError):
    """Input files or data that cannot be scored as given: exit status 1."""

    exit_status = 1


def check_output_directory(path: str | os.PathLike[str], option: str, *, overwrite: bool, whole: bool,
                           action: str) -> Path:
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
        raise UsageError(f"{option} {str(out)!r} is a directory; give a file name, such as {str(out / 'result.json')!r}")
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
            f"{option} needs matplotlib, which is not installed: pip install 'fastconvex[plot]' "
            f"(or leave out {option})"
        ) from None
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = out.suffix[1:].lower()
    if fmt not in formats:
        raise UsageError(
            f"{option} {str(path)!r}: matplotlib cannot write {out.suffix!r} files; use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
        )
    return check_output_file(out, option, overwrite=overwrite)


def _int_at_least(text: str, minimum: int) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (else a one-line usage error)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    return _int_at_least(text, 0)


def run_with_hf_quiet(args: Any, body: Callable[[Any], int]) -> int:
    """``body(args)``; with ``--quiet``, transformers' logging and progress bars
    ("Loading weights" ...) are silenced while it runs."""
    if not getattr(args, "quiet", False):
        return body(args)
    from fastconvex.hf.quiet import quiet_transformers

    with quiet_transformers():
        return body(args)
