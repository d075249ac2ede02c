"""The asterisk-speaker / asterisk-language tasks on a package tree written here in the
real Debian layout (credits files with the packages' wording, 8 kHz WAV and raw GSM
clips written with soundfile); nothing is downloaded."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("scipy")

from fastconvex.demo import data_asterisk as da  # noqa: E402
from fastconvex.demo.probe import split_indices  # noqa: E402

CORE_COPYRIGHT = """Format: http://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: asterisk-core-sounds

Files: *
Copyright: 2003-2010, Allison Smith
Comment: The CREDITS file:
 Recorded by:
 Allison Smith (http://www.theivrvoice.com)
License: CC-BY-SA-3.0

Files: fr-*
Copyright: 2006-2008, June Wallack
License: CC-BY-SA-3.0
Comment: CREDITS file:
 Recorded by:
 June Wallack (http://www.junewallack.com)

Files: ru-*
Copyright: 2010, Maxim
Comment: CREDITS file:
 Provided by: Maxim Topal
 .
 http://www.ivrvoice.ru
License: CC-BY-3.0

Files: it-*
Copyright: 2012 Carlo Flora, <http://www.segreterietelefoniche.it>
Comment: CREDITS file:
 Recorded by:
 Carlo Flora (http://www.carloflora.com)
"""
CREDITS = {
    "asterisk-prompt-it-menardi-wav": "Files: *\nCopyright: 2006-2011, Marco Menardi.e Paola Dal Zot (?the voice?) ?\n",
    "asterisk-prompt-es-co": "Cr\xe9ditos\n--------\n\nSonidos grabados por Avatar Ltda. con la voz de July E. Jim\xe9nez.\n",
    "asterisk-prompt-fr-armelle": "Upstream:\n\n Voice actor: Armelle Desjardins <armelle.asterisk@aclap.com>\n",
}
PROMPTS = [f"vm-p{i}" for i in range(6)] + ["digits/1", "digits/2"]
SHORT = 0.8  # seconds of every kept clip


def _tone(f0: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def _write(path: Path, x: np.ndarray, ext: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == "gsm":
        sf.write(str(path), x, 8000, format="RAW", subtype="GSM610")
    else:
        sf.write(str(path), x, 8000, subtype="PCM_16")


def make_tree(root: Path, voices=da.ASTERISK_VOICES, prompts=PROMPTS) -> Path:
    """Every package of ``voices`` unpacked under ``root/<package>``: the prompts (0.8 s),
    a 4 s prompt (too long), ``silence/1`` and a symlinked copy of ``digits``."""
    for k, v in enumerate(voices):
        tree = root / v.package
        credit = tree / v.credit_file
        credit.parent.mkdir(parents=True, exist_ok=True)
        text = CREDITS.get(v.package, CORE_COPYRIGHT)
        credit.write_bytes(text.encode("latin-1" if v.package == "asterisk-prompt-es-co" else "utf-8"))
        base = tree / "usr/share/asterisk/sounds" / v.sound_dir
        for p in prompts:
            _write(base / f"{p}.{v.ext}", _tone(150 + 40 * k, SHORT), v.ext)
        _write(base / f"vm-long.{v.ext}", _tone(150 + 40 * k, 4.0), v.ext)
        _write(base / f"silence/1.{v.ext}", np.zeros(8000, np.float32), v.ext)
        (base / "linked").symlink_to(base / "digits", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("asterisk"))


def test_credits_name_each_speaker(tree, tmp_path):
    by_pkg = {v.package: v for v in da.ASTERISK_VOICES}
    assert "Allison Smith" in da.credited_speaker(
        tree / "asterisk-core-sounds-es-wav", by_pkg["asterisk-core-sounds-es-wav"]
    )
    assert "June Wallack" in da.credited_speaker(
        tree / "asterisk-core-sounds-fr-wav", by_pkg["asterisk-core-sounds-fr-wav"]
    )
    assert "July E. Jim" in da.credited_speaker(
        tree / "asterisk-prompt-es-co", by_pkg["asterisk-prompt-es-co"]
    )  # Latin-1
    assert "Maxim Topal" in da.credited_speaker(
        tree / "asterisk-core-sounds-ru-wav", by_pkg["asterisk-core-sounds-ru-wav"]
    )
    # a copyright file whose fr-* stanza credits someone else is refused, so is a missing one
    fr = by_pkg["asterisk-core-sounds-fr-wav"]
    bad = tmp_path / "bad"
    (bad / fr.credit_file).parent.mkdir(parents=True)
    (bad / fr.credit_file).write_text(CORE_COPYRIGHT.replace("June Wallack", "Someone Else"))
    with pytest.raises(ValueError, match="does not credit june-wallack"):
        da.credited_speaker(bad, fr)
    with pytest.raises(ValueError, match="no credits file"):
        da.credited_speaker(tmp_path / "nothing", fr)


def test_clips_in_range_without_silence_or_symlinks(tree):
    clips = da.find_asterisk_clips(roots=[tree])
    per_voice = Counter(c.voice.package for c in clips)
    assert set(per_voice.values()) == {len(PROMPTS)} and len(per_voice) == len(da.ASTERISK_VOICES)
    assert {c.prompt for c in clips} == set(PROMPTS)  # no vm-long, silence/1 or linked/*
    assert all(abs(c.seconds - SHORT) < 0.03 for c in clips)
    long_ok = da.find_asterisk_clips(roots=[tree], max_seconds=5.0)
    assert {c.prompt for c in long_ok} == set(PROMPTS) | {"vm-long"}


def test_speaker_task_balanced_resampled_and_deterministic(tree):
    ds = da.load_asterisk_speaker(4, seed=0, roots=[tree])
    assert ds.name == "asterisk-speaker" and ds.split_by == "prompt name"
    counts = Counter(ds.labels)
    assert len(counts) == 7 and set(counts.values()) == {4}
    # Allison Smith is one class, her clips split evenly between English and Spanish
    allison = Counter(m["language"] for m, lab in zip(ds.meta, ds.labels) if lab == "allison-smith")
    assert allison == {"en": 2, "es": 2}
    assert all(a.dtype == np.float32 and abs(a.shape[0] - 2 * int(SHORT * 8000)) <= 2 for a in ds.audio)
    assert ds.groups == [m["prompt"] for m in ds.meta]
    again = da.load_asterisk_speaker(4, seed=0, roots=[tree])
    assert again.meta == ds.meta and all(np.array_equal(a, b) for a, b in zip(ds.audio, again.audio))
    other = [da.load_asterisk_speaker(4, seed=s, roots=[tree]).groups for s in (1, 2, 3)]
    assert any(g != ds.groups for g in other)
    # every voice takes its prompts in one seeded order, so single-voice classes share prompts
    single = [{g for g, lab in zip(ds.groups, ds.labels) if lab == s} for s in ("june-wallack", "carlo-flora")]
    assert single[0] == single[1]


def test_language_task_and_whole_prompt_split(tree):
    ds = da.load_asterisk_language(6, seed=0, roots=[tree])
    counts = Counter(ds.labels)
    assert counts == {"en": 6, "es": 6, "fr": 6, "it": 6, "ru": 6}
    es = Counter(m["speaker"] for m, lab in zip(ds.meta, ds.labels) if lab == "es")
    assert es == {"allison-smith": 3, "july-jimenez": 3}
    train, test = split_indices(ds.labels, ds.groups, seed=0)
    g = np.asarray(ds.groups)
    assert set(g[train]).isdisjoint(g[test]) and len(set(g[test])) >= 1
    assert len(train) + len(test) == len(ds)


def test_class_caps(tree):
    full = da.load_asterisk_speaker(None, roots=[tree])
    assert set(Counter(full.labels).values()) == {len(PROMPTS)}  # the smallest class: one voice's clips
    with pytest.raises(ValueError, match=r"class 'armelle-desjardins' has 8 clips .* fewer than n_per_class=9"):
        da.load_asterisk_speaker(9, roots=[tree])
    # Allison has two voices: 16 clips, so 12 per class only fails on the one-voice classes
    assert Counter(
        da.load_asterisk_speaker(
            12, roots=[tree], voices=[v for v in da.ASTERISK_VOICES if v.speaker == "allison-smith"]
        ).labels
    ) == {"allison-smith": 12}
    with pytest.raises(ValueError, match="n_per_class must be >= 1"):
        da.load_asterisk_speaker(0, roots=[tree])
    with pytest.raises(ValueError, match="unknown asterisk task 'asterisk-words'"):
        da.load_asterisk("asterisk-words", 2, roots=[tree])


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="asterisk-core-sounds-en-wav not found.*apt-get download"):
        da.load_asterisk_speaker(2, roots=[tmp_path / "empty"])
    # fetch=True fetches only the missing packages, into the first root, then loads
    one = [v for v in da.ASTERISK_VOICES if v.package == "asterisk-prompt-fr-armelle"]
    asked = []

    def fake_fetch(packages, dest, log=print):
        asked.append(dict(packages))
        make_tree(Path(dest), [v for v in da.ASTERISK_VOICES if v.package in packages])

    monkeypatch.setattr(da, "fetch_debian_packages", fake_fetch)
    ds = da.load_asterisk_language(3, roots=[tmp_path / "cache"], voices=one, fetch=True, log=lambda s: None)
    assert asked == [{"asterisk-prompt-fr-armelle": "asterisk-prompt-fr-armelle"}]
    assert Counter(ds.labels) == {"fr": 3}
    da.load_asterisk_language(3, roots=[tmp_path / "cache"], voices=one, fetch=True)
    assert len(asked) == 1  # present now: nothing fetched again


def test_default_roots_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONVEX_ASTERISK", str(tmp_path / "env"))
    monkeypatch.setenv("FASTCONVEX_CACHE", str(tmp_path / "cache"))
    assert da.asterisk_roots() == [tmp_path / "env", tmp_path / "cache" / "asterisk"]
    assert os.fspath(da.asterisk_roots([tmp_path / "x"])[0]) == os.fspath(tmp_path / "x")


def test_unseen_speaker_language_task_holds_out_voices_and_prompts(tree, tmp_path):
    prompts = [f"vm-q{i}" for i in range(20)]
    root = make_tree(tmp_path / "t", [v for v in da.ASTERISK_VOICES if v.language in ("es", "fr", "it")], prompts)
    ds = da.load_asterisk_language_unseen(10, seed=0, roots=[root])
    assert ds.name == "asterisk-language-unseen"
    assert Counter(ds.labels) == {"es": 10, "fr": 10, "it": 10}
    train, test = da.asterisk_split(ds)
    assert len(train) == 21 and len(test) == 9  # 7 + 3 per language
    spk = np.array([m["speaker"] for m in ds.meta])
    assert set(spk[train]) == {"allison-smith", "june-wallack", "carlo-flora"}
    assert set(spk[test]) == {"july-jimenez", "armelle-desjardins", "menardi"}
    g = np.asarray(ds.groups)
    assert set(g[train]).isdisjoint(g[test])
    # the other direction: the community voices train, the core voices test
    rev = da.load_asterisk_language_unseen(
        10,
        seed=0,
        roots=[root],
        train_voices=["asterisk-prompt-es-co", "asterisk-prompt-fr-armelle", "asterisk-prompt-it-menardi-wav"],
    )
    _tr2, te2 = da.asterisk_split(rev)
    assert set(np.array([m["speaker"] for m in rev.meta])[te2]) == {"allison-smith", "june-wallack", "carlo-flora"}
    with pytest.raises(ValueError, match="es-wav has 14 train clips, fewer than the 21 asked"):
        da.load_asterisk_language_unseen(30, roots=[root])  # 14 of 20 prompt names are train-only
    with pytest.raises(ValueError, match="unknown packages"):
        da.load_asterisk_language_unseen(10, roots=[root], train_voices=["nope"])
    # tasks without a fixed split hold out whole prompt names
    sp = da.load_asterisk_speaker(4, roots=[tree])
    a, b = da.asterisk_split(sp)
    assert set(np.asarray(sp.groups)[a]).isdisjoint(np.asarray(sp.groups)[b]) and len(a) + len(b) == len(sp)


def test_task_registry_names_the_loaders(tree):
    assert set(da.ASTERISK_TASKS) == {"asterisk-speaker", "asterisk-language", "asterisk-language-unseen"}
    for name in ("asterisk-speaker", "asterisk-language"):
        ds = da.ASTERISK_TASKS[name](2, 0, roots=[tree])
        assert ds.name == name and len(ds) == 2 * len(set(ds.labels))
