"""Options that several commands share, and their conversion to the keyword
arguments of the library: argparse types (:func:`positive_int`,
:func:`layer_list` ...), the estimator options (:func:`add_scoring_arguments`,
:func:`scoring_kwargs`) and the measure options (:func:`add_measure_arguments`,
:func:`check_graph_only`, :func:`euclidean_kwargs`). A value the library would
refuse is refused here first, in the option's own words. Imported by
:mod:`fastconvex.cli` for its common options, so it loads nothing heavy.
"""

from __future__ import annotations

import argparse
from typing import Any

from fastconvex.commands._output import UsageError

__all__ = [
    "add_measure_arguments",
    "add_scoring_arguments",
    "check_graph_only",
    "euclidean_kwargs",
    "layer_list",
    "non_negative_int",
    "positive_int",
    "scoring_kwargs",
]


def _int_at_least(text: str, minimum: int) -> int:
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


def layer_list(text: str) -> list[int]:
    """argparse ``type=`` of ``--layers I,J,...`` (``sweep``, ``embed``): the layer indices."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers, got {text!r}") from None


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The estimator options shared by ``score`` and ``prune``."""
    group = parser.add_argument_group("scoring")
    group.add_argument("--k", type=positive_int, default=10, help="neighbours in the kNN graph (default 10)")
    group.add_argument(
        "--pairs", type=positive_int, default=None, help="same-class ordered pairs sampled per class (default 5000)"
    )
    group.add_argument(
        "--sources",
        type=positive_int,
        default=None,
        help="instead of --pairs: sources per class, each scored against all its class (cheaper at large N)",
    )
    group.add_argument("--exact", action="store_true", help="score every same-class ordered pair")
    group.add_argument(
        "--min-class-size", type=positive_int, default=2, help="skip classes with fewer members (default 2)"
    )


def scoring_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``fastconvex.layer_scores`` from the parsed options."""
    kwargs: dict[str, Any] = {
        "k": args.k,
        "min_class_size": args.min_class_size,
        "seed": args.seed,
        "backend": args.backend,
        "device": args.device,
        # shown unless --quiet: a bar on a terminal, a log line every 30 s in a log file
        "progress": not args.quiet,
    }
    if args.exact:
        if args.pairs is not None or args.sources is not None:
            raise UsageError("--exact scores every pair; do not combine it with --pairs or --sources")
        kwargs.update(exact=True, pairs=None)
    elif args.sources is not None:
        if args.pairs is not None:
            raise UsageError("choose one of --pairs and --sources")
        kwargs.update(sources=args.sources, pairs=None)
    else:
        kwargs["pairs"] = 5000 if args.pairs is None else args.pairs
    return kwargs


def add_measure_arguments(
    parser: argparse.ArgumentParser, *, for_files: bool = True, lengths: bool | None = None
) -> None:
    """``--measure`` and the Euclidean options. ``score`` (``for_files``) also
    takes ``--model`` (the classifier) and ``--lengths`` (its EMBEDDINGS come
    padded); in ``prune`` MODEL is the classifier and the audio gives the frames;
    ``sweep`` takes ``--model`` but no ``--lengths`` (``lengths=False``: frame
    stores hold them)."""
    lengths = for_files if lengths is None else lengths
    group = parser.add_argument_group("measure")
    group.add_argument(
        "--measure",
        default="graph",
        choices=["graph", "euclidean"],
        help="graph convexity (default) or Euclidean convexity through the classifier's remaining layers"
        + ("" if for_files else " (MODEL must be a *ForSequenceClassification or WhisperForAudioClassification)"),
    )
    if for_files:
        group.add_argument(
            "--model",
            default=None,
            metavar="DIR",
            help="euclidean: the audio classifier (a *ForSequenceClassification or WhisperForAudioClassification "
            + ("directory or hub id" if lengths else "directory every worker can read")
            + ") whose blocks after each layer, and head, label the sampled points",
        )
    group.add_argument("--n-sampled", type=int, default=None, help="euclidean: points per segment (default 10)")
    group.add_argument(
        "--predict-batch",
        type=int,
        default=None,
        metavar="B",
        help="euclidean: sampled points per forward pass (default 256)",
    )
    group.add_argument(
        "--label-map",
        default=None,
        metavar="FILE.json",
        help="euclidean: a JSON object {data label: class index} when the labels are not the classifier's "
        "config.id2label names (keys are labels as text; a key of digits also matches an integer label)",
    )
    if lengths:
        group.add_argument(
            "--lengths",
            default=None,
            metavar="FILE.npy",
            help="euclidean: real frames of each item (N,) when sequences are padded",
        )


def check_graph_only(args: argparse.Namespace, *, model_option: bool = True) -> None:
    """Graph measure: the Euclidean-only options must not be given (``prune``'s
    MODEL is its positional argument, not the ``--model`` option)."""
    given = (
        ("--model", getattr(args, "model", None) if model_option else None),
        ("--lengths", getattr(args, "lengths", None)),
        ("--n-sampled", args.n_sampled),
        ("--predict-batch", args.predict_batch),
        ("--label-map", getattr(args, "label_map", None)),
    )
    for flag, value in given:
        if value is not None:
            raise ValueError(f"{flag} applies to --measure euclidean only")


def euclidean_kwargs(args: argparse.Namespace, *, needs_model: bool = True) -> dict[str, Any]:
    """Keyword arguments of ``fastconvex.layer_euclidean_scores`` (and of a
    Euclidean sweep) from the parsed options; graph-only options are refused,
    and ``--n-sampled`` and ``--predict-batch`` get their defaults on ``args``.

    ``needs_model``: ``--model`` must be given (``prune``'s classifier is its
    MODEL argument instead). ``--label-map`` is read here, so a bad file is
    refused before any work."""
    if needs_model and args.model is None:
        raise ValueError("--measure euclidean needs --model DIR, the classifier that labels the sampled points")
    if args.sources is not None:
        raise ValueError("--sources applies to graph convexity; Euclidean convexity samples --pairs per class")
    if args.k != 10:
        raise ValueError("--k applies to graph convexity (the kNN graph); Euclidean convexity builds no graph")
    if args.backend != "auto":
        raise ValueError("--backend chooses the graph kernels; Euclidean convexity runs on --model's device")
    args.n_sampled = 10 if args.n_sampled is None else args.n_sampled
    args.predict_batch = 256 if args.predict_batch is None else args.predict_batch
    if args.n_sampled < 1:
        raise ValueError(f"--n-sampled must be positive, got {args.n_sampled}")
    if args.predict_batch < 1:
        raise ValueError(f"--predict-batch must be positive, got {args.predict_batch}")
    # here, not at the top: _files loads numpy, and the command line's start-up imports this module
    from fastconvex.commands._files import load_label_map

    graph_only = ("k", "backend", "device")  # checked above; the model's device serves
    kwargs = {key: v for key, v in scoring_kwargs(args).items() if key not in graph_only}
    kwargs.update(n_sampled=args.n_sampled, batch_size=args.predict_batch)
    if getattr(args, "label_map", None) is not None:
        kwargs["label_map"] = load_label_map(args.label_map)
    return kwargs
