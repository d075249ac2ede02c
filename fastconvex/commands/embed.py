"""``fastconvex embed MODEL --audio DIR|CSV --out-dir STORE``: labelled audio ->
a layer store (every hidden state mean-pooled per utterance, or with
``--frames`` every valid frame of it), no scoring.

Streamed (memory bounded by one batch, or one chunk with ``--engine ray``);
rerun the same command after an interruption and it resumes. ``--engine ray``
splits the utterances over Ray workers (one task per chunk, one model per
worker process), which write their rows of the same store; STORE must then be
on storage every node sees. Score the store with ``fastconvex sweep``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fastconvex.commands._args import layer_list, non_negative_int, positive_int
from fastconvex.commands._files import subsample_per_class
from fastconvex.commands._output import UsageError, emit_report, log, run_with_hf_quiet
from fastconvex.commands._paths import check_listed_audio

__all__ = ["add_arguments", "run"]

#: the Ray-only options' values when --engine ray leaves them out
RAY_DEFAULTS = {"chunk_size": 256, "retries": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``fastconvex embed``."""
    parser.add_argument("model", metavar="MODEL", help="local model directory or Hugging Face hub id")
    parser.add_argument(
        "--audio",
        required=True,
        metavar="DIR|CSV",
        help="DIR/<label>/*.wav|flac|ogg (Speech Commands layout) or a CSV of path,label",
    )
    parser.add_argument("--out-dir", required=True, metavar="STORE", help="the layer store to write")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing store at STORE (and an existing --out file), and start over "
        "an interrupted write made with other settings, another model or other audio",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default 8)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="of the stored layers")
    parser.add_argument(
        "--layers", type=layer_list, default=None, metavar="I,J,...", help="hidden-state indices to keep (default all)"
    )
    parser.add_argument(
        "--final-norm",
        default="raw",
        choices=["raw", "apply"],
        help="pre-LN models: store raw hidden states or pass them through the final LayerNorm",
    )
    parser.add_argument(
        "--sampling-rate", type=positive_int, default=None, help="resample audio to this rate (default: the model's)"
    )
    parser.add_argument(
        "--max-per-class", type=int, default=None, help="at most this many files per label (drawn with --seed)"
    )
    parser.add_argument(
        "--mix-lengths",
        action="store_true",
        help="batch utterances of different lengths even for padding-sensitive models (faster, inexact)",
    )
    parser.add_argument("--model-class", default=None, help="transformers class to load MODEL with")
    parser.add_argument("--name", default=None, help="the store's name in sweeps (default: its directory name)")
    parser.add_argument(
        "--frames",
        action="store_true",
        help="keep every valid frame instead of the mean (rows = frames in utterance order, "
        "labels/utterance.npy; each frame carries its utterance's label): the frame store "
        "that `fastconvex sweep --measure euclidean` needs (both engines)",
    )
    parser.add_argument("--engine", default="local", choices=["local", "ray"], help="where to run (default local)")
    parser.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster address (with --engine ray)")
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help=f"utterances per Ray task (default {RAY_DEFAULTS['chunk_size']}; with --engine ray)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=None,
        help=f"reruns of a Ray task whose worker died (default {RAY_DEFAULTS['retries']}; with --engine ray)",
    )


