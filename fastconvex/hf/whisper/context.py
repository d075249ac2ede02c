"""Whisper's encoder context: the 30 s window, and cutting it to the audio.

Whisper pads every input to 30 s (1500 encoder frames at 50 Hz) and its
encoder attends over the whole window, padding included.  On short clips
almost all of the compute goes to the padding.  :func:`cut_whisper_context`
slices the encoder's (sinusoidal, frozen) positional embeddings to a shorter
window and records it in ``config.max_source_positions``, which transformers'
``WhisperEncoder`` checks the input length against (4.x and 5.x alike), so a
saved model reloads with the cut context.  :func:`context_feature_extractor`
gives the matching ``WhisperFeatureExtractor`` (padding and truncating to the
cut window).

The outputs change with the context: at full context every frame attends to
up to 30 s of padding, at a cut context to less of it.  Score the layers
(:func:`fastconvex.hf.pooled_hidden_states`, which pads to the model's own
context) in the same context that is fine-tuned.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
from torch import nn

from fastconvex.hf.models.layout import distinct_configs, is_whisper, speech_encoder

__all__ = ["context_feature_extractor", "cut_whisper_context", "whisper_context_samples", "whisper_frame_stride"]

#: Whisper's front end: 16 kHz audio, 160-sample mel hop
_WHISPER_RATE = 16000
_WHISPER_HOP = 160


def _require_whisper(model: Any, what: str) -> None:
    if not is_whisper(model):
        raise TypeError(
            f"{what} is for Whisper models (the wav2vec2 family has no fixed window), "
            f"got {type(model).__name__} (model_type {getattr(getattr(model, 'config', None), 'model_type', None)!r})"
        )


def whisper_frame_stride(model: nn.Module, feature_extractor: Any = None) -> tuple[int, int]:
    """(samples per encoder frame, encoder frames of the context) of a Whisper model.

    Samples per frame = the mel hop (the feature extractor's ``hop_length``,
    default 160) times the strides of ``conv1`` and ``conv2`` (320 for Whisper);
    the context is ``config.max_source_positions`` (1500, or less after
    :func:`cut_whisper_context`).
    """
    enc = speech_encoder(model)
    hop = int(getattr(feature_extractor, "hop_length", _WHISPER_HOP) or _WHISPER_HOP)
    stride = 1
    for name in ("conv1", "conv2"):
        conv = getattr(enc, name, None)
        if isinstance(conv, nn.Conv1d):
            stride *= int(conv.stride[0])
    max_frames = int(getattr(enc.config, "max_source_positions", 1500))
    return hop * stride, max_frames


def whisper_context_samples(model: nn.Module, feature_extractor: Any = None) -> int:
    """Samples in the model's context window (480000 = 30 s at 16 kHz, unless cut)."""
    per_frame, frames = whisper_frame_stride(model, feature_extractor)
    return per_frame * frames


