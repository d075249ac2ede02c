"""Fine-tuning a (pruned or full) speech encoder with a classification head, via ``Trainer``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastconvex.core.atomic import check_output_dir, staged_directory
from fastconvex.core.inputs import check_bool
from fastconvex.hf.embed.featurise import (
    _as_waveform,
    _feature_extractor_for,
    _featurise,
    _takes_attention_mask,
    _waveform_name,
    valid_frame_counts,
)
from fastconvex.hf.models.heads import (
    classification_model,
    count_parameters,
    freeze_front_end,
)
from fastconvex.hf.models.layout import is_whisper, num_blocks, speech_encoder
from fastconvex.hf.train.splits import encode_labels, split_indices
from fastconvex.hf.whisper.context import (
    context_feature_extractor,
    cut_whisper_context,
    whisper_context_samples,
)

__all__ = ["RESULT_FILE", "FinetuneResult", "finetune"]

#: written into ``out_dir`` next to the model: :meth:`FinetuneResult.to_dict`
RESULT_FILE = "fastconvex_finetune.json"


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    accuracy : float
        Held-out accuracy, in [0, 1].
    n_train, n_eval : int
        Clips trained / evaluated on.
    train_seconds : float
        Wall time of ``Trainer.train()`` alone (no featurising of the held-out
        clips, no evaluation, no saving).
    epochs : float
    steps : int
        Optimiser steps taken.
    classes : list of str or int
        ``config.id2label``: class k is ``classes[k]``.
    eval_index : numpy.ndarray of int64, shape (n_eval,)
        Held-out clips (indices into ``audio``); ``train_index`` likewise.
    eval_labels, eval_predictions : numpy.ndarray, shape (n_eval,)
        True and predicted labels of the held-out clips, as the original label values.
    params, trainable_params : int
        Parameters of the classification model (all / trained).
    model : transformers.PreTrainedModel
        The fine-tuned classification model, in eval mode.
    out_dir : pathlib.Path or None
        Where it was saved.
    settings : dict
        The training settings, for reports.
    """

    accuracy: float
    n_train: int
    n_eval: int
    train_seconds: float
    epochs: float
    steps: int
    classes: list[Any]
    train_index: np.ndarray
    eval_index: np.ndarray
    eval_labels: np.ndarray
    eval_predictions: np.ndarray
    params: int
    trainable_params: int
    model: Any = field(repr=False)
    out_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (everything but the model and the per-clip arrays), with versions."""
        from fastconvex.hf.models.save import jsonable, package_versions

        versions = package_versions()
        for name in ("accelerate",):
            try:
                from importlib import metadata

                versions[name] = metadata.version(name)
            except Exception:  # noqa: BLE001 - a version we cannot read is reported as None
                versions[name] = None
        return jsonable(
            {
                "accuracy": self.accuracy,
                "n_train": self.n_train,
                "n_eval": self.n_eval,
                "train_seconds": self.train_seconds,
                "epochs": self.epochs,
                "steps": self.steps,
                "classes": self.classes,
                "params": self.params,
                "trainable_params": self.trainable_params,
                "model_class": type(self.model).__name__,
                "out_dir": None if self.out_dir is None else str(self.out_dir),
                "settings": self.settings,
                "versions": versions,
            }
        )


class _Clips(torch.utils.data.Dataset):
    def __init__(self, index: np.ndarray) -> None:
        self.index = [int(i) for i in index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"clip": self.index[i]}


class _Collator:
    """Featurises a batch the way :func:`pooled_hidden_states` does (padding per batch,
    attention masks where the model takes them; Whisper padded to its context)."""

    def __init__(self, model: nn.Module, fe: Any, waves: list[np.ndarray], ids: np.ndarray, rate: int) -> None:
        self.model, self.enc, self.fe, self.waves, self.ids, self.rate = (
            model,
            speech_encoder(model),
            fe,
            waves,
            ids,
            rate,
        )
        self.whisper = is_whisper(model)
        self.takes_mask = (not self.whisper) and _takes_attention_mask(model, fe)

    def __call__(self, features: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        clips = [f["clip"] for f in features]
        inputs, _ = _featurise(
            self.model,
            self.enc,
            self.fe,
            [self.waves[i] for i in clips],
            self.rate,
            self.takes_mask,
            self.whisper,
            False,
        )
        inputs["labels"] = torch.as_tensor(self.ids[clips], dtype=torch.long)
        return inputs


def _positive(value: Any, name: str, integer: bool = False) -> Any:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return int(value) if integer else float(value)


def _check_callbacks(callbacks: Sequence[Any] | None) -> list[Any]:
    """``callbacks``: None or a sequence of ``transformers.TrainerCallback`` instances."""
    if callbacks is None:
        return []
    from transformers import TrainerCallback

    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise TypeError(f"callbacks must be a list of transformers.TrainerCallback, got {type(callbacks).__name__}")
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, TrainerCallback):
            raise TypeError(f"callbacks[{i}] is a {type(callback).__name__}, not a transformers.TrainerCallback")
        if getattr(callback, "every", None) == "eval":  # a ConvexityCallback waiting for evaluations
            raise ValueError(
                f'callbacks[{i}] scores at each evaluation (every="eval"), but finetune evaluates once, after '
                'training; use every="epoch" or every=N steps'
            )
    return list(callbacks)


def finetune(
    model: nn.Module,
    audio: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    eval_split: float | tuple[Sequence[int], Sequence[int]] = 0.2,
    groups: Sequence[Any] | None = None,
    epochs: float = 5.0,
    lr: float = 3e-5,
    batch_size: int = 16,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    feature_extractor: Any = None,
    sampling_rate: int = 16000,
    context_seconds: float | None = None,
    truncate: bool = False,
    freeze_feature_encoder: bool | None = None,
    layerdrop: float | None = 0.0,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.0,
    eval_batch_size: int | None = None,
    progress: bool | None = None,
    callbacks: Sequence[Any] | None = None,
) -> FinetuneResult:
    """Put a classification head on a speech encoder and fine-tune it on labelled audio.

    The recipe is the usual one for speech classification (and the convexity
    papers'): a fresh head (:func:`fastconvex.hf.classification_model`: the
    ``AutoModelForAudioClassification`` class, encoder weights copied exactly, head
    on the last hidden state, mean-pooled), the whole encoder trained except the
    convolutional feature encoder of wav2vec2-family models (see
    ``freeze_feature_encoder``), AdamW with linear warm-up (``warmup_ratio``) and
    decay, cross-entropy, gradient clipping at 1, all through ``transformers.Trainer``
    (no checkpoints: a temporary ``output_dir``, ``save_strategy="no"``,
    ``report_to=[]``).  Batches are featurised as :func:`pooled_hidden_states` does:
    each clip normalised alone, padded per batch, attention masks where the model
    takes them; Whisper inputs padded to the model's context.  ``model`` itself is
    not changed.  Same seed, same device: the same split, head, batches, weights
    and accuracy.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Wav2Vec2, HuBERT, WavLM, Data2VecAudio (base model or any head) or Whisper
        (``WhisperEncoder``/``WhisperModel``/``WhisperForConditionalGeneration``/
        ``WhisperForAudioClassification``), full or pruned by :func:`fastconvex.hf.prune`.
    audio : sequence of array-like, shape (T_i,) each, or array (N, T)
        Mono waveforms at ``sampling_rate`` (an :class:`~fastconvex.hf.AudioFiles`
        works; all clips are loaded and checked before training).
    labels : sequence of str or int, shape (N,)
        One class per clip (strings or integers, not mixed), kept in
        ``config.id2label``.
    eval_split : float or (train_idx, eval_idx)
        Fraction of clips held out (stratified by label, drawn from ``seed``; with
        ``groups``, whole groups are held out), or explicit index arrays.
    groups : sequence, shape (N,), optional
        Group of each clip (speaker, voice, prompt): no group on both sides.
    epochs : float
    lr : float
        Peak learning rate.
    batch_size : int
        Clips per training step.
    seed : int
        Seeds the split, the head and ``Trainer`` (shuffling, dropout).
    out_dir : path, optional
        Save the fine-tuned model, the feature extractor and ``fastconvex_finetune.json``
        there (``save_pretrained``; written to a temporary directory, then renamed):
        ``AutoModelForAudioClassification.from_pretrained(out_dir)`` reloads it
        (:func:`fastconvex.hf.load_pruned` for a model pruned with
        ``final_norm="identity"``).  Checked before training.
    overwrite : bool
        Replace an existing non-empty ``out_dir``.
    feature_extractor : optional
        The model's own; default as in :func:`pooled_hidden_states`.  For Whisper it is
        fitted to the context (:func:`fastconvex.hf.context_feature_extractor`).
    sampling_rate : int
    context_seconds : float, optional
        Whisper only: cut the encoder's context to this many seconds
        (:func:`fastconvex.hf.cut_whisper_context`, on the new model) -- a whole
        number of seconds.  Outputs change with the context; score the layers at it.
    truncate : bool
        Whisper: clips longer than the context are an error unless ``True`` (then
        they are cut to it).
    freeze_feature_encoder : bool or None
        Freeze the convolutional front end.  None: frozen for the wav2vec2 family
        (customary), trained for Whisper.
    layerdrop : float or None
        LayerDrop while training (default 0, as :func:`fastconvex.hf.prune` sets, so
        full and pruned models train alike); None keeps the config's.
    warmup_ratio, weight_decay : float
    eval_batch_size : int, optional
        Default ``batch_size``.
    progress : bool or None
        A progress bar over steps on stderr (None: when stderr is a terminal).
    callbacks : sequence of transformers.TrainerCallback, optional
        Given to the ``Trainer`` (e.g. :class:`fastconvex.hf.ConvexityCallback`
        to follow convexity through the training; the Trainer's ``output_dir`` is
        temporary, so read its ``history``).

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ValueError
        labels or groups whose length differs from audio's, fewer than 2 classes, a
        class without a training clip, a bad split or setting, an existing non-empty
        ``out_dir``, clips longer than the Whisper context (without ``truncate``) or too
        short for one frame, ``context_seconds`` for a non-Whisper model.
    TypeError
        Labels that are not strings or integers; an unsupported model.
    """
    speech_encoder(model)  # checks it is a transformers model
    whisper = is_whisper(model)
    epochs = _positive(epochs, "epochs")
    lr = _positive(lr, "lr")
    batch_size = _positive(batch_size, "batch_size", integer=True)
    eval_batch_size = batch_size if eval_batch_size is None else _positive(eval_batch_size, "eval_batch_size", True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if context_seconds is not None and not whisper:
        raise ValueError(
            f"context_seconds is for Whisper models (a fixed 30 s window); {type(model).__name__} "
            "takes inputs of any length"
        )
    if layerdrop is not None and not 0.0 <= float(layerdrop) < 1.0:
        raise ValueError(f"layerdrop must be in [0, 1) or None, got {layerdrop!r}")
    if not 0.0 <= float(warmup_ratio) < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if not 0.0 <= float(weight_decay) < math.inf:  # NaN trained to NaN weights without a word
        raise ValueError(f"weight_decay must be >= 0 and finite, got {weight_decay!r}")
    out = None if out_dir is None else check_output_dir(out_dir, "out_dir", check_bool("overwrite", overwrite))
    callbacks = _check_callbacks(callbacks)

    # ---- audio, labels, split (all checked before training) --------------------------------
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        if audio.ndim != 2:
            raise ValueError(f"audio as one array must have shape (N, T), got shape {tuple(audio.shape)}")
    elif isinstance(audio, (str, bytes)) or not hasattr(audio, "__len__"):
        raise TypeError(f"audio must be a sequence of 1-D waveforms, got {type(audio).__name__}")
    if len(audio) == 0:
        raise ValueError("audio is empty")
    rate_of_files = getattr(audio, "sampling_rate", None)
    if rate_of_files is not None and int(rate_of_files) != int(sampling_rate):
        raise ValueError(f"audio is loaded at {rate_of_files} Hz but sampling_rate={sampling_rate}")
    ids, classes = encode_labels(labels, len(audio))
    train_idx, eval_idx = split_indices(ids, eval_split, groups=groups, seed=int(seed), classes=classes)
    waves = [_as_waveform(audio[i], i, _waveform_name(audio, i, "audio")) for i in range(len(audio))]
    lengths = np.array([w.shape[0] for w in waves], dtype=np.int64)

    # ---- the model and its inputs -----------------------------------------------------------
    clf = classification_model(model, classes, seed=int(seed))
    if context_seconds is not None:
        cut_whisper_context(clf, context_seconds)
    fe = _feature_extractor_for(clf, feature_extractor, sampling_rate)
    if whisper:
        fe = context_feature_extractor(clf, fe)
        n_context = whisper_context_samples(clf, fe)
        long = np.flatnonzero(lengths > n_context)
        if long.size and not truncate:
            raise ValueError(
                f"{long.size} clip(s) are longer than the Whisper context of {n_context} samples "
                f"({n_context / sampling_rate:g} s), e.g. {_waveform_name(audio, int(long[0]), 'audio')} with "
                f"{int(lengths[long[0]])}; pass truncate=True to cut them, or a longer context_seconds"
            )
        waves = [w[:n_context] for w in waves]
    else:
        frames = valid_frame_counts(clf, lengths)
        if np.any(frames < 1):
            bad = int(np.argmin(frames))
            raise ValueError(
                f"{_waveform_name(audio, bad, 'audio')} has {int(lengths[bad])} samples, too short for one frame"
            )
    frozen = freeze_front_end(clf, freeze_feature_encoder)
    if layerdrop is not None:
        for cfg_key in ("layerdrop", "encoder_layerdrop"):
            if hasattr(clf.config, cfg_key):
                setattr(clf.config, cfg_key, float(layerdrop))
        for module in speech_encoder(clf).modules():
            if isinstance(getattr(module, "layerdrop", None), float):
                module.layerdrop = float(layerdrop)
    params, trainable = count_parameters(clf)
    settings = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": int(seed),
        "eval_split": float(eval_split) if np.isscalar(eval_split) else "explicit",
        "groups": groups is not None,
        "context_seconds": context_seconds,
        "context_samples": n_context if whisper else None,
        "truncate": bool(truncate),
        "freeze_feature_encoder": frozen,
        "layerdrop": layerdrop,
        "warmup_ratio": float(warmup_ratio),
        "weight_decay": float(weight_decay),
        "sampling_rate": int(sampling_rate),
        "source_class": type(model).__name__,
        "n_blocks": num_blocks(clf),
    }

    # ---- training --------------------------------------------------------------------------
    from fastconvex.hf.train.trainer import predict_logits, train

    collate = _Collator(clf, fe, waves, ids, int(sampling_rate))
    steps_per_epoch = math.ceil(train_idx.size / batch_size)
    warmup_steps = int(round(warmup_ratio * math.ceil(epochs * steps_per_epoch)))
    train_seconds, steps = train(
        clf,
        _Clips(train_idx),
        collate,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=int(seed),
        warmup_steps=warmup_steps,
        weight_decay=float(weight_decay),
        progress=progress,
        callbacks=callbacks,
    )
    logits = predict_logits(clf, _Clips(eval_idx), collate, batch_size=eval_batch_size, seed=int(seed))
    clf.eval()
    predicted = logits.argmax(axis=-1)
    accuracy = float(np.mean(predicted == ids[eval_idx]))
    as_labels = np.asarray(classes)  # int64 or str: the original label values
    result = FinetuneResult(
        accuracy=accuracy,
        n_train=int(train_idx.size),
        n_eval=int(eval_idx.size),
        train_seconds=train_seconds,
        epochs=epochs,
        steps=steps,
        classes=list(classes),
        train_index=train_idx,
        eval_index=eval_idx,
        eval_labels=as_labels[ids[eval_idx]],
        eval_predictions=as_labels[predicted],
        params=params,
        trainable_params=trainable,
        model=clf,
        out_dir=out,
        settings=settings,
    )
    if out is not None:
        import json

        from fastconvex.hf.quiet import quiet_transformers

        with quiet_transformers(), staged_directory(out, replace=True) as tmp:  # no "Writing model shards" bar
            clf.save_pretrained(tmp)
            fe.save_pretrained(tmp)
            (tmp / RESULT_FILE).write_text(
                json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
            )
    return result
