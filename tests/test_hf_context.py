"""The Whisper context cut: positional embeddings sliced, config, feature extractor, pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from fastconvex import hf  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

RATE = 16000


def whisper3s(head=None):
    """A tiny Whisper with a 3 s window (150 encoder frames) and its feature extractor."""
    model, _ = tiny_model("whisper", head=head, max_source_positions=150)
    fe = transformers.WhisperFeatureExtractor(feature_size=8, hop_length=160, chunk_length=3)
    return model, fe


def clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n).astype(np.float32) * 0.3 for n in lengths]


def manual_encoder(model, input_features, frames):
    """The full-context encoder's own modules, applied by hand to a window of ``frames``
    with the first ``frames`` positional embeddings: what the cut model must compute."""
    enc = model  # a WhisperEncoder
    h = torch.nn.functional.gelu(enc.conv1(input_features))
    h = torch.nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)
    h = h + enc.embed_positions.weight[:frames]
    states = [h]
    for layer in enc.layers:
        out = (
            layer(h, None, layer_head_mask=None)
            if "layer_head_mask" in layer.forward.__code__.co_varnames
            else layer(h, None)
        )
        h = out[0] if isinstance(out, tuple) else out
        states.append(h)
    return states, enc.layer_norm(h)


def test_cut_slices_positions_and_sets_the_config():
    model, _fe = whisper3s()
    full = model.embed_positions.weight.detach().clone()
    other = {k: v.clone() for k, v in model.state_dict().items() if "embed_positions" not in k}
    assert hf.cut_whisper_context(model, 1) is model
    assert model.config.max_source_positions == 50 and model.max_source_positions == 50
    assert torch.equal(model.embed_positions.weight, full[:50])
    assert not model.embed_positions.weight.requires_grad
    for k, v in model.state_dict().items():
        if k in other:
            assert torch.equal(v, other[k]), k
    hf.cut_whisper_context(model, 0.5)  # ceil(0.5 * 50) = 25 frames; cutting again is fine
    assert model.config.max_source_positions == 25
    hf.cut_whisper_context(model, np.float32(0.25))  # a numpy scalar is a number too: ceil(12.5)
    assert model.config.max_source_positions == 13


def test_cut_model_equals_a_manual_forward_at_that_context():
    model, fe = whisper3s()
    reference = tiny_model("whisper", max_source_positions=150)[0]  # same seed, same weights
    hf.cut_whisper_context(model, 1)
    waves = clips([9000, 16000, 4000])
    cut_fe = hf.context_feature_extractor(model, fe)
    feats = torch.as_tensor(cut_fe(waves, sampling_rate=RATE, return_tensors="np")["input_features"])
    assert feats.shape == (3, 8, 100)
    with torch.no_grad():
        out = model(feats, output_hidden_states=True)
        states, last = manual_encoder(reference, feats, 50)
    torch.testing.assert_close(out.last_hidden_state, last, rtol=1e-5, atol=1e-5)
    for got, want in zip(out.hidden_states[:-1], states[:-1]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the full-context model gives other outputs for the same clips (it attends to 2 s more padding)
    full_feats = torch.as_tensor(fe(waves, sampling_rate=RATE, return_tensors="np")["input_features"])
    with torch.no_grad():
        full = reference(full_feats).last_hidden_state[:, :50]
    assert not torch.allclose(full, out.last_hidden_state, atol=1e-3)


@pytest.mark.filterwarnings("ignore:WhisperEncoder is a pre-LN encoder")
def test_pooled_hidden_states_pad_to_the_models_context():
    model, fe = whisper3s()
    reference = tiny_model("whisper", max_source_positions=150)[0]
    hf.cut_whisper_context(model, 1)
    waves = clips([9000, 16000, 4000, 700])
    # the 3 s feature extractor is given: inputs are still padded to the model's 1 s
    pooled = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=3)
    cut_fe = hf.context_feature_extractor(model, fe)
    feats = torch.as_tensor(cut_fe(waves, sampling_rate=RATE, return_tensors="np")["input_features"])
    with torch.no_grad():
        states, last = manual_encoder(reference, feats, 50)
    states[-1] = last  # the encoder's last hidden state carries its final LayerNorm
    frames = np.ceil(np.array([9000, 16000, 4000, 700]) / 320).astype(int)
    assert np.array_equal(pooled.n_frames, frames)
    for layer, h in zip(pooled, states):
        want = np.stack([h[i, : frames[i]].mean(0).numpy() for i in range(4)])
        np.testing.assert_allclose(layer, want, rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match="longer than the Whisper window"):
        hf.pooled_hidden_states(model, clips([20000]), feature_extractor=fe)


def test_feature_extractor_round_trips(tmp_path):
    model, fe = whisper3s()
    hf.cut_whisper_context(model, 2)
    cut = hf.context_feature_extractor(model, fe)
    assert (cut.n_samples, cut.nb_max_frames, cut.chunk_length) == (32000, 200, 2)
    assert fe.n_samples == 48000  # the given one is not changed
    assert hf.context_feature_extractor(model, cut) is cut
    cut.save_pretrained(tmp_path)
    back = transformers.AutoFeatureExtractor.from_pretrained(tmp_path)
    assert (back.n_samples, back.nb_max_frames) == (32000, 200)
    default = hf.context_feature_extractor(model)
    assert default.feature_size == 8 and default.n_samples == 32000


def test_bad_cuts_are_errors():
    model, fe = whisper3s()
    with pytest.raises(ValueError, match="can only be cut, not extended"):
        hf.cut_whisper_context(model, 3.5)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive and finite"):
            hf.cut_whisper_context(model, bad)
    with pytest.raises(TypeError, match="must be a number"):
        hf.cut_whisper_context(model, "2")
    with pytest.raises(TypeError, match="for Whisper models"):
        hf.cut_whisper_context(tiny_model("wav2vec2")[0], 1)
    hf.cut_whisper_context(model, 1.5)  # 75 frames: fine for the model ...
    with pytest.raises(ValueError, match="not a whole number of seconds"):
        hf.context_feature_extractor(model, fe)  # ... but not for WhisperFeatureExtractor


def test_finetune_refuses_clips_longer_than_the_context_unless_truncating():
    model, fe = whisper3s()
    waves = clips([12000, 20000] * 4)
    labels = ["a", "b"] * 4
    with pytest.raises(ValueError, match=r"4 clip\(s\) are longer than the Whisper context of 16000 samples"):
        hf.finetune(model, waves, labels, feature_extractor=fe, context_seconds=1, epochs=1, progress=False)
    result = hf.finetune(
        model,
        waves,
        labels,
        feature_extractor=fe,
        context_seconds=1,
        truncate=True,
        epochs=1,
        eval_split=0.25,
        progress=False,
    )
    assert result.settings["context_samples"] == 16000 and result.settings["truncate"]
    assert result.model.config.max_source_positions == 50
    assert model.config.max_source_positions == 150  # the given model keeps its context
