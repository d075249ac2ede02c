"""layer_scores: every input form of docs/api.md ("Input forms of layer_scores"), pooling, frame labels, common pairs."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

import fastconvex as fc
from fastconvex.datasets import overlapping_classes


def _layers(n=60, d=5, n_layers=3, seed=0):
    x, y = overlapping_classes(n, d, 3, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return [x + 0.7 * i * rng.normal(size=x.shape) for i in range(n_layers)], y


def test_forms_agree_with_per_layer_graph_convexity():
    layers, y = _layers()
    expected = [fc.graph_convexity(h, y, k=4, pairs=50, seed=1) for h in layers]
    stacked = np.stack(layers)
    for form in (layers, tuple(layers), stacked, torch.from_numpy(stacked), [torch.from_numpy(h) for h in layers]):
        r = fc.layer_scores(form, y, k=4, pairs=50, seed=1, progress=False)
        assert len(r) == 3 and r.scores.shape == (3,) and r.stderr.shape == (3,)
        for got, exp in zip(r.layers, expected):
            assert got.score == exp.score and got.stderr == exp.stderr
        np.testing.assert_array_equal(r.scores, [e.score for e in expected])
        assert r.best_layer == int(np.argmax(r.scores))
        assert r.classes == [0, 1, 2]
        assert r.per_class.shape == (3, 3)


@pytest.mark.parametrize("estimator", [{"pairs": 50}, {"sources": 4}, {"exact": True}])
@pytest.mark.parametrize("names", [["ah", "k", "sil"], ["k", 3, "ah"]], ids=["str", "mixed"])
def test_string_labels_with_every_estimator(estimator, names):
    """String (and mixed str/int) labels give, layer by layer, what the same
    classes as integer codes give alone (the same pairs where the renaming
    keeps the sorted order; exact is order-free); the class keys are the names."""
    layers, y = _layers()
    labels = [names[v] for v in y]
    r = fc.layer_scores(layers, labels, k=4, seed=2, progress=False, **estimator)
    sortable = names == sorted(names, key=str) and len({type(v) for v in names}) == 1
    for got, h in zip(r.layers, layers):
        ref = fc.graph_convexity(h, y, k=4, seed=2, **estimator)
        if sortable or "exact" in estimator:
            assert math.isclose(got.score, ref.score, rel_tol=0, abs_tol=1e-12)
            assert got.n_pairs == {names[c]: n for c, n in ref.n_pairs.items()}
            for c, v in ref.per_class.items():
                assert math.isclose(got.per_class[names[c]], v, rel_tol=0, abs_tol=1e-12)
        else:  # another class order: other sampled pairs, the same counts
            assert sorted(got.n_pairs.values()) == sorted(ref.n_pairs.values())
    assert set(r.classes) == set(names)
    assert r.per_class.shape == (3, 3)
    for i, c in enumerate(r.classes):
        np.testing.assert_array_equal(r.per_class[:, i], [layer.per_class[c] for layer in r.layers])


def test_same_pairs_for_every_layer():
    layers, y = _layers()
    # identical layers scored on common pairs give identical results
    r = fc.layer_scores([layers[0]] * 3, y, k=4, pairs=40, seed=3, progress=False)
    assert r.scores[0] == r.scores[1] == r.scores[2]
    # and a layer scored alone with the same seed gives the same value
    assert r.scores[0] == fc.graph_convexity(layers[0], y, k=4, pairs=40, seed=3).score


def test_pooling_with_lengths_and_mask_equals_manual_pooling():
    rng = np.random.default_rng(2)
    n_layers, batch, frames, dim = 2, 30, 7, 4
    h = rng.normal(size=(n_layers, batch, frames, dim))
    lengths = rng.integers(1, frames + 1, size=batch)
    mask = (np.arange(frames)[None, :] < lengths[:, None]).astype(np.int64)
    y = np.arange(batch) % 3
    manual = [np.stack([h[i, b, : lengths[b]].mean(0) for b in range(batch)]) for i in range(n_layers)]
    ref = fc.layer_scores(manual, y, k=3, exact=True, progress=False)
    for kw in ({"lengths": lengths}, {"attention_mask": mask}, {"lengths": torch.from_numpy(lengths)}):
        got = fc.layer_scores(h, y, k=3, exact=True, progress=False, **kw)
        np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=1e-12)
    # list of per-layer (B, T, D) torch tensors, pooled in torch: float64 in
    # float64 (the same pooled vectors to rounding), float32 in float32
    got = fc.layer_scores(
        [torch.from_numpy(a) for a in h], y, k=3, exact=True, progress=False, attention_mask=torch.from_numpy(mask)
    )
    np.testing.assert_allclose(got.scores, ref.scores, rtol=0, atol=1e-12)
    from fastconvex.core.layers import prepare_layers

    pooled, _ = prepare_layers([torch.from_numpy(a) for a in h], y, attention_mask=torch.from_numpy(mask))
    assert pooled[0].dtype == torch.float64
    np.testing.assert_allclose(pooled[0].numpy(), manual[0], rtol=1e-15, atol=1e-15)
    got = fc.layer_scores(
        [torch.from_numpy(a).float() for a in h],
        y,
        k=3,
        exact=True,
        progress=False,
        attention_mask=torch.from_numpy(mask),
    )
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)
    # no mask, no lengths: every frame counts
    allframes = fc.layer_scores(h, y, k=3, exact=True, progress=False)
    np.testing.assert_allclose(
        allframes.scores,
        fc.layer_scores(list(h.mean(axis=2)), y, k=3, exact=True, progress=False).scores,
    )


def test_frame_level_labels_skip_ignored_and_padding():
    rng = np.random.default_rng(4)
    batch, frames, dim = 6, 9, 3
    h = rng.normal(size=(2, batch, frames, dim))
    labels = rng.integers(0, 3, size=(batch, frames))
    labels[0, :4] = -100
    lengths = np.array([9, 9, 5, 9, 3, 9])
    keep = (np.arange(frames)[None, :] < lengths[:, None]) & (labels != -100)
    flat = [h[i][keep] for i in range(2)]
    ref = fc.layer_scores(flat, labels[keep], k=5, pairs=30, progress=False)
    got = fc.layer_scores(h, labels, k=5, pairs=30, lengths=lengths, progress=False)
    np.testing.assert_array_equal(got.scores, ref.scores)
    assert got.layers[0].n_points == keep.sum()
    assert -100 not in got.classes


def test_string_frame_labels():
    rng = np.random.default_rng(5)
    h = rng.normal(size=(1, 3, 8, 2))
    labels = np.array(rng.choice(["sil", "ah", "k"], size=(3, 8)))
    r = fc.layer_scores(h, labels, k=3, pairs=10, progress=False)
    assert set(r.classes) == {"sil", "ah", "k"}
    assert r.layers[0].n_points == 24
    # nested Python lists are (B, T) frame labels, as the same array would be
    nested = fc.layer_scores(h, labels.tolist(), k=3, pairs=10, progress=False)
    np.testing.assert_array_equal(nested.scores, r.scores)
    with pytest.raises(ValueError, match=r"nested lists must be rectangular"):
        fc.layer_scores(h, [["sil"] * 8, ["ah"] * 7, ["k"] * 8], k=3)
    # mixed labels (object array): -100, as int or float, is ignored as in a numeric array
    mixed = labels.astype(object)
    mixed[0, :3] = -100
    mixed[1, :2] = -100.0
    r = fc.layer_scores(h, mixed, k=3, pairs=10, progress=False)
    assert set(r.classes) == {"sil", "ah", "k"} and r.layers[0].n_points == 24 - 5


def test_progress_bar_goes_to_stderr(capsys):
    layers, y = _layers(n_layers=2)
    fc.layer_scores(layers, y, k=3, pairs=10, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2 layers" in captured.err
    fc.layer_scores(layers, y, k=3, pairs=10, progress=None)  # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_results_serialise_and_plot(tmp_path):
    layers, y = _layers()
    names = np.array(["a", "b", "c"])[y]
    r = fc.layer_scores(layers, names, k=4, pairs=30, progress=False)
    d = r.to_dict()
    assert d["best_layer"] == r.best_layer and d["classes"] == ["a", "b", "c"]
    assert d["layers"][0]["n_pairs"] == {"a": 30, "b": 30, "c": 30}
    path = tmp_path / "scores.json"
    r.to_json(path)
    assert json.loads(path.read_text())["scores"] == [float(s) for s in r.scores]
    text = str(r)
    assert "<- best" in text and f"{100 * r.scores[0]:.2f}" in text
    fig = r.plot(cut=1)
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 100 * r.scores)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    c = r.layers[0]
    assert math.isclose(c.to_dict()["score"], c.score)
    assert "Convexity(score=" in str(c)


def test_memory_mapped_float16_layers(tmp_path):
    layers, y = _layers()
    paths = []
    for i, h in enumerate(layers):
        m = np.lib.format.open_memmap(tmp_path / f"layer{i}.npy", mode="w+", dtype=np.float16, shape=h.shape)
        m[:] = h
        m.flush()
        paths.append(tmp_path / f"layer{i}.npy")
    mapped = [np.load(p, mmap_mode="r") for p in paths]
    got = fc.layer_scores(mapped, y, k=4, pairs=40, progress=False)
    ref = fc.layer_scores([m.astype(np.float32) for m in mapped], y, k=4, pairs=40, progress=False)
    np.testing.assert_array_equal(got.scores, ref.scores)
