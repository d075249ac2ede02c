"""Bad input gets a clear ValueError/TypeError naming the argument, layer and row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastconvex as fc

RNG = np.random.default_rng(0)
X = RNG.normal(size=(20, 4))
Y = np.arange(20) % 2


@pytest.mark.parametrize(
    "x,labels,kw,exc,match",
    [
        (X[0], Y, {}, ValueError, r"x must be 2-D"),
        (X[None], Y, {}, ValueError, r"x must be 2-D"),
        (np.empty((0, 4)), [], {}, ValueError, r"x is empty"),
        (np.empty((5, 0)), Y[:5], {}, ValueError, r"x is empty"),
        (X, Y[:19], {}, ValueError, r"labels has 19 entries .* N=20"),
        (X, Y, {"k": 0}, ValueError, r"k must be >= 1"),
        (X, Y, {"k": 20}, ValueError, r"k must be < the number of points N=20"),
        (X, Y, {"k": 2.5}, TypeError, r"k must be an integer"),
        (X, Y, {"pairs": 0}, ValueError, r"pairs must be >= 1"),
        (X, Y, {"pairs": -3}, ValueError, r"pairs must be >= 1"),
        (X, Y, {"sources": 0}, ValueError, r"sources must be >= 1"),
        (X, Y, {"pairs": -1, "sources": 3}, ValueError, r"pairs must be >= 1"),
        (X, Y, {"pairs": -1, "exact": True}, ValueError, r"pairs must be >= 1"),
        (X, Y, {"pairs": 2.5, "sources": 3}, TypeError, r"pairs must be an integer"),
        (
            X,
            [float("nan") if i == 5 else i % 2 for i in range(20)],
            {},
            ValueError,
            r"labels has a non-finite label in row 5",
        ),
        (
            X,
            np.array([0, "a", np.nan] + [1] * 17, dtype=object),
            {},
            ValueError,
            r"labels has a non-finite label in row 2",
        ),
        (X, Y, {"exact": True, "sources": 3}, ValueError, r"exact=True or sources"),
        (X, Y, {"exact": "yes"}, TypeError, r"exact must be True or False"),
        (X, Y, {"seed": -1}, ValueError, r"seed must be >= 0"),
        (X, Y, {"min_class_size": 0}, ValueError, r"min_class_size must be >= 1"),
        (X, np.arange(20), {}, ValueError, r"no class has at least min_class_size=2"),
        (X, Y, {"min_class_size": 11}, ValueError, r"nothing to score"),
        (X, Y, {"backend": "cuda"}, ValueError, r"backend must be one of"),
        (X, Y.reshape(4, 5), {}, ValueError, r"labels must be 1-D"),
        (X.astype(complex), Y, {}, TypeError, r"must be real"),
        (np.array([["a"] * 4] * 20), Y, {}, TypeError, r"must be numeric"),
        (X, "abab", {}, TypeError, r"labels must be a sequence"),
        (X, [[1], [2]] * 10, {}, ValueError, r"labels must be 1-D \(N,\), got shape \(20, 1\)"),
        (X, [{1}, {2}] * 10, {}, TypeError, r"labels\[0\] is not hashable"),
        (X, 5, {}, TypeError, r"labels must be a sequence with one label per row, got int"),
        (X, {i: i % 2 for i in range(20)}, {}, TypeError, r"labels must be a sequence .* got a dict"),
        (X, set(range(20)), {}, TypeError, r"labels must be a sequence .* got a set"),
    ],
)
def test_graph_convexity_rejects(x, labels, kw, exc, match):
    with pytest.raises(exc, match=match):
        fc.graph_convexity(x, labels, **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_names_the_row(bad):
    x = X.copy()
    x[13, 2] = bad
    with pytest.raises(ValueError, match=r"x has a non-finite value .* row 13"):
        fc.graph_convexity(x, Y)
    with pytest.raises(ValueError, match=r"row 13"):
        fc.graph_convexity(torch.from_numpy(x), Y)
    with pytest.raises(ValueError, match=r"row 13"):
        fc.knn_graph(x, 3)


def test_unhashable_labels_name_the_row():
    labels = [1] * 10 + [{"a": 1}] + [2] * 9
    with pytest.raises(TypeError, match=r"labels\[10\] is not hashable"):
        fc.graph_convexity(X, labels)


def test_knn_graph_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be < the number of points N=20"):
        fc.knn_graph(X, 25)


def test_layer_errors_name_the_layer_and_row():
    layers = [X, X.copy(), X.copy()]
    layers[2][7, 0] = np.nan
    with pytest.raises(ValueError, match=r"hidden_states\[2\] has a non-finite value .* row 7"):
        fc.layer_scores(layers, Y)
    with pytest.raises(ValueError, match=r"hidden_states\[1\] has N = \(19,\)"):
        fc.layer_scores([X, X[:19]], Y)
    with pytest.raises(ValueError, match=r"hidden_states\[1\] has shape \(20,\)"):
        fc.layer_scores([X, X[:, 0]], Y)
    with pytest.raises(ValueError, match=r"hidden_states is empty"):
        fc.layer_scores([], Y)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(20,\)"):
        fc.layer_scores([X], Y[:5])
    with pytest.raises(ValueError, match=r"3-D \(L, N, D\) or 4-D"):
        fc.layer_scores(X, Y)
    with pytest.raises(TypeError, match=r"hidden_states must be a sequence"):
        fc.layer_scores(3.0, Y)


def test_pooling_errors():
    h = RNG.normal(size=(2, 4, 5, 3))  # (L, B, T, D)
    y = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"lengths\[1\] is negative"):
        fc.layer_scores(h, y, k=1, lengths=np.array([5, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 9 exceeds T = 5"):
        fc.layer_scores(h, y, k=1, lengths=np.array([9, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"utterance 2 has no valid frames"):
        fc.layer_scores(h, y, k=1, lengths=np.array([5, 1, 0, 3]))
    with pytest.raises(ValueError, match=r"attention_mask must have shape"):
        fc.layer_scores(h, y, k=1, attention_mask=np.ones((4, 6)))
    with pytest.raises(ValueError, match=r"not both"):
        fc.layer_scores(h, y, k=1, attention_mask=np.ones((4, 5)), lengths=np.array([5] * 4))
    with pytest.raises(ValueError, match=r"B=4 utterances"):
        fc.layer_scores(h, y[:3], k=1)
    with pytest.raises(ValueError, match=r"frame labels must have shape \(B, T\)"):
        fc.layer_scores(h, np.zeros((4, 6)), k=1)
    with pytest.raises(ValueError, match=r"every frame is padding or labelled -100"):
        fc.layer_scores(h, np.full((4, 5), -100), k=1)
    with pytest.raises(ValueError, match=r"only apply|apply to \(B, T, D\)"):
        fc.layer_scores([X], Y, lengths=np.array([1]))


def test_env_backend_override(monkeypatch):
    monkeypatch.setenv("FASTCONVEX_BACKEND", "naive")
    assert fc.graph_convexity(X, Y, k=3).backend == "naive"
    assert fc.graph_convexity(X, Y, k=3, backend="numba").backend == "numba"
    monkeypatch.setenv("FASTCONVEX_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FASTCONVEX_BACKEND must be one of"):
        fc.graph_convexity(X, Y, k=3)


def test_explicit_triton_without_cuda_or_interpreter_says_why(monkeypatch):
    # Import triton while the interpreter is still on (conftest): triton reads
    # TRITON_INTERPRET when it is first imported, and a first import below, with
    # the variable removed, left its language functions compiled-only, so every
    # interpreted kernel of a later test failed ("Cannot call @triton.jit'd
    # outside of the scope of a kernel") when this file ran first.
    import triton  # noqa: F401

    from fastconvex.backends import select as _backends

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: no CUDA device"):
        _backends.resolve_backend("triton", X, None)
    with pytest.raises(RuntimeError, match=r"runs on the CPU; it cannot use device='cuda'"):
        _backends.resolve_backend("numba", X, "cuda")
    assert _backends.resolve_backend("auto", X, None) == "numba"
    # auto with a CUDA device named: no silent fallback to the CPU, and the
    # message names the device the user asked for, not a backend they did not
    with pytest.raises(RuntimeError, match=r"device='cuda:1' was requested, but the GPU backend cannot run"):
        _backends.resolve_backend("auto", X, "cuda:1")


@pytest.mark.parametrize(
    "device,exc,match",
    [
        ("gpu", ValueError, r"device='gpu' is not a device torch knows"),
        ("mps", ValueError, r"device='mps': fastconvex runs on 'cpu' or 'cuda'"),
        (5, TypeError, r"device must be None, a string"),
    ],
)
def test_unknown_devices_are_refused(device, exc, match):
    with pytest.raises(exc, match=match):
        fc.graph_convexity(X, Y, k=3, device=device)
    with pytest.raises(exc, match=match):
        fc.knn_graph(X, 3, device=device)
    assert fc.graph_convexity(X, Y, k=3, device=torch.device("cpu")).backend == "numba"


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_non_finite_padding_is_ignored_and_valid_frames_are_named(lib):
    """NaN/inf in padding frames does not matter (it never enters a score);
    in a valid frame the error names the layer, utterance and frame, on the
    pooled and the frame-level path alike."""
    rng = np.random.default_rng(5)
    h = [rng.normal(size=(6, 5, 3)) for _ in range(2)]
    lengths = np.array([4, 5, 5, 3, 5, 5])
    h[1][0, 4, 0] = np.nan  # padding of utterance 0
    h[1][3, 3, 1] = np.inf  # padding of utterance 3
    y = np.array([0, 0, 0, 1, 1, 1])
    frames = np.tile(np.arange(5) % 2, (6, 1))
    conv = (lambda a: torch.from_numpy(a)) if lib == "torch" else (lambda a: a)
    lens = conv(lengths)
    clean = [a.copy() for a in h]
    clean[1][0, 4, 0] = clean[1][3, 3, 1] = 123.0  # other padding values: same scores
    for labels in (y, frames):
        got = fc.layer_scores([conv(a) for a in h], labels, k=2, exact=True, lengths=lens)
        ref = fc.layer_scores([conv(a) for a in clean], labels, k=2, exact=True, lengths=lens)
        np.testing.assert_array_equal(got.scores, ref.scores)
    h[1][2, 1, 2] = np.nan  # a valid frame
    for labels in (y, frames):
        with pytest.raises(ValueError, match=r"hidden_states\[1\] has a non-finite value .* utterance 2, frame 1"):
            fc.layer_scores([conv(a) for a in h], labels, k=2, exact=True, lengths=lens)


def test_integer_tensors_are_scored_like_integer_arrays():
    """Integer embeddings (exact in float64) give the same result from numpy
    and from torch; complex tensors are refused."""
    xi = np.random.default_rng(8).integers(-50, 50, size=(40, 3))
    yi = np.arange(40) % 2
    a = fc.graph_convexity(xi, yi, k=3, exact=True)
    b = fc.graph_convexity(torch.from_numpy(xi), yi, k=3, exact=True)
    assert a.score == b.score and a.n_pairs == b.n_pairs
    with pytest.raises(TypeError, match=r"x must be real"):
        fc.graph_convexity(torch.from_numpy(xi).to(torch.complex64), yi, k=3)


def test_nothing_to_score_message_stays_short_with_many_classes():
    # one label per row (an utterance id passed as the class, say): the error
    # summarises the class sizes instead of listing N of them on one line
    x = RNG.normal(size=(500, 3))
    with pytest.raises(ValueError, match=r"min_class_size=2 .*500 classes, the largest with 1 member") as info:
        fc.graph_convexity(x, np.arange(500))
    assert len(str(info.value)) < 200
    with pytest.raises(ValueError, match=r"500 classes, the largest with 1 member") as info:
        fc.euclidean_convexity(x, np.arange(500), lambda z: np.zeros(len(z), dtype=int))
    assert len(str(info.value)) < 200
    with pytest.raises(ValueError, match=r"class sizes \[10, 10\]"):  # few classes: still listed
        fc.graph_convexity(x[:20], np.repeat([0, 1], 10), min_class_size=11)


def test_ragged_nested_lists_name_the_argument():
    ragged = [[0.0, 1.0], [2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match=r"^x is ragged"):
        fc.graph_convexity(ragged, [0, 0, 1])
    with pytest.raises(ValueError, match=r"^x is ragged"):
        fc.knn_graph(ragged, 1)
    with pytest.raises(ValueError, match=r"^hidden_states\[1\] is ragged"):
        fc.layer_scores([[[0.0], [1.0], [2.0]], ragged], [0, 0, 1], k=1)
