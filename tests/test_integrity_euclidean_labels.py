"""Euclidean convexity matches the data's labels to the classifier's classes:
by name (``config.id2label``) or through ``label_map`` {data label: class
index}; anything else is a ValueError listing both, before any forward pass.

Why: a classifier whose ``id2label`` names differ from the data's labels
returns only "known" labels that are no class of the data, so every sampled
point would count as wrong and every layer would score 0.0 with no error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from frames import padded_frame_states  # noqa: E402
from test_sweep import assert_same  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.cli import main  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

NAMES = ("yes", "no", "up")
GENERIC = ("LABEL_0", "LABEL_1", "LABEL_2")
MAP = {"yes": 0, "no": 1, "up": 2}
KW = dict(pairs=12, n_sampled=4, seed=3, progress=False)


def _save(model, fe, path, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {v: k for k, v in enumerate(names)}
    model.save_pretrained(path)
    fe.save_pretrained(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One tiny classifier saved twice: with the data's names (``named``) and
    with transformers' generic ``LABEL_k`` names (``generic``); its hidden
    states (L, N, T, D) of 12 padded utterances, frame counts and labels
    (four per class)."""
    root = tmp_path_factory.mktemp("labels")
    model, fe = tiny_model("wav2vec2", head="sequence", weighted_layer_sum=False, seed=0)
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)
    _out, states, n_frames = padded_frame_states(model)
    labels = np.array(NAMES * 4)
    _save(model, fe, root / "named", NAMES)
    _save(model, fe, root / "generic", GENERIC)
    np.save(root / "states.npy", states)
    np.save(root / "lengths.npy", n_frames)
    (root / "labels.txt").write_text("\n".join(labels) + "\n")
    (root / "map.json").write_text(json.dumps(MAP))
    return root, model, states, n_frames, labels


def _predictor(model, names, *, id2label=True):
    model.config.id2label = dict(enumerate(names))
    return hf.predict_from_layer(model, id2label=id2label)


def _counting(predictor):
    """``predictor`` with its forward passes counted (``calls[0]``)."""
    calls = [0]
    logits = predictor.logits

    def counted(*args, **kwargs):
        calls[0] += 1
        return logits(*args, **kwargs)

    predictor.logits = counted
    return predictor, calls


# ---- the library ---------------------------------------------------------------------------------


def test_other_id2label_names_are_refused_before_any_forward_pass(setup):
    """Generic ``LABEL_k`` names against the data's names (or integer labels
    against names) are refused, listing both, with no forward pass: scored,
    every layer would be a silent 0.0."""
    _, model, states, n_frames, labels = setup
    predictor, calls = _counting(_predictor(model, GENERIC))
    with pytest.raises(ValueError) as err:
        fc.layer_euclidean_scores(list(states), labels, predictor, lengths=n_frames, **KW)
    message = str(err.value)
    assert "the data's classes ['no', 'up', 'yes']" in message
    assert "the predictor's classes ['LABEL_0', 'LABEL_1', 'LABEL_2']" in message
    assert "label_map" in message and calls[0] == 0
    with pytest.raises(ValueError, match=r"the data's classes \['no', 'up', 'yes'\] do not match"):
        fc.euclidean_convexity(states[2], labels, predictor.at(2), lengths=n_frames, **KW)
    assert calls[0] == 0
    # integer labels against names: the hint names id2label=False
    codes = np.array([MAP[v] for v in labels])
    with pytest.raises(ValueError, match=r"\[0, 1, 2\] do not match .*id2label=False"):
        fc.layer_euclidean_scores(list(states), codes, predictor, lengths=n_frames, **KW)
    assert calls[0] == 0


