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

``--track-convexity`` follows the graph convexity of every layer through the training
(:class:`fastconvex.hf.ConvexityCallback`) on a probe drawn from the held-out clips
(``--probe-size``, stratified): before training and at every epoch end. The history
(``convexity.jsonl``) and its plot (``convexity.png``) are written beside the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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

# held-out clips scored at each point of --track-convexity. A point costs about one forward
# pass of the probe, a third of a training step's work per clip: at 100 clips and one point
# per epoch the tracking stays near a tenth of the training time for training sets of a few
# hundred clips or more (bench/callback_cost.py measures it)
PROBE_SIZE = 100


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
    parser.add_argument(
        "--track-convexity",
        action="store_true",
        help="score every layer's graph convexity on a held-out probe before training and at each epoch end; "
        "writes convexity.jsonl and convexity.png beside the model",
    )
    parser.add_argument(
        "--probe-size",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"--track-convexity: about N held-out clips, the same number of each label and at least 2 "
        f"(default {PROBE_SIZE})",
    )
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

    if args.probe_size is not None and not args.track_convexity:
        raise UsageError("--probe-size sets the probe of --track-convexity; add --track-convexity")
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
    callbacks, probe = [], None
    if args.track_convexity:
        tracker, probe = _tracker(args, audio, labels, groups, fe, rate)
        callbacks.append(tracker)
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
            callbacks=callbacks,
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
    history = ""
    if probe is not None:
        if not set(probe.tolist()) <= set(result.eval_index.tolist()):  # the split is drawn twice: same draw
            raise RuntimeError("--track-convexity: the probe is not among the held-out clips (a fastconvex bug)")
        report["convexity"], history = _write_history(args, callbacks[0], out_dir)
        report["convexity_probe"] = [str(paths[i]) for i in probe.tolist()]
    emit_report(
        args,
        report,
        lambda: (
            f"fine-tuned {report['model_class']} ({result.settings['n_blocks']} blocks, {result.params:,} parameters) "
            f"on {result.n_train} clips, {len(result.classes)} classes\n"
            f"held-out accuracy {100 * result.accuracy:.2f} % on {result.n_eval} clips; "
            f"training {result.train_seconds:.1f} s, {result.steps} steps\n"
            f"model: {out_dir}" + history
        ),
    )
    return 0


def _tracker(
    args: argparse.Namespace, audio: Any, labels: list[Any], groups: Any, fe: Any, rate: int
) -> tuple[Any, np.ndarray]:
    """The callback scoring a stratified probe of the held-out clips: the split
    drawn here exactly as hf.finetune draws it (the same function, labels,
    fraction, groups and seed), so no probe clip is trained on."""
    from fastconvex import hf
    from fastconvex.hf.train.splits import encode_labels, probe_of, split_indices

    try:
        ids, classes = encode_labels(labels, len(labels))
        _, eval_idx = split_indices(ids, args.eval_split, groups=groups, seed=args.seed, classes=classes)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    probe = probe_of(labels, eval_idx, args.probe_size or PROBE_SIZE, args.seed)
    try:
        tracker = hf.ConvexityCallback(
            [audio[i] for i in probe],
            [labels[i] for i in probe],
            feature_extractor=fe,
            sampling_rate=rate,
            seed=args.seed,
        )
    except ValueError as exc:  # e.g. a class with one held-out clip
        raise DataError(
            f"--track-convexity: the held-out probe cannot be scored ({exc}); a larger --eval-split holds out "
            "more clips of each class"
        ) from exc
    log(args, f"tracking convexity on a probe of {len(probe)} held-out clips")
    return tracker, probe


def _write_history(args: argparse.Namespace, tracker: Any, out_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """``convexity.jsonl`` and ``convexity.png`` beside the model; the history
    for the report, and the table of the first and last points."""
    from fastconvex.core.plotfile import save_figure
    from fastconvex.hf.train.callback import HISTORY_FILE

    tracker.save_history(out_dir / HISTORY_FILE)
    written = [str(out_dir / HISTORY_FILE)]
    try:
        written.append(str(save_figure(tracker.plot(), out_dir / "convexity.png")))
    except ImportError:  # matplotlib is the [plot] extra: the history is written without its plot
        log(args, "matplotlib is not installed: no convexity.png (pip install 'fastconvex[plot]')")
    except Exception as exc:  # noqa: BLE001 - the model and the history are written; say why there is no plot
        log(args, f"no convexity.png: {exc}")
    log(args, "wrote " + ", ".join(written))
    points = [
        {"step": p.step, "epoch": p.epoch, "layers": p.layers, "scores": p.scores.scores.tolist()}
        for p in tracker.history
    ]
    first, last = tracker.history[0], tracker.history[-1]
    rows = [
        f"\ngraph convexity % of the held-out probe, before and after ({len(tracker.audio)} clips):",
        f"{'layer':>5}  {'before':>7}  {'after':>7}  {'change':>7}",
    ]
    for h, a, b in zip(first.layers, first.scores.scores, last.scores.scores):
        rows.append(f"{h:>5}  {100 * a:>7.2f}  {100 * b:>7.2f}  {100 * (b - a):>+7.2f}")
    return points, "\n".join(rows)
