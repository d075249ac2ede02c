"""Reading labelled audio: DIR/<label>/*.wav|flac|ogg and CSV lists."""

from __future__ import annotations

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from fastconvex.hf import AudioFiles, find_audio, load_audio  # noqa: E402

pytestmark = pytest.mark.hf


def _tone(n, sr=16000, f=440.0):
    return (0.5 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def test_directory_layout_like_speech_commands(tmp_path):
    for label in ("yes", "no"):
        (tmp_path / label).mkdir()
    sf.write(tmp_path / "yes" / "a10.wav", _tone(800), 16000)
    sf.write(tmp_path / "yes" / "a2.flac", _tone(900), 16000)
    sf.write(tmp_path / "no" / "b.ogg", _tone(1600), 16000)
    (tmp_path / "no" / "notes.txt").write_text("not audio")
    (tmp_path / "_background_noise_").mkdir()
    sf.write(tmp_path / "_background_noise_" / "noise.wav", _tone(3000), 16000)
    (tmp_path / "testing_list.txt").write_text("yes/a2.flac\n")
    paths, labels = find_audio(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["no/b.ogg", "yes/a2.flac", "yes/a10.wav"]
    assert labels == ["no", "yes", "yes"]
    audio = AudioFiles(paths)
    assert audio.lengths().tolist() == [1600, 900, 800]
    np.testing.assert_allclose(audio[2], _tone(800), atol=1e-4)  # 16-bit wav
    assert [x.shape[0] for x in audio] == [1600, 900, 800]


def test_csv_lists_with_and_without_header(tmp_path):
    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "x.wav", _tone(500), 16000)
    sf.write(tmp_path / "clips" / "y.wav", _tone(600), 16000)
    (tmp_path / "with.csv").write_text("label,path\ncat,clips/x.wav\ndog,clips/y.wav\n")
    (tmp_path / "without.csv").write_text("clips/x.wav,cat\nclips/y.wav,dog\n")
    for name in ("with.csv", "without.csv"):
        paths, labels = find_audio(tmp_path / name)
        assert paths == [tmp_path / "clips" / "x.wav", tmp_path / "clips" / "y.wav"]
        assert labels == ["cat", "dog"]
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="needs a header with columns 'path' and 'label'"):
        find_audio(tmp_path / "bad.csv")
    (tmp_path / "empty_label.csv").write_text("path,label\nclips/x.wav,\n")
    with pytest.raises(ValueError, match="line 2 has an empty label"):
        find_audio(tmp_path / "empty_label.csv")


def test_missing_or_empty_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_audio(tmp_path / "nowhere")
    (tmp_path / "empty" / "yes").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .wav/.flac/.ogg files"):
        find_audio(tmp_path / "empty")


def test_stereo_is_averaged_and_other_rates_resampled(tmp_path):
    left, right = _tone(8000, 8000, 200.0), _tone(8000, 8000, 300.0)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    x = load_audio(tmp_path / "s.wav", 16000)
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert AudioFiles([tmp_path / "s.wav"]).lengths().tolist() == [16000]
    expected = 0.5 * (_tone(16000, 16000, 200.0) + _tone(16000, 16000, 300.0))
    # a polyphase resampler is exact up to its filter's edge effects
    np.testing.assert_allclose(x[200:-200], expected[200:-200], atol=2e-2)
    assert load_audio(tmp_path / "s.wav", 8000).shape == (8000,)


def test_unreadable_audio(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"not a wav file")
    with pytest.raises(ValueError, match="cannot read audio file"):
        load_audio(tmp_path / "bad.wav")
    with pytest.raises(ValueError, match="cannot read audio file"):
        AudioFiles([tmp_path / "bad.wav"]).lengths()
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")


@pytest.mark.parametrize(
    "rate,error", [(0, ValueError), (-8000, ValueError), (16000.5, TypeError), ("16000", TypeError)]
)
def test_bad_sampling_rates_are_refused_not_truncated(tmp_path, rate, error):
    """0 and negative rates failed inside scipy (or gave lengths 0 and -400); 16000.5
    was truncated to 16000 and "16000" accepted."""
    sf.write(tmp_path / "a.wav", _tone(800), 16000)
    with pytest.raises(error, match="sampling_rate must be"):
        load_audio(tmp_path / "a.wav", rate)
    with pytest.raises(error, match="sampling_rate must be"):
        AudioFiles([tmp_path / "a.wav"], rate)
