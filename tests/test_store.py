"""The layer store: round trips, memory mapping, atomic writes, refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconvex as fc
from fastconvex.store import MANIFEST, StoreWriter


def _layers(n=30, d=5, count=3, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_round_trip_memmapped(tmp_path, dtype):
    layers = _layers(dtype=dtype)
    labels = np.arange(30) % 4
    store = fc.save_store(tmp_path / "s", layers, labels, meta={"model": "tiny", "pooling": "mean"})
    again = fc.open_store(tmp_path / "s")
    assert again.name == "s" and store.fingerprint == again.fingerprint
    assert again.meta["model"] == "tiny" and again.meta["pooling"] == "mean"
    assert again.meta["dtype"] == np.dtype(dtype).name and "numpy" in again.meta["versions"]
    assert len(again) == 3 and again.n_points == 30
    for a, b in zip(again.layers, layers):
        assert isinstance(a, np.memmap) and a.dtype == dtype and not a.flags.writeable
        np.testing.assert_array_equal(a, b)
    assert again.labels.dtype == np.int64 and again.labels.tolist() == labels.tolist()
    again.verify()


@pytest.mark.parametrize(
    "labels",
    [
        ["yes", "no", "up"] * 10,  # strings stay strings
        [3, -1, 7] * 10,  # ints stay ints
        [1, "1", None, (2, "x"), b"\x00b", 2.5, True, frozenset({1})] * 3 + ["a"] * 6,  # mixed
    ],
    ids=["str", "int", "mixed"],
)
def test_labels_round_trip_exactly_without_pickle(tmp_path, labels):
    store = fc.save_store(tmp_path / "s", _layers(), labels)
    got = fc.open_store(tmp_path / "s").labels
    assert len(got) == 30
    for a, b in zip(got.tolist(), labels):
        assert a == b and type(a) is type(b)
    # nothing in the store needs pickle to read
    for root, _, files in os.walk(store.path):
        for f in files:
            if f.endswith(".npy"):
                np.load(os.path.join(root, f), allow_pickle=False)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(-5, 5),
            st.text(max_size=3),
            st.none(),
            st.booleans(),
            st.tuples(st.integers(0, 2), st.text(max_size=2)),
        ),
        min_size=4,
        max_size=12,
    )
)
def test_any_hashable_labels_round_trip(tmp_path_factory, labels):
    path = tmp_path_factory.mktemp("h") / "s"
    x = np.random.default_rng(1).standard_normal((len(labels), 3)).astype(np.float32)
    fc.save_store(path, [x], labels)
    got = fc.open_store(path).labels.tolist()
    assert [(type(v), v) for v in got] == [(type(v), v) for v in labels]


def test_unstorable_label_names_the_row(tmp_path):
    with pytest.raises(TypeError, match=r"labels\[2\] is a object"):
        fc.save_store(tmp_path / "s", _layers(n=4, count=1), [1, "a", object(), 2])
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0.0, 1.0, np.nan, 1.0]),  # float array
        [1, "a", float("nan"), 2],  # mixed, as an object array
        np.array([1, "a", np.float64(np.inf), 2], dtype=object),
    ],
)
def test_non_finite_label_refused_before_anything_is_written(tmp_path, labels):
    """NaN != NaN would make each NaN a class of its own: refused when the
    store is written (naming the row), not when it is scored."""
    calls = []

    def layers():  # never reached: the labels are checked first
        calls.append(1)
        yield from _layers(n=4, count=1)

    with pytest.raises(ValueError, match=r"labels has a non-finite label in row 2"):
        fc.save_store(tmp_path / "s", layers(), labels)
    assert calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["no", 0, None, "False"])
def test_overwrite_must_be_a_bool(tmp_path, flag):
    fc.save_store(tmp_path / "s", _layers(), np.arange(30) % 2)
    with pytest.raises(TypeError, match=r"overwrite must be True or False"):
        fc.save_store(tmp_path / "s", _layers(seed=5), np.arange(30) % 2, overwrite=flag)
    np.testing.assert_array_equal(fc.open_store(tmp_path / "s").layers[0], _layers()[0])


def test_from_generator_torch_and_3d(tmp_path):
    layers = _layers()
    gen = (torch.from_numpy(x) for x in layers)
    s1 = fc.save_store(tmp_path / "gen", gen, ["a", "b"] * 15, utterance=np.arange(30) // 3)
    s2 = fc.save_store(tmp_path / "arr", np.stack(layers), ["a", "b"] * 15)
    assert s1.fingerprint != s2.fingerprint  # the utterance index is content
    np.testing.assert_array_equal(s1.utterance, np.arange(30) // 3)
    for a, b in zip(s1.layers, s2.layers):
        np.testing.assert_array_equal(a, b)


def test_fingerprint_follows_content(tmp_path):
    layers = _layers()
    a = fc.save_store(tmp_path / "a", layers, np.arange(30) % 3)
    b = fc.save_store(tmp_path / "b", layers, np.arange(30) % 3, meta={"note": "same content"})
    layers[1][4, 2] += 1
    c = fc.save_store(tmp_path / "c", layers, np.arange(30) % 3)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_no_overwrite_without_asking(tmp_path):
    fc.save_store(tmp_path / "s", _layers(), np.arange(30) % 2)
    with pytest.raises(FileExistsError, match="overwrite"):
        fc.save_store(tmp_path / "s", _layers(seed=5), np.arange(30) % 2)
    np.testing.assert_array_equal(fc.open_store(tmp_path / "s").layers[0], _layers()[0])
    fc.save_store(tmp_path / "s", _layers(seed=5), np.arange(30) % 2, overwrite=True)
    np.testing.assert_array_equal(fc.open_store(tmp_path / "s").layers[0], _layers(seed=5)[0])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a layer store"):
        fc.save_store(tmp_path / "mine", _layers(), np.arange(30) % 2, overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: [np.ones((30, 2), np.int64)], "dtype int64"),
        (lambda: [np.ones((30, 2), np.float32), np.ones((29, 2), np.float32)], r"layers\[1\] has N=29"),
        (lambda: [np.ones(30, np.float32)], "2-D"),
        (list, "no layer"),
    ],
)
def test_bad_layers_refused(tmp_path, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fc.save_store(tmp_path / "s", bad(), np.arange(30) % 2)
    assert not (tmp_path / "s").exists()


def _corrupt(path, how):
    if how == "truncated layer":
        f = path / "layer_001.npy"
        f.write_bytes(f.read_bytes()[:-7])
        return "layer_001.npy"
    if how == "missing labels":
        (path / "labels" / "labels.npy").unlink()
        return "labels.npy"
    if how == "wrong N":
        np.save(path / "layer_002.npy", np.zeros((29, 5), np.float32))
        return "layer_002.npy"
    if how == "missing manifest":
        (path / MANIFEST).unlink()
        return MANIFEST
    if how == "garbled manifest":
        (path / MANIFEST).write_text("{not json")
        return MANIFEST
    if how == "pickled labels":
        np.save(path / "labels" / "labels.npy", np.array([object()] * 30), allow_pickle=True)
        return "labels.npy"
    if how == "wrong dtype":
        np.save(path / "layer_000.npy", np.zeros((30, 5), np.float64))
        return "layer_000.npy"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "truncated layer",
        "missing labels",
        "wrong N",
        "missing manifest",
        "garbled manifest",
        "pickled labels",
        "wrong dtype",
    ],
)
def test_corrupt_store_refused_naming_the_file(tmp_path, how):
    fc.save_store(tmp_path / "s", _layers(), np.arange(30) % 2)
    name = _corrupt(tmp_path / "s", how)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        fc.open_store(tmp_path / "s")


def _edit(manifest, path, value):
    *keys, last = path
    for key in keys:
        manifest = manifest[key]
    if value is KeyError:
        del manifest[last]
    else:
        manifest[last] = value


@pytest.mark.parametrize(
    "path, value, match",
    [
        (["layers"], "layer_000.npy", r"has a malformed field \('layers' must be a JSON list, got str\)"),
        (["layers"], ["layer_000.npy"], r"has a malformed field \('layers' must list JSON objects\)"),
        (["meta"], 5, r"has a malformed field \('meta' must be a JSON object, got int\)"),
        (["labels"], KeyError, r"lacks the field 'labels'"),
        (["layers", 0, "dtype"], KeyError, r"layer 0's entry is malformed \(KeyError: 'dtype'\)"),
        (["layers", 1, "dtype"], "float99", r"layer 1's entry is malformed \(TypeError: data type 'float99'"),
        (["layers", 1, "shape"], ["x", 5], r"layer 1's entry is malformed \(ValueError"),
        (["layers", 0, "file"], "/etc/passwd", r"layer 0's entry is malformed .*'/etc/passwd' is not a path inside"),
        (
            ["layers", 2, "file"],
            "../t/layer_000.npy",
            r"layer 2's entry .*'\.\./t/layer_000\.npy' is not a path inside",
        ),
        (["labels", "file"], None, r"the labels or utterance entry is malformed \(TypeError"),
        (["labels", "kind"], KeyError, r"the labels or utterance entry is malformed \(KeyError: 'kind'\)"),
    ],
)
def test_malformed_manifest_entries_are_named(tmp_path, path, value, match):
    # a hand-edited or damaged store.json: a ValueError naming the manifest and
    # the entry, never a bare KeyError/TypeError, and no file outside the store read
    fc.save_store(tmp_path / "t", _layers(), np.arange(30) % 2)
    manifest = json.loads((tmp_path / "t" / MANIFEST).read_text())
    _edit(manifest, path, value)
    (tmp_path / "t" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{MANIFEST}: {match}"):
        fc.open_store(tmp_path / "t")


def test_verify_catches_changed_bytes(tmp_path):
    fc.save_store(tmp_path / "s", _layers(), np.arange(30) % 2)
    arr = np.load(tmp_path / "s" / "layer_000.npy", mmap_mode="r+")
    arr[0, 0] += 1
    arr.flush()
    del arr
    with pytest.raises(ValueError, match="layer_000.npy.*sha256"):
        fc.open_store(tmp_path / "s").verify()


def test_missing_path_and_partial_write_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fc.open_store(tmp_path / "nope")
    writer = StoreWriter(tmp_path / "s", np.arange(30) % 2, resume=True)
    writer.layer(_layers()[0])
    (tmp_path / "s").mkdir()
    with pytest.raises(ValueError, match="unfinished write"):
        fc.open_store(tmp_path / "s")


def test_manifest_documents_the_files(tmp_path):
    fc.save_store(tmp_path / "s", _layers(count=2), ["x", "y"] * 15)
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["format"] == "fastconvex-layer-store" and manifest["n_points"] == 30
    assert [e["file"] for e in manifest["layers"]] == ["layer_000.npy", "layer_001.npy"]
    assert manifest["labels"]["file"] == "labels/labels.npy"
    # the layer files alone still load as a directory of .npy layers (fastconvex score DIR)
    from fastconvex.commands.score import load_embeddings

    _, names = load_embeddings(tmp_path / "s")
    assert names == ["layer_000.npy", "layer_001.npy"]