def cut_whisper_context(model: nn.Module, seconds: float) -> nn.Module:
    """Cut a Whisper encoder's context window to ``seconds``, in place.

    The encoder keeps the first ``ceil(seconds * 50)`` of its positional
    embeddings (50 encoder frames per second: 16 kHz, hop 160, conv stride 2);
    ``config.max_source_positions`` (in every config object of the model) and
    the encoder's ``max_source_positions`` are set to that count, so the model
    takes mel inputs of ``2 * frames`` columns and saves and reloads with the cut
    context.  Every other weight is unchanged.

    The outputs change: the full-context encoder attends over up to 30 s of
    padding, the cut one over ``seconds`` minus the clip.  Featurise with
    :func:`context_feature_extractor` (or ``pooled_hidden_states``, which pads
    to the model's context by itself).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        ``WhisperEncoder``, ``WhisperModel``, ``WhisperForConditionalGeneration``
        or ``WhisperForAudioClassification`` (pruned or not).
    seconds : float
        The new context, > 0 and at most the current one.

    Returns
    -------
    transformers.PreTrainedModel
        The same model object.

    Raises
    ------
    TypeError
        A model that is not Whisper; ``seconds`` not a number.
    ValueError
        ``seconds`` not positive and finite, or longer than the current context
        (there are no positional embeddings beyond it).
    """
    _require_whisper(model, "cut_whisper_context")
    if isinstance(seconds, (bool, np.bool_)) or not isinstance(seconds, (int, float, np.integer, np.floating)):
        raise TypeError(f"seconds must be a number, got {type(seconds).__name__} {seconds!r}")
    seconds = float(seconds)  # numpy scalars too (np.float32 was refused as "not a number")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be positive and finite, got {seconds!r}")
    enc = speech_encoder(model)
    per_frame, current = whisper_frame_stride(model)
    frames_per_second = _WHISPER_RATE / per_frame
    frames = math.ceil(seconds * frames_per_second - 1e-9)
    embed = enc.embed_positions
    if frames > current or frames > embed.num_embeddings:
        raise ValueError(
            f"seconds={seconds} asks for {frames} encoder frames but the model's context is "
            f"{current} frames ({current / frames_per_second:g} s); a context can only be cut, not extended"
        )
    if frames < embed.num_embeddings:
        new = nn.Embedding(frames, embed.embedding_dim, device=embed.weight.device, dtype=embed.weight.dtype)
        new.weight.data.copy_(embed.weight.data[:frames])
        new.weight.requires_grad_(embed.weight.requires_grad)
        enc.embed_positions = new
    if hasattr(enc, "max_source_positions"):
        enc.max_source_positions = frames
    for cfg in distinct_configs(model):
        if hasattr(cfg, "max_source_positions"):
            cfg.max_source_positions = frames
    return model


def context_feature_extractor(model: nn.Module, feature_extractor: Any = None, *, sampling_rate: int = 16000) -> Any:
    """A ``WhisperFeatureExtractor`` that pads and truncates to the model's context.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A Whisper model, context-cut or not (its ``config.max_source_positions``).
    feature_extractor : transformers.WhisperFeatureExtractor, optional
        The model's own; a copy is returned with ``chunk_length``, ``n_samples``
        and ``nb_max_frames`` set to the context (the mel filters are unchanged).
        It is returned as is when it already matches.  Default: a new one with
        ``config.num_mel_bins`` mel bins.
    sampling_rate : int
        For the default feature extractor.

    Returns
    -------
    transformers.WhisperFeatureExtractor
        Saved with ``save_pretrained`` it reloads with the same window.

    Raises
    ------
    TypeError
        Not a Whisper model, or a feature extractor without ``chunk_length``.
    ValueError
        A context that is not a whole number of seconds (``WhisperFeatureExtractor``
        pads to ``chunk_length`` whole seconds), or a sampling-rate mismatch.
    """
    _require_whisper(model, "context_feature_extractor")
    if feature_extractor is None:
        import transformers

        mel = int(getattr(speech_encoder(model).config, "num_mel_bins", 80))
        feature_extractor = transformers.WhisperFeatureExtractor(
            feature_size=mel, sampling_rate=sampling_rate, hop_length=_WHISPER_HOP
        )
    for attr in ("chunk_length", "n_samples", "sampling_rate"):
        if not hasattr(feature_extractor, attr):
            raise TypeError(
                f"feature_extractor: {type(feature_extractor).__name__} has no {attr}; "
                "pass the model's WhisperFeatureExtractor"
            )
    samples = whisper_context_samples(model, feature_extractor)
    rate = int(feature_extractor.sampling_rate)
    if int(feature_extractor.n_samples) == samples:
        return feature_extractor
    if samples % rate:
        raise ValueError(
            f"the model's context is {samples} samples ({samples / rate:g} s at {rate} Hz), not a whole number of "
            "seconds, which WhisperFeatureExtractor (chunk_length in seconds) cannot pad to; "
            "cut the context to whole seconds"
        )
    out = copy.deepcopy(feature_extractor)
    out.chunk_length = samples // rate
    out.n_samples = samples
    out.nb_max_frames = samples // int(out.hop_length)
    return out
