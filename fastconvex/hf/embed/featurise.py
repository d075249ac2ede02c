"""Waveforms to model inputs, shared by pooling, sequences and fine-tuning: checks,
feature extractors, valid frame counts, featurising a batch, batching rules."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from fastconvex.hf.embed.audio import check_sampling_rate
from fastconvex.hf.models.layout import is_whisper, speech_encoder
from fastconvex.hf.whisper.context import (
    context_feature_extractor,
    whisper_context_samples,
    whisper_frame_stride,
)


def _waveform_name(waveforms: Any, i: int, arg: str = "waveforms") -> str:
    """How errors name utterance ``i`` of argument ``arg``: its file for :class:`AudioFiles`
    (``audio file 'a/b.wav' (waveforms[3])``), else ``waveforms[3]``."""
    paths = getattr(waveforms, "paths", None)
    if paths is not None and 0 <= i < len(paths):
        return f"audio file {str(paths[i])!r} ({arg}[{i}])"
    return f"{arg}[{i}]"


def _as_waveform(x: Any, i: int, name: str | None = None) -> np.ndarray:
    name = name or f"waveforms[{i}]"
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()  # bfloat16 and the like, which numpy lacks: exact in float32
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 1-D array of samples, got {type(x).__name__}") from exc
    if arr.dtype.kind in "iub":
        raise TypeError(
            f"{name} has dtype {arr.dtype}: pass float samples in [-1, 1] (int16 PCM: x / 32768); "
            "integer audio is not rescaled silently"
        )
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a 1-D array of real float samples, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (mono samples), got shape {arr.shape}; downmix multi-channel audio first")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_lengths(lengths: Any, n_utt: int) -> np.ndarray:
    """``lengths`` (sample counts given with lazily loaded waveforms) as (N,) int64:
    integers >= 1, one per utterance (a float is refused, never truncated)."""
    arr = np.asarray(lengths).reshape(-1)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers (samples per waveform), got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.shape[0] != n_utt:
        raise ValueError(f"lengths has {arr.shape[0]} entries but waveforms has {n_utt}")
    if np.any(arr < 1):
        raise ValueError(f"lengths must be positive, got {int(arr.min())} at index {int(arr.argmin())}")
    return arr


def _output_lengths(enc: nn.Module, lengths: np.ndarray) -> np.ndarray:
    fn = cast(
        Callable[..., Any], enc._get_feat_extract_output_lengths
    )  # a method; nn.Module's typing says Tensor | Module
    t = torch.as_tensor(lengths, dtype=torch.long)
    try:
        out = fn(t, add_adapter=False)  # hidden_states come from the encoder, before any adapter
    except TypeError:
        out = fn(t)
    return np.asarray(torch.as_tensor(out).to("cpu"), dtype=np.int64).reshape(-1)


def valid_frame_counts(model: nn.Module, lengths: Sequence[int], *, feature_extractor: Any = None) -> np.ndarray:
    """Encoder frames that cover real audio, per utterance.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A wav2vec2-family model (uses its own ``_get_feat_extract_output_lengths``)
        or a Whisper model/encoder (``ceil(n_samples / (hop_length * 2))``, i.e.
        ``ceil(n / 320)`` at 50 Hz, capped at ``max_source_positions``).
    lengths : sequence of int, shape (N,)
        Raw waveform lengths in samples.
    feature_extractor : optional
        Whisper only: its ``hop_length`` (default 160).

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
    """
    lengths_arr = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if is_whisper(model):
        per_frame, max_frames = whisper_frame_stride(model, feature_extractor)
        return np.minimum(-(-lengths_arr // per_frame), max_frames).astype(np.int64)
    enc = speech_encoder(model)
    if not hasattr(enc, "_get_feat_extract_output_lengths"):
        raise TypeError(
            f"model: {type(model).__name__} has no _get_feat_extract_output_lengths; "
            "valid frame counts are unknown for it"
        )
    return _output_lengths(enc, lengths_arr)


def _default_feature_extractor(model: nn.Module, sampling_rate: int) -> Any:
    import transformers

    if is_whisper(model):
        return context_feature_extractor(model, None, sampling_rate=sampling_rate)
    takes_mask = getattr(model.config, "feat_extract_norm", "layer") != "group"
    return transformers.Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=sampling_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=takes_mask,
    )


def _feature_extractor_for(model: nn.Module, feature_extractor: Any, sampling_rate: int) -> Any:
    """``feature_extractor`` (default: :func:`_default_feature_extractor`), checked
    to expect ``sampling_rate``."""
    check_sampling_rate(sampling_rate)
    if feature_extractor is None:
        feature_extractor = _default_feature_extractor(model, sampling_rate)
    main = None if is_whisper(model) else getattr(speech_encoder(model), "main_input_name", None)
    produced = getattr(feature_extractor, "model_input_names", None)
    if isinstance(main, str) and produced and main not in produced:
        raise TypeError(
            f"model: {type(model).__name__} takes {main!r}, which the feature extractor "
            f"({type(feature_extractor).__name__}) does not make from audio (it gives {list(produced)}); "
            "not a speech model? (supported: Wav2Vec2, HuBERT, WavLM, Data2VecAudio, Whisper)"
        )
    fe_rate = getattr(feature_extractor, "sampling_rate", None)
    if fe_rate is not None and int(fe_rate) != int(sampling_rate):
        raise ValueError(
            f"sampling_rate={sampling_rate} but the feature extractor expects {fe_rate} Hz; resample the audio first"
        )
    return feature_extractor


def _takes_attention_mask(model: nn.Module, feature_extractor: Any) -> bool:
    norm = getattr(model.config, "feat_extract_norm", None)
    if norm is not None:
        return norm != "group"
    flag = getattr(feature_extractor, "return_attention_mask", None)
    return True if flag is None else bool(flag)


def _progress(total: int, enabled: bool | None) -> Any:
    from fastconvex.core.progress import Progress, show_progress

    show = show_progress(enabled)
    return Progress(total, "batches", enabled=show)


def _pos_conv_sees_padding(model: nn.Module) -> bool:
    """Data2VecAudio stacks positional convolutions: padded frames leak into valid ones."""
    cfg = model.config
    return getattr(cfg, "model_type", None) == "data2vec-audio" and int(getattr(cfg, "num_conv_pos_embeddings", 1)) > 1


def _make_batches(order: np.ndarray, batch_size: int, keys: np.ndarray | None) -> list[np.ndarray]:
    """Consecutive chunks of ``order``; with ``keys`` (aligned with ``order``) never mixing keys."""
    if keys is None:
        segments = [order]
    else:
        cuts = np.flatnonzero(np.diff(keys)) + 1
        segments = np.split(order, cuts)
    return [seg[s : s + batch_size] for seg in segments for s in range(0, len(seg), batch_size)]


def _select_layers(layers: Sequence[int] | None, n_hidden: int) -> list[int]:
    if layers is None:
        return list(range(n_hidden))
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    out = []
    for li in layers:
        if isinstance(li, bool) or not isinstance(li, (int, np.integer)):
            raise TypeError(f"layers must be integers, got {li!r}")
        if not -n_hidden <= int(li) < n_hidden:
            raise ValueError(f"layers: index {int(li)} out of range for {n_hidden} hidden states")
        out.append(int(li) % n_hidden)
    if not out:
        raise ValueError("layers is empty")
    if len(set(out)) != len(out):
        raise ValueError(f"layers has duplicates: {list(layers)}")
    return out


def _featurise(
    model: nn.Module,
    enc: nn.Module,
    fe: Any,
    waves: list[np.ndarray],
    sampling_rate: int,
    takes_mask: bool,
    whisper: bool,
    generic: bool,
) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
    """Model inputs for one batch (+ per-utterance feature lengths on the generic path)."""
    if whisper:  # padded (and truncated) to the model's context, which may be cut (hf.cut_whisper_context)
        n_context = whisper_context_samples(model, fe)
        feats = fe(
            waves,
            sampling_rate=sampling_rate,
            padding="max_length",
            max_length=n_context,
            truncation=True,
            return_tensors="np",
        )
        return {"input_features": torch.as_tensor(np.asarray(feats["input_features"], dtype=np.float32))}, None
    if generic:
        feats = fe(waves, sampling_rate=sampling_rate, padding=True, return_attention_mask=True, return_tensors="pt")
        name = getattr(enc, "main_input_name", "input_values")
        inputs = {name: feats[name]}
        mask = feats.get("attention_mask")
        if mask is not None and takes_mask:
            inputs["attention_mask"] = mask
        lengths = None if mask is None else mask.sum(-1).to("cpu").numpy()
        return inputs, lengths
    # raw-waveform models: featurise each utterance alone so normalisation never sees padding
    rows = []
    for w in waves:
        fv = fe(w, sampling_rate=sampling_rate, return_tensors="np")
        rows.append(np.asarray(fv["input_values"], dtype=np.float32).reshape(-1))
    t_max = max(r.shape[0] for r in rows)
    pad = float(getattr(fe, "padding_value", 0.0))
    values = np.full((len(rows), t_max), pad, dtype=np.float32)
    mask = np.zeros((len(rows), t_max), dtype=np.int64)
    for b, r in enumerate(rows):
        values[b, : r.shape[0]] = r
        mask[b, : r.shape[0]] = 1
    inputs = {"input_values": torch.from_numpy(values)}
    if takes_mask:
        inputs["attention_mask"] = torch.from_numpy(mask)
    return inputs, None


_warned_generic = False


def _generic_frames(
    enc: nn.Module, inputs: dict[str, torch.Tensor], feat_lengths: np.ndarray | None, t_out: int
) -> np.ndarray:
    global _warned_generic
    batch = next(iter(inputs.values())).shape[0]
    if feat_lengths is None or batch == 1:
        return np.full(batch, t_out, dtype=np.int64)
    t_in = next(iter(inputs.values())).shape[-1] if "input_values" in inputs else next(iter(inputs.values())).shape[1]
    if t_in == t_out:
        return np.asarray(feat_lengths, dtype=np.int64)
    if not _warned_generic:
        warnings.warn(
            f"{type(enc).__name__}: no output-length rule; padded frames are pooled too (use batch_size=1 to avoid it)",
            stacklevel=3,
        )
        _warned_generic = True
    return np.full(batch, t_out, dtype=np.int64)


def frame_label_rows(
    frame_labels: Sequence[Any] | None,
    n_frames: np.ndarray,
    raw_lengths: np.ndarray,
    model_name: str,
) -> tuple[list[np.ndarray] | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Per-frame labels checked against each utterance's valid frames.

    Returns ``(keep, labels, utterance, offsets)``: per utterance the frames kept
    (label != -100 for numeric labels), the kept frames' labels (rows,), the
    utterance of each row, and each utterance's first row (n_utt + 1,); all None
    without ``frame_labels``.
    """
    if frame_labels is None:
        return None, None, None, None
    n_utt = len(n_frames)
    if len(frame_labels) != n_utt:
        raise ValueError(f"frame_labels has {len(frame_labels)} entries but waveforms has {n_utt}")
    frame_keep: list[np.ndarray] = []
    kept_labels = []
    for i in range(n_utt):
        fl = frame_labels[i]
        if isinstance(fl, torch.Tensor):
            fl = fl.detach().to("cpu").numpy()
        fl = np.asarray(fl)
        if fl.ndim != 1 or fl.shape[0] != n_frames[i]:
            raise ValueError(
                f"frame_labels[{i}] has shape {fl.shape} but utterance {i} has {int(n_frames[i])} valid frames "
                f"({int(raw_lengths[i])} samples) under {model_name}'s output-length rule"
            )
        keep = fl != -100 if fl.dtype.kind in "iuf" else np.ones(fl.shape[0], dtype=bool)
        frame_keep.append(keep)
        kept_labels.append(fl[keep])
    counts = np.array([int(k.sum()) for k in frame_keep], dtype=np.int64)
    if counts.sum() == 0:
        raise ValueError("frame_labels: every frame is -100 (ignored); nothing to pool")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return frame_keep, np.concatenate(kept_labels), np.repeat(np.arange(n_utt), counts), offsets
