"""``fastconvex prune MODEL --audio DIR --out DIR``: score a speech model's layers and cut it.

1. load MODEL (local path or Hugging Face hub id) and its feature extractor;
2. read the labelled audio (``DIR/<label>/*.wav|flac|ogg``, or a CSV of path,label);
3. pool every hidden state per utterance (:func:`fastconvex.hf.pooled_hidden_states`);
4. score the layers (:func:`fastconvex.layer_scores`) and choose the cut
   (:func:`fastconvex.hf.choose_cut`, or ``--keep``);
5. prune and write the model (+ feature extractor + ``fastconvex_pruning.json``),
   ``report.json`` and ``convexity.png`` to ``--out``; the report also goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.commands._args import (
    add_measure_arguments,
    add_scoring_arguments,
    check_graph_only,
    positive_int,
    scoring_kwargs,
)
from fastconvex.commands._euclidean import check_prune_euclidean, prune_scores
from fastconvex.commands._files import subsample_per_class
from fastconvex.commands._output import (
    DataError,
    UsageError,
    check_output_directory,
    emit_report,
    log,
    run_with_hf_quiet,
    write_text_atomic,
)
from fastconvex.commands._paths import check_listed_audio
from fastconvex.commands._report import format_table, save_plot
from fastconvex.hf.models.load import load_model

__all__ = ["add_arguments", "load_model", "run"]

REPORT_FILE = "report.json"
PLOT_FILE = "convexity.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastconvex prune`` (``--out DIR`` is the output directory here)."""
    parser.add_argument("model", metavar="MODEL", help="local model directory or Hugging Face hub id")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="directory for the pruned model, report.json and the plot (required)"
    )
    parser.add_argument(
        "--audio",
        required=True,
        metavar="DIR|CSV",
        help="DIR/<label>/*.wav|flac|ogg (Speech Commands layout; _* dirs skipped) or a CSV of path,label",
    )
    parser.add_argument(
        "--sampling-rate", type=positive_int, default=None, help="Hz (default: the feature extractor's, else 16000)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default 8)")
    parser.add_argument(
        "--max-per-class",
        type=int,
        default=None,
        help="use at most this many files per label (drawn with --seed)",
    )
    parser.add_argument(
        "--mix-lengths",
        action="store_true",
        help="batch utterances of different lengths even for padding-sensitive models (faster, inexact)",
    )
    parser.add_argument(
        "--embeddings-dir",
        default=None,
        metavar="DIR",
        help="stream pooled hidden states into a layer store at DIR (for data larger than RAM; "
        "reusable by 'sweep' and 'score'; an interrupted run resumes)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --embeddings-dir store, and write into a non-empty --out directory",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="of --embeddings-dir")
    add_scoring_arguments(parser)
    add_measure_arguments(parser, for_files=False)
    cut = parser.add_argument_group("the cut")
    cut.add_argument(
        "--rule", default="argmax", choices=["argmax", "1se"], help="how to choose the cut (default argmax)"
    )
    cut.add_argument("--keep", type=int, default=None, help="keep this many blocks instead of choosing")
    cut.add_argument(
        "--final-norm",
        default="keep",
        choices=["keep", "identity"],
        help="pre-LN models (stable-layer-norm, Whisper): keep the final LayerNorm or drop it (default keep). "
        "The hidden states are scored as the pruned model will output them: through the final LayerNorm "
        "with 'keep', raw with 'identity'",
    )
    parser.add_argument(
        "--model-class", default=None, help="transformers class to load MODEL with (default: from its config)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write convexity.png")


def run(args: argparse.Namespace) -> int:
    """Score, cut, prune and save; the report goes to ``--out``/report.json and stdout."""
    return run_with_hf_quiet(args, _run)


def _summary(report: dict, scores: Any) -> str:
    """The readable report: the per-layer table and the cut."""
    return "\n".join(
        [
            (
                f"{report['model_class']} ({report['source']}): {report['measure']} convexity of each hidden state on "
                f"{report['n_utterances']} utterances, {report['n_classes']} classes"
            ),
            format_table(scores),
            (
                f"kept {report['keep']} of {report['original_layers']} blocks (rule {report['rule']}, best layer "
                f"{report['best_layer']}); the pruned model and {REPORT_FILE} are in {report['model_dir']}"
            ),
        ]
    )


