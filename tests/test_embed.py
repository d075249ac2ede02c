"""``fastconvex embed``: labelled audio -> a layer store (local engine; the Ray
engine is tested in tests/test_sweep_ray.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli_score_prune import speech  # noqa: F401  (the tiny model and labelled audio)

import fastconvex as fc
from fastconvex.cli import main

pytestmark = pytest.mark.hf


def embed(capsys, *argv):
    code = main(["embed", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_writes_the_store_pooled_hidden_states_gives(speech, capsys, tmp_path):  # noqa: F811
    from fastconvex import hf

    root, model, fe = speech
    code, out, err = embed(
        capsys,
        root / "model",
        "--audio",
        root / "audio",
        "--out-dir",
        tmp_path / "s",
        "--batch-size",
        "4",
        "--name",
        "tiny-w2v2",
    )
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 's'}: 24 utterances x 4 layers x 32")
    store = fc.open_store(tmp_path / "s")
    paths, labels = hf.find_audio(root / "audio")
    assert store.name == "tiny-w2v2" and store.labels.tolist() == labels
    assert store.meta["model"] == str(root / "model") and store.meta["hidden_states"] == [0, 1, 2, 3]
    ref = hf.pooled_hidden_states(model, hf.AudioFiles(paths), feature_extractor=fe, batch_size=4, progress=False)
    for a, b in zip(store.layers, ref):
        np.testing.assert_array_equal(a, b)
    # the store sweeps like any other, with layer_scores' numbers
    result = fc.sweep(store.path, out_dir=tmp_path / "sweep", k=3, verbose=False, plot=False)
    assert result["tiny-w2v2"].to_dict() == fc.layer_scores(list(ref), labels, k=3).to_dict()
    # never overwritten without asking; replaced with --overwrite
    code, out, err = embed(capsys, root / "model", "--audio", root / "audio", "--out-dir", tmp_path / "s")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--overwrite" in err
    code, out, err = embed(
        capsys,
        root / "model",
        "--audio",
        root / "audio",
        "--out-dir",
        tmp_path / "s",
        "--overwrite",
        "--layers",
        "1,3",
        "--dtype",
        "float16",
        "--out",
        tmp_path / "sum.json",
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["n_layers"] == 2 and summary["dtype"] == "float16" and summary["hidden_states"] == [1, 3]
    np.testing.assert_allclose(fc.open_store(tmp_path / "s").layers[1], ref[3], rtol=1e-3, atol=1e-3)


def test_embed_bad_inputs(speech, capsys, tmp_path):  # noqa: F811
    root, _, _ = speech
    code, _, err = embed(capsys, root / "model", "--audio", tmp_path / "none", "--out-dir", tmp_path / "s")
    assert code == 2 and "does not exist" in err
    code, _, err = embed(
        capsys, root / "model", "--audio", root / "audio", "--out-dir", tmp_path / "s", "--address", "auto"
    )
    assert code == 2 and "--address applies to --engine ray only" in err
    assert not (tmp_path / "s").exists()
    (tmp_path / "emb").mkdir()
    code = main(
        [
            "prune",
            str(root / "model"),
            "--audio",
            str(root / "audio"),
            "--out",
            str(tmp_path / "m"),
            "--embeddings-dir",
            str(tmp_path / "emb"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--embeddings-dir" in err and "--overwrite" in err and not (tmp_path / "m").exists()


def test_embed_quiet_leaves_stderr_empty(speech, capsys, tmp_path):  # noqa: F811
    # --quiet: "no logs or progress on stderr", transformers' "Loading weights" bar included
    root, _, _ = speech
    code, out, err = embed(capsys, root / "model", "--audio", root / "audio", "--out-dir", tmp_path / "s", "--quiet")
    assert code == 0 and out.startswith("wrote ") and err == ""
