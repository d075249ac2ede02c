"""Per-layer embeddings of a Hugging Face speech model: mean over valid frames."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastconvex.core.progress import show_progress
from fastconvex.hf.embed.featurise import (
    _as_waveform,
    _feature_extractor_for,
    _featurise,
    _generic_frames,
    _make_batches,
    _pos_conv_sees_padding,
    _progress,
    _select_layers,
    _takes_attention_mask,
    _waveform_name,
    check_lengths,
    frame_label_rows,
    valid_frame_counts,
)
from fastconvex.hf.models.layout import (
    is_whisper,
    model_device,
    pooled_final_norm,
    speech_encoder,
)
from fastconvex.hf.whisper.context import whisper_context_samples

__all__ = ["PooledHiddenStates", "pooled_hidden_states", "valid_frame_counts"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class PooledHiddenStates(list):
    """One array per hidden state, as returned by :func:`pooled_hidden_states`.

    A plain ``list`` of arrays (so it can be passed straight to
    ``fastconvex.layer_scores``) with extra attributes.

    Attributes
    ----------
    layers : list of int
        Hidden-state index of each entry (0 = the transformer's input, i = output of block i).
    n_frames : numpy.ndarray, shape (N,)
        Valid encoder frames of each utterance (from the model's own output-length rule).
    labels : numpy.ndarray or None, shape (frames,)
        With ``frame_labels``: the label of each returned row (ignored frames, -100,
        removed).  ``None`` for utterance-level pooling.
    utterance : numpy.ndarray or None, shape (frames,)
        With ``frame_labels``: the utterance index of each returned row.
    paths : list of pathlib.Path or None
        With ``out_dir``: the ``.npy`` file of each entry.
    """

    layers: list[int]
    n_frames: np.ndarray
    labels: np.ndarray | None
    utterance: np.ndarray | None
    paths: list[Path] | None


def _store_lock(out_dir: Any, overwrite: bool) -> Any:
    """The lock of the store at ``out_dir`` (:func:`fastconvex.store.write.store_lock`:
    a second write into it is refused in one line naming the holder), or no
    lock without one."""
    if not isinstance(out_dir, (str, os.PathLike)):
        return contextlib.nullcontext()  # no store (an invalid out_dir is reported by open_writer)
    from fastconvex.store.write import store_lock

    return store_lock(out_dir, overwrite=bool(overwrite))


def pooled_hidden_states(
    model: nn.Module,
    waveforms: Sequence[Any] | np.ndarray | torch.Tensor,
    *,
    sampling_rate: int = 16000,
    batch_size: int = 8,
    feature_extractor: Any = None,
    layers: Sequence[int] | None = None,
    frame_labels: Sequence[Any] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    dtype: str | np.dtype = "float32",
    lengths: Sequence[int] | None = None,
    mix_lengths: bool = False,
    progress: bool | None = None,
    final_norm: str = "raw",
    labels: Sequence[Any] | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    _store_locked: bool = False,
) -> PooledHiddenStates:
    """Per-layer embeddings of a speech model: one (N, D) array per hidden state.

    The model runs in ``eval()`` mode under ``torch.inference_mode()`` on its own
    device.  Utterances are sorted by length and batched (so padding stays small);
    each utterance is featurised on its own (so normalisation never sees padding)
    and padded to the batch's longest.  Padding never changes an embedding: models
    whose output depends on padding -- those that take no attention mask, and
    Data2VecAudio, whose stacked positional convolutions see padded frames -- only
    batch utterances of equal length (equal frame count for Data2VecAudio) unless
    ``mix_lengths=True``.  Valid frames come from the raw lengths via
    the model's own output-length rule (``_get_feat_extract_output_lengths``; for
    Whisper ``ceil(n_samples / 320)``, the 50 Hz frames that cover real audio), never
    from a padded mask alone.  Models with group-norm feature encoders
    (``config.feat_extract_norm == "group"``, e.g. wav2vec2-base) get no
    attention mask, as Hugging Face prescribes; the others do.  The mean over
    valid frames is taken per batch, so full frame tensors are never kept.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Wav2Vec2, HuBERT, WavLM, Data2VecAudio (any head, or the base model), or a
        Whisper model / ``WhisperEncoder``.  Whisper inputs are padded (and
        truncated, with a warning) to the model's own context,
        ``config.max_source_positions`` encoder frames: 30 s, or less after
        :func:`fastconvex.hf.cut_whisper_context`, whatever window the feature
        extractor was made for.  The hidden states change with the context (the
        encoder attends over the padding too), so score the layers in the
        context that will be fine-tuned.
    waveforms : sequence of array-like, or array of shape (N, T)
        Mono waveforms, shapes (T_i,), at ``sampling_rate``.  Any indexable sequence
        works (e.g. one that loads files lazily; pass ``lengths`` then so nothing is
        loaded twice).
    sampling_rate : int
        Sampling rate of the waveforms; must match the feature extractor's.
    batch_size : int
        Utterances per forward pass.
    feature_extractor : transformers feature extractor, optional
        The model's own (``AutoFeatureExtractor.from_pretrained(name)``).  Default:
        ``Wav2Vec2FeatureExtractor(do_normalize=True)`` or a
        ``WhisperFeatureExtractor`` sized to the config.
    layers : sequence of int, optional
        Hidden-state indices to keep (negative counts from the end).  Default: all
        ``num_blocks + 1``.
    frame_labels : sequence of array-like, optional
        Per-utterance frame labels, shapes (n_frames_i,) where ``n_frames_i`` is the
        model's valid frame count (see :func:`valid_frame_counts`); -100 marks
        ignored frames.  Switches to frame-level output: one (frames, D) array per
        layer, labels in ``result.labels``.
    out_dir : path, optional
        Write a layer store there (see :mod:`fastconvex.store`; ``fastconvex.open_store``,
        ``fastconvex.sweep``, ``fastconvex score DIR`` read it): each batch's rows are
        streamed into ``layer_XXX.npy`` memmaps of ``dtype`` (memory bounded by one
        batch), each finished batch is recorded, and the store appears atomically
        when all are done.  An interrupted run resumes (``resume``) where it stopped;
        an existing store is replaced only with ``overwrite=True``.  The returned
        arrays are the store's read-only memmaps.
    labels : sequence, optional
        Utterance labels (N,), stored with ``out_dir`` (required there unless
        ``frame_labels`` gives the rows' labels).
    meta : dict, optional
        Extra store metadata (model name, checkpoint ...), with ``out_dir``.
    overwrite : bool
        Replace an existing store at ``out_dir`` (and start over an interrupted
        write of another job).
    resume : bool
        Continue an interrupted ``out_dir`` write of the same job: the same
        model (class, configuration and weights, hashed), feature extractor
        (its settings, hashed), audio (lengths, and
        the samples of every utterance already written, read again and
        compared with hashes recorded as they were written), labels, layers,
        dtype and batching. A partial write of a different job is an error
        saying what differs; ``overwrite=True`` starts it over instead.
    dtype : {"float32", "float16"}
        Storage dtype of the result (pooling itself is done in float32).
    lengths : sequence of int, optional
        Sample counts of ``waveforms`` if known without loading them; checked against
        the loaded audio.
    mix_lengths : bool
        Batch utterances of different lengths together even for padding-sensitive
        models (faster on variable-length data; the embeddings then differ slightly
        from one-by-one processing).  Speech Commands clips are mostly exactly 1 s, so
        the default costs little there.
    progress : bool or None
        Progress bar over batches on stderr (None: only when stderr is a terminal).
        With ``out_dir``, a resumed write also says on stderr what it checks
        and reuses, unless ``progress=False``.
    final_norm : {"raw", "apply"}
        Pre-LN encoders (Whisper; stable-layer-norm "large" wav2vec2-family models)
        apply a final LayerNorm after their last block, so only their last hidden
        state carries it.  ``"raw"`` (default) keeps transformers' hidden states as
        they are (and warns for such models); ``"apply"`` passes every state that
        lacks it through the encoder's final LayerNorm, frame by frame before
        pooling, so state h equals the output of the model cut to h blocks by
        :func:`fastconvex.hf.prune` with its default ``final_norm="keep"``.
        ``"apply"`` on a model without a final LayerNorm is an error.

    Returns
    -------
    PooledHiddenStates
        A list with one array per selected hidden state, shape (N, D), or (frames, D)
        with ``frame_labels``, plus ``.layers``, ``.n_frames``, ``.labels``,
        ``.utterance`` and ``.paths``.

    Raises
    ------
    ValueError
        Empty or non-1-D waveforms, NaN/inf samples, a waveform too short to give a
        frame, a sampling-rate mismatch, frame-label counts that differ from the
        model's frame counts, layer indices out of range, bad ``batch_size``/``dtype``,
        ``final_norm="apply"`` on a model without a final LayerNorm.
    TypeError
        A model that returns no ``hidden_states``.
    fastconvex.core.atomic.WriteError
        (an ``OSError``) ``out_dir``'s store could not be written (no space
        left, an I/O error): the message names the file; a partial write with
        no finished batch is removed, one with finished batches kept to resume.
    """
    # ---- arguments ------------------------------------------------------------------------
    enc = speech_encoder(model)  # checks that model is a transformers model
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    show_progress(progress)  # a TypeError now, before a store is opened, for anything but None/True/False
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {out_dtype}")
    if isinstance(waveforms, (np.ndarray, torch.Tensor)):
        if waveforms.ndim != 2:
            raise ValueError(
                f"waveforms as one array must have shape (N, T), got shape {tuple(waveforms.shape)}; "
                "pass a list of 1-D arrays for utterances of different lengths"
            )
        waveforms = list(waveforms)
    if (
        isinstance(waveforms, (str, bytes))
        or not hasattr(waveforms, "__len__")
        or not hasattr(waveforms, "__getitem__")
    ):
        raise TypeError(f"waveforms must be a sequence of 1-D arrays, got {type(waveforms).__name__}")
    n_utt = len(waveforms)
    if n_utt == 0:
        raise ValueError("waveforms is empty")
    # one writer per store: held from here, before the audio is read, until the
    # store is renamed into place (``_store_locked``, private: the caller, the
    # command line, took it before loading the model)
    held = contextlib.ExitStack()
    if not _store_locked:
        held.enter_context(_store_lock(out_dir, overwrite))
    try:
        if lengths is None:
            loaded: list[np.ndarray] | None = [
                _as_waveform(waveforms[i], i, _waveform_name(waveforms, i)) for i in range(n_utt)
            ]
            raw_lengths = np.array([w.shape[0] for w in loaded], dtype=np.int64)
        else:
            loaded = None
            raw_lengths = check_lengths(lengths, n_utt)

        whisper = is_whisper(model)
        norm_layer = pooled_final_norm(model, final_norm)
        feature_extractor = _feature_extractor_for(model, feature_extractor, sampling_rate)
        generic = not whisper and not hasattr(enc, "_get_feat_extract_output_lengths")
        if generic:
            if frame_labels is not None:
                raise ValueError(
                    f"frame_labels: frame-level pooling needs the model's output-length rule, "
                    f"which {type(model).__name__} lacks"
                )
            n_frames = np.zeros(n_utt, dtype=np.int64)  # filled per batch
        else:
            n_frames = valid_frame_counts(model, raw_lengths, feature_extractor=feature_extractor)
            if np.any(n_frames < 1):
                bad = int(np.argmin(n_frames))
                raise ValueError(
                    f"{_waveform_name(waveforms, bad)} has {int(raw_lengths[bad])} samples, too short for one frame of "
                    f"{type(model).__name__}"
                )
        if whisper:
            n_max = whisper_context_samples(model, feature_extractor)  # the model's context, cut or not
            if np.any(raw_lengths > n_max):
                warnings.warn(
                    f"{int(np.sum(raw_lengths > n_max))} waveform(s) are longer than the Whisper window "
                    f"({n_max} samples); only the first {n_max} samples are encoded",
                    stacklevel=2,
                )

        # ---- frame labels -------------------------------------------------------------------------
        frame_keep, all_labels, utt_of_row, offsets = frame_label_rows(
            frame_labels, n_frames, raw_lengths, type(model).__name__
        )
        n_rows = n_utt if offsets is None else int(offsets[-1])
    except BaseException:
        held.close()
        raise
    with held:
        writer = None
        if out_dir is not None or labels is not None or meta is not None or overwrite:  # before any forward pass
            from fastconvex.hf.embed.store_out import open_writer

            writer = open_writer(
                out_dir,
                model=model,
                feature_extractor=feature_extractor,
                labels=labels,
                frame_labels=all_labels,
                utterance=utt_of_row,
                ignored_frames=None if all_labels is None else int(n_frames.sum()) - n_rows,
                raw_lengths=raw_lengths,
                n_utt=n_utt,
                meta=meta,
                overwrite=overwrite,
                resume=resume,
                job={
                    "layers": None if layers is None else list(layers),
                    "dtype": out_dtype.name,
                    "batch_size": batch_size,
                    "mix_lengths": bool(mix_lengths),
                    "final_norm": final_norm,
                    "sampling_rate": int(sampling_rate),
                },
            )

        # ---- batches ------------------------------------------------------------------------------
        order = np.argsort(-raw_lengths, kind="stable")
        takes_mask = (not whisper) and _takes_attention_mask(model, feature_extractor)
        bucket_key: np.ndarray | None = None
        if not mix_lengths and not whisper:
            if not takes_mask or generic:
                bucket_key = raw_lengths
            elif _pos_conv_sees_padding(model):
                bucket_key = n_frames
        batches = _make_batches(order, batch_size, None if bucket_key is None else bucket_key[order])

        def waveform(i: int) -> np.ndarray:
            w = loaded[i] if loaded is not None else _as_waveform(waveforms[i], i, _waveform_name(waveforms, i))
            if w.shape[0] != raw_lengths[i]:
                raise ValueError(
                    f"lengths[{i}] = {int(raw_lengths[i])} but {_waveform_name(waveforms, i)} has {w.shape[0]} samples"
                )
            return w

        done_batches: dict[int, Any] = {}
        if writer is not None:
            try:  # the audio of the batches an interrupted run finished, unchanged (read again, no forward pass)
                from fastconvex.hf.embed.store_out import check_resumed_audio

                done_batches = check_resumed_audio(
                    writer,
                    {b: [int(i) for i in batch] for b, batch in enumerate(batches)},
                    waveform,
                    lambda i: _waveform_name(waveforms, i),
                    overwrite=overwrite,
                    log=None if progress is False else _log,
                )
            except BaseException:
                writer.abort()
                raise
        device = model_device(enc)
        float_dtype = next((p.dtype for p in enc.parameters() if p.is_floating_point()), torch.float32)
        selected: list[int] | None = None
        outputs: list[np.ndarray] = []
        was_training = model.training
        model.eval()
        # Whether hidden_states[-1] already went through the final LayerNorm differs
        # between encoders and transformers versions: seen on the first batch, by
        # comparing it with what the LayerNorm itself returned.
        norm_outputs: list[torch.Tensor] = []
        last_has_norm: bool | None = None
        norm_hook = None
        if norm_layer is not None:
            norm_hook = norm_layer.register_forward_hook(lambda module, args, output: norm_outputs.append(output))
        bar = _progress(len(batches), progress)
        bar.__enter__()
        try:
            with torch.inference_mode():
                for batch_index, batch in enumerate(batches):
                    if batch_index in done_batches:  # written by an interrupted run (its audio checked above)
                        if generic:
                            n_frames[batch] = done_batches[batch_index]["frames"]
                        bar.update(1)
                        continue
                    waves = [waveform(int(i)) for i in batch]
                    inputs, frames = _featurise(
                        model, enc, feature_extractor, waves, sampling_rate, takes_mask, whisper, generic
                    )
                    inputs = {
                        k: v.to(device=device, dtype=float_dtype) if v.is_floating_point() else v.to(device)
                        for k, v in inputs.items()
                    }
                    out = enc(**inputs, output_hidden_states=True, return_dict=True)
                    hidden = getattr(out, "hidden_states", None)
                    if hidden is None:
                        raise TypeError(f"model: {type(model).__name__} returned no hidden_states")
                    if norm_hook is not None:
                        last_has_norm = any(
                            o.shape == hidden[-1].shape and torch.equal(o, hidden[-1]) for o in norm_outputs
                        )
                        norm_hook.remove()
                        norm_hook = None
                        norm_outputs.clear()
                    if selected is None:
                        selected = _select_layers(layers, len(hidden))
                        dim = int(hidden[0].shape[-1])
                        if writer is not None:
                            outputs = writer.allocate(dim, out_dtype, count=len(selected))
                            writer.set_info(hidden_states=selected)
                        else:
                            outputs = [np.empty((n_rows, dim), dtype=out_dtype) for _ in selected]
                    if generic:
                        frames = _generic_frames(enc, inputs, frames, hidden[0].shape[1])
                        n_frames[batch] = frames
                    else:
                        frames = n_frames[batch]
                    t_out = int(hidden[0].shape[1])
                    if int(frames.max()) > t_out:
                        raise ValueError(
                            f"model: {type(model).__name__} returned {t_out} frames, fewer than the {int(frames.max())} "
                            "valid frames its output-length rule gives"
                        )
                    frames_t = torch.as_tensor(frames, device=hidden[0].device)
                    mask = torch.arange(t_out, device=hidden[0].device)[None, :] < frames_t[:, None]
                    for slot, li in enumerate(selected):
                        h = hidden[li]
                        if norm_layer is not None and not (last_has_norm and li == len(hidden) - 1):
                            h = norm_layer(h)
                        h = h.float()
                        if frame_keep is None:
                            pooled = (h * mask[..., None]).sum(dim=1) / frames_t[:, None].to(h.dtype)
                            outputs[slot][batch] = pooled.to("cpu").numpy().astype(out_dtype, copy=False)
                        else:
                            assert offsets is not None
                            for b, i in enumerate(batch):
                                rows = h[b, : int(frames[b])][torch.as_tensor(frame_keep[i], device=h.device)]
                                outputs[slot][offsets[i] : offsets[i + 1]] = (
                                    rows.to("cpu").numpy().astype(out_dtype, copy=False)
                                )
                    if writer is not None:
                        from fastconvex.hf.embed.store_out import clip_sha256

                        writer.mark_done(
                            batch_index,
                            outputs,
                            {"frames": [int(f) for f in frames], "audio_sha256": [clip_sha256(w) for w in waves]},
                        )
                    bar.update(1)
        except BaseException:
            if writer is not None:
                writer.abort()  # a resumable (.partial) write stays for the rerun
            raise
        finally:
            if norm_hook is not None:
                norm_hook.remove()
            bar.__exit__(None, None, None)
            if was_training:
                model.train()
        paths: list[Path] | None = None
        if writer is not None:
            if selected is None:  # every batch was written by an interrupted run
                selected = writer.reopen_layers()
            del outputs
            store = writer.finish()
            outputs = store.layers
            paths = [store.path / entry["file"] for entry in store.manifest["layers"]]

        result = PooledHiddenStates(outputs)
        result.layers = list(selected or [])
        result.n_frames = n_frames
        result.labels = all_labels
        result.utterance = utt_of_row
        result.paths = paths
        return result
