"""Issue 13: every CLI error is one line on stderr naming the argument or file,
exit status 2 (usage) or 1 (data), no traceback (``--debug`` shows it); output
paths are checked before the work; the JSON is written before the plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_cli

import fastconvex as fc
from fastconvex.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _one_line(err: str, prefix: str) -> str:
    """The whole of stderr is one error line (logs aside) and no traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(prefix), err
    return errors[0]


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    np.save(tmp_path / "emb.npy", (rng.normal(size=(2, 60, 4)) + y[:, None]).astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    return tmp_path


def _score(path, *extra):
    return ["score", path / "emb.npy", "--labels", path / "y.npy", *extra]


# ------------------------------------------------------------------ data errors (1)


def test_empty_layer_stack_is_a_data_error(files, capsys):
    np.save(files / "empty.npy", np.zeros((0, 60, 4), np.float32))
    code, out, err = run_cli(capsys, ["score", files / "empty.npy", "--labels", files / "y.npy"])
    assert code == 1 and out == ""
    assert "empty.npy has shape (0, 60, 4): no layer to score" in _one_line(err, "fastconvex score: error:")


def test_ragged_object_labels_are_named_not_a_numpy_message(files, capsys):
    np.save(files / "ragged.npy", np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    code, _, err = run_cli(capsys, ["score", files / "emb.npy", "--labels", files / "ragged.npy"])
    line = _one_line(err, "fastconvex score: error: LABELS:")
    assert code == 1
    assert "holds Python objects (dtype object, such as ragged lists)" in line
    assert "allow_pickle" not in line


def test_a_non_npy_or_truncated_file_is_named_without_unpickling_advice(files, capsys):
    (files / "notes.npy").write_bytes(b"hello, not an array")
    whole = (files / "emb.npy").read_bytes()
    (files / "half.npy").write_bytes(whole[: len(whole) // 2])
    for argv, what, why in (
        (["score", files / "notes.npy", "--labels", files / "y.npy"], "EMBEDDINGS", "is not a .npy file"),
        (["score", files / "emb.npy", "--labels", files / "notes.npy"], "LABELS", "is not a .npy file"),
        (["score", files / "half.npy", "--labels", files / "y.npy"], "EMBEDDINGS", "is truncated"),
    ):
        code, out, err = run_cli(capsys, argv)
        line = _one_line(err, f"fastconvex score: error: {what}:")
        assert code == 1 and out == ""
        assert f"{str(argv[1] if what == 'EMBEDDINGS' else argv[3])!r} {why}" in line
        assert "pickle" not in line and "mmap" not in line


def test_non_utf8_label_text(files, capsys):
    (files / "latin.txt").write_bytes(("a\n" * 30 + "caf\xe9\n" * 30).encode("latin-1"))
    code, _, err = run_cli(capsys, ["score", files / "emb.npy", "--labels", files / "latin.txt"])
    assert code == 1
    assert "latin.txt': byte 0xe9 at offset 63 (line 31) is not valid UTF-8" in _one_line(
        err, "fastconvex score: error:"
    )
    (files / "latin.csv").write_bytes(("label\n" + "caf\xe9\n" * 60).encode("latin-1"))
    code, _, err = run_cli(capsys, ["score", files / "emb.npy", "--labels", files / "latin.csv"])
    assert code == 1 and "latin.csv': byte 0xe9 at offset 9 (line 2) is not valid UTF-8" in err


def test_headerless_csv_does_not_lose_its_first_label(files, capsys):
    (files / "plain.csv").write_text("".join(f"c{v}\n" for v in np.repeat(np.arange(3), 20)))
    code, out, err = run_cli(capsys, ["score", files / "emb.npy", "--labels", files / "plain.csv"])
    assert code == 1 and out == ""
    line = _one_line(err, "fastconvex score: error: LABELS: plain.csv")
    assert "its first row 'c0' is not 'label'" in line and "--label-column 'c0'" in line
    # with a header line the same labels score (60 of them, none lost)
    (files / "headed.csv").write_text("label\n" + (files / "plain.csv").read_text())
    code, out, _ = run_cli(capsys, ["score", files / "emb.npy", "--labels", files / "headed.csv", "--json", "--quiet"])
    assert code == 0 and json.loads(out)["layers"][0]["n_points"] == 60


def test_k_too_large_for_the_data(files, capsys):
    code, _, err = run_cli(capsys, _score(files, "--k", "60"))
    assert code == 1 and "k must be < the number of points N=60" in _one_line(err, "fastconvex score: error:")


# ------------------------------------------------------------------ usage errors (2)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "--classes", "0"], "argument --classes: must be at least 1, got 0"),
        (["bench", "--repeat", "0"], "argument --repeat: must be at least 1, got 0"),
        (
            ["bench", "--sizes", "20", "--classes", "15", "--k", "3"],
            "--classes 15 leaves fewer than 2 points per class",
        ),
        (["score", "x.npy"], "the following arguments are required: --labels"),
        (["score", "x.npy", "--labels", "y.npy", "--k", "zero"], "argument --k: expected an integer, got 'zero'"),
        (["score", "x.npy", "--labels", "y.npy", "--sources", "0"], "argument --sources: must be at least 1, got 0"),
        (["score", "x.npy", "--labels", "y.npy", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["sweep", "s", "--out-dir", "o", "--seed", "-3"], "argument --seed: must be at least 0, got -3"),
        # --sampling-rate 0 was taken as "the model's rate" (ignored); -5 failed on "lengths" after loading
        (
            ["embed", "m", "--audio", "a", "--out-dir", "s", "--sampling-rate", "0"],
            "argument --sampling-rate: must be at least 1, got 0",
        ),
        (
            ["prune", "m", "--audio", "a", "--out", "o", "--sampling-rate", "-5"],
            "argument --sampling-rate: must be at least 1, got -5",
        ),
    ],
)
def test_usage_errors_are_one_line_with_status_2(capsys, argv, message):
    code, out, err = run_cli(capsys, argv)
    assert code == 2 and out == ""
    assert message in _one_line(err, f"fastconvex {argv[0]}: error:")
    assert len(err.strip().splitlines()) == 1  # no usage block above it


def test_label_column_with_npy_labels_is_not_ignored(files, capsys):
    code, _, err = run_cli(capsys, _score(files, "--label-column", "speaker"))
    assert code == 2
    assert "--label-column applies to .csv labels only, not to y.npy" in _one_line(err, "fastconvex score: error:")


# ------------------------------------------------------------------ outputs checked first


def _no_scoring(err):
    assert "scoring" not in err  # the check came before the work


def test_out_an_existing_directory_fails_before_scoring(files, capsys, monkeypatch):
    called = []
    monkeypatch.setattr(fc, "layer_scores", lambda *a, **k: called.append(1))
    (files / "results").mkdir()  # not the directory of the inputs: that one is refused as holding them
    code, out, err = run_cli(capsys, _score(files, "--out", files / "results"))
    assert code == 2 and out == "" and not called
    assert f"--out {str(files / 'results')!r} is a directory; give a file name" in _one_line(
        err, "fastconvex score: error:"
    )
    _no_scoring(err)
    code, _, err = run_cli(capsys, _score(files, "--out", files / "missing" / "r.json"))
    assert code == 2 and "does not exist; create it first" in err and not called


def test_plot_with_a_suffix_matplotlib_cannot_write_fails_before_scoring(files, capsys):
    code, out, err = run_cli(capsys, _score(files, "--plot", files / "out.txt", "--out", files / "r.json"))
    assert code == 2 and out == ""
    assert "matplotlib cannot write '.txt' files; use one of" in _one_line(err, "fastconvex score: error:")
    _no_scoring(err)
    assert not (files / "r.json").exists()


def test_plot_without_matplotlib_fails_before_scoring(files, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backend_bases", None)
    code, _, err = run_cli(capsys, _score(files, "--plot", files / "p.png"))
    assert code == 2
    assert "--plot needs matplotlib, which is not installed: pip install 'fastconvex[plot]'" in _one_line(
        err, "fastconvex score: error:"
    )
    _no_scoring(err)


def test_a_plot_that_fails_keeps_the_json_and_says_why(files, capsys, monkeypatch):
    import fastconvex.plot

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer ran out of ink")

    monkeypatch.setattr(fastconvex.plot, "plot_layer_scores", broken)
    code, out, err = run_cli(capsys, _score(files, "--out", files / "r.json", "--plot", files / "p.png"))
    assert code == 1
    line = _one_line(err, "fastconvex score: error: --plot")
    assert "the renderer ran out of ink" in line and f"the scores are in {files / 'r.json'}" in line
    expected = json.loads(
        json.dumps(fc.layer_scores(list(np.load(files / "emb.npy")), np.load(files / "y.npy")).to_dict())
    )
    assert json.loads((files / "r.json").read_text()) == expected
    assert "layer" in out  # the table was printed too
    assert not (files / "p.png").exists()
    assert [p.name for p in files.iterdir() if p.name.endswith(".tmp")] == []  # atomic write left nothing


def test_plot_name_without_suffix_logs_the_file_written(files, capsys):
    code, _, err = run_cli(capsys, _score(files, "--plot", files / "curve"))
    assert code == 0
    assert f"wrote {files / 'curve.png'}" in err
    assert (files / "curve.png").read_bytes()[:4] == b"\x89PNG" and not (files / "curve").exists()


def test_out_never_replaces_an_existing_file_without_overwrite(files, capsys, monkeypatch):
    called = []
    monkeypatch.setattr(fc, "layer_scores", lambda *a, **k: called.append(1))
    labels_before = (files / "y.npy").read_bytes()
    (files / "p.png").write_bytes(b"an earlier plot")
    # --out naming an input file (or any existing file): refused before the work, the file intact
    for target, option, why in (
        (files / "y.npy", "--out", "is the input LABELS"),
        (files / "p.png", "--plot", "already exists"),
    ):
        code, out, err = run_cli(capsys, _score(files, option, target))
        assert code == 2 and out == "" and not called
        line = _one_line(err, "fastconvex score: error:")
        assert f"{option} {str(target)!r} {why}" in line and "--overwrite" in line
    assert (files / "y.npy").read_bytes() == labels_before
    assert (files / "p.png").read_bytes() == b"an earlier plot"
    (files / "r.json").write_text("precious")
    for argv in (
        ["env", "--out", files / "r.json"],
        ["bench", "--sizes", "30", "--dim", "2", "--classes", "2", "--out", files / "r.json"],
    ):
        code, out, err = run_cli(capsys, argv)
        assert code == 2 and out == ""
        assert f"--out {str(files / 'r.json')!r} already exists" in _one_line(err, f"fastconvex {argv[0]}: error:")
    assert (files / "r.json").read_text() == "precious"
    monkeypatch.undo()
    code, _, err = run_cli(capsys, _score(files, "--out", files / "r.json", "--overwrite"))
    assert code == 0, err
    assert "scores" in json.loads((files / "r.json").read_text())


def test_bench_out_is_checked_before_the_benchmark(files, capsys, monkeypatch):
    import fastconvex.graph.benchmark

    monkeypatch.setattr(fastconvex.graph.benchmark, "compare_to_naive", lambda *a, **k: pytest.fail("benchmark ran"))
    code, out, err = run_cli(capsys, ["bench", "--sizes", "30", "--out", files / "missing" / "b.json"])
    assert code == 2 and out == ""
    assert "does not exist; create it first" in _one_line(err, "fastconvex bench: error:")


def test_prune_refuses_a_non_empty_out_directory_before_the_model(tmp_path, capsys):
    out_dir = tmp_path / "model"  # say, the model being pruned
    out_dir.mkdir()
    (out_dir / "config.json").write_text("{}")
    code, out, err = run_cli(capsys, ["prune", out_dir, "--audio", tmp_path / "no_audio", "--out", out_dir])
    assert code == 2 and out == ""
    line = _one_line(err, "fastconvex prune: error:")
    assert f"--out {str(out_dir)!r} is the input MODEL" in line and "--overwrite or not" in line
    assert (out_dir / "config.json").read_text() == "{}"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "old").write_text("")
    code, out, err = run_cli(capsys, ["prune", out_dir, "--audio", tmp_path / "no_audio", "--out", tmp_path / "x"])
    assert f"--out {str(tmp_path / 'x')!r} exists and is not empty" in _one_line(err, "fastconvex prune: error:")


# ------------------------------------------------------------------ tracebacks


def test_internal_errors_are_one_line_and_debug_shows_the_traceback(files, capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("unexpected")

    monkeypatch.setattr(fc, "layer_scores", bug)
    code, _, err = run_cli(capsys, _score(files))
    assert code == 1
    line = _one_line(err, "fastconvex score: internal error: KeyError")
    assert "rerun with --debug for the traceback" in line
    with pytest.raises(KeyError):
        main([str(a) for a in _score(files, "--debug")])


def test_interrupt_is_one_line_with_status_130(files, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fc, "layer_scores", interrupted)
    code, _, err = run_cli(capsys, _score(files))
    assert code == 130 and err.strip().splitlines()[-1] == "fastconvex score: interrupted"


@pytest.mark.parametrize(
    "argv,status,message",
    [
        (["bench", "--repeat", "0"], 2, "fastconvex bench: error: argument --repeat"),
        (["score", "{tmp}/empty.npy", "--labels", "{tmp}/y.npy"], 1, "no layer to score"),
        (["score", "{tmp}/emb.npy", "--labels", "{tmp}/y.npy", "--out", "{tmp}"], 2, "contains the input EMBEDDINGS"),
    ],
)
def test_subprocess_exit_status_and_no_traceback(files, argv, status, message):
    np.save(files / "empty.npy", np.zeros((0, 60, 4), np.float32))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "fastconvex", *[a.format(tmp=files) for a in argv]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == status, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ prune: audio before the model


@pytest.fixture()
def clips(tmp_path):
    sf = pytest.importorskip("soundfile")
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / "clips" / name, (0.1 * rng.standard_normal(3200)).astype(np.float32), 16000)
    sf.write(tmp_path / "clips" / "tiny.wav", np.zeros(10, np.float32), 16000)
    return tmp_path


def test_prune_csv_header_is_not_a_file_and_is_checked_before_the_model(clips, capsys):
    (clips / "list.csv").write_text("file,speaker\nclips/a.wav,x\nclips/b.wav,y\n")
    # MODEL does not exist either: the audio list is checked first
    code, out, err = run_cli(capsys, ["prune", clips / "no_model", "--audio", clips / "list.csv", "--out", clips / "o"])
    assert code == 2 and out == ""
    line = _one_line(err, "fastconvex prune: error:")
    assert "line 1 ['file', 'speaker'] looks like a header row but does not name the columns 'path' and 'label'" in line
    assert "loading" not in err and not (clips / "o").exists()
    (clips / "gone.csv").write_text("clips/a.wav,x\nclips/gone.wav,y\n")
    code, _, err = run_cli(capsys, ["prune", clips / "no_model", "--audio", clips / "gone.csv", "--out", clips / "o"])
    assert code == 2
    assert "line 2 lists" in err and "gone.wav', which does not exist" in _one_line(err, "fastconvex prune: error:")


@pytest.mark.hf
def test_audio_errors_name_the_file(clips):
    pytest.importorskip("transformers")
    from fastconvex import hf
    from fastconvex.hf.testing import tiny_model

    model, fe = tiny_model("wav2vec2", layers=2, seed=0)
    audio = hf.AudioFiles([clips / "clips" / n for n in ("a.wav", "b.wav", "tiny.wav")])
    with pytest.raises(ValueError) as info:
        hf.pooled_hidden_states(model, audio, sampling_rate=16000, feature_extractor=fe, progress=False)
    assert f"audio file {str(clips / 'clips' / 'tiny.wav')!r} (waveforms[2]) has 10 samples, too short" in str(
        info.value
    )


def test_warnings_are_one_line_too(files, capsys):
    """A long double .npy scores in float64, and the CLI says so in one line."""
    x = np.load(files / "emb.npy").astype(np.longdouble)
    x[0, 3, 1] += np.longdouble(2.0) ** -60 if np.finfo(np.longdouble).nmant > 52 else 0
    np.save(files / "long.npy", x)
    code, out, err = run_cli(capsys, ["score", files / "long.npy", "--labels", files / "y.npy", "--json"])
    assert code == 0 and json.loads(out)["layers"][0]["n_points"] == 60
    if np.finfo(np.longdouble).nmant > 52:
        warning = [line for line in err.splitlines() if "warning" in line]
        assert len(warning) == 1, err
        assert warning[0].startswith("fastconvex score: warning: hidden_states[0] has dtype float128: 1 value(s)")


def test_table_json_and_progress_lines(files, capsys):
    """Default: the table on stdout, progress as log lines on stderr (not a
    terminal); --json or --out - : JSON on stdout; --quiet: nothing on stderr."""
    code, out, err = run_cli(capsys, _score(files, "--pairs", "40"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("graph convexity of 2 layer(s): N=60, k=10, estimator pairs, 120 pairs per layer")
    result = fc.layer_scores(list(np.load(files / "emb.npy")), np.load(files / "y.npy"), pairs=40)
    row = lines[3 + result.best_layer].split()
    assert row[-2:] == ["<-", "best"]
    assert row[2] == f"{100 * result.scores[result.best_layer]:.2f}"  # rounded for display only
    lo, hi = result.intervals()[result.best_layer]
    assert f"{100 * lo:6.2f}-{100 * hi:6.2f}".strip() in lines[3 + result.best_layer]
    assert "layers: 100%" in err and "2/2 layers" in err and "\r" not in err
    for flag in (["--json"], ["--out", "-"]):
        code, out, _ = run_cli(capsys, _score(files, "--pairs", "40", *flag))
        assert code == 0 and json.loads(out) == json.loads(json.dumps(result.to_dict()))
    code, out, err = run_cli(capsys, _score(files, "--pairs", "40", "--quiet"))
    assert code == 0 and err == "" and out.startswith("graph convexity")


def test_empty_npy_and_out_equal_to_plot_are_one_line_errors(files, capsys):
    """An empty .npy was an internal error (EOFError); --out and --plot naming
    one file let the plot replace the JSON just written."""
    (files / "empty.npy").write_bytes(b"")
    code, out, err = run_cli(capsys, ["score", files / "empty.npy", "--labels", files / "y.npy"])
    assert code == 1 and out == ""
    assert "'" + str(files / "empty.npy") + "' is empty (0 bytes)" in _one_line(err, "fastconvex score: error:")
    code, out, err = run_cli(capsys, _score(files, "--out", files / "r.png", "--plot", files / "r.png"))
    assert code == 2 and out == "" and not (files / "r.png").exists()
    assert "--out and --plot name the same file" in _one_line(err, "fastconvex score: error:")
