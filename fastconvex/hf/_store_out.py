"""``pooled_hidden_states(out_dir=...)``: the layer store it streams into."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
from torch import nn

from ..store import StoreWriter


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What identifies the model of a (resumable) embedding job: its class,
    name or path, and a hash of its configuration."""
    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    return {
        "model_class": type(model).__name__,
        "model": str(getattr(config, "_name_or_path", "") or ""),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def open_writer(
    out_dir: str | os.PathLike[str] | None,
    *,
    model: nn.Module,
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
    """A :class:`StoreWriter` for the rows ``pooled_hidden_states`` will write.

    A frame store's metadata records ``ignored_frames``, the valid frames left
    out (-100 frame labels): with none, every utterance's rows are its whole
    sequence (what ``LayerStore.sequences`` and Euclidean sweeps need).

    ``out_dir=None`` with ``labels``/``meta``/``overwrite=True`` is refused:
    they only concern the store, and would otherwise be ignored."""
    if out_dir is None:
        given = " and ".join(n for n, v in (("labels", labels), ("meta", meta), ("overwrite", overwrite or None))
                             if v is not None)
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
            raise ValueError(
                "out_dir writes a layer store, which holds the labels: pass labels= (one per utterance)"
            )
        row_labels = labels
        pooling = "mean over valid frames"
        if len(row_labels) != n_utt:
            raise ValueError(f"labels has {len(row_labels)} entries but waveforms has {n_utt}")
    signature = model_signature(model)
    full_meta = {**signature, "pooling": pooling, **(meta or {})}
    if ignored_frames is not None:
        full_meta["ignored_frames"] = int(ignored_frames)
    job = {**job, **signature,
           "lengths_sha256": hashlib.sha256(np.ascontiguousarray(raw_lengths, np.int64).tobytes()).hexdigest()}
    json.dumps(job)  # plain values only
    return StoreWriter(out_dir, row_labels, meta=full_meta, utterance=utterance, overwrite=overwrite,
                       resume=resume, job=job)
