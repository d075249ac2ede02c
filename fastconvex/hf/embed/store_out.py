"""``pooled_hidden_states(out_dir=...)``: the layer store it streams into, and
what makes a resumed write the same job: the model's class, configuration and
weights (:func:`weights_sha256`), the feature extractor's settings
(:func:`feature_extractor_sha256`), the audio's lengths in the job key, and each
finished block's audio content (:func:`clip_sha256`, recorded with the block
and checked again before a resume reuses it)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fastconvex.store import StoreWriter


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the weights that make the rows: those of
    :func:`~fastconvex.hf.models.layout.speech_encoder` (the feature encoder and
    transformer blocks, with the final LayerNorm that ``final_norm="apply"``
    uses), every ``state_dict`` entry's name, dtype, shape and bytes, in name
    order (so an in-memory model and one loaded from a folder hash alike,
    whatever file format held it). A head the rows never pass through (a
    classifier freshly initialised at random on each load, Whisper's
    decoder) is left out, so it neither changes the hash from load to load
    nor costs its read. Reads every encoder weight once (a device copy for
    GPU models); about the cost of reading them from disk."""
    from fastconvex.hf.models.layout import speech_encoder

    digest = hashlib.sha256()
    state = speech_encoder(model).state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.to("cpu")
        tensor = tensor.contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def feature_extractor_sha256(feature_extractor: Any) -> str:
    """sha256 of the feature extractor's settings (normalisation, padding,
    mel filter bank ...: its ``to_json_string()``, keys sorted; ``repr`` for
    one that has none), which shape the rows as much as the weights do."""
    to_json = getattr(feature_extractor, "to_json_string", None)
    text = to_json() if callable(to_json) else repr(feature_extractor)
    return hashlib.sha256(f"{type(feature_extractor).__name__}\0{text}".encode()).hexdigest()


# What a worker of the Ray engine checks against the driver's job (the
# "model" name is left out: the driver and a worker may name one folder differently).
SIGNATURE_KEYS = ("model_class", "config_sha256", "weights_sha256", "feature_extractor_sha256")
SIGNATURE_NAMES = {
    "model_class": "its class",
    "config_sha256": "its configuration",
    "weights_sha256": "its weights",
    "feature_extractor_sha256": "its feature extractor",
}


def clip_sha256(wave: np.ndarray) -> str:
    """sha256 of one utterance's samples as the model reads them (float32)."""
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).data).hexdigest()


def model_signature(model: nn.Module, feature_extractor: Any) -> dict[str, Any]:
    """What identifies the model of a (resumable) embedding job: its class,
    name or path, a hash of its configuration, one of its weights
    (:func:`weights_sha256`) and one of the feature extractor's settings
    (:func:`feature_extractor_sha256`; pass the one actually used, defaults
    resolved)."""
    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    return {
        "model_class": type(model).__name__,
        "model": str(getattr(config, "_name_or_path", "") or ""),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "weights_sha256": weights_sha256(model),
        "feature_extractor_sha256": feature_extractor_sha256(feature_extractor),
    }


class HashedWaveforms:
    """``waveforms`` read through: each utterance as the float32 waveform the
    model gets, its :func:`clip_sha256` kept in ``sha256[i]`` (the Ray
    engine's chunks record them with their rows)."""

    def __init__(self, waveforms: Sequence[Any]) -> None:
        self.waveforms = waveforms
        self.paths = getattr(waveforms, "paths", None)
        self.sha256: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.waveforms)

    def __getitem__(self, i: int) -> np.ndarray:
        from fastconvex.hf.embed.featurise import _as_waveform, _waveform_name

        wave = _as_waveform(self.waveforms[i], int(i), _waveform_name(self.waveforms, int(i)))
        self.sha256[int(i)] = clip_sha256(wave)
        return wave


