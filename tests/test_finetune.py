"""hf.finetune: a fresh head on an exact copy of the encoder, Trainer, held-out accuracy, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from fastconvex import hf  # noqa: E402
from fastconvex.hf.models.layout import speech_encoder  # noqa: E402
from fastconvex.hf.testing import FAMILIES, tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

RATE = 16000


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and a shared 2-core machine makes
    two-thread OpenMP steps ~50x slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tones(n=40, seconds=0.25, seed=0, freqs=(300.0, 3000.0), labels=("low", "high")):
    """Noisy sine tones of two frequencies with random phase and loudness: a task any
    working fine-tuning learns, and chance (0.5) without it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    lab = [labels[i % 2] for i in range(n)]
    waves = [
        (
            rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freqs[i % 2] * t + rng.uniform(0, 2 * np.pi))
            + 0.05 * rng.normal(size=t.size)
        ).astype(np.float32)
        for i in range(n)
    ]
    return waves, lab


def settings(family):
    # Whisper's random tiny encoder starts with near-constant outputs: it needs more steps
    return dict(epochs=10 if family == "whisper" else 5, lr=3e-3, batch_size=8, progress=False)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------- the head


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", [None, "ctc"])
def test_head_copies_the_encoder_exactly(family, head):
    model, _ = tiny_model(family, head=head)
    before = state(model)
    clf = hf.classification_model(model, ["yes", "no", "up"], seed=3)
    assert_same_state(state(speech_encoder(clf)), state(speech_encoder(model)))
    assert_same_state(state(model), before)  # the source model is untouched
    expected = "WhisperForAudioClassification" if family == "whisper" else "ForSequenceClassification"
    assert type(clf).__name__.endswith(expected)
    assert clf.config.id2label == {0: "yes", 1: "no", 2: "up"}
    assert clf.config.num_labels == 3 and not clf.config.use_weighted_layer_sum
    # the head is seeded: same seed, same head; another seed, another head
    again = hf.classification_model(model, ["yes", "no", "up"], seed=3)
    other = hf.classification_model(model, ["yes", "no", "up"], seed=4)
    assert_same_state(state(clf), state(again))
    assert not torch.equal(clf.classifier.weight, other.classifier.weight)


# ------------------------------------------------------------------------- learning, split


@pytest.mark.parametrize("family", FAMILIES)
def test_learns_two_tones(family):
    waves, labels = tones()
    model, fe = tiny_model(family)
    result = hf.finetune(model, waves, labels, feature_extractor=fe, **settings(family))
    assert result.accuracy >= 0.9, result
    assert result.n_train == 32 and result.n_eval == 8
    assert sorted(labels[i] for i in result.eval_index).count("low") == 4  # stratified
    assert np.array_equal(result.eval_labels, np.asarray(labels)[result.eval_index])
    assert result.accuracy == np.mean(result.eval_predictions == result.eval_labels)
    assert result.steps == settings(family)["epochs"] * 4
    assert result.train_seconds > 0 and not result.model.training
    assert result.params == sum(p.numel() for p in result.model.parameters())
    frozen = family != "whisper"  # wav2vec2 family: feature encoder frozen by default
    assert result.settings["freeze_feature_encoder"] is frozen
    assert (result.trainable_params < result.params) is frozen or family == "whisper"


def test_untrained_control_is_at_chance():
    """The oracle can fail: with the learning rate at ~0 the same run stays near chance."""
    waves, labels = tones()
    model, fe = tiny_model("wav2vec2")
    result = hf.finetune(model, waves, labels, feature_extractor=fe, epochs=1, lr=1e-12, batch_size=8, progress=False)
    assert result.accuracy <= 0.75


def test_groups_are_never_split():
    waves, labels = tones(n=48)
    groups = [f"speaker{i % 6}" for i in range(48)]  # each speaker says both tones
    model, fe = tiny_model("hubert")
    result = hf.finetune(
        model,
        waves,
        labels,
        groups=groups,
        eval_split=0.34,
        feature_extractor=fe,
        epochs=1,
        lr=1e-3,
        batch_size=16,
        progress=False,
    )
    train_groups = {groups[i] for i in result.train_index}
    eval_groups = {groups[i] for i in result.eval_index}
    assert not train_groups & eval_groups
    assert len(eval_groups) == 2 and result.n_eval == 16
    assert result.n_train + result.n_eval == 48