def test_label_map_gives_the_numbers_of_matching_names(setup):
    _, model, states, n_frames, labels = setup
    by_name = fc.layer_euclidean_scores(list(states), labels, _predictor(model, NAMES), lengths=n_frames, **KW)
    assert len(set(by_name.per_class[0].tolist())) == 3  # not a trivial classifier
    mapped = fc.layer_euclidean_scores(
        list(states), labels, _predictor(model, GENERIC), lengths=n_frames, label_map=MAP, **KW
    )
    assert mapped.to_dict() == by_name.to_dict()
    # ids returned by the predictor (id2label=False), mapped from names
    ids = fc.layer_euclidean_scores(
        list(states), labels, _predictor(model, GENERIC, id2label=False), lengths=n_frames, label_map=MAP, **KW
    )
    assert ids.to_dict() == by_name.to_dict()
    # a plain callable that returns class indices and declares nothing
    inner = _predictor(model, GENERIC, id2label=False)
    plain = fc.euclidean_convexity(
        states[1], labels, lambda b, m: inner(1, b, m), lengths=n_frames, label_map=MAP, **KW
    )
    assert {**plain.to_dict(), "backend": None} == {**by_name.layers[1].to_dict(), "backend": None}
    # a permuted map is another question: other numbers
    other = fc.layer_euclidean_scores(
        list(states), labels, _predictor(model, GENERIC), lengths=n_frames, label_map={"yes": 1, "no": 2, "up": 0}, **KW
    )
    assert not np.array_equal(other.per_class, by_name.per_class)


def test_bad_label_maps_are_named(setup):
    _, model, states, n_frames, labels = setup
    predictor, calls = _counting(_predictor(model, GENERIC))

    def run(label_map):
        return fc.layer_euclidean_scores(list(states), labels, predictor, lengths=n_frames, label_map=label_map, **KW)

    with pytest.raises(ValueError, match=r"label_map has no class index for the data's labels \['up'\]"):
        run({"yes": 0, "no": 1})
    with pytest.raises(
        ValueError,
        match=r"maps the data's labels 'no' and 'yes' onto the same predictor output "
        r"'LABEL_0'",
    ):
        run({"yes": 0, "no": 0, "up": 2})
    with pytest.raises(ValueError, match=r"label_map\['up'\] = 3 is no class index \(0 <= index < 3"):
        run({"yes": 0, "no": 1, "up": 3})
    with pytest.raises(TypeError, match=r"label_map\['up'\] must be a class index \(an int\), got str 'LABEL_2'"):
        run({"yes": 0, "no": 1, "up": "LABEL_2"})
    with pytest.raises(TypeError, match="label_map must be a mapping"):
        run([("yes", 0)])
    assert calls[0] == 0
    # keys that are no label of the data are never used (even one sharing an index): no error
    assert run({**MAP, "left": 1}).scores.shape == (len(states),)


def test_label_map_keys_that_are_no_data_label_are_not_checked_against_the_classes(setup, tmp_path):
    """A key that is no label of the data is never looked up, so its index
    need not be one of the predictor's classes (its form, an integer >= 0,
    is still checked); a key used by the data is checked."""
    _, model, states, n_frames, labels = setup
    predictor = _predictor(model, GENERIC)
    run = dict(lengths=n_frames, **KW)
    reference = fc.layer_euclidean_scores(list(states), labels, predictor, label_map=MAP, **run)
    assert (
        fc.layer_euclidean_scores(list(states), labels, predictor, label_map={**MAP, "left": 99}, **run).to_dict()
        == reference.to_dict()
    )
    with pytest.raises(ValueError, match=r"label_map\['left'\] = -1 is no class index"):
        fc.layer_euclidean_scores(list(states), labels, predictor, label_map={**MAP, "left": -1}, **run)
    # the command line's digit keys: an integer only when the whole key is one
    from fastconvex.commands._files import load_label_map

    (tmp_path / "map.json").write_text(json.dumps({"--3": 0, "-4": 1, " 05 ": 2, "x1": 0}))
    assert load_label_map(tmp_path / "map.json") == {"--3": 0, "-4": 1, -4: 1, " 05 ": 2, 5: 2, "x1": 0}


