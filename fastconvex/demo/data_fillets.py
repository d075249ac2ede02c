"""The ``speakers`` task: the voice-acted lines of Fish Fillets NG (Debian data packages)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fastconvex.demo.config import Dataset, cache_root, fetch_debian_packages, resample

FILLETS_PACKAGES = {"cs": "fillets-ng-data-cs", "nl": "fillets-ng-data-nl"}
FILLETS_SPEAKERS = {"m": "small-fish", "v": "big-fish"}
_FILLETS_NAME = re.compile(r"^[a-z0-9]+-(m|v)-[^/]+\.ogg$")
SPEAKERS_HINT = (
    "bash scripts/setup_demo.sh   (or: apt-get download fillets-ng-data-cs fillets-ng-data-nl "
    "&& dpkg -x each .deb into $FASTCONVEX_CACHE/fillets-ng/)"
)


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
    fetch_debian_packages({lang: FILLETS_PACKAGES[lang] for lang in langs}, dest, log)


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
                audio.append(resample(x, sr))
                labels.append(f"{lang}:{FILLETS_SPEAKERS[code]}")
                groups.append(p.stem)
                meta.append({"file": p.name, "seconds": round(float(info.duration), 3)})
                taken += 1
            if taken < 2:
                raise RuntimeError(f"too few usable {lang} files for speaker {code!r}")
    return Dataset(
        name="speakers",
        audio=audio,
        labels=labels,
        groups=groups,
        meta=meta,
        split_by="line",
        source="Fish Fillets NG voice acting (Debian fillets-ng-data-cs/-nl), 2 speakers per language",
    )
