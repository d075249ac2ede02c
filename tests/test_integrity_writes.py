"""What fastconvex writes (issue 24, part B): a resumed embedding never mixes
two models or two versions of the audio; written files honour the umask; a
full disk is one line naming the file, never a SIGBUS, and leaves nothing
behind."""

from __future__ import annotations

import importlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_cli_score_prune import speech  # noqa: F401  (the tiny model and labelled audio)

import fastconvex as fc
from fastconvex.core.atomic import (
    atomic_file,
    staged_directory,
    write_json_atomic,
    write_text_atomic,
)
from fastconvex.store import StoreWriter

LENGTHS = (400, 1000, 777, 1600, 523, 1200, 1601, 1000)


# ---- a resumed embedding is the same job ---------------------------------------------------------------


class _Interrupted:
    """Audio read lazily that fails once, at utterance ``fail_at`` (an
    interrupted run: the batches before it are finished and recorded)."""

    def __init__(self, waves, fail_at):
        self.waves, self.fail_at = waves, fail_at

    def __len__(self):
        return len(self.waves)

    def __getitem__(self, i):
        if i == self.fail_at:
            self.fail_at = None
            raise OSError("the audio disk went away")
        return self.waves[i]


def _interrupted_embed(hf, model, fe, waves, out, **kw):
    """Run ``pooled_hidden_states(out_dir=out)`` until it fails in its last batch."""
    flaky = _Interrupted(waves, fail_at=int(np.argmin([len(w) for w in waves])))  # the shortest: the last batch
    with pytest.raises(OSError, match="went away"):
        hf.pooled_hidden_states(model, flaky, out_dir=out, **kw)
    done = out.parent / f".{out.name}.partial" / "done"
    assert len(list(done.iterdir())) == 3  # 3 of the 4 batches finished: a resume would reuse them


@pytest.mark.hf
def test_resume_refuses_other_model_weights(tmp_path):
    """One weight changed between the interrupted run and the rerun: the rerun
    is refused (naming the weights and --overwrite), not mixed; with
    overwrite=True it starts over and every row is the new model's."""
    torch = pytest.importorskip("torch")
    from fastconvex import hf
    from fastconvex.hf.testing import tiny_model

    model, fe = tiny_model("wav2vec2")
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) for n in LENGTHS]
    kw = dict(feature_extractor=fe, batch_size=2, lengths=list(LENGTHS), labels=list(range(8)), progress=False)
    _interrupted_embed(hf, model, fe, waves, tmp_path / "emb", **kw)
    with torch.no_grad():  # same class, same configuration: only the weights differ
        model.encoder.layers[0].feed_forward.output_dense.bias[0] += 0.5
    with pytest.raises(ValueError, match=r"different job \(it differs in the model's weights;.*overwrite"):
        hf.pooled_hidden_states(model, waves, out_dir=tmp_path / "emb", **kw)
    assert not (tmp_path / "emb").exists()
    res = hf.pooled_hidden_states(model, waves, out_dir=tmp_path / "emb", overwrite=True, **kw)
    ref = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=2, progress=False)
    for a, b in zip(res, ref):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert fc.open_store(tmp_path / "emb").meta["weights_sha256"] == importlib.import_module(
        "fastconvex.hf.embed.store_out"
    ).weights_sha256(model)


@pytest.mark.hf
def test_resume_refuses_other_audio_of_the_same_length(tmp_path):
    """An utterance of a finished batch replaced by other samples of the same
    length: the rerun names it and is refused; overwrite=True starts over."""
    from fastconvex import hf
    from fastconvex.hf.testing import tiny_model

    model, fe = tiny_model("wav2vec2")
    rng = np.random.default_rng(1)
    waves = [rng.standard_normal(n).astype(np.float32) for n in LENGTHS]
    kw = dict(feature_extractor=fe, batch_size=2, lengths=list(LENGTHS), labels=list(range(8)), progress=False)
    _interrupted_embed(hf, model, fe, waves, tmp_path / "emb", **kw)
    changed = list(waves)
    changed[3] = -waves[3]  # the longest utterance: in the first, finished batch
    with pytest.raises(ValueError, match=r"other audio: waveforms\[3\] changed.*overwrite"):
        hf.pooled_hidden_states(model, changed, out_dir=tmp_path / "emb", **kw)
    res = hf.pooled_hidden_states(model, changed, out_dir=tmp_path / "emb", overwrite=True, **kw)
    ref = hf.pooled_hidden_states(model, changed, feature_extractor=fe, batch_size=2, progress=False)
    for a, b in zip(res, ref):
        np.testing.assert_array_equal(np.asarray(a), b)