def test_classes_the_predictor_lacks_are_named_and_long_lists_cut():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))

    def predict(batch):
        return np.where(np.asarray(batch)[:, 0] > 0, "a", "b")

    predict.labels = ["a", "b", "c"]
    y = np.array(["a", "b", "maybe"] * 20)
    with pytest.raises(ValueError, match=r"\(no class for \['maybe'\]\)"):
        fc.euclidean_convexity(x, y, predict)
    # a class too small to be scored needs no class of the predictor
    y1 = np.array(["a", "b"] * 29 + ["a", "maybe"])
    r = fc.euclidean_convexity(x, y1, predict)
    assert r.n_pairs["maybe"] == 0 and r.score > 0
    # 30 classes, none the predictor's: both lists, the long one cut
    many = np.array([f"c{i:02d}" for i in range(30)] * 2)
    with pytest.raises(ValueError) as err:
        fc.euclidean_convexity(x, many, predict)
    assert "'c09', ... (30 in all)]" in str(err.value) and "['a', 'b', 'c']" in str(err.value)


# ---- sweeps --------------------------------------------------------------------------------------


def _frame_store(path, states, n_frames, labels):
    """The frame store ``embed --frames`` would write of these sequences."""
    layers = [np.concatenate([s[i, :n] for i, n in enumerate(n_frames)]) for s in states]
    rows = np.repeat(labels, n_frames)
    utterance = np.repeat(np.arange(len(n_frames)), n_frames)
    return fc.save_store(path, layers, rows, utterance=utterance)


def test_sweep_refuses_other_names_and_follows_label_map(setup, tmp_path):
    root, model, states, n_frames, labels = setup
    store = _frame_store(tmp_path / "store", states, n_frames, labels)
    kw = dict(measure="euclidean", pairs=12, n_sampled=4, seed=3, verbose=False, plot=False)
    with pytest.raises(
        ValueError,
        match=r"store 'store': labels: the data's classes \['no', 'up', 'yes'\] do not "
        r"match the predictor's classes \['LABEL_0', 'LABEL_1', 'LABEL_2'\]",
    ):
        fc.sweep(store, out_dir=tmp_path / "bad", model=root / "generic", **kw)
    assert not list((tmp_path / "bad").rglob("*.json"))  # refused before any task
    named = fc.sweep(store, out_dir=tmp_path / "named", model=root / "named", **kw)["store"]
    mapped = fc.sweep(store, out_dir=tmp_path / "mapped", model=root / "generic", label_map=MAP, **kw)["store"]
    assert_same(mapped, named)
    # the map is part of each result's settings: another map in the same directory is refused
    # unless overwrite=True, and then recomputed
    with pytest.raises(ValueError, match="written by a sweep with other settings"):
        fc.sweep(
            store, out_dir=tmp_path / "mapped", model=root / "generic", label_map={"yes": 1, "no": 2, "up": 0}, **kw
        )
    permuted = fc.sweep(
        store,
        out_dir=tmp_path / "mapped",
        model=root / "generic",
        label_map={"yes": 1, "no": 2, "up": 0},
        overwrite=True,
        **kw,
    )["store"]
    reference = fc.layer_euclidean_scores(
        list(states),
        labels,
        _predictor(model, GENERIC),
        lengths=n_frames,
        label_map={"yes": 1, "no": 2, "up": 0},
        batch_size=1024,
        **KW,
    )
    assert_same(permuted, reference)
    assert not np.array_equal(permuted.per_class, named.per_class)
    with pytest.raises(ValueError, match='label_map applies to measure="euclidean" only'):
        fc.sweep(store, out_dir=tmp_path / "graph", label_map=MAP, verbose=False, plot=False)


