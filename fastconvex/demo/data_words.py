"""The ``words`` task: ten command words spoken by espeak-ng voices in sox noise."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastconvex.demo.config import SAMPLE_RATE, Dataset

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# espeak-ng's own (non-mbrola) English voices
ESPEAK_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# voice variants shipped with espeak-ng (``espeak-ng --voices=variant``)
ESPEAK_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "croak",
    "adam",
    "Alex",
    "Alicia",
    "Andy",
    "Annie",
    "aunty",
    "belinda",
    "benjamin",
    "david",
    "ed",
    "edward",
    "Gene",
    "Hugo",
    "iven",
    "john",
    "linda",
    "max",
    "Michael",
    "paul",
    "quincy",
    "rob",
    "robert",
    "steph",
    "grandpa",
    "grandma",
    "norbert",
    "sandro",
    "shelby",
    "travis",
    "victor",
    "zac",
)
NOISES = ("whitenoise", "pinknoise", "brownnoise")
SNRS_DB = (20.0, 10.0, 5.0, 0.0)
CLIP_SECONDS = 1.5
WORDS_HINT = "apt-get install espeak-ng sox   (or: bash scripts/setup_demo.sh)"


def _sox_noise_files(workdir: Path, seconds: float = 30.0) -> dict[str, tuple[Path, float]]:
    """One long, repeatable noise file per colour (sox -R), and its RMS."""
    import soundfile as sf

    out = {}
    for kind in NOISES:
        p = workdir / f"{kind}.wav"
        subprocess.run(
            [
                "sox",
                "-R",
                "-D",
                "-n",
                "-r",
                str(SAMPLE_RATE),
                "-c",
                "1",
                "-b",
                "16",
                str(p),
                "synth",
                f"{seconds}",
                kind,
            ],
            check=True,
            capture_output=True,
        )
        x, _ = sf.read(str(p), dtype="float32")
        out[kind] = (p, float(np.sqrt(np.mean(x.astype(np.float64) ** 2))))
    return out


def _words_plan(n_voices: int, seed: int) -> list[dict]:
    voices = []
    for v in range(n_voices):
        rng = np.random.default_rng([seed, 1, v])  # one stream per voice: a prefix of voices is stable
        voices.append(
            {
                "voice_id": f"v{v:03d}",
                "voice": ESPEAK_VOICES[int(rng.integers(len(ESPEAK_VOICES)))],
                "variant": ESPEAK_VARIANTS[int(rng.integers(len(ESPEAK_VARIANTS)))],
                "speed": int(rng.integers(110, 221)),
                "pitch": int(rng.integers(15, 86)),
            }
        )
    plan = []
    for i, v in enumerate(voices):
        rng = np.random.default_rng([seed, 2, i])
        for w in WORDS:
            plan.append(
                {
                    **v,
                    "word": w,
                    "noise": NOISES[int(rng.integers(len(NOISES)))],
                    "snr_db": float(SNRS_DB[int(rng.integers(len(SNRS_DB)))]),
                    "offset": float(rng.uniform(0.0, 1.0)),  # fraction of the free room
                    "noise_start": float(rng.uniform(0.0, 28.0)),
                }
            )
    return plan


def _make_word_clip(item: dict, workdir: Path, noises: dict[str, tuple[Path, float]], idx: int) -> np.ndarray:
    import soundfile as sf

    raw = workdir / f"raw{idx}.wav"
    speech = workdir / f"sp{idx}.wav"
    mixed = workdir / f"mix{idx}.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            f"{item['voice']}+{item['variant']}",
            "-s",
            str(item["speed"]),
            "-p",
            str(item["pitch"]),
            "-w",
            str(raw),
            item["word"],
        ],
        check=True,
        capture_output=True,
    )
    # resample to 16 kHz with sox, place at a random offset in a 1.5 s clip
    subprocess.run(
        ["sox", "-R", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(speech)],
        check=True,
        capture_output=True,
    )
    x, _ = sf.read(str(speech), dtype="float32")
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
        [
            "sox",
            "-R",
            "-D",
            "-m",
            "-v",
            "1",
            str(speech),
            "-v",
            f"{gain:.6f}",
            f"|sox -R -D {npath} -p trim {item['noise_start']:.4f} {CLIP_SECONDS}",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            str(mixed),
            "trim",
            "0",
            f"{CLIP_SECONDS}",
        ],
        check=True,
        capture_output=True,
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