def _interrupted_embed_command(monkeypatch, capsys, argv) -> None:
    """``fastconvex ARGV`` (an embed of the 24-clip speech fixture in batches
    of 4) failing in its fourth batch, as a lost audio disk would: three
    finished batches stay in the partial write, exit status 1."""
    from fastconvex import hf
    from fastconvex.cli import main

    real = hf.AudioFiles.__getitem__
    calls = []

    def flaky(self, i):
        calls.append(i)
        if len(calls) == 13:  # in the fourth of six batches
            raise OSError("the audio disk went away")
        return real(self, i)

    with monkeypatch.context() as m:
        m.setattr(hf.AudioFiles, "__getitem__", flaky)
        assert main(argv) == 1
    capsys.readouterr()


@pytest.mark.hf
def test_cli_embed_resume_refuses_a_changed_model_folder_and_audio_file(speech, tmp_path, capsys, monkeypatch):  # noqa: F811
    """``fastconvex embed``: interrupted, then the model folder's weights (or
    one audio file, same length) changed: the rerun is one line naming what
    changed and --overwrite; --overwrite gives the store of the new inputs."""
    sf = pytest.importorskip("soundfile")
    torch = pytest.importorskip("torch")
    from fastconvex import hf
    from fastconvex.cli import main

    root, model, _fe = speech
    model_dir, audio_dir = tmp_path / "model", tmp_path / "audio"
    shutil.copytree(root / "model", model_dir)
    shutil.copytree(root / "audio", audio_dir)
    out = tmp_path / "s"
    argv = ["embed", str(model_dir), "--audio", str(audio_dir), "--out-dir", str(out), "--batch-size", "4", "--quiet"]

    def interrupt():
        _interrupted_embed_command(monkeypatch, capsys, argv)
        assert len(list((tmp_path / ".s.partial" / "done").iterdir())) == 3

    interrupt()
    changed = type(model).from_pretrained(model_dir)
    with torch.no_grad():
        changed.encoder.layers[1].attention.q_proj.weight[0, 0] += 0.25
    changed.save_pretrained(model_dir)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the model's weights" in err and "--overwrite" in err and not out.exists()

    shutil.rmtree(tmp_path / ".s.partial")
    interrupt()
    paths, _ = hf.find_audio(audio_dir)
    finished = np.argsort(-hf.AudioFiles(paths).lengths(), kind="stable")[:12]  # the 3 finished batches of 4
    first = next(paths[i] for i in finished if paths[i].suffix == ".wav")  # rewritten losslessly
    wave, rate = sf.read(first, dtype="int16")
    sf.write(first, -wave, rate, subtype="PCM_16")  # the same length, other samples
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(str(first)) in err and "changed" in err and "--overwrite" in err

    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "embed",
                str(model_dir),
                "--audio",
                str(audio_dir),
                "--out-dir",
                str(tmp_path / "fresh"),
                "--batch-size",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    for a, b in zip(fc.open_store(out).layers, fc.open_store(tmp_path / "fresh").layers):
        np.testing.assert_array_equal(a, b)