def test_split_properties():
    from fastconvex.hf.train.splits import split_indices

    rng = np.random.default_rng(1)
    grouped = 0  # trials whose grouped split ran (the refusal below must not hide them all)
    for trial in range(30):
        n = int(rng.integers(12, 60))
        ids = rng.integers(0, 3, size=n)
        ids[:3] = [0, 1, 2]
        groups = rng.integers(0, int(rng.integers(3, 10)), size=n)
        try:
            train, held = split_indices(ids, 0.25, groups=list(groups), seed=trial)
        except ValueError as exc:
            assert "no group can be held out" in str(exc)
            continue
        grouped += 1
        assert not set(groups[train]) & set(groups[held])
        assert set(ids[train]) == set(ids)
        assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(n))
        train, held = split_indices(ids, 0.25, seed=trial)
        assert set(ids[train]) == set(ids)
        assert held.size == min(max(round(0.25 * n), 1), n - 3)
    assert grouped >= 20, f"only {grouped} of 30 grouped splits ran"


def test_deterministic_for_a_seed():
    waves, labels = tones(n=24)
    runs = []
    for seed in (5, 5, 6):
        model, fe = tiny_model("wav2vec2")
        runs.append(
            hf.finetune(
                model, waves, labels, feature_extractor=fe, seed=seed, epochs=2, lr=1e-3, batch_size=4, progress=False
            )
        )
    a, b, c = runs
    assert a.accuracy == b.accuracy and np.array_equal(a.eval_index, b.eval_index)
    assert_same_state(state(a.model), state(b.model))
    assert not all(torch.equal(x, y) for x, y in zip(state(a.model).values(), state(c.model).values()))


# ------------------------------------------------------------------- labels, saving, reload


def _logits(model, fe, waves):
    feats = (
        fe(waves, sampling_rate=RATE, return_tensors="pt", padding=True)
        if "input_values" in fe.model_input_names
        else fe(waves, sampling_rate=RATE, return_tensors="pt")
    )
    with torch.no_grad():
        return model(**{k: v for k, v in feats.items() if k in ("input_values", "input_features")}).logits