def check_resumed_audio(
    writer: StoreWriter,
    blocks: dict[int, Sequence[int]],
    waveform: Callable[[int], np.ndarray],
    name: Callable[[int], str],
    *,
    overwrite: bool,
    log: Callable[[str], None] | None = None,
) -> dict[int, Any]:
    """Before a resume reuses the finished blocks of ``writer``'s partial
    write: each block's utterances (``blocks[b]``, in the order they were
    recorded) read again with ``waveform(i)`` and compared with the
    :func:`clip_sha256` recorded with the block. A clip that changed (same
    length, other samples) is refused, naming it (``name(i)``) and how to
    start over; with ``overwrite=True`` the partial write is started over
    instead. ``log`` (a line at a time, e.g. to stderr) hears what is
    checked (it reads every finished utterance again) and whether the write
    is resumed or started over. Returns the finished blocks still to reuse
    (their payloads)."""
    done = writer.done_blocks()
    if done and log is not None:
        count = sum(len(blocks.get(b, ())) for b in done)
        log(f"checking the audio of {count} finished utterance(s) of the interrupted write in {writer.tmp}")
    for block in sorted(done):
        payload = done[block]
        recorded = payload.get("audio_sha256") if isinstance(payload, dict) else None
        rows = [int(i) for i in blocks.get(block, ())]
        changed = None
        if recorded is None or len(recorded) != len(rows):
            changed = f"block {block} records no audio hashes"
        else:
            for i, sha in zip(rows, recorded):
                if clip_sha256(waveform(i)) != sha:
                    changed = f"{name(i)} changed (same length, other samples)"
                    break
        if changed is not None:
            if overwrite:
                if log is not None:
                    log(f"{changed} since the interrupted write in {writer.tmp}: starting it over (--overwrite)")
                writer.restart()
                return {}
            raise ValueError(
                f"{writer.tmp} holds an interrupted write of other audio: {changed} since it was written; "
                "pass overwrite=True / --overwrite to start over, or remove it"
            )
    if done and log is not None:
        log(f"resuming the interrupted write in {writer.tmp}: {len(done)} finished block(s) reused")
    return done


def open_writer(
    out_dir: str | os.PathLike[str] | None,
    *,
    model: nn.Module,
    feature_extractor: Any,
    labels: Sequence[Any] | None,
    frame_labels: np.ndarray | None,
    utterance: np.ndarray | None,
    raw_lengths: np.ndarray,
    n_utt: int,
    meta: dict[str, Any] | None,
    overwrite: bool,
    resume: bool,
    job: dict[str, Any],
    ignored_frames: int | None = None,
) -> StoreWriter:
    """A :class:`StoreWriter` for the rows ``pooled_hidden_states`` will write
    with ``model`` and ``feature_extractor`` (the one used, defaults resolved).

    A frame store's metadata records ``ignored_frames``, the valid frames left
    out (-100 frame labels): with none, every utterance's rows are its whole
    sequence (what ``LayerStore.sequences`` and Euclidean sweeps need).

    ``out_dir=None`` with ``labels``/``meta``/``overwrite=True`` is refused:
    they only concern the store, and would otherwise be ignored."""
    if out_dir is None:
        given = " and ".join(
            n for n, v in (("labels", labels), ("meta", meta), ("overwrite", overwrite or None)) if v is not None
        )
        raise ValueError(
            f"{given}: only for out_dir's layer store, and no out_dir was given (they would be "
            "ignored); pass out_dir=, or leave them out (the returned rows follow waveforms' order)"
        )
    if frame_labels is not None:
        if labels is not None:
            raise ValueError("labels: with frame_labels the rows' labels come from frame_labels; pass only one")
        row_labels: Any = frame_labels
        pooling = "frames"
    else:
        if labels is None:
            raise ValueError("out_dir writes a layer store, which holds the labels: pass labels= (one per utterance)")
        row_labels = labels
        pooling = "mean over valid frames"
        if len(row_labels) != n_utt:
            raise ValueError(f"labels has {len(row_labels)} entries but waveforms has {n_utt}")
    signature = model_signature(model, feature_extractor)
    full_meta = {**signature, "pooling": pooling, **(meta or {})}
    if ignored_frames is not None:
        full_meta["ignored_frames"] = int(ignored_frames)
    job = {
        **job,
        **signature,
        "lengths_sha256": hashlib.sha256(np.ascontiguousarray(raw_lengths, np.int64).tobytes()).hexdigest(),
    }
    json.dumps(job)  # plain values only
    return StoreWriter(
        out_dir, row_labels, meta=full_meta, utterance=utterance, overwrite=overwrite, resume=resume, job=job
    )
