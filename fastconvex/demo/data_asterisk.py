"""Real telephone prompts by credited human speakers: the ``asterisk-speaker``,
``asterisk-language`` and ``asterisk-language-unseen`` tasks (docs/demo-tasks.md).

Debian ships the Asterisk PBX's voice prompts (8 kHz mono, the same prompt names,
e.g. ``vm-goodbye`` or ``digits/7``, across languages) in these packages, fetched here
with ``apt-get download`` + ``dpkg-deb -x`` into ``cache_root()/asterisk/<package>/``
(nothing is installed). Who speaks is taken from each package's own credits file;
:func:`credited_speaker` checks the quoted text before any clip is used
(``copyright`` is ``usr/share/doc/<package>/copyright``; sizes are the ``.deb``):

- ``asterisk-core-sounds-en-wav`` (18.3 MB), ``en_US_f_Allison``, en, ``allison-smith``:
  ``copyright`` lines 6-10, "Files: *" ... "Recorded by: Allison Smith".
- ``asterisk-core-sounds-es-wav`` (23.8 MB), ``es_MX_f_Allison``, es, ``allison-smith``:
  the same ``Files: *`` stanza (the file has no ``es-*`` stanza).
- ``asterisk-core-sounds-fr-wav`` (18.5 MB), ``fr_CA_f_June``, fr, ``june-wallack``:
  lines 17-22, "Files: fr-*" ... "Recorded by: June Wallack".
- ``asterisk-core-sounds-it-wav`` (18.3 MB), ``it_IT_m_Carlo``, it, ``carlo-flora``:
  lines 42-46, "Files: it-*" ... "Recorded by: Carlo Flora".
- ``asterisk-core-sounds-ru-wav`` (18.8 MB), ``ru_RU_f_IvrvoiceRU``, ru, ``ivrvoice-ru``:
  lines 34-39, "Files: ru-*" ... "Provided by: Maxim Topal ... www.ivrvoice.ru". The
  provider is credited, the voice is not named; the directory says one female voice.
- ``asterisk-prompt-it-menardi-wav`` (18.8 MB), ``it_IT_f_Menardi``, it, ``menardi``:
  line 5, "Marco Menardi.e Paola Dal Zot"; line 19 quotes the LICENSE, "fatti da me e
  mia moglie". One female voice (directory name).
- ``asterisk-prompt-es-co`` (1.0 MB, raw GSM), ``es``, es, ``july-jimenez``: ``LEEME``
  line 8 (Latin-1), "Sonidos grabados por Avatar Ltda. con la voz de July E. Jiménez".
- ``asterisk-prompt-fr-armelle`` (1.5 MB, raw GSM), ``fr``, fr, ``armelle-desjardins``:
  ``copyright`` line 8, "Voice actor: Armelle Desjardins".

Seven persons, five languages; Allison Smith speaks English and Spanish, so speaker
and language compete: the speaker task must put her English and Spanish clips in one
class, the language task must separate them and join each language's two voices.

Clips: 0.5-3 s by default (the fine-tuning context is cut to the audio, about 2-3 s),
read with soundfile (WAV PCM-16, or raw GSM 06.10 for ``.gsm``) and resampled
8 kHz -> 16 kHz with :func:`fastconvex.demo.config.resample`. ``silence/*`` files are
skipped. Sampling is balanced (``n_per_class`` per label, spread evenly over the label's
voices) and deterministic from ``seed``: one seeded order of all prompt names, each
voice taking its eligible prompts in that order, so the same prompts recur across voices.

Split: ``groups`` is the prompt name, shared by every voice that says it, so
:func:`fastconvex.demo.probe.split_indices` holds out *whole prompt names*: a held-out
sentence is never heard in training, by any speaker or in any language.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastconvex.demo.config import Dataset, cache_root, fetch_debian_packages, resample

__all__ = [
    "ASTERISK_HINT",
    "ASTERISK_TASKS",
    "ASTERISK_VOICES",
    "UNSEEN_TRAIN_VOICES",
    "AsteriskVoice",
    "asterisk_roots",
    "asterisk_split",
    "credited_speaker",
    "fetch_asterisk",
    "find_asterisk_clips",
    "load_asterisk",
    "load_asterisk_language",
    "load_asterisk_language_unseen",
    "load_asterisk_speaker",
]


@dataclass(frozen=True)
class AsteriskVoice:
    """One voice of one Debian prompt package, and where its credits name the speaker."""

    package: str
    sound_dir: str  # under usr/share/asterisk/sounds/
    ext: str  # "wav" or "gsm"
    language: str  # ISO 639-1
    speaker: str  # class label of the speaker task (one per person)
    credit_file: str  # path inside the package tree
    credit: str  # regular expression that must match the credits file


_CORE = "usr/share/doc/{}/copyright"
ASTERISK_VOICES: tuple[AsteriskVoice, ...] = (
    AsteriskVoice(
        "asterisk-core-sounds-en-wav",
        "en_US_f_Allison",
        "wav",
        "en",
        "allison-smith",
        _CORE.format("asterisk-core-sounds-en-wav"),
        r"Files: \*\n(?:.*\n){1,3}\s*Allison Smith",
    ),
    AsteriskVoice(
        "asterisk-core-sounds-es-wav",
        "es_MX_f_Allison",
        "wav",
        "es",
        "allison-smith",
        _CORE.format("asterisk-core-sounds-es-wav"),
        r"Files: \*\n(?:.*\n){1,3}\s*Allison Smith",
    ),
    AsteriskVoice(
        "asterisk-core-sounds-fr-wav",
        "fr_CA_f_June",
        "wav",
        "fr",
        "june-wallack",
        _CORE.format("asterisk-core-sounds-fr-wav"),
        r"Files: fr-\*\n(?:.*\n){1,4}\s*June Wallack",
    ),
    AsteriskVoice(
        "asterisk-core-sounds-it-wav",
        "it_IT_m_Carlo",
        "wav",
        "it",
        "carlo-flora",
        _CORE.format("asterisk-core-sounds-it-wav"),
        r"Files: it-\*\n(?:.*\n){1,4}\s*Carlo Flora",
    ),
    AsteriskVoice(
        "asterisk-core-sounds-ru-wav",
        "ru_RU_f_IvrvoiceRU",
        "wav",
        "ru",
        "ivrvoice-ru",
        _CORE.format("asterisk-core-sounds-ru-wav"),
        r"Files: ru-\*\n(?:.*\n){1,3}\s*Provided by: Maxim Topal",
    ),
    AsteriskVoice(
        "asterisk-prompt-it-menardi-wav",
        "it_IT_f_Menardi",
        "wav",
        "it",
        "menardi",
        _CORE.format("asterisk-prompt-it-menardi-wav"),
        r"Copyright:.*Marco Menardi.*Paola Dal Zot",
    ),
    AsteriskVoice(
        "asterisk-prompt-es-co",
        "es",
        "gsm",
        "es",
        "july-jimenez",
        "usr/share/doc/asterisk-prompt-es-co/LEEME",
        r"con la voz de July E\. Jim",
    ),
    AsteriskVoice(
        "asterisk-prompt-fr-armelle",
        "fr",
        "gsm",
        "fr",
        "armelle-desjardins",
        _CORE.format("asterisk-prompt-fr-armelle"),
        r"Voice actor: Armelle Desjardins",
    ),
)

ASTERISK_HINT = (
    "bash scripts/setup_demo.sh   (or: apt-get download "
    + " ".join(sorted({v.package for v in ASTERISK_VOICES}))
    + " && dpkg -x each .deb into $FASTCONVEX_CACHE/asterisk/<package>/)"
)
_SOUNDS = Path("usr/share/asterisk/sounds")


@dataclass(frozen=True)
class AsteriskClip:
    voice: AsteriskVoice
    prompt: str  # path under the sound dir, without extension, "/"-separated
    path: Path
    seconds: float


def asterisk_roots(extra: Sequence[Path] = ()) -> list[Path]:
    """Directories holding one unpacked package per sub-directory named after it
    (``extra``, ``$FASTCONVEX_ASTERISK``, then ``cache_root()/asterisk``)."""
    roots = list(extra)
    env = os.environ.get("FASTCONVEX_ASTERISK")
    if env:
        roots.append(Path(env))
    roots.append(cache_root() / "asterisk")
    return roots


def _package_tree(voice: AsteriskVoice, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        tree = Path(root) / voice.package
        if (tree / _SOUNDS / voice.sound_dir).is_dir():
            return tree
    return None


def credited_speaker(tree: Path, voice: AsteriskVoice) -> str:
    """The credits text naming ``voice``'s speaker in the unpacked package ``tree``.

    Raises ``ValueError`` when the credits file is missing or does not credit the
    speaker the table says (the label is never guessed)."""
    path = Path(tree) / voice.credit_file
    if not path.is_file():
        raise ValueError(f"{voice.package}: no credits file {voice.credit_file}; cannot name its speaker")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # LEEME of asterisk-prompt-es-co is Latin-1
    found = re.search(voice.credit, text)
    if found is None:
        raise ValueError(f"{voice.package}: {voice.credit_file} does not credit {voice.speaker} (/{voice.credit}/)")
    return " ".join(found.group(0).split())


def _read(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if path.suffix == ".gsm":  # raw GSM 06.10, 8 kHz mono (33-byte frames of 160 samples)
        return sf.read(str(path), dtype="float32", format="RAW", subtype="GSM610", samplerate=8000, channels=1)
    x, sr = sf.read(str(path), dtype="float32")
    return (x.mean(axis=1) if x.ndim > 1 else x), sr


def _seconds(path: Path) -> float:
    import soundfile as sf

    if path.suffix == ".gsm":
        return path.stat().st_size // 33 * 160 / 8000.0
    return float(sf.info(str(path)).duration)


def find_asterisk_clips(
    voices: Sequence[AsteriskVoice] = ASTERISK_VOICES,
    roots: Sequence[Path] | None = None,
    *,
    min_seconds: float = 0.5,
    max_seconds: float = 3.0,
) -> list[AsteriskClip]:
    """Every clip of ``voices`` lasting ``min_seconds..max_seconds`` (symlinks and
    ``silence/*`` skipped), after checking each package's credits.

    Raises ``RuntimeError`` with a setup hint when a package is not found."""
    roots = list(roots) if roots is not None else asterisk_roots()
    clips: list[AsteriskClip] = []
    for voice in voices:
        tree = _package_tree(voice, roots)
        if tree is None:
            raise RuntimeError(f"{voice.package} not found under {', '.join(map(str, roots))}: {ASTERISK_HINT}")
        credited_speaker(tree, voice)
        base = tree / _SOUNDS / voice.sound_dir
        for dirpath, _dirs, files in os.walk(base):  # does not follow symlinked dirs
            for name in sorted(files):
                p = Path(dirpath) / name
                if p.suffix != "." + voice.ext or p.is_symlink():
                    continue
                prompt = p.relative_to(base).with_suffix("").as_posix()
                if prompt.startswith("silence/"):
                    continue
                sec = _seconds(p)
                if min_seconds <= sec <= max_seconds:
                    clips.append(AsteriskClip(voice, prompt, p, sec))
    return clips


def fetch_asterisk(
    dest: Path | None = None, voices: Sequence[AsteriskVoice] = ASTERISK_VOICES, log: Callable[[str], None] = print
) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` the packages of ``voices`` into
    ``dest/<package>`` (default ``cache_root()/asterisk``); nothing is installed."""
    dest = Path(dest) if dest is not None else cache_root() / "asterisk"
    packages = sorted({v.package for v in voices if _package_tree(v, [dest]) is None})
    if packages:
        fetch_debian_packages({p: p for p in packages}, dest, log)
    return dest


def _clips(
    voices: Sequence[AsteriskVoice],
    roots: Sequence[Path] | None,
    fetch: bool,
    min_seconds: float,
    max_seconds: float,
    log: Callable[[str], None],
) -> list[AsteriskClip]:
    try:
        return find_asterisk_clips(voices, roots, min_seconds=min_seconds, max_seconds=max_seconds)
    except RuntimeError:
        if not fetch:
            raise
        fetch_asterisk(Path(roots[0]) if roots else None, voices, log)
        return find_asterisk_clips(voices, roots, min_seconds=min_seconds, max_seconds=max_seconds)


_LABEL_OF: dict[str, Callable[[AsteriskVoice], str]] = {
    "asterisk-speaker": lambda v: v.speaker,
    "asterisk-language": lambda v: v.language,
}


def load_asterisk(
    task: str,
    n_per_class: int | None = None,
    seed: int = 0,
    *,
    roots: Sequence[Path] | None = None,
    fetch: bool = False,
    min_seconds: float = 0.5,
    max_seconds: float = 3.0,
    voices: Sequence[AsteriskVoice] = ASTERISK_VOICES,
    log: Callable[[str], None] = print,
) -> Dataset:
    """The ``task`` ("asterisk-speaker" or "asterisk-language") on the clips of ``voices``
    lasting ``min_seconds..max_seconds``: ``n_per_class`` clips per label (``None``: as many
    as the smallest class has), spread evenly over the label's voices; ``groups`` = prompt
    names. Packages are looked for under ``roots`` (default :func:`asterisk_roots`) and,
    with ``fetch=True``, fetched into the first root when missing (``RuntimeError`` with a
    setup hint otherwise)."""
    if task not in _LABEL_OF:
        raise ValueError(f"unknown asterisk task {task!r}; choose from {', '.join(_LABEL_OF)}")
    label_of = _LABEL_OF[task]
    clips = _clips(voices, roots, fetch, min_seconds, max_seconds, log)
    by_voice: dict[AsteriskVoice, dict[str, AsteriskClip]] = {}
    for c in clips:
        by_voice.setdefault(c.voice, {})[c.prompt] = c
    prompts = sorted({c.prompt for c in clips})
    order = {p: i for i, p in enumerate(np.random.default_rng([seed, 17]).permutation(prompts).tolist())}
    classes: dict[str, list[AsteriskVoice]] = {}
    for v in voices:
        classes.setdefault(label_of(v), []).append(v)
    n = (
        n_per_class
        if n_per_class is not None
        else min(sum(len(by_voice.get(v, {})) for v in vs) for vs in classes.values())
    )
    if n < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    picked: list[tuple[str, AsteriskClip, str]] = []
    for label, vs in sorted(classes.items()):
        # n split evenly over the label's voices; a voice short of clips leaves its share to the others
        ranked = {v: sorted(by_voice.get(v, {}).values(), key=lambda c: order[c.prompt]) for v in vs}
        have = sum(len(r) for r in ranked.values())
        if have < n:
            raise ValueError(
                f"{task}: class {label!r} has {have} clips of {min_seconds}-{max_seconds} s, fewer than n_per_class={n}"
            )
        take = dict.fromkeys(vs, 0)
        while sum(take.values()) < n:
            for v in vs:
                if sum(take.values()) < n and take[v] < len(ranked[v]):
                    take[v] += 1
        picked += [(label, c, "") for v in vs for c in ranked[v][: take[v]]]
    return _dataset(task, picked, voices, min_seconds, max_seconds)


def _dataset(
    task: str,
    picked: Sequence[tuple[str, AsteriskClip, str]],
    voices: Sequence[AsteriskVoice],
    min_seconds: float,
    max_seconds: float,
) -> Dataset:
    audio, labels, groups, meta = [], [], [], []
    for label, c, split in picked:
        x, sr = _read(c.path)
        audio.append(resample(x, sr))
        labels.append(label)
        groups.append(c.prompt)
        row = {
            "package": c.voice.package,
            "speaker": c.voice.speaker,
            "language": c.voice.language,
            "prompt": c.prompt,
            "seconds": round(c.seconds, 3),
        }
        if split:
            row["split"] = split
        meta.append(row)
    return Dataset(
        name=task,
        audio=audio,
        labels=labels,
        groups=groups,
        meta=meta,
        split_by="speaker and prompt name" if any(split for *_, split in picked) else "prompt name",
        source="Asterisk telephone prompts (Debian "
        + ", ".join(sorted({v.package for v in voices}))
        + f"), 8 kHz resampled to 16 kHz, clips {min_seconds}-{max_seconds} s",
    )


def load_asterisk_speaker(n_per_class: int | None = None, seed: int = 0, **kwargs) -> Dataset:
    """The ``asterisk-speaker`` task: label = the credited person (7 classes; Allison
    Smith's English and Spanish clips are one class). Keyword arguments as for
    :func:`load_asterisk`."""
    return load_asterisk("asterisk-speaker", n_per_class, seed, **kwargs)


def load_asterisk_language(n_per_class: int | None = None, seed: int = 0, **kwargs) -> Dataset:
    """The ``asterisk-language`` task: label = the language (en, es, fr, it, ru) of the
    same prompt clips; es, fr and it each have two speakers, split evenly. Keyword
    arguments as for :func:`load_asterisk`."""
    return load_asterisk("asterisk-language", n_per_class, seed, **kwargs)


#: es, fr, it: trained on the first voice of each pair, tested on the second
UNSEEN_TRAIN_VOICES = ("asterisk-core-sounds-es-wav", "asterisk-core-sounds-fr-wav", "asterisk-core-sounds-it-wav")
_UNSEEN_TEST_VOICES = ("asterisk-prompt-es-co", "asterisk-prompt-fr-armelle", "asterisk-prompt-it-menardi-wav")


def load_asterisk_language_unseen(
    n_per_class: int = 40,
    seed: int = 0,
    *,
    test_fraction: float = 0.3,
    roots: Sequence[Path] | None = None,
    fetch: bool = False,
    min_seconds: float = 0.5,
    max_seconds: float = 3.0,
    train_voices: Sequence[str] = UNSEEN_TRAIN_VOICES,
    log: Callable[[str], None] = print,
) -> Dataset:
    """The ``asterisk-language-unseen`` task: the language (es, fr, it) of a speaker
    never heard in training. Each language has two voices; the one in ``train_voices``
    gives the training clips, the other the test clips, and the prompt names are split
    too (a seeded ``test_fraction`` of them is test-only), so neither the voice nor the
    sentence of a test clip is in training. In training, voice and language coincide:
    a layer that only knows the voice fails here. ``meta[i]["split"]`` is ``"train"`` or
    ``"test"``; use :func:`asterisk_split`. ``n_per_class`` = train + test clips."""
    by_pkg = {v.package: v for v in ASTERISK_VOICES}
    pairs = [(by_pkg[a], by_pkg[b]) for a, b in zip(UNSEEN_TRAIN_VOICES, _UNSEEN_TEST_VOICES)]
    if set(train_voices) - set(by_pkg):
        raise ValueError(f"train_voices: unknown packages {sorted(set(train_voices) - set(by_pkg))}")
    pairs = [(a, b) if a.package in train_voices else (b, a) for a, b in pairs]
    voices = [v for pair in pairs for v in pair]
    clips = _clips(voices, roots, fetch, min_seconds, max_seconds, log)
    prompts = sorted({c.prompt for c in clips})
    perm = np.random.default_rng([seed, 18]).permutation(prompts).tolist()
    n_test_prompts = max(1, int(round(test_fraction * len(perm))))
    test_prompts = set(perm[:n_test_prompts])
    rank = {p: i for i, p in enumerate(perm)}
    n_test = max(1, int(round(test_fraction * n_per_class)))
    n_train = n_per_class - n_test
    if n_train < 1:
        raise ValueError(f"n_per_class={n_per_class} leaves no training clip at test_fraction={test_fraction}")
    picked: list[tuple[str, AsteriskClip, str]] = []
    for train_v, test_v in pairs:
        for v, split, want, held in ((train_v, "train", n_train, False), (test_v, "test", n_test, True)):
            mine = sorted(
                (c for c in clips if c.voice == v and (c.prompt in test_prompts) == held), key=lambda c: rank[c.prompt]
            )
            if len(mine) < want:
                raise ValueError(
                    f"asterisk-language-unseen: {v.package} has {len(mine)} {split} clips, fewer than the {want} asked"
                )
            picked += [(v.language, c, split) for c in mine[:want]]
    return _dataset("asterisk-language-unseen", picked, voices, min_seconds, max_seconds)


def asterisk_split(ds: Dataset, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` of an asterisk task: the fixed split in ``meta["split"]``
    when the task has one (``asterisk-language-unseen``), else whole prompt names held
    out (:func:`fastconvex.demo.probe.dataset_split`)."""
    from fastconvex.demo.probe import dataset_split

    return dataset_split(ds, test_fraction=test_fraction, seed=seed)


#: task name -> loader ``(n_per_class, seed, **kwargs) -> Dataset``; split each with :func:`asterisk_split`
ASTERISK_TASKS: dict[str, Callable[..., Dataset]] = {
    "asterisk-speaker": load_asterisk_speaker,
    "asterisk-language": load_asterisk_language,
    "asterisk-language-unseen": load_asterisk_language_unseen,
}
