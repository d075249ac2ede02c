"""Hugging Face speech models: layer embeddings, the cut, pruning (extra ``[hf]``).

The paper's pipeline (Dorszewski, Tětková & Hansen, arXiv 2408.11858)::

    import fastconvex as fc
    from fastconvex import hf

    states = hf.pooled_hidden_states(model, waveforms, feature_extractor=fe)  # one (N, D) per layer
    scores = fc.layer_scores(states, labels)
    keep = hf.choose_cut(scores)                  # hidden state h => keep blocks 0..h-1
    hf.prune(model, keep)                         # in place; then fine-tune
    hf.save_pruned(model, "pruned/", feature_extractor=fe, scores=scores, source=name)
    result = hf.finetune(model, waveforms, labels, out_dir="finetuned/")  # Trainer; held-out accuracy

Whisper pads every input to 30 s; ``hf.cut_whisper_context(model, 2)`` (or
``finetune(..., context_seconds=2)``) cuts its encoder's window to the clips.

Importing this package is cheap: torch and transformers are imported on first
use of a function, never by ``import fastconvex``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AudioFiles",
    "ConvexityCallback",
    "ConvexityPoint",
    "FinetuneResult",
    "LayerPredictor",
    "PooledHiddenStates",
    "choose_cut",
    "classification_model",
    "context_feature_extractor",
    "cut_whisper_context",
    "find_audio",
    "finetune",
    "hidden_state_sequences",
    "load_audio",
    "load_pruned",
    "num_blocks",
    "package_versions",
    "pooled_hidden_states",
    "predict_from_layer",
    "prune",
    "save_pruned",
    "valid_frame_counts",
]

_WHERE = {
    "ConvexityCallback": "train.callback",
    "ConvexityPoint": "train.callback",
    "FinetuneResult": "train.finetune",
    "finetune": "train.finetune",
    "classification_model": "models.heads",
    "context_feature_extractor": "whisper.context",
    "cut_whisper_context": "whisper.context",
    "PooledHiddenStates": "embed.pooling",
    "pooled_hidden_states": "embed.pooling",
    "valid_frame_counts": "embed.pooling",
    "choose_cut": "models.prune",
    "prune": "models.prune",
    "save_pruned": "models.save",
    "load_pruned": "models.save",
    "package_versions": "models.save",
    "num_blocks": "models.layout",
    "AudioFiles": "embed.audio",
    "hidden_state_sequences": "embed.sequences",
    "LayerPredictor": "models.predict",
    "predict_from_layer": "models.predict",
    "find_audio": "embed.audio",
    "load_audio": "embed.audio",
}

if TYPE_CHECKING:  # pragma: no cover
    from fastconvex.hf.embed.audio import AudioFiles, find_audio, load_audio
    from fastconvex.hf.embed.pooling import (
        PooledHiddenStates,
        pooled_hidden_states,
        valid_frame_counts,
    )
    from fastconvex.hf.embed.sequences import hidden_state_sequences
    from fastconvex.hf.models.heads import classification_model
    from fastconvex.hf.models.layout import num_blocks
    from fastconvex.hf.models.predict import LayerPredictor, predict_from_layer
    from fastconvex.hf.models.prune import choose_cut, prune
    from fastconvex.hf.models.save import load_pruned, package_versions, save_pruned
    from fastconvex.hf.train.callback import ConvexityCallback, ConvexityPoint
    from fastconvex.hf.train.finetune import FinetuneResult, finetune
    from fastconvex.hf.whisper.context import (
        context_feature_extractor,
        cut_whisper_context,
    )


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fastconvex.hf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
