"""Euclidean convexity (fc.euclidean_convexity, fc.layer_euclidean_scores)
against the authors' package, a one-pair-at-a-time oracle and hand-computed cases."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import euclidean_one_pair_at_a_time, nnconvexity_euclidean_all_pairs

import fastconvex as fc
from fastconvex.core import inputs as fc_inputs
from fastconvex.euclidean.segments import plan_segments


def _linear(w: np.ndarray, names=None):
    """A linear classifier: argmax of x @ w over the last axis, sequences
    mean-pooled over frames first; returns class ids (or ``names[id]``)."""

    def predict(batch):
        b = np.asarray(batch)
        if b.ndim == 3:
            b = b.mean(axis=1)
        ids = (b @ w).argmax(axis=1)
        return ids if names is None else np.asarray(names)[ids]

    return predict


def _mlp(seed, d, c, hidden=8):
    """A small random tanh network (non-convex decision regions); sequences:
    per-frame features, max over frames, then the read-out."""
    rng = np.random.default_rng(seed + 100)
    w1, w2 = rng.normal(size=(d, hidden)), rng.normal(size=(hidden, c))

    def predict(batch):
        h = np.tanh(np.asarray(batch) @ w1)
        if h.ndim == 3:
            h = h.max(axis=1)
        return (h @ w2).argmax(axis=1)

    return predict


def _data(seed, n, d, c, t=None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(c, d))
    y = rng.integers(0, c, n)
    shape = (n, d) if t is None else (n, t, d)
    noise = rng.normal(size=shape)
    x = (centres[y][:, None, :] if t is not None else centres[y]) + noise
    w = centres.T + 1.5 * rng.normal(size=(d, c))
    return x.astype(dtype), y, w


@pytest.mark.parametrize(
    "seed,n,d,c,t,dtype",
    [
        (0, 31, 4, 3, None, np.float64),
        (1, 40, 7, 4, None, np.float32),
        (2, 25, 3, 2, None, np.float64),
        (3, 22, 5, 3, 6, np.float64),  # sequences (N, T, D)
        (4, 18, 4, 2, 9, np.float32),
    ],
)
def test_matches_nnconvexity_on_every_pair(seed, n, d, c, t, dtype):
    """Same predictor, every pair (nothing sampled): equal after nnconvexity's
    rounding to 2 decimals, pooled and per class; and to 1e-12 against the
    one-pair-at-a-time oracle before rounding."""
    x, y, w = _data(seed, n, d, c, t, dtype)
    predict = _linear(w) if seed % 2 else _mlp(seed, d, c)
    r = fc.euclidean_convexity(x, y, predict, exact=True)
    ref_mean, ref_class = nnconvexity_euclidean_all_pairs(x, y, predict)
    assert round(100 * r.score, 2) == ref_mean
    assert {k: round(100 * v, 2) for k, v in r.per_class.items()} == {int(k): v for k, v in ref_class.items()}
    assert 0.0 < r.score < 1.0  # a case where the segments do cross boundaries
    slow_mean, slow_class = euclidean_one_pair_at_a_time(x, y, predict)
    assert math.isclose(r.score, slow_mean, rel_tol=0, abs_tol=1e-12)
    for k, v in slow_class.items():
        assert math.isclose(r.per_class[int(k)], v, rel_tol=0, abs_tol=1e-12)
    assert r.stderr == 0.0 and r.measure == "euclidean" and r.n_sampled == 10
    assert r.n_pairs == {k: int(np.sum(y == k) * (np.sum(y == k) - 1) // 2) for k in range(c)}
    # "pairs" large enough to hold every pair is the same estimate
    assert fc.euclidean_convexity(x, y, predict, pairs=10_000).score == r.score


def test_linear_classifier_crossing_at_a_known_lambda():
    """1-D points; "a" predicted below 0.35. Pair {0, 1}: samples (11 - i)/11,
    i = 1..10, of which 1/11, 2/11, 3/11 lie below 0.35 -> 3/10. Pair {0, 3}:
    3k/11 -> only 3/11 -> 1/10. Pair {1, 3}: all >= 1 -> 0. Class "b" (5, 6):
    every sample is "b" -> 1."""
    x = np.array([[0.0], [1.0], [3.0], [5.0], [6.0]])
    labels = ["a", "a", "a", "b", "b"]

    def predict(batch):
        return np.where(np.asarray(batch)[:, 0] < 0.35, "a", "b")

    r = fc.euclidean_convexity(x, labels, predict)
    a_score = (0.3 + 0.1 + 0.0) / 3
    assert math.isclose(r.per_class["a"], a_score, abs_tol=1e-15)
    assert r.per_class["b"] == 1.0
    assert math.isclose(r.score, (0.3 + 0.1 + 0.0 + 1.0) / 4, abs_tol=1e-15)
    assert math.isclose(r.macro, (a_score + 1.0) / 2, abs_tol=1e-15)
    assert r.n_pairs == {"a": 3, "b": 1} and r.stderr == 0.0
    # n_sampled=1 samples the midpoint only: 0.5, 1.5, 2 -> none below 0.35
    assert fc.euclidean_convexity(x, labels, predict, n_sampled=1).per_class["a"] == 0.0


def test_always_right_is_one_and_never_right_is_zero():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 3))
    x[:, 0] = np.abs(x[:, 0]) + 0.1
    y = np.array(["pos"] * 30, dtype=object)
    x[::2, 0] *= -1  # half the points on the negative side
    y[::2] = "neg"
    sign = lambda b: np.where(np.asarray(b)[:, 0] > 0, "pos", "neg")  # noqa: E731
    flipped = lambda b: np.where(np.asarray(b)[:, 0] > 0, "neg", "pos")  # noqa: E731
    # half-spaces are convex: every segment stays on its side
    assert fc.euclidean_convexity(x, y, sign).score == 1.0
    assert fc.euclidean_convexity(x, y, flipped).score == 0.0
    # a label of the model that no item has counts as wrong once it is known
    other = fc.euclidean_convexity(x, y, lambda b: ["other"] * len(b), known_labels=["other", "pos"])
    assert other.score == 0.0 and other.macro == 0.0


def test_string_and_tensor_labels_and_tensor_input():
    x, y, w = _data(7, 27, 4, 3)
    names = np.array(["yes", "no", "up"])
    ref = fc.euclidean_convexity(x, y, _linear(w), exact=True)
    by_name = fc.euclidean_convexity(x, list(names[y]), _linear(w, names), exact=True)
    # classes sort differently by name: the same pairs, summed in another order
    assert math.isclose(by_name.score, ref.score, abs_tol=1e-14)
    assert by_name.per_class == {names[k]: v for k, v in ref.per_class.items()}
    # torch input: torch batches, same numbers (float64 interpolation is the same)
    seen = []

    def torch_predict(batch):
        seen.append(type(batch))
        return (batch @ torch.as_tensor(w)).argmax(dim=1)

    t = fc.euclidean_convexity(torch.as_tensor(x), torch.as_tensor(y), torch_predict, exact=True)
    assert t.score == ref.score and set(seen) == {torch.Tensor}
    # numpy input with a device: batches are built as tensors there
    seen.clear()
    d = fc.euclidean_convexity(x, y, torch_predict, exact=True, device="cpu")
    assert d.score == ref.score and set(seen) == {torch.Tensor} and d.backend == "torch:cpu"


def test_one_member_classes_are_skipped():
    x, y, w = _data(8, 30, 4, 3)
    x1 = np.concatenate([x, np.full((1, 4), 9.0)])
    y1 = np.concatenate([y, [7]])  # class 7 has one member
    r = fc.euclidean_convexity(x1, y1, _linear(w), known_labels=[7])
    full = fc.euclidean_convexity(x, y, _linear(w))
    assert r.n_pairs[7] == 0 and math.isnan(r.per_class[7])
    assert r.score == full.score and r.macro == full.macro
    with pytest.raises(ValueError, match="nothing to score"):
        fc.euclidean_convexity(x[:3], [0, 1, 2], _linear(w))
    with pytest.raises(ValueError, match="nothing to score"):
        fc.euclidean_convexity(x, y, _linear(w), min_class_size=31)


def test_bad_predict_output_gets_a_clear_error():
    x, y, w = _data(9, 20, 4, 3)
    with pytest.raises(ValueError, match=r"predict returned shape \(6,\) for a batch of 7 points"):
        fc.euclidean_convexity(x, y, lambda b: np.zeros(len(b) - 1, int), batch_size=7)
    with pytest.raises(ValueError, match="return the predicted labels, e.g. argmax"):
        fc.euclidean_convexity(x, y, lambda b: np.asarray(b) @ w)
    with pytest.raises(ValueError, match=r"predict returned label 'LABEL_0', which is no class of labels"):
        fc.euclidean_convexity(x, y, lambda b: ["LABEL_0"] * len(b))
    with pytest.raises(ValueError, match=r"predict returned label 3, which is no class"):
        fc.euclidean_convexity(x, y, lambda b: np.full(len(b), 3))
    with pytest.raises(TypeError, match="predict must return a sequence of"):
        fc.euclidean_convexity(x, y, lambda b: None)
    with pytest.raises(TypeError, match="predict must be callable"):
        fc.euclidean_convexity(x, y, "argmax")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"n_sampled": 0}, ValueError, "n_sampled must be >= 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"pairs": 0}, ValueError, "pairs must be >= 1"),
        ({"pairs": None}, ValueError, "pairs=None needs exact=True"),
        ({"pairs": 100, "exact": True}, ValueError, "give either exact=True .* or pairs=100"),
        ({"pairs": 5000, "exact": True}, ValueError, "give either exact=True .* or pairs=5000"),
        ({"exact": 1}, TypeError, "exact must be True or False"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"lengths": np.ones(20, int)}, ValueError, "apply to \\(N, T, D\\) sequences only"),
    ],
)
def test_bad_settings(kwargs, error, match):
    x, y, w = _data(10, 20, 4, 3)
    with pytest.raises(error, match=match):
        fc.euclidean_convexity(x, y, _linear(w), **kwargs)
    if "pairs" in kwargs and kwargs.get("exact"):  # the same on every layer
        with pytest.raises(error, match=match):
            fc.layer_euclidean_scores([x, x], y, lambda layer, batch: _linear(w)(batch), **kwargs)


def test_bad_inputs():
    x, y, w = _data(11, 20, 4, 3)
    bad = x.copy()
    bad[13, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite value .* in item 13"):
        fc.euclidean_convexity(bad, y, _linear(w))
    with pytest.raises(ValueError, match="labels has 19 entries but there are N=20 items"):
        fc.euclidean_convexity(x, y[:19], _linear(w))
    with pytest.raises(ValueError, match=r"got shape \(20,\)"):
        fc.euclidean_convexity(x[:, 0], y, _linear(w))
    with pytest.raises(ValueError, match="hidden_states\\[1\\] has shape"):
        fc.layer_euclidean_scores([x, x[:19]], y, lambda i, b: _linear(w)(b))
    for empty in (np.zeros((0, 3)), np.zeros((4, 0)), torch.zeros((0, 3))):
        with pytest.raises(ValueError, match=r"x is empty \(shape"):
            fc.euclidean_convexity(empty, [0] * empty.shape[0], _linear(w))


def test_bad_predictors_devices_and_known_labels_are_named_before_scoring():
    """A predict_from_layer taking one argument failed inside the first batch with
    "<lambda>() takes 1 positional argument but 2 were given"; device="cuda"
    without CUDA raised AssertionError, device=3 a RuntimeError; known_labels="7"
    was read as the characters {"7"} and known_labels=7 failed with "'int' object
    is not iterable"; a generator known_labels was used up by layer 0, so layer 1
    then refused the very label it declared."""
    x, y, w = _data(12, 20, 4, 3)
    with pytest.raises(TypeError, match=r"predict_from_layer must take \(layer, batch\), but its signature is \(b\)"):
        fc.layer_euclidean_scores([x, x], y, lambda b: _linear(w)(b))
    with pytest.raises(TypeError, match=r"predict must take \(batch\), but its signature is \(\)"):
        fc.euclidean_convexity(x, y, lambda: 0)
    with pytest.raises(TypeError, match=r"progress must be None, True or False, got str 'no'"):
        fc.euclidean_convexity(x, y, _linear(w), progress="no")  # 'no' is truthy: it showed the bar
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' was requested, but no CUDA device"):
            fc.euclidean_convexity(x, y, _linear(w), device="cuda")
    with pytest.raises(ValueError, match="device='bogus' is not a device torch knows"):
        fc.euclidean_convexity(x, y, _linear(w), device="bogus")
    with pytest.raises(TypeError, match="device must be None, a string"):
        fc.euclidean_convexity(x, y, _linear(w), device=3)

    def always_7(*a):
        return np.full(len(a[-1]), 7)

    for bad in ("7", 7):
        with pytest.raises(TypeError, match=rf"known_labels must be an iterable of labels.*pass \[{bad!r}\]"):
            fc.euclidean_convexity(x, y, always_7, known_labels=bad)
    r = fc.layer_euclidean_scores([x, x, x], y, lambda layer, b: always_7(b), known_labels=(v for v in [7]))
    assert r.scores.tolist() == [0.0, 0.0, 0.0]


def test_integers_beyond_2_53_warn_and_exact_ones_do_not():
    """int64 items are scored in float64: values that float64 cannot hold are
    said (never a silent change), exact ones are not."""
    y = np.array([0, 0, 1, 1])
    always_zero = lambda b: np.zeros(len(b), dtype=int)  # noqa: E731
    big = np.array([[2**60 + 1, 0], [2**60, 1], [0, 2], [1, 1]], dtype=np.int64)
    with pytest.warns(
        fc_inputs.PrecisionWarning, match=r"2 value\(s\) \(integers beyond 2\*\*53, the first in row 0\)"
    ):
        fc.euclidean_convexity(big, y, always_zero, exact=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = fc.euclidean_convexity(big // 2**40, y, always_zero, exact=True)
    assert small.per_class == {0: 1.0, 1: 0.0}


def test_sampled_pairs_are_distinct_same_class_and_capped():
    rng = np.random.default_rng(12)
    codes = rng.integers(0, 4, 90)
    codes[codes == 3] = 2  # class 3 empty
    codes[0] = 3  # ... but for one member
    plan = plan_segments(codes, 4, exact=False, budget=100, seed=3, min_class_size=2)
    a = np.repeat(plan.sources, np.diff(plan.target_ptr))
    b = plan.targets
    assert np.all(a < b) and np.all(codes[a] == codes[b])
    assert len(set(zip(a.tolist(), b.tolist()))) == a.shape[0]
    for c in range(4):
        n_c = int(np.sum(codes == c))
        assert int(np.sum(codes[a] == c)) == min(100, n_c * (n_c - 1) // 2)
    # exact: every unordered pair of every class with 2+ members
    plan = plan_segments(codes, 4, exact=True, budget=0, seed=3, min_class_size=2)
    a = np.repeat(plan.sources, np.diff(plan.target_ptr))
    want = {(i, j) for i, j in itertools.combinations(range(90), 2) if codes[i] == codes[j]}
    assert set(zip(a.tolist(), plan.targets.tolist())) == want


def test_sampled_estimate_has_a_standard_error_and_is_reproducible():
    x, y, w = _data(13, 60, 4, 3)
    r = fc.euclidean_convexity(x, y, _linear(w), pairs=50, seed=1)
    assert r.n_pairs == {0: 50, 1: 50, 2: 50} and r.estimator == "pairs"
    assert r.stderr > 0
    assert fc.euclidean_convexity(x, y, _linear(w), pairs=50, seed=1) == r
    exact = fc.euclidean_convexity(x, y, _linear(w), exact=True)
    assert abs(r.score - exact.score) < 5 * r.stderr + 1e-9


def test_batches_hold_many_pairs_and_do_not_change_the_result():
    x, y, w = _data(14, 25, 4, 3)
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return _linear(w)(batch)

    ref = fc.euclidean_convexity(x, y, predict, batch_size=64)
    total = sum(ref.n_pairs.values()) * 10
    assert sizes[:-1] == [64] * (len(sizes) - 1) and sum(sizes) == total
    for bs in (1, 7, 10_000):
        assert fc.euclidean_convexity(x, y, _linear(w), batch_size=bs) == ref


def test_sequences_of_different_lengths_interpolate_the_union_of_frames():
    """Each item's padding frames count as zeros; the sampled sequence's mask is
    the union of both masks; the predictor receives (batch, mask)."""
    rng = np.random.default_rng(15)
    x = rng.normal(size=(3, 5, 2))
    x[0, 3:] = 99.0  # padding frames hold anything
    lengths = np.array([3, 5, 4])
    got = []

    def predict(batch, mask):
        got.append((np.array(batch), np.array(mask)))
        return np.zeros(len(batch), int)

    r = fc.euclidean_convexity(x, [0, 0, 1], predict, lengths=lengths, n_sampled=2)
    assert r.score == 1.0 and r.n_pairs == {0: 1, 1: 0}
    batch, mask = got[0]
    assert batch.shape == (2, 5, 2) and mask.tolist() == [[True] * 5] * 2
    lam = np.array([1 / 3, 2 / 3])
    padded0 = np.where((np.arange(5) < 3)[:, None], x[0], 0.0)
    np.testing.assert_array_equal(batch, lam[:, None, None] * padded0 + (1 - lam)[:, None, None] * x[1])
    with pytest.raises(TypeError, match=r"predict must take \(batch, mask\)"):
        fc.euclidean_convexity(x, [0, 0, 1], lambda b: np.zeros(len(b), int), lengths=lengths)
    with pytest.raises(ValueError, match="item 1 of x has no valid frames"):
        fc.euclidean_convexity(x, [0, 0, 1], predict, lengths=np.array([3, 0, 4]))


def test_layer_scores_reuse_the_pairs_for_every_layer():
    x, y, w = _data(16, 50, 4, 3)
    layers = [x, 0.5 * x + 1.0, x[:, ::-1].copy()]
    calls = []

    def predict_from_layer(layer, batch):
        calls.append(layer)
        return _linear(w)(batch)

    r = fc.layer_euclidean_scores(layers, y, predict_from_layer, pairs=40, seed=2, progress=False)
    assert isinstance(r, fc.LayerScores) and len(r) == 3 and sorted(set(calls)) == [0, 1, 2]
    for i, layer in enumerate(layers):
        one = fc.euclidean_convexity(layer, y, _linear(w), pairs=40, seed=2)
        assert r.layers[i] == one and r.scores[i] == one.score
    assert r.best_layer == int(np.argmax(r.scores))
    d = r.to_dict()
    assert d["layers"][0]["measure"] == "euclidean" and d["layers"][0]["k"] is None
    from fastconvex.plot import plot_layer_scores

    assert r.plot().axes[0].get_ylabel() == "euclidean convexity (%)"
    graph = fc.layer_scores(layers, y, k=5, pairs=40, progress=False)
    both = plot_layer_scores([graph, r], labels=["graph", "euclidean"])
    assert both.axes[0].get_ylabel() == "convexity (%)" and len(both.axes[0].get_legend().get_texts()) == 2
    # one (L, N, D) array is the same as the list
    assert fc.layer_euclidean_scores(np.stack(layers), y, predict_from_layer, pairs=40, seed=2).layers == r.layers


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 14),
    c=st.integers(1, 4),
    n_sampled=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_property_equals_the_one_pair_at_a_time_oracle(n, c, n_sampled, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).round(1)  # ties and duplicates happen
    y = [f"c{v}" for v in rng.integers(0, c, n)]
    w = rng.normal(size=(2, c))
    names = [f"c{v}" for v in range(c)]
    predict = _linear(w, names)
    if all(y.count(v) < 2 for v in set(y)):
        with pytest.raises(ValueError, match="nothing to score"):
            fc.euclidean_convexity(x, y, predict, n_sampled=n_sampled, known_labels=names)
        return
    r = fc.euclidean_convexity(x, y, predict, n_sampled=n_sampled, known_labels=names, batch_size=5)
    mean, per_class = euclidean_one_pair_at_a_time(x, y, predict, n_sampled)
    assert math.isclose(r.score, mean, abs_tol=1e-12)
    assert {k: v for k, v in r.per_class.items() if not math.isnan(v)}.keys() == per_class.keys()
    for k, v in per_class.items():
        assert math.isclose(r.per_class[k], v, abs_tol=1e-12)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_batches_are_built_on_the_predictors_device(device):
    """A predictor with a ``.device`` gets its batches built there (numpy input
    moved once), with the numbers the host computes (CPU; CUDA when present)."""
    x, y, w = _data(17, 45, 6, 3)
    wt = torch.as_tensor(w, device=device)
    devices = set()

    def predict(batch):
        devices.add(batch.device.type)
        return (batch @ wt).argmax(dim=1)

    predict.device = torch.device(device)
    got = fc.euclidean_convexity(x, y, predict, exact=True, batch_size=100)
    ref = fc.euclidean_convexity(x, y, _linear(w), exact=True)
    assert devices == {device} and got.backend.startswith(f"torch:{device}")
    assert got.score == ref.score and got.per_class == ref.per_class
