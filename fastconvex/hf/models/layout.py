"""Where the transformer blocks of a Hugging Face speech model live.

Internal helpers shared by pooling and pruning.  Supported explicitly: Wav2Vec2,
HuBERT, WavLM, Data2VecAudio (and their stable-layer-norm "large" variants), the
Whisper encoder (``WhisperEncoder``, ``WhisperModel``,
``WhisperForConditionalGeneration``, ``WhisperForAudioClassification``), and the
classification/CTC heads on top of them.  Other models that return
``hidden_states`` go through a generic path.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = [
    "class_labels",
    "distinct_configs",
    "encoder_blocks",
    "final_layer_norm",
    "final_norm_module",
    "is_whisper",
    "layer_count_key",
    "num_blocks",
    "pooled_final_norm",
    "speech_encoder",
    "ties_last_hidden_state",
]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"model must be a Hugging Face transformers model (a torch.nn.Module with a .config), "
            f"got {type(model).__name__}"
        )


def is_whisper(model: nn.Module) -> bool:
    """True for Whisper models and the bare Whisper encoder."""
    return getattr(getattr(model, "config", None), "model_type", None) == "whisper"


def speech_encoder(model: nn.Module) -> nn.Module:
    """The module whose forward returns the speech ``hidden_states``.

    For the wav2vec2 family this is the base model (``model.base_model``: the
    feature encoder + transformer, without any head); for Whisper it is the
    ``WhisperEncoder``; for other encoder-decoder models ``model.get_encoder()``.
    """
    _check_model(model)
    if type(model).__name__.endswith("Encoder") and hasattr(model, "layers"):
        return model
    base = getattr(model, "base_model", model)
    if is_whisper(model) or getattr(model.config, "is_encoder_decoder", False):
        for cand in (model, base):
            enc = getattr(cand, "encoder", None)
            if isinstance(enc, nn.Module) and isinstance(getattr(enc, "layers", None), nn.ModuleList):
                return enc
        get_encoder = getattr(model, "get_encoder", None)
        if callable(get_encoder):
            enc = get_encoder()
            if isinstance(enc, nn.Module):
                return enc
    return base


_BLOCK_PATHS = ("encoder.layers", "layers", "encoder.layer", "layer", "transformer.layers")


def _resolve(module: nn.Module, path: str) -> Any:
    obj: Any = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def encoder_blocks(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The transformer blocks: ``(owner, attribute, blocks)`` with ``getattr(owner, attribute) is blocks``.

    Raises
    ------
    TypeError
        If no ``nn.ModuleList`` of transformer blocks can be found.
    """
    enc = speech_encoder(model)
    for path in _BLOCK_PATHS:
        blocks = _resolve(enc, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            owner_path, _, attr = path.rpartition(".")
            owner = _resolve(enc, owner_path) if owner_path else enc
            return owner, attr, blocks
    raise TypeError(
        f"model: cannot find the transformer blocks of {type(model).__name__} "
        f"(looked for {', '.join(_BLOCK_PATHS)} on {type(enc).__name__})"
    )


def num_blocks(model: nn.Module) -> int:
    """Number of transformer blocks (``len(hidden_states) - 1``)."""
    return len(encoder_blocks(model)[2])


def layer_count_key(model: nn.Module) -> str:
    """The config attribute holding the number of transformer blocks."""
    return "encoder_layers" if is_whisper(model) else "num_hidden_layers"


def final_norm_module(model: nn.Module) -> tuple[nn.Module, str] | None:
    """``(owner, "layer_norm")`` when the encoder applies a LayerNorm after its last block.

    That is the case for stable-layer-norm ("large") wav2vec2-family models
    (``config.do_stable_layer_norm=True``) and for the (pre-LN) Whisper encoder.
    Post-LN "base" models normalise inside each block and have no final norm.
    """
    owner, _, _ = encoder_blocks(model)
    if is_whisper(model) or getattr(model.config, "do_stable_layer_norm", False):
        norm = getattr(owner, "layer_norm", None)
        if isinstance(norm, (nn.LayerNorm, nn.Identity)):
            return owner, "layer_norm"
    return None


def final_layer_norm(model: nn.Module) -> nn.Module | None:
    """The encoder's final LayerNorm (see :func:`final_norm_module`), or None when it
    has none or a pruned model had it replaced by ``nn.Identity``."""
    site = final_norm_module(model)
    if site is None:
        return None
    norm = getattr(*site)
    return None if isinstance(norm, nn.Identity) else norm


def pooled_final_norm(model: nn.Module, final_norm: str) -> nn.Module | None:
    """The LayerNorm ``pooled_hidden_states(..., final_norm=...)`` applies to
    every hidden state: the final one with "apply" (an error when there is
    none), None with "raw" (with a warning when the model has one, since the
    hidden states below the last then lack it)."""
    if final_norm not in ("raw", "apply"):
        raise ValueError(f'final_norm must be "raw" or "apply", got {final_norm!r}')
    norm_layer = final_layer_norm(model)
    if final_norm == "apply":
        if norm_layer is None:
            raise ValueError(
                f'final_norm="apply": {type(model).__name__} has no final LayerNorm after its last block '
                "(post-LN models normalise inside each block; a pruned model may have had it replaced by "
                'nn.Identity); use final_norm="raw"'
            )
        return norm_layer
    if norm_layer is not None:
        warnings.warn(
            f"{type(model).__name__} is a pre-LN encoder: it applies a final LayerNorm after its "
            "last block, which the hidden states below the last lack (see docs/pipeline.md, "
            '"Large" models and Whisper: the final LayerNorm). '
            "Hidden state h equals the output of the model cut to h blocks only with "
            "prune(model, h, final_norm='identity'); with the default final_norm='keep' the "
            "pruned model outputs LayerNorm(hidden state h), which pooled_hidden_states(..., "
            'final_norm="apply") scores.',
            stacklevel=3,  # the caller of pooled_hidden_states
        )
    return None


def ties_last_hidden_state(model: nn.Module) -> bool:
    """Whether the model's ``hidden_states[-1]`` is its ``last_hidden_state``.

    transformers 5 records ``hidden_states`` with hooks on the blocks; some
    encoders (Whisper) then replace the last entry by ``last_hidden_state``
    (after the final LayerNorm), others (wav2vec2 family) do not.  The answer
    comes from ``config.tie_last_hidden_states`` when set, else from the
    ``capture_outputs`` decorator of the encoder's ``forward``.  Without that
    decorator (transformers 4), every encoder appends its output -- after the
    final LayerNorm, if it has one -- as the last hidden state: yes.
    """
    enc = speech_encoder(model)
    override = getattr(enc.config, "tie_last_hidden_states", None)
    if isinstance(override, bool):
        return override
    fn: Any = type(enc).forward
    for _ in range(16):
        if fn is None:
            break
        code = getattr(fn, "__code__", None)
        if code is not None and "tie_last_hidden_states" in code.co_freevars and fn.__closure__:
            value = fn.__closure__[code.co_freevars.index("tie_last_hidden_states")].cell_contents
            if isinstance(value, bool):
                return value
        fn = getattr(fn, "__wrapped__", None)
    return True


def distinct_configs(model: nn.Module) -> list[Any]:
    """Every distinct config object held by the model or its submodules."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and not isinstance(cfg, (dict, str)) and hasattr(cfg, "to_dict"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


def class_labels(config: Any, *, id2label: bool = True) -> list[Any]:
    """What a classifier with ``config`` predicts for class index k, at
    position k: its ``config.id2label`` names (``id2label``), else the ids."""
    n = int(config.num_labels)
    if not id2label:
        return list(range(n))
    id2 = getattr(config, "id2label", None) or {}
    missing = [i for i in range(n) if i not in id2 and str(i) not in id2]
    if missing:
        raise ValueError(f"model: config.id2label has no label for class id {missing[0]}")
    return [id2[i] if i in id2 else id2[str(i)] for i in range(n)]


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def is_audio_classifier(name: str) -> bool:
    """Whether a model class name (``type(model).__name__``, or an entry of a
    config's ``architectures``) is an audio classifier that
    :func:`fastconvex.hf.predict_from_layer` serves: a
    ``*ForSequenceClassification`` or ``WhisperForAudioClassification``."""
    return name.endswith("ForSequenceClassification") or name == "WhisperForAudioClassification"


def resolve_model_class(config: Any) -> Any:
    """The transformers class named in ``config.architectures`` (``AutoModel`` if none is found).

    Also finds classes that transformers does not export at the top level, such
    as ``WhisperEncoder`` (looked up in ``transformers.models.<type>.modeling_<type>``).
    """
    import contextlib
    import importlib

    import transformers

    model_type = str(getattr(config, "model_type", "") or "").replace("-", "_")
    places: list[Any] = [transformers]
    for name in (f"transformers.models.{model_type}.modeling_{model_type}",):
        with contextlib.suppress(ImportError):
            places.append(importlib.import_module(name))
    for arch in getattr(config, "architectures", None) or []:
        for place in places:
            cls = getattr(place, arch, None)
            if isinstance(cls, type):
                return cls
    return transformers.AutoModel
