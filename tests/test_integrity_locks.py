"""Issue 24 review: one writer per store for embed (two threads into one
out_dir), and the lock's holder named in one line."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest

pytest.importorskip("transformers")

from test_cli_score_prune import speech  # noqa: E402,F401  (the tiny model and labelled audio)

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402
from fastconvex.store import OutputDirectoryBusy  # noqa: E402


class _Held:
    """Waveforms whose first read waits until the test lets it go: the first
    embed is then inside its write, holding the store's lock."""

    def __init__(self, waves):
        self.waves, self.inside, self.go = waves, threading.Event(), threading.Event()

    def __len__(self):
        return len(self.waves)

    def __getitem__(self, i):
        self.inside.set()
        assert self.go.wait(120)
        return self.waves[i]


def test_a_second_embed_into_the_same_store_is_refused_naming_the_holder(tmp_path):
    model, fe = tiny_model("wav2vec2")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (1600, 2400, 2000, 1800)]
    labels = ["a", "b", "a", "b"]
    lengths = [w.shape[0] for w in waves]
    out = tmp_path / "emb"
    held = _Held(waves)
    first: dict = {}

    def embed():
        try:
            first["result"] = hf.pooled_hidden_states(
                model, held, feature_extractor=fe, lengths=lengths, out_dir=out, labels=labels, progress=False
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            first["error"] = exc

    thread = threading.Thread(target=embed)
    thread.start()
    try:
        assert held.inside.wait(120), first
        with pytest.raises(OutputDirectoryBusy) as info:
            hf.pooled_hidden_states(model, waves, feature_extractor=fe, out_dir=out, labels=labels, progress=False)
        message = str(info.value)
        assert message.startswith(
            f"the store {str(out)!r} is in use by another embed (pid {os.getpid()} on host {socket.gethostname()}"
        )
        assert "\n" not in message
        assert sorted(p.name for p in tmp_path.iterdir()) == [".emb.lock", ".emb.lock.holder", ".emb.partial"]
    finally:
        held.go.set()
        thread.join(120)
    assert "error" not in first, first
    store = fc.open_store(out)
    ref = hf.pooled_hidden_states(model, waves, feature_extractor=fe, progress=False)
    for i in range(store.n_layers):
        np.testing.assert_array_equal(store.layer(i), ref[i])  # the first write, whole and untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # the lock and its holder file removed


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_the_embed_command_is_refused_while_another_writes_the_store(speech, capsys, tmp_path, engine):  # noqa: F811
    """Another embed (here this test, holding the store's lock as an embed
    does) is writing the store: the command is one line, exit status 1, and
    neither the partial write nor Ray is touched."""
    from fastconvex.cli import main
    from fastconvex.store.write import store_lock

    if engine == "ray":
        pytest.importorskip("ray")
    root, _, _ = speech
    out = tmp_path / "s"
    with store_lock(out):
        code = main(
            [
                "embed",
                str(root / "model"),
                "--audio",
                str(root / "audio"),
                "--out-dir",
                str(out),
                "--engine",
                engine,
                "--quiet",
            ]
        )
        err = capsys.readouterr().err
        assert code == 1
        assert err.count("\n") == 1 and f"the store {str(out)!r} is in use by another embed (pid {os.getpid()}" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == [".s.lock", ".s.lock.holder"]  # no partial write
    if engine == "ray":
        import ray

        assert not ray.is_initialized()


def test_the_embed_command_is_refused_before_the_model_is_loaded(speech, capsys, tmp_path, monkeypatch):  # noqa: F811
    import fastconvex.hf.models.load as model_load  # embed imports load_model from here when it runs
    from fastconvex.cli import main
    from fastconvex.store.write import store_lock

    loaded = []
    real = model_load.load_model
    monkeypatch.setattr(model_load, "load_model", lambda *a, **k: loaded.append(a) or real(*a, **k))
    root, _, _ = speech
    out = tmp_path / "s"
    with store_lock(out):
        code = main(["embed", str(root / "model"), "--audio", str(root / "audio"), "--out-dir", str(out), "--quiet"])
    assert code == 1 and "is in use by another embed" in capsys.readouterr().err
    assert loaded == []  # refused before minutes of model loading
    code = main(["embed", str(root / "model"), "--audio", str(root / "audio"), "--out-dir", str(out), "--quiet"])
    assert code == 0 and len(loaded) == 1


def test_pooled_hidden_states_is_refused_before_reading_audio(tmp_path):
    from fastconvex.store.write import store_lock

    model, fe = tiny_model("wav2vec2")
    waves = [np.zeros(1600, np.float32)] * 2
    held = _Held(waves)
    held.go.set()
    with store_lock(tmp_path / "emb"), pytest.raises(OutputDirectoryBusy):
        hf.pooled_hidden_states(
            model, held, feature_extractor=fe, out_dir=tmp_path / "emb", labels=["a", "b"], progress=False
        )
    assert not held.inside.is_set()  # no waveform was read


def test_a_store_named_through_a_symlink_has_the_real_paths_lock(tmp_path):
    from fastconvex.store.write import store_lock

    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real" / "emb", tmp_path / "link")  # the store's own name is the link
    with (
        store_lock(tmp_path / "real" / "emb"),
        pytest.raises(OutputDirectoryBusy, match=r"the store '.*/link' is in use"),
        store_lock(tmp_path / "link"),
    ):
        pass


def test_a_refused_store_write_creates_no_directories(tmp_path):
    model, fe = tiny_model("wav2vec2")
    waves = [np.zeros(1600, np.float32)] * 2
    with pytest.raises(ValueError, match="pass labels="):  # the store needs labels: refused inside the lock
        hf.pooled_hidden_states(
            model, waves, feature_extractor=fe, out_dir=tmp_path / "a" / "b" / "emb", progress=False
        )
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "mine.txt").write_text("not a store")
    with pytest.raises(FileExistsError, match="not a layer store"):
        hf.pooled_hidden_states(
            model,
            waves,
            feature_extractor=fe,
            out_dir=tmp_path / "emb",
            labels=["a", "b"],
            overwrite=True,
            progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]
