"""Writing a finished file atomically: a temporary file in the same directory,
flushed to disk, then renamed over the target, so readers (and a rerun after a
crash) see the old file or the whole new one, never a part. And an output
directory checked before any work, so nothing is replaced unasked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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
                     action: str = "replace it") -> Path:
    """``path`` as an output directory, checked before any work: not a file,
    not a non-empty directory unless ``overwrite`` (the message says
    ``pass overwrite=True to {action}``), and its nearest existing parent
    writable. Raises ValueError naming ``name`` otherwise."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{name} {str(out)!r} exists and is not empty (pass overwrite=True to {action})")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {str(out)!r}: directory {str(parent)!r} is not writable")
    return out


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike[str], *, replace: bool) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write its files into. When the block
    ends without an error, ``replace=True`` puts the whole directory in place
    of ``out`` (an old ``out`` is moved aside first and removed only after);
    ``replace=False`` moves its files into ``out`` one by one with
    ``os.replace``, so each file is the old one or the whole new one. On an
    error the temporary directory is removed and ``out`` is left as it was.
    The directory gets the usual permissions (umask), not ``mkdtemp``'s 0700."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    old: Path | None = None
    try:
        yield tmp
        if replace:
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                os.replace(out, old / out.name)
            os.replace(tmp, out)
        else:
            out.mkdir(exist_ok=True)
            for item in sorted(tmp.iterdir()):
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
