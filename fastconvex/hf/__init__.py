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
    "FinetuneResult",
    "classification_model",
    "context_feature_extractor",
    "cut_whisper_context",
    "finetune",
    "LayerPredictor",
    "PooledHiddenStates",
    "choose_cut",
    "find_audio",
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
    "FinetuneResult": "_finetune",
    "finetune": "_finetune",
    "classification_model": "_head",
    "context_feature_extractor": "_context",
    "cut_whisper_context": "_context",
    "PooledHiddenStates": "_pooling",
    "pooled_hidden_states": "_pooling",
    "valid_frame_counts": "_pooling",
    "choose_cut": "_prune",
    "prune": "_prune",
    "save_pruned": "_prune_io",
    "load_pruned": "_prune_io",
    "package_versions": "_prune_io",
    "num_blocks": "_models",
    "AudioFiles": "_audio",
    "hidden_state_sequences": "_sequences",
    "LayerPredictor": "_predict",
    "predict_from_layer": "_predict",
    "find_audio": "_audio",
    "load_audio": "_audio",
}

if TYPE_CHECKING:  # pragma: no cover
    from ._audio import AudioFiles, find_audio, load_audio
    from ._context import context_feature_extractor, cut_whisper_context
    from ._finetune import FinetuneResult, finetune
    from ._head import classification_model
    from ._models import num_blocks
    from ._pooling import PooledHiddenStates, pooled_hidden_states, valid_frame_counts
    from ._predict import LayerPredictor, predict_from_layer
    from ._prune import choose_cut, prune
    from ._prune_io import load_pruned, package_versions, save_pruned
    from ._sequences import hidden_state_sequences


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
