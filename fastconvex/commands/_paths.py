"""An output never destroys an input: every command's output paths checked
against its input paths before any work, ``--overwrite`` or not.

Two kinds of output path are told apart:

* an output the command **replaces whole** -- a file (``--out``, ``--plot``) or
  a directory made or replaced as one (``embed --out-dir``, ``finetune
  --out-dir``, ``prune --embeddings-dir``) -- must not *be* an input, *contain*
  one (it would be replaced with it) or *lie inside* an input directory (it
  would add or replace files there, so the input is no longer what it was);
* a directory the command only **writes into** (``sweep --out-dir``, ``demo
  --out-dir``, ``prune --out``) must not be an input or lie inside one either,
  but it may contain inputs: what is checked there are the names the command
  writes in it (:data:`WRITTEN`; ``sweep --out-dir`` writes ``tasks/``,
  ``sweep.json``, ``sweep.csv``, ``sweep.png`` and its lock files), each of
  which must not be, or contain, an input. So ``sweep runs/s1 --out-dir runs``
  is fine, while ``sweep runs/tasks --out-dir runs`` is refused. Temporary
  files are made under new, random names (never over an existing file), so
  they cannot meet an input.

Each refusal is one line naming the option, the path and the input. Paths are
compared after resolving symbolic links (``os.path.realpath``), and an existing
output is also compared by inode (``os.path.samefile``), so neither a link nor
a hard link slips through.

:data:`OUTPUTS` and :data:`INPUTS` name, per command, the options that hold
such paths; :func:`fastconvex.cli.main` checks them before the command runs
(:func:`check_outputs_spare_inputs`), and commands that learn more input
paths later (the audio files a CSV lists) check those with
:func:`check_outputs_spare_files` as soon as they know them.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fastconvex.commands._output import UsageError

__all__ = [
    "INPUTS",
    "OUTPUTS",
    "WRITTEN",
    "check_listed_audio",
    "check_outputs_spare_files",
    "check_outputs_spare_inputs",
    "output_paths",
]

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
    "score": (
        ("embeddings", "EMBEDDINGS"),
        ("labels", "LABELS"),
        ("model", "--model"),
        ("lengths", "--lengths"),
        ("label_map", "--label-map"),
    ),
    "prune": (("model", "MODEL"), ("audio", "--audio"), ("label_map", "--label-map")),
    "sweep": (("stores", "STORE"), ("model", "--model"), ("label_map", "--label-map")),
    "embed": (("model", "MODEL"), ("audio", "--audio")),
    "finetune": (("model", "MODEL_DIR"), ("audio", "--audio"), ("labels", "--labels")),
    "bench": (),
    "demo": (("model_dir", "--model-dir"),),
    "env": (),
}

#: (command, option) -> the names (``fnmatch`` patterns) a command writes into an output directory
#: it does not replace whole; every other output path is replaced whole. Kept in step with the
#: writers by tests: sweep's fastconvex.sweeps.output (OUTPUTS, LOCK_FILE, HOLDER_FILE) and its
#: ``tasks/`` folder; prune's save_pretrained files, REPORT_FILE, PLOT_FILE and staging folder;
#: the demo's report, figures, ``finetune/`` results and saved cut models.
WRITTEN: dict[tuple[str, str], tuple[str, ...]] = {
    ("sweep", "--out-dir"): ("tasks", "sweep.json", "sweep.csv", "sweep.png", ".sweep.lock*"),
    # transformers' save_pretrained names its files (sharded weights too), so prune claims every
    # name of those kinds: a model or audio folder inside --out is spared, a .json input is not
    ("prune", "--out"): ("*.json", "*.safetensors", "*.bin", "convexity.png", ".fastconvex-staging-*"),
    ("demo", "--out-dir"): ("report.json", "demo.png", "finetune.png", "finetune", "whisper-*"),
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


def _written(real_input: str, out: str, patterns: tuple[str, ...]) -> str | None:
    """The name directly inside ``out`` on the way to ``real_input`` (which lies inside ``out``)
    when the command writes that name (``patterns``), else None."""
    top = real_input[len(out.rstrip(os.sep)) + 1 :].split(os.sep, 1)[0]
    return top if any(fnmatch.fnmatchcase(top, p) for p in patterns) else None


def _linked_written(path: str, patterns: tuple[str, ...]) -> list[str]:
    """The names in directory ``path`` the command writes (``patterns``) that exist there as
    symbolic links: writing through one writes where it leads, which may be an input."""
    try:
        with os.scandir(os.path.expanduser(path)) as entries:
            return sorted(
                e.name for e in entries if e.is_symlink() and any(fnmatch.fnmatchcase(e.name, p) for p in patterns)
            )
    except OSError:  # not made yet, or not a directory (which the command's own check names)
        return []


def _check(command: str, outputs: Sequence[tuple[str, str]], inputs: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`UsageError` for the first output that would destroy an input (module
    docstring); ``inputs`` are ``(how the error names it, resolved path)``."""
    # (how the error names the output, its option, its path, resolved, the names written into it or None)
    resolved: list[tuple[str, str, str, str, tuple[str, ...] | None]] = []
    for option, path in outputs:
        patterns = WRITTEN.get((command, option))
        resolved.append((f"{option} {path!r}", option, path, _real(path), patterns))
        for name in _linked_written(path, patterns) if patterns is not None else ():
            written = os.path.join(path, name)
            resolved.append(
                (
                    f"{option} {path!r} writes {written!r}, a link to {_real(written)!r}, which",
                    option,
                    written,
                    _real(written),
                    None,
                )
            )
    for what, real in inputs:
        for named, option, path, out, patterns in resolved:
            if _same(out, real):
                relation = "is"
            elif _inside(real, out):
                if patterns is not None:  # a directory written into: only the names it writes matter
                    name = _written(real, out, patterns)
                    if name is None:
                        continue
                    inner = "is" if _same(os.path.join(out, name), real) else "contains"
                    relation = f"writes {os.path.join(path, name)!r}, which {inner}"
                else:
                    relation = "contains"
            elif _inside(out, real):
                relation = "lies inside"
            else:
                continue
            raise UsageError(
                f"{named} {relation} the input {what}: fastconvex never writes over an "
                f"input (--overwrite or not); choose another {option}"
            )


def check_outputs_spare_inputs(args: argparse.Namespace) -> None:
    """Before any work: no output path of the command line (:data:`OUTPUTS`) would destroy one of
    its input paths (:data:`INPUTS`; the rule is in the module docstring). Raises
    :class:`UsageError` naming both."""
    outputs = output_paths(args)
    if outputs:
        _check(args.command, outputs, ((f"{name} {path!r}", _real(path)) for name, path in _input_paths(args)))


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

    _check(args.command, outputs, resolved())


def check_listed_audio(args: argparse.Namespace, paths: Sequence[str | os.PathLike[str]]) -> None:
    """An ``--audio`` CSV's files (an audio folder was checked whole with the command line)."""
    if os.path.isfile(os.path.expanduser(str(args.audio))):
        check_outputs_spare_files(args, paths, f"--audio {str(args.audio)!r}")
