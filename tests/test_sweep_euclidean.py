"""Euclidean convexity in sweeps: frame stores read back as sequences,
``fastconvex.sweep(measure="euclidean")`` equal to ``layer_euclidean_scores``
bit for bit, resume that never mixes measures or models, and the command line
(``embed --frames`` -> ``sweep --measure euclidean``). Ray: tests/test_sweep_ray.py."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from cli_run import run_cli  # noqa: E402
from test_sweep import assert_same  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.cli import main  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

NAMES = ("yes", "no", "up")
KW = dict(pairs=8, n_sampled=3, batch_size=23, seed=5)


def _classifier(seed):
    model, fe = tiny_model("wav2vec2", head="sequence", weighted_layer_sum=False, seed=seed)
    model.config.id2label = dict(enumerate(NAMES))
    model.config.label2id = {v: k for k, v in enumerate(NAMES)}
    with torch.no_grad():  # spread the logits so that predictions differ along a segment
        model.classifier.weight.mul_(40.0)
    return model, fe


@pytest.fixture(scope="module")
def euclid(tmp_path_factory):
    """A saved tiny classifier, labelled audio files of different lengths, and
    the frame store of them (as ``embed --frames`` writes it)."""
    root = tmp_path_factory.mktemp("euclid")
    model, fe = _classifier(seed=0)
    model.save_pretrained(root / "model")
    fe.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for name in NAMES:
        (root / "audio" / name).mkdir(parents=True)
        for j in range(4):
            m = int(rng.integers(1500, 2600))
            x = np.sin(np.arange(m) * rng.uniform(0.05, 1.5)) + rng.uniform(0.1, 1) * rng.normal(size=m)
            sf.write(root / "audio" / name / f"u{j}.wav", (0.3 * x).astype(np.float32), 16000)
    assert (
        main(
            [
                "embed",
                str(root / "model"),
                "--audio",
                str(root / "audio"),
                "--out-dir",
                str(root / "store"),
                "--frames",
                "--batch-size",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    return root, model, fe


def _reference(store, model, **kw):
    seqs = [store.sequences(i)[0] for i in range(store.n_layers)]
    lengths = store.sequences(0)[1]
    return fc.layer_euclidean_scores(
        seqs, store.utterance_labels(), hf.predict_from_layer(model), lengths=lengths, **{**KW, **kw}
    )


# ---- frame stores --------------------------------------------------------------------------------


def test_frame_store_sequences_are_the_hidden_states(euclid):
    root, model, fe = euclid
    store = fc.open_store(root / "store")
    paths, labels = hf.find_audio(root / "audio")
    waves = [hf.load_audio(p) for p in paths]
    states, n_frames = hf.hidden_state_sequences(model, waves, feature_extractor=fe, progress=False)
    assert store.meta["pooling"] == "frames" and store.meta["ignored_frames"] == 0
    assert store.n_points == int(n_frames.sum()) and store.n_layers == len(states)
    assert store.utterance_labels().tolist() == list(labels)
    for i, expected in enumerate(states):
        x, lengths = store.sequences(i)
        np.testing.assert_array_equal(lengths, n_frames)
        assert x.shape == expected.shape and x.dtype == np.float32
        valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
        np.testing.assert_allclose(x[valid], expected[valid], rtol=1e-5, atol=1e-6)
        assert not x[~valid].any()  # padding is zeros


def test_sequences_by_hand(tmp_path):
    # utterances 5, 2, 7 of 2, 3, 1 frames, float16 kept, string labels one per utterance
    rows = np.arange(12, dtype=np.float16).reshape(6, 2)
    store = fc.save_store(tmp_path / "s", [rows], ["a", "a", "b", "b", "b", "a"], utterance=[5, 5, 2, 2, 2, 7])
    x, lengths = store.sequences(0)
    assert x.dtype == np.float16 and lengths.tolist() == [2, 3, 1]
    expected = np.zeros((3, 3, 2), np.float16)
    expected[0, :2], expected[1, :3], expected[2, :1] = rows[:2], rows[2:5], rows[5:]
    np.testing.assert_array_equal(x, expected)
    assert store.utterance_labels().tolist() == ["a", "b", "a"]


def test_bad_frame_stores_are_refused_naming_the_file(tmp_path):
    rows = np.zeros((4, 2), np.float32)
    mixed = fc.save_store(tmp_path / "mixed", [rows], [1, 1, 2, 2], utterance=[0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"labels\.npy.*utterance 0 carry different labels"):
        mixed.utterance_labels()
    split = fc.save_store(tmp_path / "split", [rows], [1, 1, 1, 1], utterance=[0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"utterance\.npy.*utterance 0 are not contiguous"):
        split.sequences(0)
    pooled = fc.save_store(tmp_path / "pooled", [rows], [1, 1, 2, 2])
    with pytest.raises(ValueError, match="--frames"):
        pooled.sequences(0)
    holes = fc.save_store(tmp_path / "holes", [rows], [1, 1, 2, 2], utterance=[0, 0, 1, 1], meta={"ignored_frames": 3})
    with pytest.raises(ValueError, match="dropped 3 ignored frame"):
        holes.utterance_labels()


# ---- the sweep -----------------------------------------------------------------------------------


def test_sweep_equals_layer_euclidean_scores(euclid, tmp_path):
    root, model, _ = euclid
    store = fc.open_store(root / "store")
    reference = _reference(store, model)
    by_dir = fc.sweep(
        store, out_dir=tmp_path / "a", measure="euclidean", model=root / "model", verbose=False, plot=False, **KW
    )
    assert_same(by_dir[store.name], reference)
    assert {c.measure for c in by_dir[store.name].layers} == {"euclidean"}
    by_callable = fc.sweep(
        store,
        out_dir=tmp_path / "b",
        measure="euclidean",
        model=hf.predict_from_layer(model),
        layers=[3, 1],
        verbose=False,
        plot=False,
        **KW,
    )
    assert by_callable[store.name].layers == [reference.layers[3], reference.layers[1]]
    exact = fc.sweep(
        store,
        out_dir=tmp_path / "c",
        measure="euclidean",
        model=root / "model",
        exact=True,
        pairs=None,
        n_sampled=2,
        verbose=False,
        plot=False,
    )
    assert_same(
        exact[store.name], _reference(store, model, exact=True, pairs=None, n_sampled=2, batch_size=1024, seed=0)
    )


def test_resume_never_mixes_measures_or_models(euclid, tmp_path, capsys):
    root, model, _ = euclid
    store = fc.open_store(root / "store")
    out = tmp_path / "out"
    first = fc.sweep(store, out_dir=out, measure="euclidean", model=root / "model", plot=False, **KW)
    assert "reusing 0 finished" in capsys.readouterr().err
    again = fc.sweep(store, out_dir=out, measure="euclidean", model=root / "model", plot=False, **KW)
    assert "reusing 4 finished result(s)" in capsys.readouterr().err
    assert_same(again[store.name], first[store.name])
    # the same model in memory has another fingerprint kind: recomputed, same numbers
    fc.sweep(
        store, out_dir=out, measure="euclidean", model=hf.predict_from_layer(model), plot=False, overwrite=True, **KW
    )  # overwrite: replaces the merged outputs of another sweep
    assert "reusing 0 finished" in capsys.readouterr().err
    # graph convexity of the same rows never reuses a Euclidean result, nor the reverse
    graph = fc.sweep(store, out_dir=out, pairs=KW["pairs"], seed=KW["seed"], plot=False, overwrite=True)
    assert "reusing 0 finished" in capsys.readouterr().err
    assert {c.measure for c in graph[store.name].layers} == {"graph"}
    # another model (other weights, same shapes), other n_sampled: recomputed
    other, _fe = _classifier(seed=3)
    other.save_pretrained(tmp_path / "other")
    changed = fc.sweep(
        store, out_dir=out, measure="euclidean", model=tmp_path / "other", plot=False, overwrite=True, **KW
    )
    assert "reusing 0 finished" in capsys.readouterr().err
    assert_same(changed[store.name], _reference(store, other))
    fc.sweep(
        store,
        out_dir=out,
        measure="euclidean",
        model=root / "model",
        plot=False,
        overwrite=True,
        **{**KW, "n_sampled": 2},
    )
    assert "reusing 0 finished" in capsys.readouterr().err
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["settings"]["measure"] == "euclidean" and doc["settings"]["n_sampled"] == 2
    assert doc["settings"]["model"].startswith("dir:")


def test_sweep_bad_arguments(euclid, tmp_path):
    root, model, _ = euclid
    store = root / "store"
    with pytest.raises(ValueError, match="needs model="):
        fc.sweep(store, out_dir=tmp_path, measure="euclidean")
    with pytest.raises(ValueError, match="k applies to graph convexity"):
        fc.sweep(store, out_dir=tmp_path, measure="euclidean", model=root / "model", k=5)
    with pytest.raises(ValueError, match="model applies to"):
        fc.sweep(store, out_dir=tmp_path, model=root / "model")
    with pytest.raises(ValueError, match="needs model= as a model directory"):
        fc.sweep(store, out_dir=tmp_path, measure="euclidean", model=hf.predict_from_layer(model), engine="ray")
    with pytest.raises(ValueError, match="fingerprint"):
        fc.sweep(store, out_dir=tmp_path, measure="euclidean", model=lambda layer, batch, mask: batch)
    with pytest.raises(ValueError, match='measure must be "graph" or "euclidean"'):
        fc.sweep(store, out_dir=tmp_path, measure="cosine")


# ---- the command line ----------------------------------------------------------------------------


def _run(capsys, *argv):
    return run_cli(capsys, argv)


def test_cli_sweep_euclidean_end_to_end(euclid, tmp_path, capsys):
    root, model, _ = euclid
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        "sweep",
        root / "store",
        "--out-dir",
        out,
        "--measure",
        "euclidean",
        "--model",
        root / "model",
        "--pairs",
        KW["pairs"],
        "--n-sampled",
        KW["n_sampled"],
        "--predict-batch",
        KW["batch_size"],
        "--seed",
        KW["seed"],
        "--no-plot",
        "--quiet",
    )
    assert code == 0, err
    reference = _reference(fc.open_store(root / "store"), model)
    assert "<- best" in stdout and f"{100 * reference.scores[0]:.2f}" in stdout
    doc = json.loads((out / "sweep.json").read_text())
    np.testing.assert_array_equal(doc["stores"]["store"]["scores"], reference.scores)
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["score"]) for r in rows] == reference.scores.tolist()
    assert {r["estimator"] for r in rows} == {"pairs"} and {r["k"] for r in rows} == {""}


def test_cli_errors(euclid, tmp_path, capsys):
    root, _, _ = euclid
    fc.save_store(tmp_path / "pooled", [np.zeros((4, 32), np.float32)], [1, 1, 2, 2])
    fc.save_store(tmp_path / "narrow", [np.zeros((4, 5), np.float32)], [1, 1, 2, 2], utterance=[0, 0, 1, 1])
    cases = [
        (
            1,
            "--frames",
            [
                "sweep",
                tmp_path / "pooled",
                "--out-dir",
                tmp_path / "o",
                "--measure",
                "euclidean",
                "--model",
                root / "model",
            ],
        ),
        (
            1,
            "hidden size 32 differs",
            [
                "sweep",
                tmp_path / "narrow",
                "--out-dir",
                tmp_path / "o",
                "--measure",
                "euclidean",
                "--model",
                root / "model",
            ],
        ),
        (2, "needs --model", ["sweep", root / "store", "--out-dir", tmp_path / "o", "--measure", "euclidean"]),
        (
            2,
            "--k applies to graph",
            [
                "sweep",
                root / "store",
                "--out-dir",
                tmp_path / "o",
                "--measure",
                "euclidean",
                "--model",
                root / "model",
                "--k",
                "4",
            ],
        ),
        (
            2,
            "--model applies to --measure euclidean",
            ["sweep", root / "store", "--out-dir", tmp_path / "o", "--model", root / "model"],
        ),
        (
            2,
            "--n-sampled applies to --measure euclidean",
            ["sweep", root / "store", "--out-dir", tmp_path / "o", "--n-sampled", "3"],
        ),
        (
            2,
            "--n-sampled applies to --measure euclidean",
            ["prune", root / "model", "--audio", root / "audio", "--out", tmp_path / "p", "--n-sampled", "3"],
        ),
        (
            2,
            "--frames keeps the raw hidden states",
            [
                "embed",
                root / "model",
                "--audio",
                root / "audio",
                "--out-dir",
                tmp_path / "f",
                "--frames",
                "--final-norm",
                "apply",
            ],
        ),
    ]
    for status, message, argv in cases:
        code, _, err = _run(capsys, *argv)
        assert code == status, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "sweep.json").exists()


def test_a_model_that_changes_mid_sweep_is_refused(euclid, tmp_path):
    from fastconvex.sweeps.euclidean import (
        model_fingerprint,
        plan_store,
        release_predictors,
        score_euclidean_task,
    )

    root, model, _ = euclid
    store = fc.open_store(root / "store")
    copy = tmp_path / "model"
    model.save_pretrained(copy)
    assert model_fingerprint(copy) == model_fingerprint(root / "model")  # the content, not the path or mtime
    plan = plan_store(
        store,
        [0],
        model=copy,
        fingerprint=model_fingerprint(copy),
        n_sampled=2,
        pairs=4,
        exact=False,
        batch_size=16,
        seed=0,
        min_class_size=2,
    )
    other, _ = _classifier(seed=3)
    other.save_pretrained(copy)  # retrained weights written over it before a worker loads it
    release_predictors()
    with pytest.raises(ValueError, match="changed while the sweep ran"):
        score_euclidean_task(store, 0, plan)
