"""Issue 24, the command line's part: text inputs decoded one way (UTF-8 with
or without a byte-order mark, UTF-16 with one, any line ends), output paths
that would destroy an input refused, Ctrl-C as one line, options that would be
ignored refused, late checks made first, big-integer labels, and label-file
errors that name their file."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_error_line, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from fastconvex.core.text import TextDecodeError, decode_text

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ text inputs

LABELS = ["café", "naïve", "日本"] * 20  # non-ASCII, so a wrong decoding changes the classes

ENCODINGS = {  # name -> (bytes of the byte-order mark, codec)
    "utf-8": (b"", "utf-8"),
    "utf-8-bom": (codecs.BOM_UTF8, "utf-8"),
    "utf-16-le-bom": (codecs.BOM_UTF16_LE, "utf-16-le"),
    "utf-16-be-bom": (codecs.BOM_UTF16_BE, "utf-16-be"),
}


def _encode(lines: list[str], encoding: str, newline: str) -> bytes:
    bom, codec = ENCODINGS[encoding]
    return bom + "".join(line + newline for line in lines).encode(codec)


@pytest.fixture()
def emb(tmp_path):
    rng = np.random.default_rng(0)
    codes = np.array([("café", "naïve", "日本").index(v) for v in LABELS])
    np.save(tmp_path / "emb.npy", (rng.normal(size=(2, len(LABELS), 4)) + codes[:, None]).astype(np.float32))
    return tmp_path


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_labels_in_every_accepted_encoding_score_as_the_plain_file(emb, capsys, suffix, newline, encoding):
    lines = (["label"] if suffix == ".csv" else []) + LABELS
    (emb / f"plain{suffix}").write_bytes(_encode(lines, "utf-8", "\n"))
    (emb / f"other{suffix}").write_bytes(_encode(lines, encoding, newline))
    results = []
    for name in ("plain", "other"):
        code, out, err = run_cli(
            capsys, ["score", emb / "emb.npy", "--labels", emb / f"{name}{suffix}", "--json", "--quiet"]
        )
        assert code == 0, err
        results.append(json.loads(out))
    assert results[1] == results[0]
    assert sorted(results[0]["classes"]) == sorted(set(LABELS))  # no mark, no \r in a class name


_label_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), min_size=1, max_size=8
)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(_label_text, min_size=1, max_size=6),
    encoding=st.sampled_from(list(ENCODINGS)),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_decode_text_reads_the_same_lines_in_every_accepted_encoding(lines, encoding, newline):
    text = decode_text(_encode(lines, encoding, newline), "LABELS 'x.txt'")
    assert text.split("\n") == [*lines, ""]


@pytest.mark.parametrize(
    "data, offset, byte",
    [
        ("a\nb\ncaf\xe9\n".encode("latin-1"), 7, 0xE9),  # Latin-1
        ("a\nb\n".encode("utf-16-le"), 1, 0x00),  # UTF-16 without a mark: valid UTF-8, but NULs
        (codecs.BOM_UTF16_LE + "ab".encode("utf-16-le") + b"\x00\xdc", 6, 0x00),  # a lone low surrogate
    ],
)
def test_other_encodings_are_one_line_naming_the_file_and_byte(emb, capsys, data, offset, byte):
    (emb / "bad.txt").write_bytes(data)
    code, out, err = run_cli(capsys, ["score", emb / "emb.npy", "--labels", emb / "bad.txt"])
    line = one_error_line(err)
    assert code == 1 and out == ""
    assert line.startswith(f"fastconvex score: error: LABELS {str(emb / 'bad.txt')!r}")
    assert f"0x{byte:02x} at offset {offset}" in line


def test_utf32_is_refused_naming_it():
    with pytest.raises(TextDecodeError, match=r"LABELS 'y.txt' is UTF-32 text"):
        decode_text(codecs.BOM_UTF32_LE + "a\n".encode("utf-32-le"), "LABELS 'y.txt'")


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_audio_csv_manifest_in_every_accepted_encoding(tmp_path, encoding):
    from fastconvex.hf import find_audio

    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(b"")  # find_audio checks that the files exist, not their contents
    lines = ["path,label", "a.wav,café", "b.wav,日本"]
    (tmp_path / "plain.csv").write_bytes(_encode(lines, "utf-8", "\n"))
    (tmp_path / "other.csv").write_bytes(_encode(lines, encoding, "\r\n"))
    assert find_audio(tmp_path / "other.csv") == find_audio(tmp_path / "plain.csv")
    assert find_audio(tmp_path / "plain.csv")[1] == ["café", "日本"]


# ------------------------------------------------------------------ outputs never destroy inputs


@pytest.fixture()
def inputs(tmp_path):
    """Every kind of input, in ``tmp_path/in`` (so tmp_path itself is free for outputs)."""
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    (root / "embdir").mkdir(parents=True)
    np.save(root / "emb.npy", (rng.normal(size=(2, 60, 4)) + y[:, None]).astype(np.float32))
    np.save(root / "embdir" / "layer_0.npy", rng.normal(size=(60, 4)).astype(np.float32))
    np.save(root / "y.npy", y)
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    (root / "audio" / "yes").mkdir(parents=True)
    (root / "audio" / "yes" / "a.wav").write_bytes(b"RIFF")
    (root / "clips").mkdir()
    (root / "clips" / "b.wav").write_bytes(b"RIFF")
    (root / "audio.csv").write_text("path,label\nclips/b.wav,no\n")
    (root / "store").mkdir()
    (root / "store" / "store.json").write_text("{}")
    (root / "map.json").write_text('{"0": 0}')
    np.save(root / "len.npy", np.full(60, 4))
    (root / "runs" / "tasks" / "s1").mkdir(parents=True)  # inputs where sweep --out-dir runs writes
    (root / "runs" / "sweep.json").write_text('{"0": 0}')
    (root / "whisper-ct2").mkdir()  # where demo --out-dir writes its saved cut models (whisper-*)
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _destroying_cases(r: Path) -> list[tuple[list, str, str]]:
    """(argv, the error's start after 'error: ', the input it names)."""
    model, audio, csv_ = r / "model", r / "audio", r / "audio.csv"
    score = ["score", r / "emb.npy", "--labels", r / "y.npy"]
    return [
        ([*score, "--out", r / "emb.npy", "--overwrite"], f"--out {str(r / 'emb.npy')!r} is", "EMBEDDINGS"),
        ([*score, "--out", r / "y.npy", "--overwrite"], f"--out {str(r / 'y.npy')!r} is", "LABELS"),
        ([*score, "--plot", r / "emb.npy", "--overwrite"], f"--plot {str(r / 'emb.npy')!r} is", "EMBEDDINGS"),
        (
            ["score", r / "embdir", "--labels", r / "y.npy", "--out", r / "embdir" / "r.json"],
            f"--out {str(r / 'embdir' / 'r.json')!r} lies inside",
            "EMBEDDINGS",
        ),
        ([*score, "--out", r, "--overwrite"], f"--out {str(r)!r} contains", "EMBEDDINGS"),
        (
            [*score, "--measure", "euclidean", "--model", model, "--out", model / "r.json"],
            f"--out {str(model / 'r.json')!r} lies inside",
            "--model",
        ),
        (
            [
                *score,
                "--measure",
                "euclidean",
                "--model",
                model,
                "--lengths",
                r / "len.npy",
                "--out",
                r / "len.npy",
                "--overwrite",
            ],
            f"--out {str(r / 'len.npy')!r} is",
            "--lengths",
        ),
        (
            [
                *score,
                "--measure",
                "euclidean",
                "--model",
                model,
                "--label-map",
                r / "map.json",
                "--plot",
                r / "map.json",
                "--overwrite",
            ],
            f"--plot {str(r / 'map.json')!r} is",
            "--label-map",
        ),
        (["prune", model, "--audio", audio, "--out", model, "--overwrite"], f"--out {str(model)!r} is", "MODEL"),
        (
            ["prune", model, "--audio", audio, "--out", model / "cut"],
            f"--out {str(model / 'cut')!r} lies inside",
            "MODEL",
        ),
        (
            [
                "prune",
                model,
                "--audio",
                audio,
                "--measure",
                "euclidean",
                "--label-map",
                r / "map.json",
                "--out",
                r,
                "--overwrite",
            ],
            f"--out {str(r)!r} writes {str(r / 'map.json')!r}, which is",
            "--label-map",
        ),
        (
            [
                "prune",
                model,
                "--audio",
                audio,
                "--out",
                r.parent / "cut",
                "--embeddings-dir",
                audio / "yes",
                "--overwrite",
            ],
            f"--embeddings-dir {str(audio / 'yes')!r} lies inside",
            "--audio",
        ),
        (["sweep", r / "store", "--out-dir", r / "store"], f"--out-dir {str(r / 'store')!r} is", "STORE"),
        (
            ["sweep", r / "store", "--out-dir", r / "store" / "s"],
            f"--out-dir {str(r / 'store' / 's')!r} lies inside",
            "STORE",
        ),
        (
            ["sweep", r / "runs" / "tasks" / "s1", "--out-dir", r / "runs"],
            f"--out-dir {str(r / 'runs')!r} writes {str(r / 'runs' / 'tasks')!r}, which contains",
            "STORE",
        ),
        (
            ["sweep", r / "runs" / "tasks", "--out-dir", r / "runs"],
            f"--out-dir {str(r / 'runs')!r} writes {str(r / 'runs' / 'tasks')!r}, which is",
            "STORE",
        ),
        (
            [
                "sweep",
                r / "store",
                "--measure",
                "euclidean",
                "--model",
                model,
                "--label-map",
                r / "runs" / "sweep.json",
                "--out-dir",
                r / "runs",
            ],
            f"--out-dir {str(r / 'runs')!r} writes {str(r / 'runs' / 'sweep.json')!r}, which is",
            "--label-map",
        ),
        (
            ["sweep", r / "store", "--measure", "euclidean", "--model", model, "--out-dir", model / "s"],
            f"--out-dir {str(model / 's')!r} lies inside",
            "--model",
        ),
        (
            ["embed", model, "--audio", audio, "--out-dir", audio, "--overwrite"],
            f"--out-dir {str(audio)!r} is",
            "--audio",
        ),
        (
            ["embed", model, "--audio", audio, "--out-dir", model / "store"],
            f"--out-dir {str(model / 'store')!r} lies inside",
            "MODEL",
        ),
        (
            ["embed", model, "--audio", csv_, "--out-dir", r / "clips", "--overwrite"],
            f"--out-dir {str(r / 'clips')!r} contains",
            "file",
        ),
        (
            ["finetune", model, "--audio", audio, "--out-dir", model, "--overwrite"],
            f"--out-dir {str(model)!r} is",
            "MODEL_DIR",
        ),
        (
            ["finetune", model, "--audio", audio, "--out-dir", audio / "yes" / "m"],
            f"--out-dir {str(audio / 'yes' / 'm')!r} lies inside",
            "--audio",
        ),
        (
            ["finetune", model, "--audio", audio, "--out-dir", r, "--overwrite"],
            f"--out-dir {str(r)!r} contains",
            "MODEL_DIR",
        ),
        (
            [
                "finetune",
                model,
                "--audio",
                csv_,
                "--out-dir",
                r.parent / "ft",
                "--labels",
                r / "y.npy",
                "--out",
                r / "y.npy",
                "--overwrite",
            ],
            f"--out {str(r / 'y.npy')!r} is",
            "--labels",
        ),
        (["demo", "--model-dir", model, "--out-dir", model], f"--out-dir {str(model)!r} is", "--model-dir"),
        (
            ["demo", "--model-dir", model, "--out-dir", model / "d"],
            f"--out-dir {str(model / 'd')!r} lies inside",
            "--model-dir",
        ),
        (
            ["demo", "--model-dir", r / "whisper-ct2", "--out-dir", r],
            f"--out-dir {str(r)!r} writes {str(r / 'whisper-ct2')!r}, which is",
            "--model-dir",
        ),
    ]


def test_every_case_list_covers_every_command_with_inputs():
    from fastconvex.cli import COMMANDS
    from fastconvex.commands._paths import INPUTS, OUTPUTS

    assert set(OUTPUTS) == set(INPUTS) == set(COMMANDS)
    # every input of every command (an --audio CSV's listed files count as --audio)
    covered = {
        (argv[0], "--audio" if named.startswith("file") else named) for argv, _, named in _destroying_cases(Path("/r"))
    }
    assert covered == {(c, name) for c, names in INPUTS.items() for _, name in names}


@pytest.mark.parametrize("case", range(len(_destroying_cases(Path("/r")))))
def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused(inputs, capsys, case):
    argv, start, named = _destroying_cases(inputs)[case]
    before = _snapshot(inputs)
    code, out, err = run_cli(capsys, argv)
    line = one_error_line(err)
    assert code == 2 and out == "", err
    assert line.startswith(f"fastconvex {argv[0]}: error: {start} the input {named}"), line
    assert "--overwrite or not" in line
    assert _snapshot(inputs) == before


def test_a_link_to_an_input_is_the_input(inputs, capsys):
    (inputs.parent / "link.npy").symlink_to(inputs / "y.npy")
    (inputs.parent / "hard.npy").hardlink_to(inputs / "emb.npy")
    (inputs.parent / "dirlink").symlink_to(inputs / "model", target_is_directory=True)
    before = _snapshot(inputs)
    for argv, named in (
        (
            [
                "score",
                inputs / "emb.npy",
                "--labels",
                inputs / "y.npy",
                "--out",
                inputs.parent / "link.npy",
                "--overwrite",
            ],
            "LABELS",
        ),
        (
            [
                "score",
                inputs / "emb.npy",
                "--labels",
                inputs / "y.npy",
                "--out",
                inputs.parent / "hard.npy",
                "--overwrite",
            ],
            "EMBEDDINGS",
        ),
        (
            ["finetune", inputs / "model", "--audio", inputs / "audio", "--out-dir", inputs.parent / "dirlink" / "x"],
            "MODEL_DIR",
        ),
    ):
        code, _, err = run_cli(capsys, argv)
        assert code == 2 and f"the input {named} " in one_error_line(err), err
    assert _snapshot(inputs) == before


def test_outputs_beside_the_inputs_are_fine(inputs, capsys):
    code, _out, err = run_cli(
        capsys, ["score", inputs / "emb.npy", "--labels", inputs / "y.npy", "--out", inputs / "emb.json", "--quiet"]
    )
    assert code == 0, err
    assert json.loads((inputs / "emb.json").read_text())["best_layer"] in (0, 1)


# ------------------------------------------------------------------ Ctrl-C at any moment

# Runs the command line as the console script does (``from fastconvex.cli import main;
# sys.exit(main())``) or as ``python -m fastconvex``, and sends itself SIGINT at a chosen
# moment: when a module is first imported, or when a function is first called. The
# moments are events, not delays, so the test is deterministic.
_SIGINT_AT = r"""
import os, runpy, signal, sys

how, kind, target = sys.argv[1:4]
del sys.argv[1:4]
# Python keeps SIGINT ignored when it starts with SIGINT ignored (a job a shell without
# job control starts in the background, as a CI runner may): Ctrl-C reaches a command
# run in the foreground, where SIGINT raises KeyboardInterrupt, so the test runs it so.
signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupt():
    os.kill(os.getpid(), signal.SIGINT)


if kind == "import":
    class Trip:
        def find_spec(self, name, path=None, target_module=None):
            if name == target:
                sys.meta_path.remove(self)
                interrupt()
            return None

    sys.meta_path.insert(0, Trip())
else:
    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name == target:
            sys.setprofile(None)
            interrupt()

    sys.setprofile(profile)
if how == "script":
    from fastconvex.cli import main

    sys.exit(main())
sys.argv[0] = "fastconvex"
runpy.run_module("fastconvex", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("how", ["script", "module"])
@pytest.mark.parametrize(
    "kind, target, line",
    [
        ("import", "numpy", "fastconvex: interrupted"),  # start-up: the parser's imports
        ("import", "numba", "fastconvex score: interrupted"),  # the kernels, once the command runs
        ("import", "fastconvex.commands.prune", "fastconvex: interrupted"),
        ("call", "parse_args", "fastconvex: interrupted"),
        ("call", "load_labels", "fastconvex score: interrupted"),  # the work
        ("call", "layer_scores", "fastconvex score: interrupted"),
        ("call", "emit_report", "fastconvex score: interrupted"),
    ],
)
def test_ctrl_c_at_any_moment_is_one_line_and_status_130(emb, how, kind, target, line):
    import os
    import subprocess
    import sys

    (emb / "y.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _SIGINT_AT,
            how,
            kind,
            target,
            "score",
            str(emb / "emb.npy"),
            "--labels",
            str(emb / "y.txt"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.stderr.splitlines() == [line], proc.stderr
    assert proc.returncode == 130


# ------------------------------------------------------------------ options never silently ignored


@pytest.mark.parametrize(
    "argv, message",
    [
        (["env", "--seed", "3"], "--seed 3 has no effect on env (env draws nothing at random)"),
        (["env", "--device", "cpu"], "--device cpu has no effect on env"),
        (["env", "--backend", "numba"], "--backend numba has no effect on env"),
        (
            ["finetune", "M", "--audio", "A", "--out-dir", "O", "--backend", "numba"],
            "--backend numba has no effect on finetune (finetune computes no convexity",
        ),
        (
            ["embed", "M", "--audio", "A", "--out-dir", "O", "--backend", "triton"],
            "--backend triton has no effect on embed (embed computes no convexity",
        ),
        (["embed", "M", "--audio", "A", "--out-dir", "O", "--seed", "4"], "--seed draws the --max-per-class subsample"),
        (["embed", "M", "--audio", "A", "--out-dir", "O", "--retries", "1"], "--retries applies to --engine ray only"),
        (
            ["embed", "M", "--audio", "A", "--out-dir", "O", "--chunk-size", "9", "--address", "auto"],
            "--address, --chunk-size applies to --engine ray only",
        ),
        (
            ["prune", "M", "--audio", "A", "--out", "O", "--keep", "2", "--rule", "1se"],
            "--keep 2 sets the cut, so --rule 1se (how fastconvex chooses it) would be ignored",
        ),
        (
            ["prune", "M", "--audio", "A", "--out", "O", "--dtype", "float16"],
            "--dtype float16 is the dtype of the --embeddings-dir store",
        ),
        (
            ["prune", "M", "--audio", "A", "--out", "O", "--measure", "euclidean", "--k", "5"],
            "--k applies to graph convexity",
        ),  # was checked after the model was loaded
        (
            ["prune", "M", "--audio", "A", "--out", "O", "--measure", "euclidean", "--mix-lengths"],
            "--embeddings-dir and --mix-lengths apply to graph convexity's pooled states",
        ),
        (["demo", "--out-dir", "O", "--keep", "2", "--rule", "1se"], "--keep 2 sets the cut, so --rule 1se"),
        (["demo", "--out-dir", "O", "--keep", "0"], "--keep must be at least 1"),
        (
            ["demo", "--out-dir", "O", "--tasks", "speakers", "--voices", "3"],
            "--voices applies to the words task, which --tasks speakers does not run",
        ),
        (
            ["demo", "--out-dir", "O", "--tasks", "words", "--asterisk-clips", "3"],
            "--asterisk-clips applies to the asterisk tasks",
        ),
        (
            ["demo", "--out-dir", "O", "--tasks", "words", "--no-fetch"],
            "--no-fetch applies to the speakers and asterisk",
        ),
    ],
)
def test_an_option_that_would_be_ignored_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    import fastconvex.demo

    def no_work(*args, **kwargs):
        raise AssertionError("the demo started before its options were checked")

    monkeypatch.setattr(fastconvex.demo, "run_demo", no_work)
    monkeypatch.chdir(tmp_path)  # "O" is a fresh output path; "M" and "A" exist nowhere
    code, out, err = run_cli(capsys, argv)
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert line.startswith(f"fastconvex {argv[0]}: error: {message}"), line
    assert not (tmp_path / "O").exists()


def test_the_defaults_of_unused_options_are_accepted(capsys):
    code, out, err = run_cli(capsys, ["env", "--seed", "0", "--backend", "auto", "--json"])
    assert code == 0, err
    assert "backends" in json.loads(out)


def test_bench_runs_on_the_device_it_is_given(capsys, monkeypatch):
    import fastconvex.graph.benchmark as bench

    devices = []
    real = bench.graph_convexity

    def recording(*args, **kwargs):
        if kwargs.get("backend") != "naive":
            devices.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "graph_convexity", recording)
    code, out, err = run_cli(
        capsys,
        [
            "bench",
            "--sizes",
            "40",
            "--dim",
            "3",
            "--classes",
            "2",
            "--k",
            "3",
            "--pairs",
            "50",
            "--backend",
            "numba",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert code == 0, err
    assert devices and set(devices) == {"cpu"}
    assert json.loads(out)["device"] == "cpu"


# ------------------------------------------------------------------ checks before minutes of work


def test_demo_keep_beyond_the_encoder_is_refused_before_any_data(tmp_path, capsys, monkeypatch):
    """Whisper tiny.en has 4 encoder blocks: --keep 99 is refused once the model is loaded (seconds),
    before any data set is made or encoded (minutes)."""
    import fastconvex.demo.experiment as experiment

    def no_data(*args, **kwargs):
        raise AssertionError("the data was made before --keep was checked")

    monkeypatch.setattr(experiment, "load_task", no_data)
    code, out, err = run_cli(
        capsys, ["demo", "--out-dir", tmp_path / "o", "--keep", "99", "--tasks", "speakers", "--quiet", "--no-fetch"]
    )
    assert code == 2 and out == ""
    assert one_error_line(err) == "fastconvex demo: error: --keep must be in 1..4 (the encoder's blocks), got 99"


# ------------------------------------------------------------------ integer labels beyond int64

BIG = [-(2**80), 2**64 + 5, 2**70]  # increasing, so their codes are those of 0, 1, 2


def test_integer_labels_beyond_int64_score_as_the_same_labels_remapped_to_small_ints(tmp_path):
    import fastconvex as fc

    rng = np.random.default_rng(0)
    small = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 3)) + small[:, None]
    big = [BIG[i] for i in small]
    for kw in ({"pairs": 200}, {"exact": True, "pairs": None}):
        ref = fc.graph_convexity(x, small.tolist(), k=4, **kw)
        got = fc.graph_convexity(x, big, k=4, **kw)
        assert got.score == ref.score and got.stderr == ref.stderr
        assert got.per_class == {BIG[c]: v for c, v in ref.per_class.items()}
    layers = fc.layer_scores([x, x[::-1].copy()], big, k=4, pairs=200)
    np.testing.assert_array_equal(layers.scores, fc.layer_scores([x, x[::-1].copy()], small, k=4, pairs=200).scores)
    assert layers.classes == BIG
    fc.save_store(tmp_path / "s", [x], big)  # stored by value, every digit kept
    assert list(fc.open_store(tmp_path / "s").labels) == big


# ------------------------------------------------------------------ label-file errors name the file


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda d: (d / "L.txt").write_text("a\nb\na\nb\na\n"),
            "LABELS {L!r} has 5 labels but EMBEDDINGS {E!r} has N = 60 rows per layer",
        ),
        (lambda d: np.save(d / "L.npy", np.zeros(0, np.int64)), "LABELS: L.npy holds no labels (shape (0,))"),
        (
            lambda d: np.save(d / "L.npy", np.where(np.arange(60) == 7, np.nan, np.arange(60) % 3)),
            "LABELS: L.npy has a non-finite label in row 7",
        ),
    ],
)
def test_label_file_errors_name_the_file(tmp_path, capsys, make, message):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "E.npy", rng.normal(size=(2, 60, 4)).astype(np.float32))
    make(tmp_path)
    labels = next(tmp_path.glob("L.*"))
    code, out, err = run_cli(capsys, ["score", tmp_path / "E.npy", "--labels", labels])
    assert code == 1 and out == ""
    assert one_error_line(err) == "fastconvex score: error: " + message.format(L=str(labels), E=str(tmp_path / "E.npy"))


def test_euclidean_label_and_lengths_counts_name_their_files_before_the_model(tmp_path, capsys):
    np.save(tmp_path / "E.npy", np.zeros((2, 6, 3, 4), np.float32))  # (L, N, T, D) frame sequences
    (tmp_path / "L.txt").write_text("a\nb\n" * 3)
    (tmp_path / "short.txt").write_text("a\nb\n")
    np.save(tmp_path / "len.npy", np.full(5, 3))
    base = ["score", tmp_path / "E.npy", "--measure", "euclidean", "--model", tmp_path / "no_model"]
    code, _, err = run_cli(capsys, [*base, "--labels", tmp_path / "short.txt"])
    assert code == 1 and one_error_line(err) == (
        f"fastconvex score: error: LABELS {str(tmp_path / 'short.txt')!r} has 2 labels but EMBEDDINGS "
        f"{str(tmp_path / 'E.npy')!r} has N = 6 items per layer"
    )
    code, _, err = run_cli(capsys, [*base, "--labels", tmp_path / "L.txt", "--lengths", tmp_path / "len.npy"])
    assert code == 1 and one_error_line(err) == (
        f"fastconvex score: error: --lengths {str(tmp_path / 'len.npy')!r} has 5 frame counts but EMBEDDINGS "
        f"{str(tmp_path / 'E.npy')!r} has N = 6 items per layer"
    )
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    code, _, err = run_cli(capsys, [*base, "--labels", tmp_path / "L.txt", "--lengths", tmp_path / "junk.npy"])
    assert code == 1 and one_error_line(err) == (
        f"fastconvex score: error: --lengths: {str(tmp_path / 'junk.npy')!r} is not a .npy file (it lacks the "
        "NumPy header)"
    )


def test_demo_finetune_keeps_beyond_tiny_en_are_refused_before_any_data(tmp_path, capsys, monkeypatch):
    import fastconvex.demo.experiment as experiment

    def no_data(*args, **kwargs):
        raise AssertionError("the data was made before --keeps was checked")

    monkeypatch.setattr(experiment, "load_task", no_data)
    code, out, err = run_cli(
        capsys,
        [
            "demo",
            "--out-dir",
            tmp_path / "o",
            "--finetune",
            "--quick",
            "--keeps",
            "1,9",
            "--tasks",
            "speakers",
            "--quiet",
            "--no-fetch",
        ],
    )
    assert code == 2 and out == ""
    assert one_error_line(err) == "fastconvex demo: error: --keeps: [9] not in 1..4 (Whisper tiny.en's encoder blocks)"
