"""CTranslate2 Whisper tensors -> a transformers Whisper model, its config and its
generation config; the name mapping is in :mod:`fastconvex.hf.ct2_whisper`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.hf.whisper.ct2_format import CT2Model, read_ct2_model_bin

__all__ = ["convert_ct2_whisper", "whisper_config_from_ct2", "whisper_generation_config", "whisper_lang_to_id"]

# English-only ("*.en") Whisper special tokens; the multilingual ones shift by one.
_EN_TOKENS = {
    "eos": 50256,
    "sot": 50257,
    "prev_sot": 50360,
    "no_timestamps": 50362,
}
_MULTI_TOKENS = {
    "eos": 50257,
    "sot": 50258,
    "prev_sot": 50361,
    "no_timestamps": 50363,
    "translate": 50358,
    "transcribe": 50359,
}


# --------------------------------------------------------------------------- mapping


def _weight(m: CT2Model, prefix: str) -> np.ndarray:
    w = m.get(prefix + "/weight")
    if w.dtype.kind in "iu":
        scale_name = prefix + "/weight_scale"
        if scale_name not in m:
            raise ValueError(f"quantized weight {prefix}/weight has no weight_scale")
        scale = m.get(scale_name).astype(np.float32)
        w = w.astype(np.float32) / (scale.reshape(-1, *([1] * (w.ndim - 1))) if scale.size > 1 else scale)
    return w.astype(np.float32)


def _f32(m: CT2Model, name: str) -> np.ndarray:
    return m.get(name).astype(np.float32)


def _count_layers(m: CT2Model, side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in m:
        n += 1
    return n


def _ct2_config(model_dir: Path) -> dict:
    p = model_dir / "config.json"
    return json.loads(p.read_text()) if p.exists() else {}


def whisper_config_from_ct2(m: CT2Model, ct2_config: Mapping | None = None):
    """A ``WhisperConfig`` matching the tensors of a parsed CT2 Whisper model."""
    from transformers import WhisperConfig

    if not m.spec.startswith("Whisper"):
        raise ValueError(f"not a CTranslate2 Whisper model (spec {m.spec!r})")
    ct2_config = dict(ct2_config or {})
    vocab, d_model = m.get("decoder/embeddings/weight").shape
    n_mels = m.get("encoder/conv1/weight").shape[1]
    enc_layers, dec_layers = _count_layers(m, "encoder"), _count_layers(m, "decoder")
    multilingual = vocab >= 51865
    tok = _MULTI_TOKENS if multilingual else _EN_TOKENS
    return WhisperConfig(
        vocab_size=int(vocab),
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=int(m.scalar("encoder/num_heads")),
        decoder_attention_heads=int(m.scalar("decoder/num_heads")),
        encoder_ffn_dim=int(m.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(m.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(m.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(m.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        decoder_start_token_id=tok["sot"],
        pad_token_id=tok["eos"],
        bos_token_id=tok["eos"],
        eos_token_id=tok["eos"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])) or None,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, tok["eos"]])),
        tie_word_embeddings=True,
        scale_embedding=bool(m.scalar("decoder/scale_embeddings", 0)),
    )


def _state_dict_from_ct2(m: CT2Model, config) -> dict[str, np.ndarray]:
    d = config.d_model
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str, bias: bool = True):
        sd[dst + ".weight"] = _weight(m, src)
        if bias:
            sd[dst + ".bias"] = _f32(m, src + "/bias")

    def norm(dst: str, src: str):
        sd[dst + ".weight"] = _f32(m, src + "/gamma")
        sd[dst + ".bias"] = _f32(m, src + "/beta")

    def split(dst_prefix: str, src: str, names: list[str]):
        w, b = _weight(m, src), _f32(m, src + "/bias")
        if w.shape[0] != d * len(names):
            raise ValueError(f"{src}: fused weight has {w.shape[0]} rows, expected {d * len(names)}")
        for i, nm in enumerate(names):
            sd[f"{dst_prefix}.{nm}.weight"] = w[i * d : (i + 1) * d]
            if nm != "k_proj":  # Whisper's k_proj has no bias
                sd[f"{dst_prefix}.{nm}.bias"] = b[i * d : (i + 1) * d]

    e = "model.encoder"
    linear(f"{e}.conv1", "encoder/conv1")
    linear(f"{e}.conv2", "encoder/conv2")
    sd[f"{e}.embed_positions.weight"] = _f32(m, "encoder/position_encodings/encodings")
    norm(f"{e}.layer_norm", "encoder/layer_norm")
    for i in range(config.encoder_layers):
        s, t = f"encoder/layer_{i}", f"{e}.layers.{i}"
        split(f"{t}.self_attn", f"{s}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{t}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{t}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        linear(f"{t}.fc1", f"{s}/ffn/linear_0")
        linear(f"{t}.fc2", f"{s}/ffn/linear_1")
        norm(f"{t}.final_layer_norm", f"{s}/ffn/layer_norm")

    dd = "model.decoder"
    sd[f"{dd}.embed_tokens.weight"] = _weight(m, "decoder/embeddings")
    sd[f"{dd}.embed_positions.weight"] = _f32(m, "decoder/position_encodings/encodings")
    norm(f"{dd}.layer_norm", "decoder/layer_norm")
    for i in range(config.decoder_layers):
        s, t = f"decoder/layer_{i}", f"{dd}.layers.{i}"
        split(f"{t}.self_attn", f"{s}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{t}.self_attn.out_proj", f"{s}/self_attention/linear_1")
        norm(f"{t}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
        linear(f"{t}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        split(f"{t}.encoder_attn", f"{s}/attention/linear_1", ["k_proj", "v_proj"])
        linear(f"{t}.encoder_attn.out_proj", f"{s}/attention/linear_2")
        norm(f"{t}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        linear(f"{t}.fc1", f"{s}/ffn/linear_0")
        linear(f"{t}.fc2", f"{s}/ffn/linear_1")
        norm(f"{t}.final_layer_norm", f"{s}/ffn/layer_norm")
    if "decoder/projection/weight" in m:
        proj = _weight(m, "decoder/projection")
        if not np.array_equal(proj, sd[f"{dd}.embed_tokens.weight"]):
            raise ValueError("decoder/projection differs from decoder/embeddings; untied Whisper is not supported")
    return sd


def whisper_lang_to_id(model_dir: str | os.PathLike, ct2_config: Mapping | None = None) -> dict[str, int]:
    """``{"<|en|>": 50259, ...}``: the language tokens of a multilingual CT2 Whisper
    directory (the ids in ``config.json``'s ``lang_ids``, their text from
    ``tokenizer.json``'s added tokens). Empty for English-only models."""
    ct2_config = dict(ct2_config if ct2_config is not None else _ct2_config(Path(model_dir)))
    ids = [int(i) for i in ct2_config.get("lang_ids", [])]
    tok_file = Path(model_dir) / "tokenizer.json"
    if not ids or not tok_file.is_file():
        return {}
    added = {int(t["id"]): t["content"] for t in json.loads(tok_file.read_text()).get("added_tokens", [])}
    missing = [i for i in ids if i not in added]
    if missing:
        raise ValueError(f"{tok_file}: language token ids {missing[:5]} of config.json are not in the tokenizer")
    return {added[i]: i for i in ids}


def whisper_generation_config(config, ct2_config: Mapping | None = None, lang_to_id: Mapping[str, int] | None = None):
    """A greedy ``GenerationConfig`` for a Whisper model without the hub's file.

    English-only models (``vocab_size`` 51864, e.g. tiny.en) take no language or
    task token: the prompt is ``<|startoftranscript|><|notimestamps|>``. Multilingual
    ones get ``task_to_id`` and ``lang_to_id`` (:func:`whisper_lang_to_id`), so
    ``generate(language="fr")`` forces a language and ``generate()`` detects it.
    """
    from transformers import GenerationConfig

    ct2_config = dict(ct2_config or {})
    multilingual = config.vocab_size >= 51865
    tok = _MULTI_TOKENS if multilingual else _EN_TOKENS
    kw: dict[str, Any] = dict(
        decoder_start_token_id=tok["sot"],
        bos_token_id=tok["eos"],
        eos_token_id=tok["eos"],
        pad_token_id=tok["eos"],
        no_timestamps_token_id=tok["no_timestamps"],
        prev_sot_token_id=tok["prev_sot"],
        is_multilingual=multilingual,
        return_timestamps=False,
        max_initial_timestamp_index=50,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids", config.suppress_tokens or [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, tok["eos"]])),
        do_sample=False,
        num_beams=1,
    )
    heads = ct2_config.get("alignment_heads")
    if heads:
        kw["alignment_heads"] = [list(h) for h in heads]
    if multilingual:
        kw["task_to_id"] = {"translate": tok["translate"], "transcribe": tok["transcribe"]}
        if lang_to_id:
            kw["lang_to_id"] = dict(lang_to_id)
    return GenerationConfig(**kw)


def convert_ct2_whisper(model_dir: str | os.PathLike, *, dtype=None):
    """Build a ``WhisperForConditionalGeneration`` from a CT2 Whisper directory (no cache)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model_dir = Path(model_dir)
    bin_path = model_dir / "model.bin"
    if not bin_path.is_file():
        raise FileNotFoundError(f"{model_dir} has no model.bin (not a CTranslate2 model directory)")
    ct2_cfg = _ct2_config(model_dir)
    m = read_ct2_model_bin(bin_path)
    config = whisper_config_from_ct2(m, ct2_cfg)
    sd = _state_dict_from_ct2(m, config)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    expected = set(model.state_dict().keys()) - {"proj_out.weight"}
    missing = expected - set(tensors)
    unexpected = set(tensors) - expected
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    model = model.to(dtype or torch.float32)
    model.fastconvex_ct2_dtype = str(m.get("decoder/embeddings/weight").dtype)
    model.generation_config = whisper_generation_config(config, ct2_cfg, whisper_lang_to_id(model_dir, ct2_cfg))
    model.eval()
    return model
