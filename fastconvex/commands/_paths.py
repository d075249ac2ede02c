"""An output never destroys an input: every command's output paths checked
against its input paths before any work, ``--overwrite`` or not.

An output that *is* an input would replace it; one that *contains* an input
(a directory) may be replaced whole or written into over it; one that *lies
inside* an input directory (a model folder, a store, an audio folder) adds or
replaces files there, so the input is no longer what it was. All three are
refused in one line. Paths are compared after resolving symbolic links
(``os.path.realpath``), and an existing output is also compared by inode
(``os.path.samefile``), so neither a link nor a hard link slips through.

:data:`OUTPUTS` and :data:`INPUTS` name, per command, the options that hold
such paths; :func:`fastconvex.cli.main` checks them before the command runs
(:func:`check_outputs_spare_inputs`), and commands that learn more input
paths later (the audio files a CSV lists) check those with
:func:`check_outputs_spare_files` as soon as they know them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ._output import UsageError

__all__ = ["OUTPUTS", "INPUTS", "check_listed_audio", "check_outputs_spare_inputs", "check_outputs_spare_files",
           "output_paths"]

#: command -> (attribute of the parsed arguments, how the error names it) of every output path
OUTPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "score": (("out", "--out"), ("plot", "--plot")),
    "prune": (("out", "--out"), ("embeddings_dir", "--embeddings-dir")),
    "sweep": (("out_dir", "--out-dir"), ("out", "--out")),
    "embed": (("out_dir", "--out-dir"), ("out", "--out")),
    "finetune": (("out_dir", "--out-dir"), ("out", "--out")),
    "bench": (("out", "--out"),),
    "demo": (("out_dir", "--out-dir"), ("out", "--out")),
    "env": (("out", "--out"),),
}

#: command -> the same for every input path (files or directories; a value may be a list)
INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "score": (("embeddings", "EMBEDDINGS"), ("labels", "LABELS"), ("model", "--model"), ("lengths", "--lengths")),
    "prune": (("model", "MODEL"), ("audio", "--audio")),
    "sweep": (("stores", "STORE"), ("model", "--model")),
    "embed": (("model", "MODEL"), ("audio", "--audio")),
    "finetune": (("model", "MODEL_DIR"), ("audio", "--audio"), ("labels", "--labels")),
    "bench": (),
    "demo": (("model_dir", "--model-dir"),),
    "env": (),
}


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _inside(child: str, parent: str) -> bool:
    """``child`` lies strictly inside directory ``parent`` (both resolved)."""
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:  # a hard link, or a name that differs only in case on a case-insensitive file system
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def output_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(option, path)`` of every output path the command line gives (``--out -`` is stdout, not a path;
    a ``--plot`` without a suffix is the ``.png`` file it becomes)."""
    outs = []
    for attr, option in OUTPUTS.get(args.command, ()):
        value = getattr(args, attr, None)
        if value in (None, "-"):
            continue
        if option == "--plot" and not Path(value).suffix:
            value = f"{value}.png"
        outs.append((option, str(value)))
    return outs


def _input_paths(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``(name, path)`` of every input path that exists here (a hub id such as ``openai/whisper-tiny``
    is no local path)."""
    ins = []
    for attr, name in INPUTS.get(args.command, ()):
        value = getattr(args, attr, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        ins.extend((name, str(v)) for v in values if v is not None and os.path.lexists(os.path.expanduser(str(v))))
    return ins


def _check(outputs: Sequence[tuple[str, str]], inputs: Iterable[tuple[str, str, str]]) -> None:
    """Raise :class:`UsageError` for the first output that is, contains or lies inside an input;
    ``inputs`` are ``(how the error names it, resolved path)``."""
    resolved = [(option, path, _real(path)) for option, path in outputs]
    for what, real in inputs:
        for option, path, out in resolved:
            if _same(out, real):
                relation = "is"
            elif _inside(real, out):
                relation = "contains"
            elif _inside(out, real):
                relation = "lies inside"
            else:
                continue
            raise UsageError(
                f"{option} {path!r} {relation} the input {what}: fastconvex never writes over an "
                f"input (--overwrite or not); choose another {option}"
            )


def check_outputs_spare_inputs(args: argparse.Namespace) -> None:
    """Before any work: no output path of the command line (:data:`OUTPUTS`) is, contains or lies
    inside one of its input paths (:data:`INPUTS`). Raises :class:`UsageError` naming both."""
    outputs = output_paths(args)
    if outputs:
        _check(outputs, ((f"{name} {path!r}", _real(path)) for name, path in _input_paths(args)))


def check_outputs_spare_files(args: argparse.Namespace, paths: Sequence[str | os.PathLike[str]], source: str) -> None:
    """The same for input files learnt after the command line was read (the audio files that
    ``source``, e.g. an ``--audio`` CSV, lists). Each file's directory is resolved once; a file that
    is itself a link is resolved on its own."""
    outputs = output_paths(args)
    if not outputs:
        return
    parents: dict[str, str] = {}

    def resolved() -> Iterable[tuple[str, str]]:
        for p in paths:
            text = os.fspath(p)
            what = f"file {text!r} (listed in {source})"
            if os.path.islink(text):
                yield what, _real(text)
                continue
            head, tail = os.path.split(text)
            if head not in parents:
                parents[head] = _real(head or ".")
            yield what, os.path.join(parents[head], tail)

    _check(outputs, resolved())


def check_listed_audio(args: argparse.Namespace, paths: Sequence[str | os.PathLike[str]]) -> None:
    """An ``--audio`` CSV's files (an audio folder was checked whole with the command line)."""
    if os.path.isfile(os.path.expanduser(str(args.audio))):
        check_outputs_spare_files(args, paths, f"--audio {str(args.audio)!r}")
