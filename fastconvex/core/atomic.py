"""Writing a finished file atomically: a temporary file in the same directory,
flushed to disk, then renamed over the target, so readers (and a rerun after a
crash) see the old file or the whole new one, never a part. And an output
directory checked before any work, so nothing is replaced unasked.

Files and directories are made with the permissions the umask gives (files
``0o666 & ~umask``, directories ``0o777 & ~umask``), as any other program's
outputs, so others on a shared file system can read them where the umask
allows: the kernel applies the umask to ``os.open(..., 0o666)`` and
``os.mkdir(..., 0o777)``, so it is never read (``os.umask`` to read it is
process-wide and not thread-safe). An I/O error while writing (a full disk,
a lost mount) is a :class:`WriteError` naming the file, and the temporary
file is removed."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "WriteError",
    "as_output_error",
    "atomic_file",
    "check_output_dir",
    "new_dir",
    "staged_directory",
    "swap_directory",
    "write_json_atomic",
    "write_text_atomic",
    "writing",
]


class WriteError(OSError):
    """An output that could not be written (no space left, no permission, an
    I/O error): one line naming the file and the reason; ``errno`` is the
    original error's."""

    def __str__(self) -> str:
        where = f"{self.filename!r}" if self.filename is not None else "an output file"
        return f"cannot write {where}: {self.strerror}"


def as_write_error(exc: OSError, path: str | os.PathLike[str]) -> WriteError:
    """``exc`` as a :class:`WriteError` naming ``path`` (or the file ``exc``
    names itself)."""
    if isinstance(exc, WriteError):
        return exc
    code = exc.errno if exc.errno is not None else errno.EIO
    reason = exc.strerror or str(exc) or os.strerror(code)
    return WriteError(code, reason, str(exc.filename if exc.filename is not None else path))


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an operating-system error (one with an ``errno``) raised inside the
    block into a :class:`WriteError` naming ``path``; other errors (and
    ``FileExistsError`` messages raised by the checks, which carry no errno)
    pass as they are."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        raise as_write_error(exc, path) from exc


def _new_file(parent: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file ``parent/prefix<random>suffix``, opened for writing, with the
    umask's permissions (``mkstemp`` would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(candidate, flags, 0o666), candidate
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """An open file (``mode`` ``"wb"`` or ``"w"``) whose contents become
    ``path`` when the block ends without an error: written to a temporary
    file beside ``path``, flushed to disk, then renamed over it. On any
    error (or an interrupt) the temporary file is removed and ``path`` is
    left as it was; an I/O error is a :class:`WriteError` naming ``path``.
    The only atomic file writer of fastconvex: every result, store file,
    plot and JSON goes through it."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    out = Path(path)
    try:
        fd, tmp = _new_file(out.parent, f".{out.name}.", ".tmp")
    except OSError as exc:
        if exc.errno is None:
            raise
        raise as_output_error(exc, out, None) from exc
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError) and exc.errno is not None:
            raise as_output_error(exc, out, tmp) from exc
        raise


def as_output_error(exc: OSError, out: Path, tmp: Path | None) -> OSError:
    """An error while writing ``out`` through the temporary file ``tmp`` (None:
    while making it) as a :class:`WriteError` naming ``out``, not the hidden
    temporary file (the user never asked for that name); an error about
    another file (read inside the block) keeps its own name."""
    if exc.errno is None:
        return exc
    named = None if exc.filename is None else Path(exc.filename)
    temporary = tmp if tmp is not None else out.parent / f".{out.name}."  # the name _new_file tried
    own = (
        named is None
        or named in (out, temporary)
        or (tmp is None and named.parent == out.parent and named.name.startswith(temporary.name))
    )
    if not own:
        return as_write_error(exc, out)
    return WriteError(exc.errno, exc.strerror or os.strerror(exc.errno), str(out))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, written as given) to ``path`` atomically (see
    :func:`atomic_file`)."""
    out = Path(path)
    with atomic_file(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return out


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON (indent 1, NaN allowed) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def check_output_dir(
    path: str | os.PathLike[str],
    name: str,
    overwrite: bool,
    *,
    action: str = "replace it",
    whole: bool = True,
    hint: str = "overwrite=True",
) -> Path:
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


def new_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new directory ``parent/prefix<random>`` with the umask's permissions
    (``mkdtemp`` would make it 0700; reading the umask is not thread-safe)."""
    parent = Path(parent)
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
        tmp = new_dir(out.parent, f".{out.name}.")
    else:
        out.mkdir(parents=True, exist_ok=True)
        tmp = new_dir(out, ".fastconvex-staging-")
    try:
        yield tmp
        if replace:
            swap_directory(tmp, out)
        else:
            order = sorted(tmp.iterdir(), key=lambda p: (last.index(p.name) if p.name in last else -1, p.name))
            for item in order:
                os.replace(item, out / item.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_directory(tmp: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Rename the complete directory ``tmp`` onto ``out`` (a sibling on the
    same file system): the one implementation of the atomic directory write.
    An existing ``out`` is first moved aside and removed only once ``tmp`` has
    taken its place -- a directory cannot be renamed over a non-empty one --
    so a reader sees the old directory or the new one, and a failed rename
    puts the old one back."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = new_dir(out.parent, f".{out.name}.old.")
    try:
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