# ---- the umask -----------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_honour_the_umask(tmp_path, umask, file_mode, dir_mode):
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((40, 6)).astype(np.float32) for _ in range(2)]
    labels = np.arange(40) % 3
    old = os.umask(umask)  # the test's own process; fastconvex never sets it
    try:
        store = fc.save_store(tmp_path / "store", layers, labels)
        result = fc.layer_scores(layers, labels, k=3, pairs=50, seed=0)
        result.to_json(tmp_path / "result.json")
        write_json_atomic(tmp_path / "x.json", {"a": 1})
        write_text_atomic(tmp_path / "x.txt", "text\n")
        with staged_directory(tmp_path / "staged", replace=True) as tmp:
            (tmp / "f").write_text("x")
        fc.sweep(store.path, out_dir=tmp_path / "sweep", k=3, pairs=50, verbose=False, plot=False)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    dirs = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert {"store.json", "layer_000.npy", "labels.npy", "result.json", "x.json", "x.txt", "sweep.json"} <= {
        p.name for p in files
    }
    assert {p.relative_to(tmp_path).as_posix(): oct(_mode(p)) for p in files} == {
        p.relative_to(tmp_path).as_posix(): oct(file_mode) for p in files
    }
    assert {p.relative_to(tmp_path).as_posix(): oct(_mode(p)) for p in dirs} == {
        p.relative_to(tmp_path).as_posix(): oct(dir_mode) for p in dirs
    }


# ---- a full disk ---------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A directory on a 256 KiB file system: a tmpfs mounted for the test (as
    root), else the same directory with a 256 KiB file-size limit
    (``RLIMIT_FSIZE``, set in the child only): either way writing more fails
    with an OSError in the kernel (ENOSPC, or EFBIG), as a full disk does."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = (
        os.name == "posix"
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(where)], capture_output=True
        ).returncode
        == 0
    )
    yield where, mounted
    if mounted:
        subprocess.run(["umount", str(where)], check=True)


def _run_limited(argv, mounted, **kw):
    """Run ``argv`` in a child process (a SIGBUS kills the child, not the tests)."""

    def limit():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    return subprocess.run(
        argv, capture_output=True, text=True, timeout=600, preexec_fn=None if mounted else limit, **kw
    )


def test_save_store_on_a_full_disk_is_one_line_naming_the_file(small_disk):
    where, mounted = small_disk
    script = textwrap.dedent(f"""
        import numpy as np, fastconvex as fc
        try:
            fc.save_store({str(where / "s")!r}, [np.ones((2000, 256), np.float32)] * 2, np.arange(2000) % 2)
        except OSError as exc:
            print(type(exc).__name__, exc)
            raise SystemExit(3)
    """)
    proc = _run_limited([sys.executable, "-c", script], mounted)
    # a memory-mapped write into a full disk would kill the child with SIGBUS (returncode -7)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    line = proc.stdout.strip()
    assert line.count("\n") == 0 and line.startswith(f"WriteError cannot write '{where / '.s.tmp-'}")
    assert "layer_000.npy'" in line and ("No space left" in line or "too large" in line)
    assert list(where.iterdir()) == []  # the temporary directory removed


@pytest.mark.hf
def test_cli_embed_on_a_full_disk_is_one_line_exit_1(speech, small_disk):  # noqa: F811
    """``fastconvex embed --frames`` (about 1.5 MB of layers) into 256 KiB:
    one line naming the file, exit status 1, nothing left behind."""
    root, _, _ = speech
    where, mounted = small_disk
    proc = _run_limited(
        [
            sys.executable,
            "-m",
            "fastconvex",
            "embed",
            str(root / "model"),
            "--audio",
            str(root / "audio"),
            "--out-dir",
            str(where / "s"),
            "--frames",
            "--quiet",
        ],
        mounted,
    )
    # a memory-mapped write into a full disk would kill the child with SIGBUS (returncode -7)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"fastconvex embed: error: cannot write '{where / '.s.partial' / 'layer_000.npy'}'")
    assert list(where.iterdir()) == []  # nothing finished: the partial write removed too


# ---- nothing left behind -------------------------------------------------------------------------------


