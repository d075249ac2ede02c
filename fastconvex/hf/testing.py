"""Tiny randomly initialised speech models for tests and examples (no downloads).

>>> from fastconvex.hf.testing import tiny_model
>>> model, fe = tiny_model("wav2vec2", layers=3)        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAMILIES", "tiny_config", "tiny_feature_extractor", "tiny_model"]

#: Families with a tiny config: name -> (config class, base model class).
FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")

_CONV = dict(conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8))  # 20 samples per frame


def tiny_config(
    family: str,
    *,
    layers: int = 3,
    hidden_size: int = 32,
    stable_layer_norm: bool = False,
    feat_extract_norm: str = "layer",
    **overrides: Any,
) -> Any:
    """A tiny transformers config of one family (hidden size 32, a two-layer conv stack).

    Parameters
    ----------
    family : {"wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"}
    layers : int
        Transformer blocks.
    hidden_size : int
    stable_layer_norm : bool
        wav2vec2 family: the pre-LN "large" layout (``do_stable_layer_norm``).
    feat_extract_norm : {"layer", "group"}
        wav2vec2/HuBERT/WavLM: the conv feature encoder's norm ("group" as in the base models).
    **overrides
        Further config fields.
    """
    import transformers

    common = dict(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.1,
        mask_time_prob=0.0,
        vocab_size=12,
        **_CONV,
    )
    if family in ("wav2vec2", "hubert", "wavlm"):
        config_class = {
            "wav2vec2": transformers.Wav2Vec2Config,
            "hubert": transformers.HubertConfig,
            "wavlm": transformers.WavLMConfig,
        }[family]
        extra = {"num_buckets": 16, "max_bucket_distance": 64} if family == "wavlm" else {}
        cfg = config_class(
            **common,
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2,
            feat_extract_norm=feat_extract_norm,
            do_stable_layer_norm=stable_layer_norm,
            conv_bias=True,
            **extra,
        )
    elif family == "data2vec-audio":
        cfg = transformers.Data2VecAudioConfig(
            **common,
            num_conv_pos_embeddings=2,
            conv_pos_kernel_size=5,
            num_conv_pos_embedding_groups=2,
            conv_bias=True,
        )
    elif family == "whisper":
        cfg = transformers.WhisperConfig(
            d_model=hidden_size,
            encoder_layers=layers,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=2 * hidden_size,
            decoder_ffn_dim=2 * hidden_size,
            num_mel_bins=8,
            max_source_positions=50,  # 1 s windows: 100 mel frames -> 50 encoder frames
            max_target_positions=16,
            vocab_size=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            encoder_layerdrop=0.1,
            num_labels=3,
        )
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_feature_extractor(family: str, *, feat_extract_norm: str = "layer") -> Any:
    """The feature extractor matching :func:`tiny_config`."""
    import transformers

    if family == "whisper":
        return transformers.WhisperFeatureExtractor(feature_size=8, sampling_rate=16000, hop_length=160, chunk_length=1)
    takes_mask = family == "data2vec-audio" or feat_extract_norm != "group"
    return transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=takes_mask
    )


def tiny_model(
    family: str,
    *,
    head: str | None = None,
    seed: int = 0,
    weighted_layer_sum: bool = True,
    **config_kwargs: Any,
) -> tuple[Any, Any]:
    """A tiny model with random weights (eval mode) and its feature extractor.

    Parameters
    ----------
    family : str
        See :func:`tiny_config`.
    head : {None, "sequence", "ctc", "encoder", "whisper-model", "whisper-ctc"}
        None: the base model (for Whisper: ``WhisperEncoder``); "sequence": the
        ``...ForSequenceClassification`` (Whisper: ``WhisperForAudioClassification``)
        with ``use_weighted_layer_sum=True``; "ctc": ``...ForCTC`` (Whisper:
        ``WhisperForConditionalGeneration``); "whisper-model": ``WhisperModel``.
    seed : int
        torch seed for the random weights.
    weighted_layer_sum : bool
        "sequence" head: ``config.use_weighted_layer_sum`` (default True);
        False gives the head on the last hidden state alone, as
        :func:`fastconvex.hf.predict_from_layer` needs.
    **config_kwargs
        Passed to :func:`tiny_config`.

    Returns
    -------
    (model, feature_extractor)
    """
    import torch
    import transformers

    cfg = tiny_config(family, **config_kwargs)
    prefix = {
        "wav2vec2": "Wav2Vec2",
        "hubert": "Hubert",
        "wavlm": "WavLM",
        "data2vec-audio": "Data2VecAudio",
        "whisper": "Whisper",
    }[family]
    if head == "sequence":
        cfg.use_weighted_layer_sum = weighted_layer_sum
        cfg.num_labels = 3
        cls_name = "WhisperForAudioClassification" if family == "whisper" else f"{prefix}ForSequenceClassification"
    elif head == "ctc":
        cls_name = "WhisperForConditionalGeneration" if family == "whisper" else f"{prefix}ForCTC"
    elif head == "whisper-model":
        cls_name = "WhisperModel"
    elif head is None:
        cls_name = "WhisperEncoder" if family == "whisper" else f"{prefix}Model"
    else:
        raise ValueError(f"head must be None, 'sequence', 'ctc' or 'whisper-model', got {head!r}")
    torch.manual_seed(seed)
    if cls_name == "WhisperEncoder":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as cls
    else:
        cls = getattr(transformers, cls_name)
    model = cls(cfg)
    model.eval()
    return model, tiny_feature_extractor(family, feat_extract_norm=config_kwargs.get("feat_extract_norm", "layer"))
