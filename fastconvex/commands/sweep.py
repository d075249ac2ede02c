"""``fastconvex sweep STORE... --out-dir DIR [--engine ray] [--address ADDR]``:
every layer of every layer store, resumable, on this machine or a Ray cluster.

``--measure euclidean --model DIR`` scores Euclidean convexity through the
classifier in DIR instead, on frame stores (``fastconvex embed --frames``).

Per-task results go to ``DIR/tasks/``; a rerun reuses those that verify and
were made with the same settings, pairs and store content. The merged
``sweep.json``, ``sweep.csv`` (long format) and ``sweep.png`` go to ``DIR``
(those of a sweep with other settings are replaced only with ``--overwrite``);
a table goes to stdout (the merged JSON instead with ``--json``, or to
``--out FILE``): what this run computed, never read back from ``DIR``, where
only one sweep at a time may write.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastconvex.commands._args import (
    add_measure_arguments,
    add_scoring_arguments,
    check_graph_only,
    euclidean_kwargs,
    layer_list,
    scoring_kwargs,
)
from fastconvex.commands._files import load_label_map
from fastconvex.commands._output import DataError, emit_report, run_with_hf_quiet

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastconvex sweep``."""
    parser.add_argument(
        "stores", nargs="+", metavar="STORE", help="layer store directories (fastconvex embed, save_store)"
    )
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="per-task results and merged outputs")
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help="where tasks run (default local)")
    parser.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster address (default: RAY_ADDRESS or a new local Ray); with --engine ray",
    )
    parser.add_argument(
        "--layers", type=layer_list, default=None, metavar="I,J,...", help="only these layer indices of every store"
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help="split each layer's kNN and shortest paths over this many Ray tasks (with --engine ray)",
    )
    parser.add_argument(
        "--retries", type=int, default=None, help="with --engine ray: reruns of a task whose worker died (default 3)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write sweep.png")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file, and sweep.json/csv/png in --out-dir written by a sweep "
        "with other settings",
    )
    parser.add_argument("--json", action="store_true", help="print the merged JSON on stdout instead of a table")
    add_scoring_arguments(parser)
    add_measure_arguments(parser, lengths=False)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; a table (or JSON) on stdout, logs and progress on stderr."""
    from fastconvex.sweeps.api import SweepResults, format_table, sweep

    if args.measure == "euclidean":
        kwargs = {**euclidean_kwargs(args), "measure": "euclidean", "model": args.model, "device": args.device}
    else:
        check_graph_only(args)
        kwargs = scoring_kwargs(args)
    # the sweep's own rule: a bar over tasks on a terminal, a line per finished task
    # in a log (scoring_kwargs' progress=True would force the bar into the log)
    kwargs.pop("progress", None)
    for store in args.stores:
        if not Path(store).exists():
            raise FileNotFoundError(f"STORE {store!r} does not exist")
    if args.measure == "euclidean":
        _check_frame_stores(args)

    def run_it(args: argparse.Namespace) -> SweepResults:
        return sweep(
            args.stores,
            out_dir=args.out_dir,
            engine=args.engine,
            address=args.address,
            layers=args.layers,
            shards=args.shards,
            retries=args.retries,
            plot=not args.no_plot,
            overwrite=args.overwrite,
            verbose=not args.quiet,
            **kwargs,
        )

    # --measure euclidean loads the model here (local engine): with --quiet, no "Loading weights" bar
    if args.measure == "euclidean":
        from fastconvex.hf.models.load import ModelFolderError

        try:
            result = run_with_hf_quiet(args, run_it)
        except ModelFolderError as exc:  # --model's folder is at fault: a data error
            raise DataError(str(exc)) from exc
    else:
        result = run_it(args)
    doc = result.document  # what this run computed, never read back from --out-dir
    indices = {name: doc["stores"][name]["layer_indices"] for name in result}
    emit_report(args, doc, lambda: format_table(result, indices))
    return 0


def _check_frame_stores(args: argparse.Namespace) -> None:
    """``--measure euclidean``: every STORE a frame store that ``--model`` can
    score (data errors, exit status 1, before any work)."""
    import fastconvex as fc
    from fastconvex.sweeps.euclidean import check_labels, check_store

    label_map = None if args.label_map is None else load_label_map(args.label_map)

    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model!r} is not a model directory")
    for path in args.stores:
        try:
            store = fc.open_store(path)
            layers = (
                None
                if args.layers is None
                else [i % store.n_layers for i in args.layers if -store.n_layers <= i < store.n_layers]
            )
            check_store(store, layers, args.model)
            check_labels(store, args.model, label_map=label_map, min_class_size=args.min_class_size)
        except ValueError as exc:  # named by the store it is about
            text = str(exc)
            raise DataError(text if str(Path(path)) in text else f"STORE {path}: {text}") from exc