def test_sweep_loads_the_model_folder_once_before_its_output(setup, tmp_path, monkeypatch):
    """The local engine loads the model folder once, before ``out_dir`` is
    touched, into the cache its tasks use: a folder whose weights do not match
    its config is one error naming it (a data error on the command line), not
    one failure per task with the output directory left behind."""
    import shutil

    from safetensors.torch import load_file, save_file

    from fastconvex.hf.models import load as _load

    root, _model, states, n_frames, labels = setup
    store = _frame_store(tmp_path / "store", states, n_frames, labels)
    kw = dict(measure="euclidean", pairs=12, n_sampled=4, seed=3, verbose=False, plot=False)
    loads = []
    original = _load.load_checked

    def counting(*args, **kwargs):
        loads.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(_load, "load_checked", counting)
    fc.sweep(store, out_dir=tmp_path / "good", model=root / "named", **kw)
    assert len(loads) == 1  # one load for the check and every task
    broken = tmp_path / "broken"
    shutil.copytree(root / "named", broken)
    weights = load_file(broken / "model.safetensors")
    del weights["classifier.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    loads.clear()
    with pytest.raises(ValueError) as err:
        fc.sweep(store, out_dir=tmp_path / "out", model=broken, **kw)
    assert str(err.value).startswith(f"model folder {str(broken)!r}: its weights lack 1 tensor (classifier.weight)")
    assert "task" not in str(err.value)
    assert len(loads) == 1 and not (tmp_path / "out").exists()
    argv = [
        "sweep",
        str(tmp_path / "store"),
        "--measure",
        "euclidean",
        "--model",
        str(broken),
        "--out-dir",
        str(tmp_path / "cli"),
        "--pairs",
        "12",
        "--n-sampled",
        "4",
        "--no-plot",
        "--quiet",
    ]
    assert main(argv) == 1
    assert not (tmp_path / "cli").exists()
    # a worker (Ray's, where nothing is loaded up front) tries a folder that fails once, then says it again
    from fastconvex.sweeps import euclidean as se

    plan = se.plan_store(
        store,
        [0, 1],
        model=broken,
        fingerprint=se.model_fingerprint(broken),
        n_sampled=4,
        pairs=12,
        exact=False,
        batch_size=64,
        seed=3,
        min_class_size=2,
    )
    loads.clear()
    try:
        for _ in range(3):
            with pytest.raises(ValueError, match=r"model folder .*its weights lack 1 tensor \(classifier\.weight\)"):
                se.score_euclidean_task(store, 0, plan)
    finally:
        se.release_predictors()
    assert len(loads) == 1


# ---- the command line ----------------------------------------------------------------------------


def _score(root, model_dir, *extra):
    return [
        "score",
        str(root / "states.npy"),
        "--labels",
        str(root / "labels.txt"),
        "--measure",
        "euclidean",
        "--model",
        str(root / model_dir),
        "--lengths",
        str(root / "lengths.npy"),
        "--pairs",
        "12",
        "--seed",
        "3",
        "--n-sampled",
        "4",
        "--quiet",
        *map(str, extra),
    ]


def test_cli_score_refuses_other_names_and_takes_a_label_map(setup, capsys, tmp_path):
    root, _model, _states, _n_frames, labels = setup
    assert main(_score(root, "generic")) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'LABEL_0'" in err and "'yes'" in err and "label_map" in err
    assert main(_score(root, "generic", "--label-map", root / "map.json", "--out", tmp_path / "m.json")) == 0
    assert main(_score(root, "named", "--out", tmp_path / "n.json")) == 0
    got, want = (json.loads((tmp_path / f).read_text()) for f in ("m.json", "n.json"))
    assert got == want
    # integer labels (.npy) with a map of digit keys
    np.save(tmp_path / "codes.npy", np.array([MAP[v] for v in labels]))
    (tmp_path / "ids.json").write_text(json.dumps({"0": 0, "1": 1, "2": 2}))
    argv = _score(root, "generic", "--label-map", tmp_path / "ids.json", "--out", tmp_path / "i.json")
    argv[argv.index("--labels") + 1] = str(tmp_path / "codes.npy")
    assert main(argv) == 0
    assert json.loads((tmp_path / "i.json").read_text())["scores"] == want["scores"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "--label-map map.json: not a readable JSON file"),
        ('["yes", "no"]', "expected a non-empty JSON object {data label: class index}, got list"),
        ('{"yes": "LABEL_0"}', "the class index of 'yes' must be an integer >= 0, got 'LABEL_0'"),
        (
            '{"yes": 0, "1": 0, "01": 2}',
            ("keys '1' and '01' both mean the integer label 1 but give it class indices 0 and 2"),
        ),
    ],
)
def test_cli_bad_label_map_files_are_one_line(setup, capsys, tmp_path, content, message):
    root = setup[0]
    (tmp_path / "map.json").write_text(content)
    assert main(_score(root, "generic", "--label-map", tmp_path / "map.json")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "score",
                str(root / "states.npy"),
                "--labels",
                str(root / "labels.txt"),
                "--label-map",
                str(tmp_path / "map.json"),
            ]
        )
        == 2
    )
    assert "--label-map applies to --measure euclidean only" in capsys.readouterr().err


