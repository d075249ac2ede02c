"""Writing a finished file atomically: a temporary file in the same directory,
flushed to disk, then renamed over the target, so readers (and a rerun after a
crash) see the old file or the whole new one, never a part. And an output
directory checked before any work, so nothing is replaced unasked."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_output_dir", "staged_directory", "write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, written as given) to ``path`` atomically; the
    temporary file is removed if anything fails."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (indent 1, NaN allowed) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def check_output_dir(path: str | os.PathLike[str], name: str, overwrite: bool, *,
                     action: str = "replace it", whole: bool = True, hint: str = "overwrite=True") -> Path:
    """``path`` as an output directory, checked before any work: not a file,
    not a non-empty directory unless ``overwrite`` (the message says
    ``pass overwrite=True to {action}``), and writable where the writer needs
    it: an existing ``path`` itself when files are written into it
    (``whole=False``), else its nearest existing parent (the directory is
    made, or replaced whole, there). Raises ValueError naming ``name`` (and
    ``hint``, how to allow replacing: ``overwrite=True``, or ``--overwrite``)."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{name} {str(out)!r} exists and is not empty (pass {hint} to {action})")
    where = out if (out.is_dir() and not whole) else out.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise ValueError(f"{name} {str(out)!r}: {str(where)!r} is a file, so the directory cannot be made")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(out)!r}: directory {str(where)!r} is not writable")
    return out


def _new_dir(parent: Path, prefix: str) -> Path:
    """A new directory ``parent/prefix<random>`` with the umask's permissions
    (``mkdtemp`` would make it 0700; reading the umask is not thread-safe)."""
    while True:
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(candidate, 0o777)
        except FileExistsError:
            continue
        return candidate


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike[str], *, replace: bool, last: Sequence[str] = ()) -> Iterator[Path]:
    """A temporary directory to write ``out``'s files into; when the block
    ends without an error they take their place, and on an error it is
    removed and ``out`` is left as it was.

    ``replace=True``: the directory is a sibling of ``out`` and replaces it
    whole (an old ``out`` is moved aside first and removed only after).
    ``replace=False``: the directory is made inside ``out`` (so on its file
    system, whatever ``out`` links to or is mounted on), and its files are
    moved into ``out`` one by one with ``os.replace``, the names in ``last``
    last (e.g. the file that makes the directory loadable): each file is the
    old one or the whole new one."""
    out = Path(out)
    if replace:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_dir(out.parent, f".{out.name}.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        tmp = _new_dir(out, ".fastconvex-staging-")
    old: Path | None = None
    try:
        yield tmp
        if replace:
            if out.exists():
                old = _new_dir(out.parent, f".{out.name}.old.")
                os.replace(out, old / out.name)
            os.replace(tmp, out)
        else:
            order = sorted(tmp.iterdir(), key=lambda p: (last.index(p.name) if p.name in last else -1, p.name))
            for item in order:
                os.replace(item, out / item.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