def _run(args: argparse.Namespace) -> int:
    import fastconvex as fc
    from fastconvex import hf

    if args.out is None:
        raise ValueError("prune needs --out DIR, the directory for the pruned model and its report")
    # written into by save_pruned (whole=False): --out itself, or where it will be made, must be writable
    out_dir = check_output_directory(args.out, "--out", overwrite=args.overwrite, whole=False, action="write into it")
    if args.measure != "euclidean":
        check_graph_only(args, model_option=False)
    else:  # the Euclidean options, with the --label-map file, before the audio is listed and the model loaded
        check_prune_euclidean(args)
    plot_problem = None
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:  # the model and report are still written
            plot_problem = "matplotlib is not installed: pip install 'fastconvex[plot]' (or pass --no-plot)"
            log(args, f"no {PLOT_FILE} will be written: {plot_problem}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.keep is not None and args.keep < 1:
        raise ValueError(f"--keep must be at least 1, got {args.keep}")
    if args.keep is not None and args.rule != "argmax":
        raise UsageError(
            f"--keep {args.keep} sets the cut, so --rule {args.rule} (how fastconvex chooses it) "
            "would be ignored; give one of them"
        )
    if args.dtype != "float32" and args.embeddings_dir is None:
        raise UsageError(
            f"--dtype {args.dtype} is the dtype of the --embeddings-dir store; without "
            "--embeddings-dir the states are scored in memory as float32"
        )
    score_kwargs = scoring_kwargs(args)
    if args.embeddings_dir is not None and Path(args.embeddings_dir).exists() and not args.overwrite:
        raise ValueError(
            f"--embeddings-dir {str(args.embeddings_dir)!r} already exists (pass --overwrite to replace it)"
        )

    paths, labels = hf.find_audio(args.audio)
    check_listed_audio(args, paths)  # before the model is loaded
    if args.max_per_class is not None:
        idx = subsample_per_class(labels, args.max_per_class, args.seed)
        paths = [paths[i] for i in idx]
        labels = [labels[i] for i in idx]
    n_classes = len(set(labels))
    log(args, f"{len(paths)} audio files in {n_classes} classes from {args.audio}")

    log(args, f"loading {args.model}")
    model, fe = load_model(args.model, args.model_class, args.device)
    n_blocks = hf.num_blocks(model)
    if args.keep is not None and args.keep > n_blocks:
        raise ValueError(f"--keep {args.keep} exceeds the model's {n_blocks} transformer blocks")
    rate = args.sampling_rate or int(getattr(fe, "sampling_rate", None) or 16000)
    audio = hf.AudioFiles(paths, sampling_rate=rate)
    lengths = audio.lengths()

    try:  # from here on, what fails is the audio or its embeddings: exit status 1
        if args.measure == "euclidean":  # MODEL's own remaining layers label the segments
            scores = prune_scores(args, model, fe, audio, labels, rate)
            pooled_norm = "raw"
        else:
            # score what the pruned model will output: with the final LayerNorm kept, hidden
            # state h of a pre-LN encoder is seen through it (docs/pipeline.md, the final LayerNorm)
            from fastconvex.hf.models.layout import final_layer_norm

            has_norm = final_layer_norm(model) is not None
            pooled_norm = "apply" if has_norm and args.final_norm == "keep" else "raw"
            log(
                args,
                f"pooling {n_blocks + 1} hidden states of {type(model).__name__}"
                + (" through its final LayerNorm" if pooled_norm == "apply" else ""),
            )
            states = hf.pooled_hidden_states(
                model,
                audio,
                sampling_rate=rate,
                batch_size=args.batch_size,
                feature_extractor=fe,
                out_dir=args.embeddings_dir,
                labels=None if args.embeddings_dir is None else labels,
                meta=None if args.embeddings_dir is None else {"model": str(args.model), "audio": str(args.audio)},
                overwrite=args.overwrite and args.embeddings_dir is not None,
                dtype=args.dtype,
                lengths=lengths,
                mix_lengths=args.mix_lengths,
                progress=not args.quiet,
                final_norm=pooled_norm,
            )
            log(args, "scoring the layers")
            scores = fc.layer_scores(list(states), np.asarray(labels), **score_kwargs)
    except (UsageError, DataError):
        raise
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    if args.keep is not None:
        keep, rule = int(args.keep), "given"
    else:
        try:
            keep, rule = hf.choose_cut(scores, args.rule), args.rule
        except ValueError as exc:  # the scores allow no cut (layer 0 is the most convex): a data outcome
            raise DataError(str(exc)) from exc
    log(args, f"best layer {scores.best_layer}; keeping {keep} of {n_blocks} blocks ({rule})")

    with warnings.catch_warnings():
        if pooled_norm == "apply":  # the states were scored through the LayerNorm: nothing to warn of
            warnings.filterwarnings("ignore", message=".*applies a final LayerNorm after its last block.*")
        hf.prune(model, keep, final_norm=args.final_norm)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pruned(
        model,
        out_dir,
        feature_extractor=fe,
        scores=scores,
        source=args.model,
        seed=args.seed,
        original_layers=n_blocks,
        extra={"rule": rule, "audio": str(args.audio), "n_utterances": len(paths)},
        overwrite=True,  # --out was checked above: empty, or non-empty with --overwrite
    )
    planned_plot = None if args.no_plot or plot_problem else out_dir / PLOT_FILE
    report = {
        "source": args.model,
        "model_class": type(model).__name__,
        "audio": str(args.audio),
        "n_utterances": len(paths),
        "n_classes": n_classes,
        "sampling_rate": rate,
        "original_layers": n_blocks,
        "best_layer": scores.best_layer,
        "rule": rule,
        "keep": keep,
        "final_norm": model.fastconvex_pruning["final_norm"],
        "measure": args.measure,
        "scored_states": "frame sequences through MODEL's remaining layers"
        if args.measure == "euclidean"
        else "through the final LayerNorm"
        if pooled_norm == "apply"
        else "raw hidden states",
        "model_dir": str(out_dir),
        "plot": None if planned_plot is None else str(planned_plot),
        "seed": args.seed,
        "scores": scores.to_dict(),
    }
    from fastconvex.hf.models.save import jsonable

    report = jsonable(report)
    # the report before the plot: a plot that fails never loses it
    write_text_atomic(out_dir / REPORT_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
    if planned_plot is not None:
        try:
            save_plot(scores, planned_plot, cut=keep, title=f"{args.model}: keep {keep} of {n_blocks}")
        except Exception as exc:  # noqa: BLE001 - keep the model and report; say why there is no plot
            log(args, f"no plot: {planned_plot} could not be written ({exc}); the report is in {out_dir / REPORT_FILE}")
            report["plot"] = None
            write_text_atomic(out_dir / REPORT_FILE, json.dumps(report, indent=2, allow_nan=False) + "\n")
    log(args, f"wrote the pruned model and {REPORT_FILE} to {out_dir}")
    emit_report(args, report, lambda: _summary(report, scores), out=None)  # --out is the model's directory
    return 0
