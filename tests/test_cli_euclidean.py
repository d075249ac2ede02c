"""``fastconvex score --measure euclidean --model DIR`` end to end on a tiny
classifier saved to disk and its own hidden states."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from frames import padded_frame_states  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.cli import main  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory):
    """A saved tiny wav2vec2 classifier, its hidden states (L, N, T, D) of 12
    padded utterances, their frame counts and labels (the model's own
    predictions, as names)."""
    path = tmp_path_factory.mktemp("euclid")
    model, fe = tiny_model("wav2vec2", head="sequence", weighted_layer_sum=False, seed=2)
    model.config.id2label = {0: "yes", 1: "no", 2: "up"}
    model.config.label2id = {"yes": 0, "no": 1, "up": 2}
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    model.save_pretrained(path / "model")
    fe.save_pretrained(path / "model")
    out, states, n_frames = padded_frame_states(model)
    labels = np.array(["yes", "no", "up"])[out.logits.argmax(-1).numpy()]
    labels[:3] = ["yes", "no", "up"]  # every class present, some items "misclassified"
    np.save(path / "states.npy", states)
    np.save(path / "lengths.npy", n_frames)
    (path / "labels.txt").write_text("\n".join(labels) + "\n")
    return path, model, states, n_frames, labels


def test_score_euclidean_matches_the_library(classifier_files, capsys, tmp_path):
    path, model, states, n_frames, labels = classifier_files
    argv = [
        "score",
        path / "states.npy",
        "--labels",
        path / "labels.txt",
        "--measure",
        "euclidean",
        "--model",
        path / "model",
        "--lengths",
        path / "lengths.npy",
        "--pairs",
        "20",
        "--seed",
        "4",
        "--n-sampled",
        "5",
        "--predict-batch",
        "37",
        "--out",
        tmp_path / "e.json",
    ]
    assert main([str(a) for a in argv]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    want = fc.layer_euclidean_scores(
        list(states),
        labels,
        hf.predict_from_layer(model),
        lengths=n_frames,
        pairs=20,
        seed=4,
        n_sampled=5,
        progress=False,
    )
    assert got == json.loads(json.dumps(want.to_dict()))
    assert got["layers"][0]["measure"] == "euclidean" and got["layers"][0]["n_sampled"] == 5
    # a directory of per-layer (N, T, D) files is the same input
    (tmp_path / "layers").mkdir()
    for i, layer in enumerate(states):
        np.save(tmp_path / "layers" / f"layer_{i}.npy", layer)
    argv[1] = tmp_path / "layers"
    argv[-1] = tmp_path / "d.json"
    assert main([str(a) for a in argv]) == 0
    assert json.loads((tmp_path / "d.json").read_text()) == got


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--measure", "euclidean"], "--measure euclidean needs --model DIR"),
        (["--measure", "euclidean", "--model", "{model}", "--sources", "3"], "--sources applies to graph convexity"),
        (["--measure", "euclidean", "--model", "{model}", "--k", "4"], "--k applies to graph convexity"),
        (["--model", "{model}"], "--model applies to --measure euclidean only"),
        (["--measure", "euclidean", "--model", "{model}", "--n-sampled", "0"], "--n-sampled must be positive"),
        (["--n-sampled", "5"], "--n-sampled applies to --measure euclidean only"),
        (["--predict-batch", "64"], "--predict-batch applies to --measure euclidean only"),
    ],
)
def test_score_euclidean_usage_errors(classifier_files, capsys, extra, message):
    path = classifier_files[0]
    extra = [e.format(model=path / "model") for e in extra]
    code = main(["score", str(path / "states.npy"), "--labels", str(path / "labels.txt"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_score_euclidean_needs_every_hidden_state_as_sequences(classifier_files, capsys, tmp_path):
    path, _, states, _, _ = classifier_files
    np.save(tmp_path / "three.npy", states[:3])
    np.save(tmp_path / "pooled.npy", states.mean(axis=2))
    base = ["--labels", str(path / "labels.txt"), "--measure", "euclidean", "--model", str(path / "model")]
    # the data do not fit the request: data errors, exit status 1
    assert main(["score", str(tmp_path / "three.npy"), *base]) == 1
    assert (
        "EMBEDDINGS has 3 layers but Wav2Vec2ForSequenceClassification has 4 hidden states" in capsys.readouterr().err
    )
    assert main(["score", str(tmp_path / "pooled.npy"), *base]) == 1
    assert "needs every hidden state as frame sequences, (L, N, T, D)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def classifier_audio(tmp_path_factory):
    """A saved tiny wav2vec2 classifier whose labels are the audio folders'
    names, and 3 x 6 tone clips of different lengths."""
    sf = pytest.importorskip("soundfile")
    root = tmp_path_factory.mktemp("clfaudio")
    model, fe = tiny_model("wav2vec2", head="sequence", weighted_layer_sum=False, seed=5)
    model.config.id2label = {0: "class0", 1: "class1", 2: "class2"}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    model.save_pretrained(root / "model")
    fe.save_pretrained(root / "model")
    rng = np.random.default_rng(1)
    for c, freq in enumerate((400, 900, 2000)):
        (root / "audio" / f"class{c}").mkdir(parents=True)
        for j in range(6):
            n = int(rng.integers(1600, 3200))
            t = np.arange(n) / 16000
            x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.2 * rng.standard_normal(n)
            sf.write(root / "audio" / f"class{c}" / f"u{j}.wav", x.astype(np.float32), 16000)
    return root, model, fe


def test_prune_euclidean_matches_the_library(classifier_audio, capsys, tmp_path):
    root, model, fe = classifier_audio
    out_dir = tmp_path / "cut"
    code = main(
        [
            "prune",
            str(root / "model"),
            "--audio",
            str(root / "audio"),
            "--out",
            str(out_dir),
            "--measure",
            "euclidean",
            "--pairs",
            "10",
            "--n-sampled",
            "4",
            "--batch-size",
            "4",
            "--keep",
            "2",
            "--quiet",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    paths, labels = hf.find_audio(root / "audio")
    waves = [hf.load_audio(p) for p in paths]
    states, n_frames = hf.hidden_state_sequences(model, waves, feature_extractor=fe, progress=False)
    want = fc.layer_euclidean_scores(
        states,
        np.asarray(labels),
        hf.predict_from_layer(model),
        lengths=n_frames,
        pairs=10,
        n_sampled=4,
        progress=False,
    )
    assert report["scores"] == json.loads(json.dumps(want.to_dict()))
    assert report["measure"] == "euclidean" and report["keep"] == 2 and report["best_layer"] == want.best_layer
    pruned = type(model).from_pretrained(out_dir)
    assert pruned.config.num_hidden_layers == 2


def test_prune_euclidean_needs_a_classifier(classifier_audio, capsys, tmp_path):
    root = classifier_audio[0]
    base, fe = tiny_model("wav2vec2")
    base.save_pretrained(tmp_path / "base")
    fe.save_pretrained(tmp_path / "base")
    code = main(
        [
            "prune",
            str(tmp_path / "base"),
            "--audio",
            str(root / "audio"),
            "--out",
            str(tmp_path / "o"),
            "--measure",
            "euclidean",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Wav2Vec2Model is not a supported audio classifier" in err
    assert not (tmp_path / "o").exists()  # nothing written
    code = main(
        [
            "prune",
            str(root / "model"),
            "--audio",
            str(root / "audio"),
            "--out",
            str(tmp_path / "o"),
            "--measure",
            "euclidean",
            "--embeddings-dir",
            str(tmp_path / "e"),
            "--quiet",
        ]
    )
    assert code == 2 and "--embeddings-dir and --mix-lengths apply to graph" in capsys.readouterr().err
