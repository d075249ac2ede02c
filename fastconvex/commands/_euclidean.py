"""The Euclidean parts of ``score`` and ``prune`` (``--measure euclidean``):
Euclidean convexity per layer through the classifier's own remaining layers,
from files (``score --model DIR``) or from labelled audio (``prune``, whose
MODEL is the classifier). The options themselves are read in
:mod:`fastconvex.commands._args`.

For ``score``, EMBEDDINGS then hold every hidden state of MODEL as frame sequences, in order
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

from fastconvex.commands._args import euclidean_kwargs
from fastconvex.commands._files import check_label_count, load_labels, load_npy, natural_key, npy_files
from fastconvex.commands._output import DataError, UsageError, log
from fastconvex.commands._report import emit_result

__all__ = ["check_prune_euclidean", "load_sequence_layers", "prune_scores", "run_score"]


def load_sequence_layers(path: str | Path, *, with_names: bool = False) -> Any:
    """Per-layer (N, T, D) arrays (memory-mapped where the format allows), and
    with ``with_names`` where each came from (file name, npz key or ``path[i]``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"EMBEDDINGS {str(p)!r} does not exist")
    if p.is_dir():
        layers = [(load_npy(f), f.name) for f in npy_files(p)]
    elif p.suffix.lower() == ".npy":
        arr = load_npy(p)
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
    for graph convexity (:func:`~fastconvex.commands._report.emit_result`; the
    paths checked before)."""
    import fastconvex as fc
    from fastconvex import hf
    from fastconvex.hf.models.load import load_model

    kwargs = euclidean_kwargs(args)
    try:
        layers, names = load_sequence_layers(args.embeddings, with_names=True)
        labels = load_labels(args.labels, column=args.label_column)
        lengths = None
        if args.lengths is not None:
            if not Path(args.lengths).is_file():
                raise FileNotFoundError(f"--lengths {str(args.lengths)!r} does not exist")
            lengths = load_npy(Path(args.lengths), "--lengths", mmap=False)
            if lengths.ndim != 1:
                raise ValueError(
                    f"--lengths: {str(args.lengths)!r} has shape {lengths.shape}, expected (N,) frame counts"
                )
    except (FileNotFoundError, UsageError):
        raise
    except (OSError, ValueError) as exc:
        raise DataError(str(exc)) from exc
    n = int(layers[0].shape[0])
    check_label_count(labels, n, args.labels, f"EMBEDDINGS {str(args.embeddings)!r} has N = {n} items per layer")
    if lengths is not None and lengths.shape[0] != n:
        raise DataError(
            f"--lengths {str(args.lengths)!r} has {lengths.shape[0]} frame counts but EMBEDDINGS "
            f"{str(args.embeddings)!r} has N = {n} items per layer"
        )
    log(args, f"loading {args.model}")  # after every file is checked: loading takes a while
    model, _ = load_model(args.model, None, args.device)
    predictor = hf.predict_from_layer(model)
    if len(layers) != predictor.num_layers:
        raise DataError(
            f"EMBEDDINGS has {len(layers)} layers but {type(model).__name__} has {predictor.num_layers} hidden "
            "states: give every hidden state, in order (0 = the transformer's input)"
        )
    log(
        args,
        f"Euclidean convexity of {len(layers)} layer(s) of {layers[0].shape[0]} items "
        f"({layers[0].shape[1]} frames, dimension {layers[0].shape[2]}) through {type(model).__name__}",
    )
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

    kwargs = check_prune_euclidean(args)  # checked before the model was loaded; here for its result
    predictor = hf.predict_from_layer(model)
    from fastconvex.euclidean.api import check_label_classes

    try:  # the audio's labels must be the classifier's classes: said before the forward passes
        check_label_classes(
            np.asarray(labels), predictor, min_class_size=kwargs["min_class_size"], label_map=kwargs.get("label_map")
        )
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    log(args, f"frame sequences of {predictor.num_layers} hidden states of {type(model).__name__}")
    states, n_frames = hf.hidden_state_sequences(
        model,
        audio,
        sampling_rate=rate,
        batch_size=args.batch_size,
        feature_extractor=fe,
        progress=not args.quiet,
    )
    log(args, "Euclidean convexity of the layers")
    return fc.layer_euclidean_scores(states, np.asarray(labels), predictor, lengths=n_frames, **kwargs)
