"""Issue 24, part D review: a byte-order mark inside a labels file, line numbers and hints of
decode errors, --label-map among the inputs, directories written into, the --keeps check."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_error_line, run_cli

from fastconvex.core.text import TextDecodeError, decode_text

# ------------------------------------------------------------------ text inputs


@pytest.mark.parametrize("codec, bom", [("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE)])
def test_two_marked_label_files_joined_with_cat_are_refused_naming_the_line(tmp_path, capsys, codec, bom):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(2, 4, 3)).astype(np.float32))
    a = bom + "yes\nno\n".encode(codec)
    b = bom + "yes\nno\n".encode(codec)
    (tmp_path / "y.txt").write_bytes(a + b)  # cat a.txt b.txt > y.txt
    code, out, err = run_cli(capsys, ["score", tmp_path / "emb.npy", "--labels", tmp_path / "y.txt"])
    line = one_error_line(err)
    assert code == 1 and out == ""
    assert line.startswith(f"fastconvex score: error: LABELS {str(tmp_path / 'y.txt')!r}: a byte-order mark")
    assert "at line 3" in line and "cat" in line


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_decode_errors_count_every_kind_of_line_end(newline):
    data = newline.join(["a", "b", "caf\xe9"]).encode("latin-1")
    with pytest.raises(TextDecodeError, match=r"byte 0xe9 at offset \d+ \(line 3\)"):
        decode_text(data, "LABELS 'y.txt'")
    nul = newline.join(["a", "b", "c\x00"]).encode("utf-8")
    with pytest.raises(TextDecodeError, match=r"byte 0x00 at offset \d+ \(line 3\)"):
        decode_text(nul, "LABELS 'y.txt'")


def test_utf16_decode_errors_get_a_utf16_hint_not_latin1():
    cut = codecs.BOM_UTF16_LE + "ab\ncd\n".encode("utf-16-le") + b"\x00\xdc"  # a lone low surrogate
    with pytest.raises(TextDecodeError) as info:
        decode_text(cut, "LABELS 'y.txt'")
    message = str(info.value)
    assert "not valid UTF-16 LE" in message and "(line 3)" in message
    assert "latin1" not in message and "cut short or damaged" in message
    with pytest.raises(TextDecodeError, match="iconv -f latin1"):
        decode_text(b"caf\xe9\n", "LABELS 'y.txt'")


# ------------------------------------------------------------------ directories written into


def _path_check(argv):
    """The command line's output-path check (cli.main runs it before any work)."""
    from fastconvex.cli import build_parser
    from fastconvex.commands._paths import check_outputs_spare_inputs

    check_outputs_spare_inputs(build_parser().parse_args([str(a) for a in argv]))


def _store(path: Path) -> Path:
    import fastconvex as fc

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 12)
    fc.save_store(path, [(rng.normal(size=(24, 3)) + 3 * y[:, None]).astype(np.float32) for _ in range(2)], y)
    return path


def test_sweep_into_the_directory_holding_its_store_runs_and_spares_the_store(tmp_path, capsys, monkeypatch):
    stores = tmp_path / "stores"
    _store(stores / "s2")
    before = {p: p.read_bytes() for p in (stores / "s2").rglob("*") if p.is_file()}
    monkeypatch.chdir(stores)  # cd stores; fastconvex sweep s2 --out-dir .
    code, _out, err = run_cli(capsys, ["sweep", "s2", "--out-dir", ".", "--k", "4", "--pairs", "100", "--quiet"])
    assert code == 0, err
    assert json.loads((stores / "sweep.json").read_text())["stores"]
    assert {p: p.read_bytes() for p in (stores / "s2").rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    "layout",
    [
        lambda r: ["sweep", r / "runs" / "s1", "--out-dir", r / "runs"],
        lambda r: [
            "sweep",
            r / "runs" / "s1",
            "--measure",
            "euclidean",
            "--model",
            r / "runs" / "clf",
            "--label-map",
            r / "runs" / "map.json",
            "--out-dir",
            r / "runs",
        ],
        lambda r: ["prune", r / "runs" / "clf", "--audio", r / "runs" / "audio", "--out", r / "runs"],
        lambda r: ["demo", "--model-dir", r / "runs" / "tiny-ct2", "--out-dir", r / "runs"],
    ],
)
def test_an_input_beside_what_a_directory_command_writes_is_accepted(tmp_path, layout):
    for d in ("s1", "clf", "audio", "tiny-ct2"):
        (tmp_path / "runs" / d).mkdir(parents=True)
    (tmp_path / "runs" / "map.json").write_text("{}")
    _path_check(layout(tmp_path))  # no UsageError


