"""``fastconvex score | prune | sweep | embed | bench | demo | env``.

Results go to stdout as JSON (or to ``--out``); logs and progress go to stderr.
Each subcommand lives in ``fastconvex.commands.<name>`` with
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Sequence

COMMANDS = {
    "score": "score per-layer embeddings from files (.npy/.npz/directory)",
    "prune": "score a Hugging Face speech model's layers on labelled audio and cut it",
    "sweep": "score every layer of layer stores, resumable, locally or on a Ray cluster",
    "embed": "labelled audio -> a layer store of pooled hidden states (no scoring), resumable",
    "bench": "time fastconvex against the naive scorer on the same pairs",
    "demo": "the whole pipeline offline on Whisper tiny.en and real speech",
    "env": "versions, available backends and devices",
}


def emit_json(obj: Any, args: argparse.Namespace) -> None:
    """Write ``obj`` as JSON to ``args.out`` (a path) or stdout."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    out = getattr(args, "out", None)
    if out in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
        log(args, f"wrote {out}")


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def log(args: argparse.Namespace | None, message: str) -> None:
    """A log line on stderr (silent with ``--quiet``)."""
    if args is None or not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--seed", type=int, default=0, help="seed of the pair sampling (default 0)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    group.add_argument(
        "--backend", default="auto", choices=["auto", "triton", "numba", "naive"],
        help="compute backend (default auto; env FASTCONVEX_BACKEND overrides auto)",
    )
    group.add_argument("--out", default=None, help="write the JSON result here instead of stdout")
    group.add_argument("--quiet", action="store_true", help="no logs or progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastconvex",
        description="Graph convexity of layer embeddings, and convexity-guided pruning.",
    )
    from . import __version__

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_import_error", None) is not None:
        print(f"fastconvex {args.command}: unavailable: {args._import_error}", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"fastconvex {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"fastconvex {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