@pytest.mark.parametrize("family,labels_kind", [("wav2vec2", "int"), ("whisper", "str")])
def test_saved_model_reloads_with_equal_logits_and_labels(tmp_path, family, labels_kind):
    import transformers

    waves, labels = tones(n=20)
    if labels_kind == "int":
        labels = [7 if v == "low" else -2 for v in labels]
    model, fe = tiny_model(family, max_source_positions=100) if family == "whisper" else tiny_model(family)
    if family == "whisper":
        fe = transformers.WhisperFeatureExtractor(feature_size=8, hop_length=160, chunk_length=2)
    out = tmp_path / "model"
    result = hf.finetune(
        model,
        waves,
        labels,
        feature_extractor=fe,
        out_dir=out,
        epochs=1,
        lr=1e-3,
        batch_size=8,
        progress=False,
        **({"context_seconds": 1} if family == "whisper" else {}),
    )
    assert result.out_dir == out and (out / "fastconvex_finetune.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    back = transformers.AutoModelForAudioClassification.from_pretrained(out).eval()
    back_fe = transformers.AutoFeatureExtractor.from_pretrained(out)
    assert type(back) is type(result.model)
    assert back.config.id2label == result.model.config.id2label
    assert [back.config.id2label[k] for k in range(2)] == result.classes == sorted(set(labels))
    assert all(type(v) is type(labels[0]) for v in result.eval_predictions.tolist())
    if family == "whisper":  # the context cut is in the config and the feature extractor
        assert back.config.max_source_positions == 50 and back_fe.n_samples == RATE
        assert back.encoder.embed_positions.weight.shape[0] == 50
    clips = [waves[i] for i in result.eval_index]
    expected = _logits(result.model, back_fe, clips)
    torch.testing.assert_close(_logits(back, back_fe, clips), expected, rtol=0, atol=0)
    predicted = [back.config.id2label[int(k)] for k in expected.argmax(-1)]
    assert predicted == result.eval_predictions.tolist()


def test_out_dir_is_checked_before_training(tmp_path, monkeypatch):
    from fastconvex.hf.train import trainer as _trainer

    monkeypatch.setattr(_trainer, "train", lambda *a, **k: pytest.fail("trained despite a bad out_dir"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("user's work")
    waves, labels = tones(n=10)
    model, fe = tiny_model("wav2vec2")
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        hf.finetune(model, waves, labels, feature_extractor=fe, out_dir=tmp_path / "taken")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        hf.finetune(model, waves, labels, feature_extractor=fe, out_dir=tmp_path / "file")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "user's work"


def test_overwrite_replaces_the_directory(tmp_path):
    waves, labels = tones(n=10)
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.txt").write_text("old")
    model, fe = tiny_model("wav2vec2")
    hf.finetune(model, waves, labels, feature_extractor=fe, out_dir=out, overwrite=True, epochs=1, progress=False)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(labels=["a", "b"] * 4), ValueError, "labels has 8 entries but audio has 10"),
        (dict(labels=["a"] * 10), ValueError, "at least 2"),
        (dict(labels=[1.5, 2.5] * 5), TypeError, r"labels\[0\] is float"),
        (dict(labels=["a", 1] * 5), ValueError, "mix strings and integers"),
        (dict(eval_split=0.0), ValueError, r"fraction in \(0, 1\)"),
        (dict(eval_split=([0, 1, 2, 3, 4, 5, 6, 8], [7, 8])), ValueError, "clip 8 is in both"),
        (dict(eval_split=([0, 2, 4, 6], [1, 3])), ValueError, "class 'b' has no training clip"),
        (dict(eval_split=([0, 1, 2], [10])), ValueError, "eval index 10 is out of range"),
        (dict(groups=["g"] * 9), ValueError, "groups has 9 entries"),
        (dict(context_seconds=1.0), ValueError, "context_seconds is for Whisper"),
        (dict(epochs=0), ValueError, "epochs must be a positive"),
        (dict(batch_size=2.5), ValueError, "batch_size must be a positive integer"),
        (dict(audio=[np.zeros(5, np.float32)] * 10), ValueError, r"^audio\[0\] has 5 samples, too short for one frame"),
        (dict(audio=[np.full(800, np.nan, np.float32)] * 10), ValueError, r"^audio\[0\] contains NaN"),
        (dict(weight_decay=float("nan")), ValueError, "weight_decay must be >= 0 and finite, got nan"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
        (dict(sampling_rate=0), ValueError, "sampling_rate must be positive"),
        (dict(audio=[np.zeros(800, np.int16)] * 10), TypeError, r"audio\[0\] has dtype int16"),
    ],
)
def test_bad_input_is_named(change, error, match):
    model, fe = tiny_model("wav2vec2")
    waves, _ = tones(n=10)
    kwargs = dict(audio=waves, labels=["a", "b"] * 5, feature_extractor=fe, epochs=1, progress=False)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        hf.finetune(model, kwargs.pop("audio"), kwargs.pop("labels"), **kwargs)


# --------------------------------------------------------------------------------- pruned


@pytest.mark.parametrize("family,head", [("wav2vec2", "ctc"), ("whisper", "ctc"), ("wavlm", None)])
def test_pruned_model_fine_tunes(family, head):
    model, fe = tiny_model(family, head=head)
    with pytest.warns(UserWarning) if family == "whisper" else _nothing():
        hf.prune(model, 1)
    waves, labels = tones()
    result = hf.finetune(model, waves, labels, feature_extractor=fe, **settings(family))
    assert hf.num_blocks(result.model) == 1 and result.settings["n_blocks"] == 1
    assert result.model.fastconvex_pruning["kept_layers"] == 1
    if family == "whisper":  # the decoder of WhisperForConditionalGeneration is gone
        assert type(result.model).__name__ == "WhisperForAudioClassification"
        assert result.params < sum(p.numel() for p in model.parameters())
    assert result.accuracy >= 0.9


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_float16_source_trains_in_float32():
    model, _ = tiny_model("hubert")
    model.half()
    clf = hf.classification_model(model, [0, 1])
    assert {p.dtype for p in clf.parameters()} == {torch.float32}
    source = {k: v.float() for k, v in speech_encoder(model).state_dict().items()}
    assert_same_state(state(speech_encoder(clf)), source)


def test_callers_random_state_is_left_alone():
    import random

    waves, labels = tones(n=10)
    model, fe = tiny_model("wav2vec2")
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the global state is what finetune must give back
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002 - the global state is what finetune must give back
    random.seed(123)
    hf.finetune(model, waves, labels, feature_extractor=fe, epochs=1, progress=False)
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
