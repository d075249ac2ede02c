"""``fastconvex finetune`` end to end on wav files and tiny saved models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from cli_run import run_cli  # noqa: E402

from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

RATE = 16000


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``audio/<low|high>/<speaker>_<i>.wav`` tones, a CSV with a speaker column, and a
    saved tiny wav2vec2 and Whisper (2 s window)."""
    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    t = np.arange(RATE // 4) / RATE
    rows = ["path,label,speaker"]
    for i in range(32):
        label, freq = ("low", 300.0) if i % 2 == 0 else ("high", 3000.0)
        wave = rng.uniform(0.3, 1) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6)) + 0.05 * rng.normal(size=t.size)
        path = root / "audio" / label / f"s{i % 4}_{i:02d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), RATE)
        rows.append(f"{path.relative_to(root)},{label},s{i % 4}")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    model, fe = tiny_model("wav2vec2", head="ctc")
    model.save_pretrained(root / "w2v")
    fe.save_pretrained(root / "w2v")
    model, _ = tiny_model("whisper", head="ctc", max_source_positions=100)
    model.save_pretrained(root / "whisper")
    transformers.WhisperFeatureExtractor(feature_size=8, chunk_length=2).save_pretrained(root / "whisper")
    return root


def test_finetune_writes_the_model_and_json(data, capsys, tmp_path):
    out = tmp_path / "ft"
    code, stdout, err = run_cli(
        capsys,
        [
            "finetune",
            data / "w2v",
            "--audio",
            data / "audio",
            "--out-dir",
            out,
            "--epochs",
            "5",
            "--lr",
            "3e-3",
            "--batch-size",
            "8",
            "--json",
            "--out",
            tmp_path / "result.json",
        ],
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report == json.loads((tmp_path / "result.json").read_text())
    saved = json.loads((out / "fastconvex_finetune.json").read_text())
    assert saved["accuracy"] == report["accuracy"] >= 0.9
    assert (report["n_train"], report["n_eval"]) == (26, 6) or report["n_train"] + report["n_eval"] == 32
    assert report["settings"]["lr"] == 3e-3 and report["settings"]["seed"] == 0
    assert report["versions"]["transformers"] == transformers.__version__
    assert report["model_class"] == "Wav2Vec2ForSequenceClassification"
    back = transformers.AutoModelForAudioClassification.from_pretrained(out)
    assert back.config.id2label == {0: "high", 1: "low"}
    assert sum(p.numel() for p in back.parameters()) == report["params"]
    assert "fine-tuning" in err  # the progress bar (or its log lines) on stderr


def test_finetune_whisper_context_and_groups(data, capsys, tmp_path):
    out = tmp_path / "ft"
    code, stdout, err = run_cli(
        capsys,
        [
            "finetune",
            data / "whisper",
            "--audio",
            data / "clips.csv",
            "--groups-column",
            "speaker",
            "--eval-split",
            "0.25",
            "--context-seconds",
            "1",
            "--out-dir",
            out,
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert code == 0, err
    assert err == "" and "held-out accuracy" in stdout
    report = json.loads((out / "fastconvex_finetune.json").read_text())
    assert report["n_eval"] == 8 and report["settings"]["groups"] is True
    assert report["settings"]["context_seconds"] == 1.0
    assert transformers.AutoConfig.from_pretrained(out).max_source_positions == 50
    assert transformers.AutoFeatureExtractor.from_pretrained(out).n_samples == RATE


def test_finetune_with_a_labels_file(data, capsys, tmp_path):
    labels = ["even" if i % 4 < 2 else "odd" for i in range(32)]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    code, _, err = run_cli(
        capsys,
        [
            "finetune",
            data / "w2v",
            "--audio",
            data / "audio",
            "--labels",
            tmp_path / "labels.txt",
            "--out-dir",
            tmp_path / "ft",
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert code == 0, err
    assert transformers.AutoConfig.from_pretrained(tmp_path / "ft").id2label == {0: "even", 1: "odd"}


@pytest.mark.parametrize(
    "extra,status,message",
    [
        (["--audio", "missing_dir"], 2, "does not exist"),
        (["--context-seconds", "1"], 2, "--context-seconds is for Whisper models"),
        (["--truncate"], 2, "--truncate is for Whisper models"),
        (["--groups-column", "speaker"], 2, "--groups-column needs --audio to be a CSV"),
        (["--epochs", "0"], 2, "must be a positive number"),
        (["--eval-split", "1"], 2, "--eval-split must be a fraction below 1"),
        (["--labels", "LABELS3"], 1, "labels3.txt' has 3 labels but --audio"),
        (["--out-dir", "TAKEN"], 2, "exists and is not empty"),
        (["--out", "NODIR/result.json"], 2, "does not exist"),
    ],
)
def test_bad_input_is_one_line(data, capsys, tmp_path, extra, status, message):
    (tmp_path / "labels3.txt").write_text("a\nb\na\n")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    subst = {
        "LABELS3": tmp_path / "labels3.txt",
        "TAKEN": tmp_path / "taken",
        "NODIR/result.json": tmp_path / "nodir" / "result.json",
        "missing_dir": tmp_path / "missing_dir",
    }
    extra = [subst.get(a, a) for a in extra]
    argv = [
        "finetune",
        data / "w2v",
        "--audio",
        data / "audio",
        "--out-dir",
        tmp_path / "out",
        "--epochs",
        "1",
        "--quiet",
        *extra,
    ]
    code, _stdout, err = run_cli(capsys, argv)
    assert code == status, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "taken" / "x").read_text() == "keep"


def test_a_missing_model_directory_is_refused_before_reading_audio(data, capsys, tmp_path):
    """Not quiet: the error is the only line, before any audio is listed."""
    code, _, err = run_cli(
        capsys, ["finetune", tmp_path / "no_model", "--audio", data / "audio", "--out-dir", tmp_path / "out"]
    )
    assert code == 2 and err.strip().splitlines() == [
        f"fastconvex finetune: error: MODEL {str(tmp_path / 'no_model')!r} is not a model directory"
    ]


def test_track_convexity_writes_the_history_beside_the_model(data, capsys, tmp_path):
    """--track-convexity: a held-out probe scored before training and at each epoch
    end; convexity.jsonl, convexity.png and the report's points agree, and the
    first point is layer_scores of the loaded model on the probe (the oracle)."""
    import fastconvex as fc
    from fastconvex import hf

    out = tmp_path / "ft"
    argv = [
        "finetune",
        data / "w2v",
        "--audio",
        data / "audio",
        "--out-dir",
        out,
        "--epochs",
        "2",
        "--lr",
        "3e-3",
        "--batch-size",
        "8",
        "--eval-split",
        "0.5",
        "--track-convexity",
        "--probe-size",
        "16",
    ]
    code, stdout, err = run_cli(capsys, [*argv, "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    points = report["convexity"]
    assert [p["step"] for p in points] == [0, 2, 4] and [p["epoch"] for p in points] == [0.0, 1.0, 2.0]
    lines = [json.loads(line) for line in (out / "convexity.jsonl").read_text().splitlines()]
    assert [line["scores"] for line in lines] == [p["scores"] for p in points]
    assert (out / "convexity.png").stat().st_size > 0
    # the probe: 8 held-out clips of each class (the split hf.finetune draws), none of them trained on
    from fastconvex.commands._files import subsample_per_class
    from fastconvex.hf.train.splits import encode_labels, split_indices

    paths, labels = hf.find_audio(data / "audio")
    ids, classes = encode_labels(labels, len(labels))
    train_idx, eval_idx = split_indices(ids, 0.5, seed=0, classes=classes)
    probe = eval_idx[subsample_per_class([labels[i] for i in eval_idx], 8, 0)]
    assert report["convexity_probe"] == [str(paths[i]) for i in probe]
    assert not set(probe) & set(train_idx) and lines[0]["settings"]["n_clips"] == 16
    # the first point is the loaded model's layer_scores on the probe clips (the oracle)
    model = transformers.Wav2Vec2ForCTC.from_pretrained(data / "w2v")
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(data / "w2v")
    pooled = hf.pooled_hidden_states(
        model, hf.AudioFiles([paths[i] for i in probe]), feature_extractor=fe, progress=False
    )
    expected = fc.layer_scores(list(pooled), [labels[i] for i in probe])
    np.testing.assert_allclose(points[0]["scores"], expected.scores, rtol=0, atol=1e-12)
    # the readable output has the before/after table
    code, stdout, err = run_cli(capsys, [*argv, "--overwrite"])
    assert code == 0, err
    assert "graph convexity % of the held-out probe, before and after (16 clips):" in stdout
    assert stdout.count("\n") >= 3 + len(points[0]["scores"])


def test_probe_size_without_tracking_and_a_probe_class_of_one_are_refused(data, capsys, tmp_path):
    from cli_run import one_error_line

    base = [
        "finetune",
        data / "w2v",
        "--audio",
        data / "audio",
        "--out-dir",
        tmp_path / "ft",
        "--epochs",
        "1",
        "--quiet",
    ]
    code, _, err = run_cli(capsys, [*base, "--probe-size", "10"])
    assert code == 2 and "add --track-convexity" in one_error_line(err)
    # 32 clips, a held-out fraction of 0.05: one held-out clip per class cannot be scored
    code, _, err = run_cli(capsys, [*base, "--track-convexity", "--eval-split", "0.05"])
    assert code == 1 and "--track-convexity: the held-out probe cannot be scored" in one_error_line(err)
    assert not (tmp_path / "ft").exists()
