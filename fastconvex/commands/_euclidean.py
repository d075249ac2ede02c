"""``--measure euclidean --model DIR``: Euclidean convexity per layer from the
command line (``score``), through the classifier's own remaining layers.

EMBEDDINGS then hold every hidden state of MODEL as frame sequences, in order
(0 = the transformer's input): a ``.npy`` (L, N, T, D), a ``.npz`` with one
(L, N, T, D) array or one (N, T, D) array per layer (keys in natural order), or
a directory of per-layer (N, T, D) ``.npy`` files (natural order). ``--lengths``
(a ``.npy`` of N frame counts) marks each item's real frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.commands._output import DataError, UsageError

__all__ = ["add_measure_arguments", "check_graph_only", "check_prune_euclidean", "euclidean_kwargs",
           "load_sequence_layers", "prune_scores", "run_score"]


def add_measure_arguments(parser: argparse.ArgumentParser, *, for_files: bool = True,
                          lengths: bool | None = None) -> None:
    """``--measure`` and the Euclidean options. ``score`` (``for_files``) also
    takes ``--model`` (the classifier) and ``--lengths`` (its EMBEDDINGS come
    padded); in ``prune`` MODEL is the classifier and the audio gives the frames;
    ``sweep`` takes ``--model`` but no ``--lengths`` (``lengths=False``: frame
    stores hold them)."""
    lengths = for_files if lengths is None else lengths
    group = parser.add_argument_group("measure")
    group.add_argument(
        "--measure", default="graph", choices=["graph", "euclidean"],
        help="graph convexity (default) or Euclidean convexity through the classifier's remaining layers"
        + ("" if for_files else " (MODEL must be a *ForSequenceClassification or WhisperForAudioClassification)"),
    )
    if for_files:
        group.add_argument(
            "--model", default=None, metavar="DIR",
            help="euclidean: the audio classifier (a *ForSequenceClassification or WhisperForAudioClassification "
            + ("directory or hub id" if lengths else "directory every worker can read")
            + ") whose blocks after each layer, and head, label the sampled points",
        )
    group.add_argument("--n-sampled", type=int, default=None, help="euclidean: points per segment (default 10)")
    group.add_argument(
        "--predict-batch", type=int, default=None, metavar="B",
        help="euclidean: sampled points per forward pass (default 256)",
    )
    group.add_argument(
        "--label-map", default=None, metavar="FILE.json",
        help="euclidean: a JSON object {data label: class index} when the labels are not the classifier's "
        "config.id2label names (keys are labels as text; a key of digits also matches an integer label)",
    )
    if lengths:
        group.add_argument(
            "--lengths", default=None, metavar="FILE.npy",
            help="euclidean: real frames of each item (N,) when sequences are padded",
        )


def check_graph_only(args: argparse.Namespace, *, model_option: bool = True) -> None:
    """Graph measure: the Euclidean-only options must not be given (``prune``'s
    MODEL is its positional argument, not the ``--model`` option)."""
    given = (("--model", getattr(args, "model", None) if model_option else None),
             ("--lengths", getattr(args, "lengths", None)),
             ("--n-sampled", args.n_sampled), ("--predict-batch", args.predict_batch),
             ("--label-map", getattr(args, "label_map", None)))
    for flag, value in given:
        if value is not None:
            raise ValueError(f"{flag} applies to --measure euclidean only")


def euclidean_kwargs(args: argparse.Namespace, *, needs_model: bool = True) -> dict[str, Any]:
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
    from fastconvex.commands.score import scoring_kwargs

    graph_only = ("k", "backend", "device")  # checked above; the model's device serves
    kwargs = {key: v for key, v in scoring_kwargs(args).items() if key not in graph_only}
    kwargs.update(n_sampled=args.n_sampled, batch_size=args.predict_batch)
    if getattr(args, "label_map", None) is not None:
        kwargs["label_map"] = load_label_map(args.label_map)
    return kwargs


def load_label_map(path: str | Path) -> dict[Any, int]:
    """``--label-map FILE.json``: a JSON object {data label: class index}.

    JSON keys are text, so a key that is an integer written in digits ("3",
    "-1", " 07 ") is also entered as that integer: it then matches integer
    labels (a ``.npy`` or a store) as well as text ones. Two keys meaning the
    same integer with different indices ("1" and "01") are refused, naming
    both; a key that matches no data label is never used."""
    import json
    import re

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--label-map {str(p)!r} is not a file")
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--label-map {p.name}: not a readable JSON file ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not data:
        raise UsageError(f"--label-map {p.name}: expected a non-empty JSON object {{data label: class index}}, "
                         f"got {type(data).__name__}")
    out: dict[Any, int] = {}
    integer_key: dict[int, str] = {}
    for key, index in data.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise UsageError(f"--label-map {p.name}: the class index of {key!r} must be an integer >= 0, "
                             f"got {index!r}")
        out[key] = index
        text = key.strip()
        if re.fullmatch(r"-?[0-9]+", text):
            value = int(text)
            if value in integer_key and data[integer_key[value]] != index:
                first = integer_key[value]
                raise UsageError(f"--label-map {p.name}: keys {first!r} and {key!r} both mean the integer label "
                                 f"{value} but give it class indices {data[first]} and {index}")
            integer_key.setdefault(value, key)
            out.setdefault(value, index)
    return out


def load_sequence_layers(path: str | Path, *, with_names: bool = False) -> Any:
    """Per-layer (N, T, D) arrays (memory-mapped where the format allows), and
    with ``with_names`` where each came from (file name, npz key or ``path[i]``)."""
    from fastconvex.commands.score import _load_npy, natural_key, npy_files

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"EMBEDDINGS {str(p)!r} does not exist")
    if p.is_dir():
        layers = [(_load_npy(f), f.name) for f in npy_files(p)]
    elif p.suffix.lower() == ".npy":
        arr = _load_npy(p)
        if arr.ndim != 4:
            raise ValueError(
                f"EMBEDDINGS: {p.name} has shape {arr.shape}; --measure euclidean needs every hidden state "
                "as frame sequences, (L, N, T, D)"
            )
        layers = [(arr[i], f"{p.name}[{i}]") for i in range(arr.shape[0])]
    elif p.suffix.lower() == ".npz":
        with np.load(p, allow_pickle=False) as data:
            keys = sorted(data.files, key=natural_key)
            arrays = {k: data[k] for k in keys}
        if len(keys) == 1 and arrays[keys[0]].ndim == 4:
            layers = [(arrays[keys[0]][i], f"{keys[0]}[{i}]") for i in range(arrays[keys[0]].shape[0])]
        else:
            layers = [(arrays[k], f"{p.name}[{k!r}]") for k in keys]
    else:
        raise ValueError(f"EMBEDDINGS: {p.name} must be a .npy or .npz file, or a directory of .npy files")
    for arr, name in layers:
        if arr.ndim != 3:
            raise ValueError(f"EMBEDDINGS: {name} has shape {arr.shape}, expected (N, T, D) frame sequences")
    arrays = [arr for arr, _ in layers]
    return (arrays, [name for _, name in layers]) if with_names else arrays


def run_score(args: argparse.Namespace, plot_path: Path | None = None) -> int:
    """``score --measure euclidean``: per-layer Euclidean convexity, output as
    for graph convexity (``score.emit_result``; the paths checked before)."""
    import fastconvex as fc
    from fastconvex import hf
    from fastconvex.cli import log
    from fastconvex.commands.score import (
        _load_npy,
        check_label_count,
        emit_result,
        load_labels,
    )
    from fastconvex.hf.models.load import load_model

    kwargs = euclidean_kwargs(args)
    try:
        layers, names = load_sequence_layers(args.embeddings, with_names=True)
        labels = load_labels(args.labels, column=args.label_column)
        lengths = None
        if args.lengths is not None:
            if not Path(args.lengths).is_file():
                raise FileNotFoundError(f"--lengths {str(args.lengths)!r} does not exist")
            lengths = _load_npy(Path(args.lengths), "--lengths", mmap=False)
            if lengths.ndim != 1:
                raise ValueError(f"--lengths: {str(args.lengths)!r} has shape {lengths.shape}, expected (N,) "
                                 "frame counts")
    except (FileNotFoundError, UsageError):
        raise
    except (OSError, ValueError) as exc:
        raise DataError(str(exc)) from exc
    n = int(layers[0].shape[0])
    check_label_count(labels, n, args.labels, f"EMBEDDINGS {str(args.embeddings)!r} has N = {n} items per layer")
    if lengths is not None and lengths.shape[0] != n:
        raise DataError(f"--lengths {str(args.lengths)!r} has {lengths.shape[0]} frame counts but EMBEDDINGS "
                        f"{str(args.embeddings)!r} has N = {n} items per layer")
    log(args, f"loading {args.model}")  # after every file is checked: loading takes a while
    model, _ = load_model(args.model, None, args.device)
    predictor = hf.predict_from_layer(model)
    if len(layers) != predictor.num_layers:
        raise DataError(
            f"EMBEDDINGS has {len(layers)} layers but {type(model).__name__} has {predictor.num_layers} hidden "
            "states: give every hidden state, in order (0 = the transformer's input)"
        )
    log(args, f"Euclidean convexity of {len(layers)} layer(s) of {layers[0].shape[0]} items "
        f"({layers[0].shape[1]} frames, dimension {layers[0].shape[2]}) through {type(model).__name__}")
    try:
        result = fc.layer_euclidean_scores(layers, labels, predictor, lengths=lengths, **kwargs)
    except (ValueError, TypeError) as exc:  # the data cannot be scored as asked
        raise DataError(str(exc)) from exc
    return emit_result(args, result, names, plot_path)


def check_prune_euclidean(args: argparse.Namespace) -> dict[str, Any]:
    """``prune --measure euclidean``'s options, checked before any work; the
    keyword arguments of ``layer_euclidean_scores``."""
    kwargs = euclidean_kwargs(args, needs_model=False)
    if args.embeddings_dir is not None or args.mix_lengths:
        raise UsageError("--embeddings-dir and --mix-lengths apply to graph convexity's pooled states")
    return kwargs


def prune_scores(args: argparse.Namespace, model: Any, fe: Any, audio: Any, labels: list[Any], rate: int) -> Any:
    """``prune --measure euclidean``: Euclidean convexity per layer of MODEL (a
    classifier) on the audio, every hidden state as frame sequences
    (``hf.hidden_state_sequences``) sent through its own remaining layers."""
    import fastconvex as fc
    from fastconvex import hf
    from fastconvex.cli import log

    kwargs = check_prune_euclidean(args)  # checked before the model was loaded; here for its result
    predictor = hf.predict_from_layer(model)
    from fastconvex.euclidean.api import check_label_classes

    try:  # the audio's labels must be the classifier's classes: said before the forward passes
        check_label_classes(np.asarray(labels), predictor, min_class_size=kwargs["min_class_size"],
                            label_map=kwargs.get("label_map"))
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    log(args, f"frame sequences of {predictor.num_layers} hidden states of {type(model).__name__}")
    states, n_frames = hf.hidden_state_sequences(
        model, audio, sampling_rate=rate, batch_size=args.batch_size, feature_extractor=fe,
        progress=not args.quiet,
    )
    log(args, "Euclidean convexity of the layers")
    return fc.layer_euclidean_scores(states, np.asarray(labels), predictor, lengths=n_frames, **kwargs)