def test_cli_sweep_refuses_other_names_and_takes_a_label_map(setup, capsys, tmp_path):
    root, _model, states, n_frames, labels = setup
    _frame_store(tmp_path / "store", states, n_frames, labels)
    base = [
        "sweep",
        str(tmp_path / "store"),
        "--measure",
        "euclidean",
        "--pairs",
        "12",
        "--seed",
        "3",
        "--n-sampled",
        "4",
        "--no-plot",
        "--quiet",
        "--json",
    ]
    assert main([*base, "--model", str(root / "generic"), "--out-dir", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "store 'store'" in err and "'LABEL_0'" in err
    assert (
        main(
            [
                *base,
                "--model",
                str(root / "generic"),
                "--out-dir",
                str(tmp_path / "m"),
                "--label-map",
                str(root / "map.json"),
            ]
        )
        == 0
    )
    mapped = json.loads(capsys.readouterr().out)
    assert main([*base, "--model", str(root / "named"), "--out-dir", str(tmp_path / "n")]) == 0
    named = json.loads(capsys.readouterr().out)
    assert mapped["stores"]["store"]["scores"] == named["stores"]["store"]["scores"]


def test_cli_prune_refuses_other_names_before_the_forward_passes(setup, capsys, tmp_path, monkeypatch):
    sf = pytest.importorskip("soundfile")
    root = setup[0]
    rng = np.random.default_rng(2)
    for name in ("down", "left"):
        (tmp_path / "audio" / name).mkdir(parents=True)
        for j in range(3):
            sf.write(tmp_path / "audio" / name / f"u{j}.wav", (0.3 * rng.normal(size=2000)).astype(np.float32), 16000)

    def no_forward_passes(*args, **kwargs):
        raise AssertionError("hidden states were computed before the labels were checked")

    monkeypatch.setattr(hf, "hidden_state_sequences", no_forward_passes)
    # a bad --label-map file is said before the model is even loaded
    (tmp_path / "bad.json").write_text("[]")
    monkeypatch.setattr("fastconvex.hf.models.load.load_model", no_forward_passes)
    assert (
        main(
            [
                "prune",
                str(root / "named"),
                "--audio",
                str(tmp_path / "audio"),
                "--out",
                str(tmp_path / "cut"),
                "--measure",
                "euclidean",
                "--label-map",
                str(tmp_path / "bad.json"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "--label-map bad.json: expected a non-empty JSON object" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(hf, "hidden_state_sequences", no_forward_passes)
    code = main(
        [
            "prune",
            str(root / "named"),
            "--audio",
            str(tmp_path / "audio"),
            "--out",
            str(tmp_path / "cut"),
            "--measure",
            "euclidean",
            "--keep",
            "1",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "the data's classes ['down', 'left'] do not match the predictor's classes ['yes', 'no', 'up']" in err
    # the same audio through the generic names, mapped: the numbers of a model named like the data
    monkeypatch.undo()
    _, model, *_ = setup
    for names, folder in (((("down", "left", "up")), "dl"), (GENERIC, "generic")):
        model.config.id2label = dict(enumerate(names))
        model.save_pretrained(tmp_path / folder)
    (tmp_path / "map.json").write_text(json.dumps({"down": 0, "left": 1}))
    reports = []
    for folder, extra in (("dl", []), ("generic", ["--label-map", str(tmp_path / "map.json")])):
        capsys.readouterr()
        assert (
            main(
                [
                    "prune",
                    str(tmp_path / folder),
                    "--audio",
                    str(tmp_path / "audio"),
                    "--out",
                    str(tmp_path / f"cut-{folder}"),
                    "--measure",
                    "euclidean",
                    "--keep",
                    "1",
                    "--pairs",
                    "3",
                    "--n-sampled",
                    "3",
                    "--no-plot",
                    "--quiet",
                    "--json",
                    *extra,
                ]
            )
            == 0
        )
        reports.append(json.loads(capsys.readouterr().out)["scores"])
    assert reports[0] == reports[1]