def test_failed_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((30, 4)).astype(np.float32) for _ in range(2)]
    result = fc.layer_scores(layers, np.arange(30) % 2, k=3, pairs=50, seed=0)
    result.to_json(tmp_path / "r.json")
    before = (tmp_path / "r.json").read_bytes()
    monkeypatch.setattr(type(result), "to_dict", lambda self: {"score": float("inf")})  # not JSON
    with pytest.raises(ValueError):
        result.to_json(tmp_path / "r.json")  # fails before the old file is touched
    assert (tmp_path / "r.json").read_bytes() == before

    def interrupted():
        yield layers[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fc.save_store(tmp_path / "s", interrupted(), np.arange(30) % 2)
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "t.txt", "w") as fh:
        fh.write("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.hf
def test_cli_embed_ray_resume_checks_audio_and_the_workers_weights(speech, tmp_path, capsys, monkeypatch):  # noqa: F811
    """``embed --engine ray``: chunks record their audio's hashes; a rerun after
    one file changed (same length) is refused naming it, before any task
    runs; a worker whose model folder holds other weights than the driver
    hashed refuses to write. Ray itself is replaced by running the real chunk
    function in this process (what each Ray task runs)."""
    pytest.importorskip("ray")
    sf = pytest.importorskip("soundfile")
    torch = pytest.importorskip("torch")
    import fastconvex.hf.embed.job as embed_mod
    from fastconvex import hf
    from fastconvex.cli import main

    root, model, _ = speech
    model_dir, audio_dir = tmp_path / "model", tmp_path / "audio"
    shutil.copytree(root / "model", model_dir)
    shutil.copytree(root / "audio", audio_dir)
    ran = []

    def two_chunks_then_lost(job, writer, lengths, *, chunk_size, **kw):
        for c, chunk in enumerate(embed_mod.chunk_rows(len(lengths), chunk_size)[:2]):
            rows = list(chunk)
            if c not in writer.done_blocks():
                ran.append(c)
                embed_mod.embed_chunk(job, c, rows, [int(n) for n in lengths[rows]])
        raise RuntimeError("the cluster went away")

    monkeypatch.setattr(embed_mod, "embed_on_ray", two_chunks_then_lost)
    argv = [
        "embed",
        str(model_dir),
        "--audio",
        str(audio_dir),
        "--out-dir",
        str(tmp_path / "s"),
        "--quiet",
        "--engine",
        "ray",
        "--chunk-size",
        "4",
    ]
    assert main(argv) == 1 and ran == [0, 1]
    capsys.readouterr()
    paths, _ = hf.find_audio(audio_dir)
    first = next(p for p in paths[:8] if p.suffix == ".wav")  # in chunk 0 or 1, rewritten losslessly
    wave, rate = sf.read(first, dtype="int16")
    sf.write(first, -wave, rate, subtype="PCM_16")
    assert main(argv) == 2 and ran == [0, 1]  # refused before any chunk ran
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and repr(str(first)) in err and "changed" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 1 and ran == [0, 1, 0, 1]  # started over
    capsys.readouterr()

    # the driver hashed these weights; the folder then changes before a worker loads it
    fresh = tmp_path / "fresh"
    assert main(["embed", str(model_dir), "--audio", str(audio_dir), "--out-dir", str(fresh), "--quiet"]) == 0
    job = embed_mod.EmbedJob(
        model=str(model_dir),
        model_class=None,
        device=None,
        paths=[str(p) for p in paths],
        sampling_rate=16000,
        batch_size=8,
        dtype="float32",
        layers=None,
        final_norm="raw",
        mix_lengths=False,
        partial_dir=str(tmp_path / ".s.partial"),
        layer_files=["layer_000.npy"],
        signature={
            k: v
            for k, v in fc.open_store(fresh).meta.items()
            if k in importlib.import_module("fastconvex.hf.embed.store_out").SIGNATURE_KEYS
        },
    )
    changed = type(model).from_pretrained(model_dir)
    with torch.no_grad():
        changed.encoder.layers[0].attention.k_proj.bias[0] += 0.25
    changed.save_pretrained(model_dir)
    embed_mod._MODELS.clear()
    with pytest.raises(ValueError, match="weights changed since the embedding run started"):
        embed_mod.embed_chunk(job, 2, [8, 9, 10, 11], [1600] * 4)


# ---- part B, second round: the feature extractor, a new head, killed allocations, plots ---------------


@pytest.mark.hf
def test_resume_refuses_another_feature_extractor(tmp_path):
    """Interrupted with ``do_normalize=True``, rerun with ``do_normalize=False``
    (same model, same audio): the rows would differ, so the rerun is refused
    naming the feature extractor; overwrite=True starts over and every row is
    the second feature extractor's."""
    import copy

    from fastconvex import hf
    from fastconvex.hf.testing import tiny_model

    model, fe = tiny_model("wav2vec2")
    rng = np.random.default_rng(2)
    waves = [(3 * rng.standard_normal(n) + 1).astype(np.float32) for n in LENGTHS]
    normalising = copy.deepcopy(fe)
    normalising.do_normalize = True
    plain = copy.deepcopy(fe)
    plain.do_normalize = False
    kw = dict(batch_size=2, lengths=list(LENGTHS), labels=list(range(8)), progress=False)
    _interrupted_embed(hf, model, normalising, waves, tmp_path / "emb", feature_extractor=normalising, **kw)
    with pytest.raises(ValueError, match=r"different job \(it differs in the feature extractor;.*overwrite"):
        hf.pooled_hidden_states(model, waves, out_dir=tmp_path / "emb", feature_extractor=plain, **kw)
    res = hf.pooled_hidden_states(model, waves, out_dir=tmp_path / "emb", feature_extractor=plain, overwrite=True, **kw)
    ref = hf.pooled_hidden_states(model, waves, feature_extractor=plain, batch_size=2, progress=False)
    other = hf.pooled_hidden_states(model, waves, feature_extractor=normalising, batch_size=2, progress=False)
    for a, b, c in zip(res, ref, other):
        np.testing.assert_array_equal(np.asarray(a), b)
        assert np.abs(b - c).max() > 1e-3  # the two feature extractors give other rows


@pytest.mark.hf
def test_weights_hash_covers_the_encoder_not_a_new_head(tmp_path):
    """A base checkpoint loaded twice with a sequence-classification class
    (its head initialised at random on each load) hashes the same; a change
    to an encoder weight, or to the final LayerNorm that final_norm="apply"
    uses, changes the hash."""
    torch = pytest.importorskip("torch")
    import transformers

    from fastconvex.hf.embed.store_out import weights_sha256
    from fastconvex.hf.testing import tiny_model

    base, _ = tiny_model("wav2vec2", do_stable_layer_norm=True)
    base.save_pretrained(tmp_path / "base")
    first = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(tmp_path / "base")
    second = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(tmp_path / "base")
    assert not torch.equal(first.classifier.weight, second.classifier.weight)  # two random heads
    assert weights_sha256(first) == weights_sha256(second) == weights_sha256(base)
    with torch.no_grad():
        second.wav2vec2.encoder.layers[0].attention.v_proj.weight[0, 0] += 0.125
    assert weights_sha256(second) != weights_sha256(first)
    with torch.no_grad():
        first.wav2vec2.encoder.layer_norm.weight[0] += 0.125
    assert weights_sha256(first) != weights_sha256(base)


_JOB = {"engine": "test"}


def test_a_kill_while_a_layer_file_is_allocated_leaves_a_resumable_write(tmp_path):
    """``kill -9`` after a new layer file's header is written but before its
    space is reserved: the rerun resumes (the file never had its final name)
    and writes a complete store."""
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from fastconvex.store import write as _store_write
        from fastconvex.store import StoreWriter

        def killed(fd, size, *, new):
            os.kill(os.getpid(), signal.SIGKILL)

        writer = StoreWriter({str(tmp_path / "s")!r}, np.arange(50) % 2, resume=True, job={_JOB!r})
        first = writer.allocate(8, np.float32)[0]
        first[:25] = 1.0
        writer.mark_done(0, [first])
        _store_write._reserve = killed
        writer.allocate(8, np.float32)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    partial = tmp_path / ".s.partial"
    assert sorted(p.name for p in partial.glob("layer_*")) == ["layer_000.npy", "layer_001.npy.alloc"]
    writer = StoreWriter(tmp_path / "s", np.arange(50) % 2, resume=True, job=_JOB)
    assert writer.done_blocks() == {0: None}
    first, second = writer.allocate(8, np.float32, count=2)
    first[25:] = 2.0
    second[:] = 3.0
    store = writer.finish()
    assert sorted(p.name for p in store.path.iterdir()) == ["labels", "layer_000.npy", "layer_001.npy", "store.json"]
    np.testing.assert_array_equal(store.layers[0][:, 0], [1.0] * 25 + [2.0] * 25)
    np.testing.assert_array_equal(store.layers[1], np.full((50, 8), 3.0, np.float32))


@pytest.mark.parametrize("damage", ["empty", "header only"])
def test_a_damaged_layer_file_of_a_partial_write_is_named_and_overwrite_starts_over(tmp_path, damage):
    writer = StoreWriter(tmp_path / "s", np.arange(50) % 2, resume=True, job=_JOB)
    first = writer.allocate(8, np.float32)[0]
    first[:25] = 1.0
    writer.mark_done(0, [first])
    del first
    layer = tmp_path / ".s.partial" / "layer_000.npy"
    layer.write_bytes(b"" if damage == "empty" else layer.read_bytes()[:128])
    with pytest.raises(ValueError) as info:
        StoreWriter(tmp_path / "s", np.arange(50) % 2, resume=True, job=_JOB)
    message = str(info.value)
    assert message.startswith(f"{layer}: ") and "cannot be resumed" in message and "overwrite" in message
    writer = StoreWriter(tmp_path / "s", np.arange(50) % 2, resume=True, job=_JOB, overwrite=True)
    assert writer.done_blocks() == {}
    writer.allocate(8, np.float32)[0][:] = 4.0
    np.testing.assert_array_equal(writer.finish().layers[0], np.full((50, 8), 4.0, np.float32))


@pytest.mark.hf
def test_cli_embed_ray_on_a_full_disk_leaves_no_partial_write(speech, tmp_path, capsys, monkeypatch):  # noqa: F811
    """``embed --engine ray``: the layer files cannot be reserved (no space
    left) before any chunk ran: one line naming the file, exit status 1, and
    no partial write left (nothing finished to resume)."""
    pytest.importorskip("ray")
    import errno

    from fastconvex.cli import main
    from fastconvex.store import write as _store_write

    root, _, _ = speech

    def full(fd, size, *, new):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_store_write, "_reserve", full)
    argv = [
        "embed",
        str(root / "model"),
        "--audio",
        str(root / "audio"),
        "--out-dir",
        str(tmp_path / "s"),
        "--quiet",
        "--engine",
        "ray",
        "--chunk-size",
        "4",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        f"fastconvex embed: error: cannot write {str(tmp_path / '.s.partial' / 'layer_000.npy')!r}: "
        "No space left on device\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_errors_name_the_output_not_its_temporary_file(tmp_path):
    from fastconvex.core.atomic import WriteError

    target = tmp_path / "missing" / "x.json"
    with pytest.raises(WriteError) as info, atomic_file(target) as fh:
        fh.write(b"{}")
    assert str(info.value) == f"cannot write {str(target)!r}: No such file or directory"
    target = tmp_path / "gone" / "x.json"
    target.parent.mkdir()
    with pytest.raises(WriteError) as info, atomic_file(target) as fh:
        fh.write(b"{}")
        shutil.rmtree(target.parent)  # the directory goes away before the rename
    assert str(info.value) == f"cannot write {str(target)!r}: No such file or directory"


def _plot_writers(tmp_path, monkeypatch):
    """Each way fastconvex saves a plot, as (path, save()) pairs."""
    from matplotlib.figure import Figure

    import fastconvex.demo.finetune_report as finetune_report
    import fastconvex.demo.report as demo_report
    from fastconvex.commands._report import save_plot

    rng = np.random.default_rng(0)
    layers = [rng.standard_normal((30, 4)).astype(np.float32) for _ in range(2)]
    scores = fc.layer_scores(layers, np.arange(30) % 2, k=3, pairs=50, seed=0)
    store = fc.save_store(tmp_path / "store", layers, np.arange(30) % 2)

    def figure(*args):
        fig = Figure()
        fig.subplots().plot([0, 1])
        return fig

    monkeypatch.setattr(demo_report, "report_figure", figure)
    monkeypatch.setattr(finetune_report, "finetune_figure", figure)
    sweep = tmp_path / "sweep"
    return [
        (tmp_path / "score.png", lambda: save_plot(scores, tmp_path / "score.png", cut=1)),
        (tmp_path / "report.png", lambda: demo_report.plot_report({}, tmp_path / "report.png")),
        (tmp_path / "finetune.png", lambda: demo_report.plot_finetune({}, tmp_path / "finetune.png")),
        (sweep / "sweep.png", lambda: fc.sweep(store.path, out_dir=sweep, k=3, pairs=50, verbose=False)),
    ]


def test_plots_are_written_atomically_and_a_failure_names_the_file(tmp_path, monkeypatch):
    """Every plot fastconvex saves (score/prune --plot, the demo's figures,
    sweep.png): a save that fails part-way (no space left) is one error
    naming the plot, and the earlier plot there stays whole."""
    pytest.importorskip("matplotlib")
    import errno

    from matplotlib.figure import Figure

    from fastconvex.core.atomic import WriteError

    writers = _plot_writers(tmp_path, monkeypatch)
    for path, save in writers:
        save()
        assert path.read_bytes().startswith(b"\x89PNG")
    earlier = {path: path.read_bytes() for path, _ in writers}

    def failing(self, fname, **kw):
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as fh:
                fh.write(b"half")
        else:
            fname.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", failing)
    for path, save in writers:
        files = sorted(path.parent.iterdir())
        with pytest.raises(WriteError) as info:
            save()
        assert str(info.value) == f"cannot write {str(path)!r}: No space left on device"
        assert path.read_bytes() == earlier[path] and sorted(path.parent.iterdir()) == files


def test_chunk_rows_cover_every_utterance_once():
    from fastconvex.hf.embed.job import chunk_rows

    assert chunk_rows(10, 4) == [range(4), range(4, 8), range(8, 10)]
    assert chunk_rows(8, 4) == [range(4), range(4, 8)]
    assert chunk_rows(3, 256) == [range(3)]


@pytest.mark.hf
def test_cli_embed_says_what_a_resume_checks_and_not_when_it_starts_over(speech, tmp_path, capsys, monkeypatch):  # noqa: F811
    """A resumed ``embed`` says that it reads the finished utterances' audio
    again, and that it resumes (silent with --quiet); one that starts over
    an interrupted write of other settings (--overwrite) never says that it
    resumes."""
    from fastconvex.cli import main

    root, _, _ = speech
    out = tmp_path / "s"
    argv = ["embed", str(root / "model"), "--audio", str(root / "audio"), "--out-dir", str(out), "--batch-size", "4"]

    def interrupt():
        _interrupted_embed_command(monkeypatch, capsys, [*argv, "--quiet"])

    interrupt()
    assert main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    shutil.rmtree(out)
    interrupt()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "checking the audio of 12 finished utterance(s) of the interrupted write in" in err
    assert f"resuming the interrupted write in {tmp_path / '.s.partial'}: 3 finished block(s) reused" in err
    shutil.rmtree(out)
    interrupt()
    assert main([*argv[:-1], "3", "--overwrite"]) == 0  # another batch size: started over
    err = capsys.readouterr().err
    assert "resuming" not in err and "checking" not in err