def run(args: argparse.Namespace) -> int:
    """Embed; a one-line summary (or JSON with ``--out``) on stdout."""
    try:
        return run_with_hf_quiet(args, _run)  # --quiet: no "Loading weights" bar either
    except FileExistsError as exc:  # an output path: a usage error
        raise UsageError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from fastconvex import hf
    from fastconvex.hf.models.load import load_model

    if args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    if args.engine != "ray":  # options of Ray's tasks: refused, not ignored, on this machine
        given = [
            flag
            for flag, value in (
                ("--address", args.address),
                ("--chunk-size", args.chunk_size),
                ("--retries", args.retries),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{', '.join(given)} applies to --engine ray only")
    for name, default in RAY_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.seed != 0 and args.max_per_class is None:
        raise UsageError(
            "--seed draws the --max-per-class subsample; without --max-per-class embed draws "
            "nothing at random (leave --seed out)"
        )
    if args.frames and args.final_norm != "raw":
        raise UsageError(
            "--frames keeps the raw hidden states (what the classifier's remaining blocks take); "
            "drop --final-norm apply"
        )
    if args.engine == "ray":
        from fastconvex.runners.session import require_ray

        require_ray()
    store_path = Path(args.out_dir)
    if store_path.exists() and not args.overwrite:
        raise FileExistsError(f"--out-dir {str(store_path)!r} already exists (pass --overwrite to replace it)")
    paths, labels = hf.find_audio(args.audio)
    check_listed_audio(args, paths)  # before the model is loaded
    if args.max_per_class is not None:
        idx = subsample_per_class(labels, args.max_per_class, args.seed)
        paths, labels = [paths[i] for i in idx], [labels[i] for i in idx]
    from fastconvex.store.write import store_lock

    # one writer per store, refused before the model is loaded; held until the
    # report of what this run wrote is built
    with store_lock(store_path, overwrite=args.overwrite):
        log(args, f"{len(paths)} audio files in {len(set(labels))} classes from {args.audio}; loading {args.model}")
        model, fe = load_model(args.model, args.model_class, args.device)
        rate = args.sampling_rate or int(getattr(fe, "sampling_rate", None) or 16000)
        audio = hf.AudioFiles(paths, sampling_rate=rate)
        lengths = audio.lengths()
        meta = {"model": str(args.model), "audio": str(args.audio), "engine": args.engine}
        if args.name:
            meta["name"] = args.name
        if args.engine == "local":
            frame_labels = _frame_labels(model, fe, lengths, labels) if args.frames else None
            pooled = hf.pooled_hidden_states(
                model,
                audio,
                sampling_rate=rate,
                batch_size=args.batch_size,
                feature_extractor=fe,
                layers=args.layers,
                out_dir=store_path,
                dtype=args.dtype,
                lengths=lengths,
                mix_lengths=args.mix_lengths,
                progress=False if args.quiet else None,
                final_norm=args.final_norm,
                labels=None if args.frames else labels,
                frame_labels=frame_labels,
                meta=meta,
                overwrite=args.overwrite,
                _store_locked=True,
            )
            del pooled
        else:
            _run_ray(args, model, fe, audio, paths, labels, lengths, rate, meta, store_path)
        import fastconvex as fc

        store = fc.open_store(store_path)  # the store this run renamed into place, still under its lock
        summary = {
            "store": str(store.path),
            "name": store.name,
            "n_points": store.n_points,
            "n_layers": len(store),
            "dim": int(store.manifest["layers"][0]["shape"][1]),
            "dtype": store.meta["dtype"],
            "hidden_states": store.meta.get("hidden_states"),
            "fingerprint": store.fingerprint,
        }
    rows = "frames" if args.frames else "utterances"
    emit_report(
        args,
        summary,
        lambda: (
            f"wrote {store.path}: {store.n_points} {rows} x {len(store)} layers x "
            f"{summary['dim']} ({summary['dtype']}), name {store.name!r}"
        ),
    )
    return 0


def _frame_labels(model, fe, lengths, labels) -> list:
    """Every valid frame of utterance i labelled with ``labels[i]`` (nothing
    ignored, so each utterance's rows are its whole sequence)."""
    from fastconvex import hf
    from fastconvex.hf.models.layout import is_whisper

    if is_whisper(model):
        raise UsageError(
            "--frames: a Whisper classifier attends to and pools its whole 30 s window, padding "
            "included, which a frame store of valid frames does not hold"
        )
    n_frames = hf.valid_frame_counts(model, lengths, feature_extractor=fe)
    return [np.full(int(n), label) for n, label in zip(n_frames, labels)]


def _run_ray(args, model, fe, audio, paths, labels, lengths, rate, meta, store_path) -> None:
    from fastconvex.hf.embed.featurise import _feature_extractor_for, _waveform_name
    from fastconvex.hf.embed.job import EmbedJob, chunk_rows, embed_on_ray, probe_layers
    from fastconvex.hf.embed.store_out import (
        SIGNATURE_KEYS,
        check_resumed_audio,
        open_writer,
    )

    selected, dim = probe_layers(
        model, fe, audio[0], sampling_rate=rate, layers=args.layers, final_norm=args.final_norm
    )
    frame_labels = utterance = offsets = None
    if args.frames:
        per_utt = _frame_labels(model, fe, lengths, labels)
        counts = [f.shape[0] for f in per_utt]
        frame_labels, utterance = np.concatenate(per_utt), np.repeat(np.arange(len(paths)), counts)
        offsets = [0, *np.cumsum(counts).tolist()]
    writer = open_writer(
        store_path,
        model=model,
        feature_extractor=_feature_extractor_for(model, fe, rate),
        labels=None if args.frames else labels,
        frame_labels=frame_labels,
        utterance=utterance,
        raw_lengths=lengths,
        n_utt=len(paths),
        meta=meta,
        overwrite=args.overwrite,
        resume=True,
        job={
            "engine": "ray",
            "chunk_size": args.chunk_size,
            "layers": args.layers,
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "mix_lengths": bool(args.mix_lengths),
            "final_norm": args.final_norm,
            "sampling_rate": rate,
            "frames": bool(args.frames),
        },
        ignored_frames=0 if args.frames else None,
    )
    try:  # a failure (a full disk, Ctrl-C) keeps a partial write only where a chunk finished
        chunks = dict(enumerate(chunk_rows(len(paths), args.chunk_size)))
        check_resumed_audio(
            writer,
            chunks,
            lambda i: audio[i],
            lambda i: _waveform_name(audio, i),
            overwrite=args.overwrite,
            log=lambda message: log(args, message),
        )
        arrays = writer.allocate(dim, np.dtype(args.dtype), count=len(selected))
        del arrays
        writer.set_info(hidden_states=selected)
        job = EmbedJob(
            model=str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
            model_class=args.model_class,
            device=args.device,
            paths=[str(Path(p).resolve()) for p in paths],
            sampling_rate=rate,
            batch_size=args.batch_size,
            dtype=args.dtype,
            layers=args.layers,
            final_norm=args.final_norm,
            mix_lengths=bool(args.mix_lengths),
            partial_dir=str(writer.tmp.resolve()),
            layer_files=[entry["file"] for entry in writer.layers],
            frames=bool(args.frames),
            row_offsets=offsets,
            signature={k: writer.meta[k] for k in SIGNATURE_KEYS},
        )
        ran, reused = embed_on_ray(
            job,
            writer,
            np.asarray(lengths),
            chunk_size=args.chunk_size,
            address=args.address,
            retries=args.retries,
            verbose=not args.quiet,
        )
        log(args, f"embed: {ran} chunk(s) embedded on Ray, {reused} reused from an interrupted run")
        writer.finish()
    except BaseException:
        writer.abort()
        raise
