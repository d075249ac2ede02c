"""fastconvex.hf.predict_from_layer on tiny classifiers of every family: the
model's own hidden state l, sent through the rest, gives the model's own
logits and prediction, for every l; then Euclidean convexity per layer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from oracles import nnconvexity_euclidean_all_pairs  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

NAMES = {0: "yes", 1: "no", 2: "up"}
FAMILIES = [
    ("wav2vec2", {}),
    ("wav2vec2", {"stable_layer_norm": True}),
    ("wav2vec2", {"feat_extract_norm": "group"}),
    ("hubert", {}),
    ("hubert", {"stable_layer_norm": True}),
    ("wavlm", {}),
    ("wavlm", {"stable_layer_norm": True}),
    ("data2vec-audio", {}),
    ("whisper", {}),
]


def _ids(cases):
    return [f"{fam}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'base'}" for fam, kw in cases]


def _classifier(family, seed=0, **kw):
    model, fe = tiny_model(family, head="sequence", weighted_layer_sum=False, seed=seed, **kw)
    model.config.id2label = dict(NAMES)
    model.config.label2id = {v: k for k, v in NAMES.items()}
    with torch.no_grad():  # spread the logits so that predictions differ between inputs
        model.classifier.weight.mul_(40.0)
    return model, fe


def _run(model, fe, family, n=6, seed=0, masked=True):
    """The model's own output on n random utterances of different lengths:
    (output with hidden states, frame mask or None)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1200, 3000, n)
    waves = [  # tones of different pitch in noise: inputs that differ
        (np.sin(np.arange(int(m)) * rng.uniform(0.05, 1.5)) + rng.uniform(0.05, 1) * rng.normal(size=int(m))).astype(
            np.float32
        )
        for m in lengths
    ]
    if family == "whisper":
        feats = fe(waves, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            return model(feats, output_hidden_states=True), None
    batch = np.zeros((n, int(lengths.max())), np.float32)
    am = np.zeros(batch.shape, np.int64)
    for i, w in enumerate(waves):
        batch[i, : w.shape[0]] = w
        am[i, : w.shape[0]] = 1
    am_t = torch.as_tensor(am) if masked else None
    with torch.no_grad():
        out = model(torch.as_tensor(batch), attention_mask=am_t, output_hidden_states=True)
    if not masked:
        return out, None
    frames = model._get_feature_vector_attention_mask(out.hidden_states[0].shape[1], am_t)
    return out, frames


@pytest.mark.parametrize("family,kw", FAMILIES, ids=_ids(FAMILIES))
def test_own_hidden_state_gives_the_models_own_prediction_at_every_layer(family, kw):
    model, fe = _classifier(family, **kw)
    masked = family != "whisper" and kw.get("feat_extract_norm") != "group"
    out, frames = _run(model, fe, family, masked=masked)
    predictor = hf.predict_from_layer(model)
    assert predictor.num_layers == len(out.hidden_states) == 4
    want = [NAMES[i] for i in out.logits.argmax(-1).tolist()]
    # inputs get logits that differ by 100x the tolerance below (Whisper's tiny random
    # encoder, pooled over its whole padded window, varies least: ~1.5e-3)
    assert torch.cdist(out.logits, out.logits).max() > 1e-3
    for layer, state in enumerate(out.hidden_states):
        logits = predictor.logits(layer, state, frames)
        torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)
        assert predictor(layer, state, frames).tolist() == want
        # numpy batches and masks give the same
        np_mask = None if frames is None else frames.numpy()
        assert predictor(layer, state.numpy(), np_mask).tolist() == want
    assert predictor.labels == ["yes", "no", "up"]
    assert hf.predict_from_layer(model, id2label=False)(2, out.hidden_states[2], frames).tolist() == [
        int(i) for i in out.logits.argmax(-1)
    ]


def test_masks_matter_for_padded_batches():
    """Without the frame mask the padding frames are attended to and pooled: a
    different answer (so the mask is really used)."""
    model, fe = _classifier("wav2vec2")
    out, frames = _run(model, fe, "wav2vec2")
    predictor = hf.predict_from_layer(model)
    masked = predictor.logits(1, out.hidden_states[1], frames)
    unmasked = predictor.logits(1, out.hidden_states[1])
    assert not torch.allclose(masked, unmasked, atol=1e-3)


def test_pruned_model_predicts_from_its_remaining_layers():
    model, fe = _classifier("wav2vec2", stable_layer_norm=True)
    with pytest.warns(UserWarning, match="final LayerNorm"):
        hf.prune(model, 2)  # keeps the final LayerNorm, which the predictor applies
    out, frames = _run(model, fe, "wav2vec2")
    predictor = hf.predict_from_layer(model)
    assert predictor.num_layers == 3
    for layer in range(3):
        torch.testing.assert_close(predictor.logits(layer, out.hidden_states[layer], frames), out.logits)


