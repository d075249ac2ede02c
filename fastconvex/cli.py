"""``fastconvex score | prune | sweep | embed | finetune | bench | demo | env``.

Results go to stdout (or to ``--out``); logs and progress go to stderr.
Each subcommand lives in ``fastconvex.commands.<name>`` with
``add_arguments(parser)`` and ``run(args) -> int``; this module only builds
the parser, dispatches, and turns what a command raises into one line and an
exit status. What the commands share (the options, reading input files,
printing results) is in the private helper modules of
:mod:`fastconvex.commands`, which never import this one. The commands are
imported when :func:`main` builds the parser, never at the top: ``import
fastconvex.cli`` loads nothing heavy, so a Ctrl-C during start-up is handled
too.

Errors are one line on stderr, never a traceback (``--debug`` shows it):
exit status 2 for usage errors (bad options, output paths, missing input
files, :class:`~fastconvex.commands._output.UsageError`), 1 for data errors
(:class:`~fastconvex.commands._output.DataError`, runtime and I/O failures),
130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

COMMANDS = {
    "score": "score per-layer embeddings from files (.npy/.npz/directory)",
    "prune": "score a Hugging Face speech model's layers on labelled audio and cut it",
    "sweep": "score every layer of layer stores, resumable, locally or on a Ray cluster",
    "embed": "labelled audio -> a layer store of pooled hidden states (no scoring), resumable",
    "finetune": "fine-tune a (pruned) speech model with a classification head on labelled audio",
    "bench": "time fastconvex against the naive scorer on the same pairs",
    "demo": "the whole pipeline offline on Whisper tiny.en and real speech",
    "env": "versions, available backends and devices",
}


def _common(parser: argparse.ArgumentParser) -> None:
    from fastconvex.commands._args import non_negative_int

    group = parser.add_argument_group("common options")
    group.add_argument("--seed", type=non_negative_int, default=0, help="seed of the pair sampling (default 0)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    group.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "triton", "numba", "naive"],
        help="compute backend (default auto; env FASTCONVEX_BACKEND overrides auto)",
    )
    if "--json" not in parser._option_string_actions:  # score, sweep, finetune word their own
        group.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the table")
    if "--out" not in parser._option_string_actions:  # prune's --out is its output directory
        group.add_argument(
            "--out", default=None, help="also write the JSON report to this file ('-': stdout, as --json)"
        )
    if "--overwrite" not in parser._option_string_actions:  # prune, embed, finetune have their own
        group.add_argument("--overwrite", action="store_true", help="replace an existing --out (or --plot) file")
    group.add_argument("--quiet", action="store_true", help="no logs or progress on stderr")
    group.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2): the usage text is one
    ``--help`` away, not repeated above every mistake."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastconvex",
        description="Graph convexity of layer embeddings, and convexity-guided pruning.",
    )
    from fastconvex._version import __version__

    parser.add_argument("--version", action="version", version=f"fastconvex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=f"fastconvex.commands.{name}")
        try:
            module = importlib.import_module(f"fastconvex.commands.{name}")
        except ImportError as exc:  # a subcommand whose optional pieces are missing
            p.set_defaults(_import_error=exc)
        else:
            module.add_arguments(p)
        _common(p)
    return parser


# Common options (SPEC §4: accepted everywhere) that a command has no use for, and
# why: a value other than the default is refused, never silently ignored.
COMMON_DEFAULTS = {"seed": 0, "device": None, "backend": "auto"}
UNUSED_COMMON = {
    "env": {
        "seed": "env draws nothing at random",
        "device": "env lists every device torch sees",
        "backend": "env lists every backend and what auto resolves to",
    },
    "embed": {"backend": "embed computes no convexity; pass it to the sweep that scores the store"},
    "finetune": {"backend": "finetune computes no convexity; the backend runs the kNN graph kernels"},
}


def _refuse_unused_common(args: argparse.Namespace) -> None:
    """A common option given to a command that would ignore it: a usage error saying why."""
    from fastconvex.commands._output import UsageError

    for option, why in UNUSED_COMMON.get(args.command, {}).items():
        value = getattr(args, option, COMMON_DEFAULTS[option])
        if value != COMMON_DEFAULTS[option]:
            raise UsageError(f"--{option} {value} has no effect on {args.command} ({why}); leave it out")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_out_file(args: argparse.Namespace) -> None:
    """``--out FILE`` checked before any work, for every command whose ``--out``
    is a file (``prune``'s is a directory): writable, and not replaced without
    ``--overwrite``."""
    out = getattr(args, "out", None)
    if args.command != "prune" and out not in (None, "-"):
        from fastconvex.commands._output import check_output_file

        check_output_file(out, "--out", overwrite=getattr(args, "overwrite", False))


INTERRUPTED = 130  # the shell's status for a process ended by SIGINT (128 + 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 data error,
    2 usage error, 130 interrupted).

    Ctrl-C at any moment is one line on stderr and status 130: ``import
    fastconvex`` loads nothing heavy, so the imports of numpy, numba, torch
    and transformers (the parser imports every command) happen in here too."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the command is known (parsing, imports)
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            raise
        print("fastconvex: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    from fastconvex.commands._output import DataError, UsageError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    prefix = f"fastconvex {args.command}"
    if getattr(args, "_import_error", None) is not None:
        print(f"{prefix}: unavailable: {_one_line(args._import_error)}", file=sys.stderr)
        return 2
    if getattr(args, "quiet", False):
        from fastconvex.core.progress import quiet_compilation_notice

        quiet_compilation_notice()
    try:
        from fastconvex.commands._paths import check_outputs_spare_inputs

        _refuse_unused_common(args)
        # an output that would destroy an input before "--out exists: pass --overwrite", which would be bad advice
        check_outputs_spare_inputs(args)
        _check_out_file(args)
        module = importlib.import_module(args._module)
        with warnings.catch_warnings():
            if not args.debug:  # a warning is one line too, not a file:line and source echo
                warnings.showwarning = lambda message, category, *rest, **kw: print(
                    f"{prefix}: warning: {_one_line(message)}", file=sys.stderr, flush=True
                )
            return int(module.run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prefix}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI's one place that reports errors
        if args.debug:
            raise
        if isinstance(exc, (UsageError, DataError)) or isinstance(getattr(exc, "exit_status", None), int):
            status = exc.exit_status  # also the library's StoreError (a store's content): a data error
        elif isinstance(exc, (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            status = 2  # the arguments ask for something that cannot be done
        elif isinstance(exc, ImportError):  # a missing optional dependency (the message names the extra)
            status = 2
        elif isinstance(exc, (RuntimeError, OSError, MemoryError)):
            status = 1
        else:  # a bug: still one line, and how to see more
            print(
                f"{prefix}: internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(rerun with --debug for the traceback, and please report it)",
                file=sys.stderr,
            )
            return 1
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