def test_prune_spares_listed_audio_inside_its_out_dir(tmp_path):
    from fastconvex.cli import build_parser
    from fastconvex.commands._paths import check_listed_audio

    (tmp_path / "runs" / "clips").mkdir(parents=True)
    (tmp_path / "runs" / "audio.csv").write_text("path,label\nclips/a.wav,x\n")
    args = build_parser().parse_args(
        ["prune", str(tmp_path / "m"), "--audio", str(tmp_path / "runs" / "audio.csv"), "--out", str(tmp_path / "runs")]
    )
    check_listed_audio(args, [tmp_path / "runs" / "clips" / "a.wav"])  # no UsageError


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            lambda r: ["sweep", r / "runs" / "s1", "--out-dir", r / "runs" / "s1"],
            "--out-dir '{runs}/s1' is the input STORE",
        ),
        (
            lambda r: ["sweep", r / "runs" / "s1", "--out-dir", r / "runs" / "s1" / "o"],
            "/o' lies inside the input STORE",
        ),
        (
            lambda r: [
                "score",
                r / "runs" / "s1",
                "--labels",
                r / "runs" / "y.npy",
                "--out",
                r / "runs" / "s1" / "r.json",
            ],
            "/r.json' lies inside the input EMBEDDINGS",
        ),
        (
            lambda r: [
                "prune",
                r / "runs" / "clf",
                "--audio",
                r / "runs" / "audio",
                "--out",
                r / "runs" / "clf" / "cut",
            ],
            "/cut' lies inside the input MODEL",
        ),
        (
            lambda r: [
                "finetune",
                r / "runs" / "clf",
                "--audio",
                r / "runs" / "audio",
                "--out-dir",
                r / "runs",
                "--overwrite",
            ],
            "--out-dir '{runs}' contains the input MODEL_DIR",
        ),  # replaced whole
        (
            lambda r: [
                "embed",
                r / "runs" / "clf",
                "--audio",
                r / "runs" / "audio",
                "--out-dir",
                r / "runs",
                "--overwrite",
            ],
            "--out-dir '{runs}' contains the input MODEL",
        ),  # replaced whole
        (
            lambda r: ["sweep", r / "runs" / "s1", "--out-dir", r / "runs" / "linked"],
            "writes '{runs}/linked/tasks', a link to '{runs}/s1', which is the input STORE",
        ),
    ],
)
def test_what_would_change_an_input_is_still_refused(tmp_path, capsys, argv, message):
    runs = tmp_path / "runs"
    for d in ("s1", "clf", "audio", "linked"):
        (runs / d).mkdir(parents=True)
    np.save(runs / "y.npy", np.zeros(3))
    (runs / "linked" / "tasks").symlink_to(runs / "s1", target_is_directory=True)
    argv = argv(tmp_path)
    code, out, err = run_cli(capsys, argv)
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert message.format(runs=str(runs)) in line, line
    assert "--overwrite or not" in line


def test_the_names_written_into_directories_are_those_the_writers_use():
    import fnmatch

    from fastconvex.commands import prune
    from fastconvex.commands._paths import WRITTEN
    from fastconvex.hf.models import save as _prune_io
    from fastconvex.sweeps import output as _sweep_out

    def claimed(key, name):
        return any(fnmatch.fnmatchcase(name, p) for p in WRITTEN[key])

    for name in (*_sweep_out.OUTPUTS, _sweep_out.LOCK_FILE, _sweep_out.HOLDER_FILE, "tasks"):
        assert claimed(("sweep", "--out-dir"), name), name
    for name in (
        prune.REPORT_FILE,
        prune.PLOT_FILE,
        _prune_io.PROVENANCE_FILE,
        "config.json",
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "preprocessor_config.json",
        "generation_config.json",
        ".fastconvex-staging-1a2b3c4d",
    ):
        assert claimed(("prune", "--out"), name), name
    for name in ("report.json", "demo.png", "finetune.png", "finetune", "whisper-tiny.en-words-keep2"):
        assert claimed(("demo", "--out-dir"), name), name


# ------------------------------------------------------------------ demo --finetune --keeps


@pytest.mark.parametrize(
    "models, keeps, message",
    [
        ("base", "7", "--keeps: [7] not in 1..6 (Whisper base's encoder blocks)"),
        ("tiny.en,base", "2,5", "--keeps: [5] not in 1..4 (Whisper tiny.en's encoder blocks)"),
    ],
)
def test_demo_finetune_keeps_beyond_any_models_blocks_are_refused_before_the_model_loads(
    tmp_path, capsys, monkeypatch, models, keeps, message
):
    import fastconvex.demo.experiment as experiment
    import fastconvex.hf.ct2_whisper as ct2
    import fastconvex.hf.whisper_models  # noqa: F401  (imported now, it binds the real loader, not the patch)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before --keeps was checked")

    monkeypatch.setattr(ct2, "load_ct2_whisper", no_model)
    monkeypatch.setattr(experiment, "load_task", no_model)
    code, out, err = run_cli(
        capsys,
        [
            "demo",
            "--out-dir",
            tmp_path / "o",
            "--finetune",
            "--quick",
            "--models",
            models,
            "--keeps",
            keeps,
            "--tasks",
            "speakers",
            "--quiet",
            "--no-fetch",
        ],
    )
    assert code == 2 and out == ""
    assert one_error_line(err) == f"fastconvex demo: error: {message}"
    assert not (tmp_path / "o").exists()


def test_the_known_block_counts_are_the_models():
    from fastconvex.demo.experiment import ENCODER_BLOCKS
    from fastconvex.hf.whisper_models import WHISPER_MODELS, load_whisper

    assert set(ENCODER_BLOCKS) == set(WHISPER_MODELS)
    for name, n_blocks in ENCODER_BLOCKS.items():
        model, _ = load_whisper(name)
        assert len(model.model.encoder.layers) == n_blocks, name
