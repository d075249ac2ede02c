"""A fresh classification head on a (pruned or full) speech encoder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fastconvex.hf.models.layout import (
    final_norm_module,
    is_whisper,
    model_device,
    speech_encoder,
)

__all__ = ["classification_model", "count_parameters", "freeze_front_end"]


def classification_model(model: nn.Module, classes: Sequence[Any], *, seed: int = 0) -> nn.Module:
    """A new audio-classification model whose encoder is an exact copy of ``model``'s.

    The class is what ``AutoModelForAudioClassification`` maps the config to
    (``Wav2Vec2ForSequenceClassification``, ``HubertForSequenceClassification``,
    ``WavLMForSequenceClassification``, ``Data2VecAudioForSequenceClassification``,
    ``WhisperForAudioClassification``), built from a copy of ``model.config`` with
    ``id2label``/``label2id`` from ``classes`` and the head on the last hidden state
    (``use_weighted_layer_sum=False``: the last block of a pruned model is the cut).
    The encoder weights are copied in exactly (``load_state_dict(strict=True)``); the
    head (projector + classifier) is freshly initialised from ``seed``.  A Whisper
    model keeps only its encoder (a ``WhisperForConditionalGeneration`` loses its
    decoder); its context (``max_source_positions``, possibly cut) is kept.  The new
    model is float32 whatever ``model``'s dtype (float16 weights convert exactly).
    ``model`` itself is not changed.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Wav2Vec2, HuBERT, WavLM, Data2VecAudio (base model or any head) or Whisper
        (``WhisperEncoder``, ``WhisperModel``, ``WhisperForConditionalGeneration``,
        ``WhisperForAudioClassification``), pruned by :func:`fastconvex.hf.prune` or not.
    classes : sequence of str or int
        Class ``k`` is ``classes[k]`` (``config.id2label[k]``).
    seed : int
        torch seed of the head's initialisation.

    Returns
    -------
    transformers.PreTrainedModel
        In eval mode, on ``model``'s device.
    """
    import transformers

    enc = speech_encoder(model)
    config = copy.deepcopy(enc.config if is_whisper(model) else model.config)
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: k for k, c in enumerate(classes)}
    config.num_labels = len(classes)
    config.use_weighted_layer_sum = False
    config.architectures = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # never a model's own code (a config with auto_map would otherwise prompt to run it)
            new = transformers.AutoModelForAudioClassification.from_config(config, trust_remote_code=False)
        new.to(torch.float32)  # a float16 checkpoint (config.dtype) trains in float32; the copy is exact
    except ValueError as exc:
        raise TypeError(
            f"model: transformers has no audio-classification head for {type(model).__name__} "
            f"(model_type {getattr(config, 'model_type', None)!r}): {exc}"
        ) from None
    new_enc = speech_encoder(new)
    if final_norm_module(model) is not None and isinstance(getattr(*final_norm_module(model)), nn.Identity):
        owner, attr = final_norm_module(new)  # pruned with final_norm="identity"
        setattr(owner, attr, nn.Identity())
    if is_whisper(model) and new_enc.embed_positions.num_embeddings != enc.embed_positions.num_embeddings:
        raise ValueError(
            f"model: the encoder has {enc.embed_positions.num_embeddings} positional embeddings but "
            f"config.max_source_positions is {config.max_source_positions}; cut the context with "
            "fastconvex.hf.cut_whisper_context, which keeps the two equal"
        )
    new_enc.load_state_dict(enc.state_dict(), strict=True)
    pruning = getattr(model, "fastconvex_pruning", None)
    if isinstance(pruning, dict):
        new.fastconvex_pruning = dict(pruning)
    new.to(model_device(model))
    new.eval()
    return new


def freeze_front_end(model: nn.Module, freeze: bool | None) -> bool:
    """Freeze the convolutional front end of a classification model; returns whether it did.

    ``None`` follows custom: the wav2vec2 family's feature encoder is frozen
    (``freeze_feature_encoder()``, as in Hugging Face's and the papers' recipes),
    Whisper's two input convolutions are trained.  ``True``/``False`` force it
    (Whisper: ``conv1`` and ``conv2``).  Whisper's positional embeddings are
    frozen by transformers itself.
    """
    whisper = is_whisper(model)
    if freeze is None:
        freeze = not whisper
    if not freeze:
        return False
    if whisper:
        enc = speech_encoder(model)
        for name in ("conv1", "conv2"):
            for p in getattr(enc, name).parameters():
                p.requires_grad_(False)
    else:
        model.freeze_feature_encoder()
    return True


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(total), int(trainable)
