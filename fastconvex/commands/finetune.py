"""``fastconvex finetune MODEL_DIR --audio DIR|CSV --out-dir DIR``: fine-tune a (pruned) model.

1. read the labelled audio as ``fastconvex prune`` does (``DIR/<label>/*.wav|flac|ogg``, or a
   CSV of path,label; ``--labels FILE`` gives other labels for the same files, e.g. a
   language task on a speaker data set; ``--groups-column`` names a CSV column of groups
   -- speakers, voices -- held out whole);
2. load MODEL_DIR (a ``save_pretrained`` directory: a pruned model from ``fastconvex prune``
   or a full one) and its feature extractor;
3. :func:`fastconvex.hf.finetune`: a fresh classification head, ``transformers.Trainer``,
   held-out accuracy;
4. write the model, feature extractor and ``fastconvex_finetune.json`` to ``--out-dir``
   (atomically); the result also goes to stdout (a summary, or JSON with ``--json``) and
   to ``--out FILE``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastconvex.commands._args import positive_int
from fastconvex.commands._files import load_labels
from fastconvex.commands._output import (
    DataError,
    UsageError,
    check_output_directory,
    emit_report,
    log,
    run_with_hf_quiet,
)
from fastconvex.commands._paths import check_listed_audio

__all__ = ["add_arguments", "run"]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastconvex finetune``."""
    parser.add_argument(
        "model", metavar="MODEL_DIR", help="model directory (save_pretrained), e.g. from 'fastconvex prune'"
    )
    parser.add_argument(
        "--audio",
        required=True,
        metavar="DIR|CSV",
        help="DIR/<label>/*.wav|flac|ogg (_* dirs skipped) or a CSV of path,label (as 'fastconvex prune')",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help="labels for the --audio files in their listed order (.npy, .txt or .csv), instead of theirs",
    )
    parser.add_argument(
        "--label-column",
        default=None,
        metavar="NAME",
        help="CSV column holding the labels (of --labels if given, else of the --audio CSV)",
    )
    parser.add_argument(
        "--groups-column",
        default=None,
        metavar="NAME",
        help="column of the --audio CSV holding groups (speakers ...): whole groups are held out",
    )
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="where the fine-tuned model is written")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --out-dir (and an existing --out file)"
    )
    parser.add_argument("--epochs", type=_positive_float, default=5.0, help="training epochs (default 5)")
    parser.add_argument("--lr", type=_positive_float, default=3e-5, help="peak learning rate (default 3e-5)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="clips per step (default 16)")
    parser.add_argument(
        "--eval-split",
        type=_positive_float,
        default=0.2,
        help="fraction held out, stratified by label (by group with --groups-column); default 0.2",
    )
    parser.add_argument(
        "--context-seconds",
        type=_positive_float,
        default=None,
        help="Whisper: cut the encoder's 30 s context to this many (whole) seconds",
    )
    parser.add_argument(
        "--truncate", action="store_true", help="Whisper: cut clips longer than the context (else an error)"
    )
    parser.add_argument(
        "--sampling-rate", type=positive_int, default=None, help="Hz (default: the feature extractor's, else 16000)"
    )
    parser.add_argument("--model-class", default=None, help="transformers class to load MODEL_DIR with")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    """Read, load, fine-tune, save; the result goes to stdout (and ``--out``)."""
    return run_with_hf_quiet(args, _run)


def _run(args: argparse.Namespace) -> int:
    from fastconvex import hf
    from fastconvex.hf.models.load import check_model_path, load_model

    # ---- outputs and options, before any work --------------------------------------------
    # replaced whole by finetune (whole=True): the directory that holds --out-dir must be writable
    out_dir = check_output_directory(
        args.out_dir, "--out-dir", overwrite=args.overwrite, whole=True, action="replace it"
    )
    if not args.eval_split < 1:
        raise UsageError(f"--eval-split must be a fraction below 1, got {args.eval_split}")

    check_model_path(args.model)

    # ---- data -------------------------------------------------------------------------------
    csv_audio = Path(args.audio).is_file()
    if args.groups_column is not None and not csv_audio:
        raise UsageError("--groups-column needs --audio to be a CSV file (a directory has no columns)")
    if args.label_column is not None and args.labels is None and not csv_audio:
        raise UsageError("--label-column applies to a CSV (--labels FILE.csv or an --audio CSV)")
    audio_labels = {"label_column": args.label_column} if args.labels is None and args.label_column else {}
    paths, labels = hf.find_audio(args.audio, **audio_labels)
    check_listed_audio(args, paths)  # before the model is loaded
    if args.labels is not None:
        try:
            labels = list(load_labels(args.labels, column=args.label_column))
        except (FileNotFoundError, UsageError):
            raise
        except ValueError as exc:  # the file's contents: a data error
            raise DataError(str(exc)) from exc
        if len(labels) != len(paths):
            raise DataError(
                f"--labels {str(args.labels)!r} has {len(labels)} labels but --audio "
                f"{str(args.audio)!r} lists {len(paths)} files"
            )
    groups = None
    if args.groups_column is not None:
        group_paths, groups = hf.find_audio(args.audio, label_column=args.groups_column)
        assert group_paths == paths
    log(
        args,
        f"{len(paths)} audio files in {len(set(labels))} classes from {args.audio}"
        + (f", {len(set(groups))} groups" if groups is not None else ""),
    )

    # ---- model ------------------------------------------------------------------------------
    log(args, f"loading {args.model}")
    # the model's own head, if any, is replaced by a new one: only its encoder must load exactly
    model, fe = load_model(args.model, args.model_class, args.device, new_head=True)
    from fastconvex.hf.models.layout import is_whisper

    if args.context_seconds is not None and not is_whisper(model):
        raise UsageError(f"--context-seconds is for Whisper models; {type(model).__name__} takes audio of any length")
    if args.truncate and not is_whisper(model):
        raise UsageError(
            f"--truncate is for Whisper models (clips longer than the context); "
            f"{type(model).__name__} takes audio of any length, so nothing would be cut"
        )
    rate = args.sampling_rate or int(getattr(fe, "sampling_rate", None) or 16000)
    audio = hf.AudioFiles(paths, sampling_rate=rate)

    # ---- fine-tune --------------------------------------------------------------------------
    log(args, f"fine-tuning {type(model).__name__} ({hf.num_blocks(model)} blocks) for {args.epochs:g} epochs")
    try:
        result = hf.finetune(
            model,
            audio,
            labels,
            eval_split=args.eval_split,
            groups=groups,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            out_dir=out_dir,
            overwrite=args.overwrite,
            feature_extractor=fe,
            sampling_rate=rate,
            context_seconds=args.context_seconds,
            truncate=args.truncate,
            progress=not args.quiet,
        )
    except (UsageError, DataError):
        raise
    except ValueError as exc:  # the audio, labels or split cannot be trained on as given
        raise DataError(str(exc)) from exc
    report = {
        **result.to_dict(),
        "source": str(args.model),
        "audio": str(args.audio),
        "labels": None if args.labels is None else str(args.labels),
    }
    log(args, f"wrote the fine-tuned model to {out_dir}")
    emit_report(
        args,
        report,
        lambda: (
            f"fine-tuned {report['model_class']} ({result.settings['n_blocks']} blocks, {result.params:,} parameters) "
            f"on {result.n_train} clips, {len(result.classes)} classes\n"
            f"held-out accuracy {100 * result.accuracy:.2f} % on {result.n_eval} clips; "
            f"training {result.train_seconds:.1f} s, {result.steps} steps\n"
            f"model: {out_dir}"
        ),
    )
    return 0
