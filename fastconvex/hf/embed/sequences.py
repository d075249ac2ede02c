"""Every hidden state of a speech model as frame sequences (N, T, D), what
Euclidean convexity sends through the rest of a classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fastconvex.hf.embed.featurise import (
    _as_waveform,
    _feature_extractor_for,
    _featurise,
    _make_batches,
    _pos_conv_sees_padding,
    _progress,
    _takes_attention_mask,
    valid_frame_counts,
)
from fastconvex.hf.models.layout import is_whisper, model_device, speech_encoder

__all__ = ["hidden_state_sequences"]


def hidden_state_sequences(
    model: nn.Module,
    waveforms: Sequence[Any],
    *,
    sampling_rate: int = 16000,
    batch_size: int = 8,
    feature_extractor: Any = None,
    progress: bool | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Every hidden state of ``model`` on ``waveforms``, frame by frame.

    Batching follows :func:`fastconvex.hf.pooled_hidden_states`: each utterance
    is featurised alone; models that take an attention mask get one; models
    whose output depends on padding (no attention mask, or Data2VecAudio's
    stacked positional convolutions) batch only utterances of equal length, so
    every utterance's frames are what it gets alone.

    Parameters
    ----------
    model : a wav2vec2-family model or a Whisper model / classifier
    waveforms : sequence of (T_i,) mono waveforms at ``sampling_rate``
    batch_size : utterances per forward pass
    feature_extractor : the model's own (default as in ``pooled_hidden_states``)
    progress : progress bar on stderr (None: when it is a terminal)

    Returns
    -------
    states : list of L + 1 float32 arrays (N, T, D)
        Hidden states as ``output_hidden_states=True`` gives them (no extra
        LayerNorm), each utterance's frames first and zeros after them, T the
        longest utterance's frame count (Whisper: its whole window).
    n_frames : (N,) int64 valid frames per utterance, or None for Whisper,
        whose encoder attends to and whose classifier pools every frame of its
        padded window.
    """
    enc = speech_encoder(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_utt = len(waveforms)
    if n_utt == 0:
        raise ValueError("waveforms is empty")
    waves = [_as_waveform(waveforms[i], i) for i in range(n_utt)]
    raw = np.array([w.shape[0] for w in waves], dtype=np.int64)
    whisper = is_whisper(model)
    feature_extractor = _feature_extractor_for(model, feature_extractor, sampling_rate)
    if not whisper and not hasattr(enc, "_get_feat_extract_output_lengths"):
        raise TypeError(f"model: {type(model).__name__} has no output-length rule; frame sequences are unknown for it")
    n_frames = None if whisper else valid_frame_counts(model, raw)
    if n_frames is not None and np.any(n_frames < 1):
        bad = int(np.argmin(n_frames))
        raise ValueError(
            f"waveforms[{bad}] has {int(raw[bad])} samples, too short for one frame of {type(model).__name__}"
        )
    takes_mask = (not whisper) and _takes_attention_mask(model, feature_extractor)
    key = None
    if not whisper and (not takes_mask or _pos_conv_sees_padding(model)):
        key = raw if not takes_mask else n_frames
    order = np.argsort(-raw, kind="stable")
    batches = _make_batches(order, int(batch_size), None if key is None else key[order])
    device = model_device(enc)
    dtype = next((p.dtype for p in enc.parameters() if p.is_floating_point()), torch.float32)
    states: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    bar = _progress(len(batches), progress)
    bar.__enter__()
    try:
        with torch.inference_mode():
            for batch in batches:
                inputs, _ = _featurise(
                    model, enc, feature_extractor, [waves[i] for i in batch], sampling_rate, takes_mask, whisper, False
                )
                inputs = {
                    k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                    for k, v in inputs.items()
                }
                hidden = enc(**inputs, output_hidden_states=True, return_dict=True).hidden_states
                if not states:
                    t = int(hidden[0].shape[1]) if whisper else int(n_frames.max())
                    states = [np.zeros((n_utt, t, int(h.shape[-1])), np.float32) for h in hidden]
                for layer, h in enumerate(hidden):
                    h = h.float().cpu().numpy()
                    for b, i in enumerate(batch):
                        f = h.shape[1] if whisper else int(n_frames[i])
                        states[layer][i, :f] = h[b, :f]
                bar.update(1)
    finally:
        bar.__exit__(None, None, None)
        if was_training:
            model.train()
    return states, n_frames