def test_unsupported_models_and_bad_calls_raise():
    with pytest.raises(ValueError, match="use_weighted_layer_sum=True"):
        hf.predict_from_layer(tiny_model("wav2vec2", head="sequence")[0])
    with pytest.raises(TypeError, match="not a supported audio classifier"):
        hf.predict_from_layer(tiny_model("wav2vec2", head="ctc")[0])
    with pytest.raises(TypeError, match="not a supported audio classifier"):
        hf.predict_from_layer(tiny_model("hubert")[0])
    model, fe = _classifier("wav2vec2")
    out, frames = _run(model, fe, "wav2vec2", n=2)
    predictor = hf.predict_from_layer(model)
    with pytest.raises(ValueError, match=r"layer 4 is out of range: the model has hidden states 0..3"):
        predictor(4, out.hidden_states[0])
    with pytest.raises(ValueError, match=r"batch must be hidden states \(B, T, D=32\)"):
        predictor(0, out.hidden_states[0][:, 0])
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\)"):
        predictor(0, out.hidden_states[0], frames[:, 1:])
    model.train()
    with pytest.raises(ValueError, match="call model.eval"):
        predictor(0, out.hidden_states[0])
    whisper, wfe = _classifier("whisper")
    wout, _ = _run(whisper, wfe, "whisper", n=2)
    with pytest.raises(ValueError, match="Whisper encoder attends to and pools every frame"):
        hf.predict_from_layer(whisper)(0, wout.hidden_states[0], np.ones(wout.hidden_states[0].shape[:2], bool))


def test_layer_euclidean_scores_of_a_classifier_match_nnconvexity():
    """Per layer on the model's own hidden states (sequences): fastconvex with
    the model's predictor equals nnconvexity with the same predictor on every
    pair, after its rounding."""
    model, fe = _classifier("hubert", seed=1)
    out, _ = _run(model, fe, "hubert", n=12, seed=3, masked=False)
    labels = np.array([NAMES[i] for i in out.logits.argmax(-1).tolist()])
    predictor = hf.predict_from_layer(model)
    scores = fc.layer_euclidean_scores(out.hidden_states, labels, predictor, exact=True, batch_size=50)
    assert len(scores) == 4 and scores.classes == sorted(set(labels))
    for layer in range(4):
        states = out.hidden_states[layer].numpy()
        ref_mean, ref_class = nnconvexity_euclidean_all_pairs(states, labels, predictor.at(layer))
        got = scores.layers[layer]
        assert round(100 * got.score, 2) == ref_mean
        for c, v in ref_class.items():
            if not np.isnan(v):
                assert round(100 * got.per_class[c], 2) == v
    # the endpoints are the model's own states, predicted as their labels: a
    # segment of length 0 (identical items) would score 1, a real one in [0, 1]
    assert np.all((scores.scores >= 0) & (scores.scores <= 1)) and scores.scores.max() > 0
    # a one-layer predictor carries the model's device into euclidean_convexity
    one = fc.euclidean_convexity(out.hidden_states[2], labels, predictor.at(2), exact=True)
    # (to_dict: NaN of a skipped one-member class compares equal there, as None)
    assert one.to_dict() == scores.layers[2].to_dict() and one.backend == "torch:cpu"


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize(
    "family,kw",
    [("wavlm", {}), ("wav2vec2", {"stable_layer_norm": True}), ("whisper", {})],
    ids=["wavlm", "wav2vec2-large", "whisper"],
)
def test_classifier_runs_where_the_model_lives(family, kw, device):
    """The predictor runs where the model lives; numpy batches go there (CPU;
    CUDA when present)."""
    model, fe = _classifier(family, **kw)
    out, frames = _run(model, fe, family, masked=family != "whisper")  # on the CPU
    model.to(device)
    predictor = hf.predict_from_layer(model)
    assert predictor.device.type == device
    for layer, state in enumerate(out.hidden_states):
        logits = predictor.logits(layer, state.numpy(), None if frames is None else frames.numpy())
        assert logits.device.type == device
        torch.testing.assert_close(logits.cpu(), out.logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "family,kw",
    [("wav2vec2", {}), ("wav2vec2", {"feat_extract_norm": "group"}), ("data2vec-audio", {}), ("whisper", {})],
    ids=["wav2vec2", "wav2vec2-group", "data2vec-audio", "whisper"],
)
def test_hidden_state_sequences_are_each_utterance_alone(family, kw):
    """Batched and padded, every utterance's frames equal its own forward pass;
    through the predictor they give the model's own prediction for it alone."""
    model, fe = _classifier(family, **kw)
    rng = np.random.default_rng(4)
    waves = [
        (np.sin(np.arange(m) * rng.uniform(0.05, 1.5)) + rng.normal(size=m)).astype(np.float32)
        for m in (2400, 1500, 2400, 1999, 3100)
    ]
    states, n_frames = hf.hidden_state_sequences(model, waves, batch_size=3, feature_extractor=fe, progress=False)
    assert len(states) == 4 and all(s.shape[:2] == states[0].shape[:2] for s in states)
    predictor = hf.predict_from_layer(model)
    mask = None if n_frames is None else np.arange(states[0].shape[1])[None, :] < n_frames[:, None]
    for i, w in enumerate(waves):
        inputs = fe(w, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            alone = model(**inputs, output_hidden_states=True)
        f = alone.hidden_states[0].shape[1]
        if n_frames is not None:
            assert n_frames[i] == f
            assert not states[1][i, f:].any()  # zeros after the utterance's frames
        for layer in range(4):
            np.testing.assert_allclose(states[layer][i, :f], alone.hidden_states[layer][0].numpy(), atol=2e-5)
        want = NAMES[int(alone.logits.argmax())]
        for layer in range(4):
            m = None if mask is None else mask[i : i + 1]
            assert predictor(layer, states[layer][i : i + 1], m).tolist() == [want]
