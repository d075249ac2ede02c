"""pooled_hidden_states against one-by-one forward passes of tiny random models."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

LENGTHS = (400, 1000, 777, 1600, 523, 1200, 1601, 1000)
ATOL = 2e-6


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(np.float32) for n in LENGTHS]


def _one_by_one(model, fe, wave, family="wav2vec2"):
    """Oracle: the utterance alone, unpadded; all hidden states (T, D) and valid frames."""
    with torch.inference_mode():
        if family == "whisper":
            feats = fe(wave, sampling_rate=16000, return_tensors="np")["input_features"]
            out = model(input_features=torch.as_tensor(feats), output_hidden_states=True)
            valid = int(np.ceil(wave.shape[0] / 320))
        else:
            values = fe(wave, sampling_rate=16000, return_tensors="np")["input_values"]
            out = model(input_values=torch.as_tensor(values), output_hidden_states=True)
            valid = out.last_hidden_state.shape[1]
    return [h[0, :valid].numpy() for h in out.hidden_states], valid


class _Spy:
    """Records the inputs of every forward call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        values = kwargs.get("input_values", kwargs.get("input_features"))
        mask = kwargs.get("attention_mask")
        self.calls.append((tuple(values.shape), None if mask is None else mask.clone()))


MASKED = [
    ("wav2vec2", {}),
    ("wav2vec2", {"stable_layer_norm": True}),
    ("hubert", {}),
    ("wavlm", {}),
    ("wavlm", {"stable_layer_norm": True}),
    ("data2vec-audio", {}),
]


@pytest.mark.parametrize("family,kw", MASKED, ids=[f"{f}-{kw}" for f, kw in MASKED])
def test_padded_batches_equal_one_by_one(family, kw, waves):
    model, fe = tiny_model(family, **kw)
    spy = _Spy(model)
    res = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=3, progress=False)
    spy.handle.remove()
    # the batches really were padded, and the model got an attention mask
    masks = [m for _, m in spy.calls]
    assert all(m is not None for m in masks)
    assert any(bool((m == 0).any()) for m in masks)
    assert len(res) == model.config.num_hidden_layers + 1
    assert res.layers == list(range(len(res)))
    for i, w in enumerate(waves):
        states, valid = _one_by_one(model, fe, w)
        assert res.n_frames[i] == valid
        for layer, h in enumerate(states):
            np.testing.assert_allclose(res[layer][i], h.mean(axis=0), rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "data2vec-audio"])
def test_frame_counts_follow_the_models_output_lengths(family, waves):
    model, _ = tiny_model(family)
    counts = hf.valid_frame_counts(model, [w.shape[0] for w in waves])
    with torch.inference_mode():
        actual = [model(input_values=torch.as_tensor(w)[None]).last_hidden_state.shape[1] for w in waves]
    assert counts.tolist() == actual
    # and from the conv stack directly: floor((n - kernel) / stride) + 1 per layer
    expected = []
    for n in (w.shape[0] for w in waves):
        for kernel, stride in zip(model.config.conv_kernel, model.config.conv_stride):
            n = (n - kernel) // stride + 1
        expected.append(n)
    assert counts.tolist() == expected


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm"])
def test_group_norm_models_get_no_attention_mask(family, waves):
    model, fe = tiny_model(family, feat_extract_norm="group")
    assert fe.return_attention_mask is False
    spy = _Spy(model)
    res = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=4, progress=False)
    spy.handle.remove()
    assert all(mask is None for _, mask in spy.calls)
    # padding would change a group-norm model's output: only equal lengths share a batch
    assert sorted(shape[0] for shape, _ in spy.calls) == [1, 1, 1, 1, 1, 1, 2]
    for i, w in enumerate(waves):
        states, valid = _one_by_one(model, fe, w)
        assert res.n_frames[i] == valid
        for layer, h in enumerate(states):
            np.testing.assert_allclose(res[layer][i], h.mean(axis=0), rtol=0, atol=ATOL)

    spy = _Spy(model)
    mixed = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=4, mix_lengths=True, progress=False)
    spy.handle.remove()
    assert [shape for shape, _ in spy.calls] == [(4, 1601), (4, 1000)]  # 1601..1000 | 1000..400
    assert all(mask is None for _, mask in spy.calls)
    # oracle for the padded batch: the batch through the model, mean over each utterance's valid frames
    order = np.argsort(-np.array(LENGTHS), kind="stable")[:4]
    batch = np.zeros((4, 1601), dtype=np.float32)
    for b, i in enumerate(order):
        batch[b, : LENGTHS[i]] = fe(waves[i], sampling_rate=16000, return_tensors="np")["input_values"][0]
    with torch.inference_mode():
        out = model(input_values=torch.as_tensor(batch), output_hidden_states=True).hidden_states
    for b, i in enumerate(order):
        np.testing.assert_allclose(mixed[-1][i], out[-1][b, : mixed.n_frames[i]].mean(0).numpy(), rtol=0, atol=ATOL)


def test_whisper_pools_only_frames_that_cover_audio(waves):
    model, fe = tiny_model("whisper")
    long = np.random.default_rng(1).standard_normal(16000).astype(np.float32)  # the whole 1 s window
    data = list(waves) + [long]
    res = hf.pooled_hidden_states(model, data, feature_extractor=fe, batch_size=3, progress=False)
    assert res.n_frames.tolist() == [int(np.ceil(n / 320)) for n in LENGTHS] + [50]
    for i, w in enumerate(data):
        states, valid = _one_by_one(model, fe, w, family="whisper")
        assert res.n_frames[i] == valid
        for layer, h in enumerate(states):
            np.testing.assert_allclose(res[layer][i], h.mean(axis=0), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "family,kw,warns",
    [
        ("whisper", {}, True),
        ("wav2vec2", {"stable_layer_norm": True}, True),
        ("wav2vec2", {}, False),
    ],
)
def test_pre_ln_encoders_warn_about_the_final_layer_norm(family, kw, warns):
    import warnings as _w

    model, fe = tiny_model(family, **kw)
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        hf.pooled_hidden_states(model, [np.ones(8000, np.float32)], feature_extractor=fe, progress=False)
    said = [str(c.message) for c in caught if "pre-LN encoder" in str(c.message)]
    assert len(said) == (1 if warns else 0)
    if warns:
        assert "final_norm='identity'" in said[0]


def test_whisper_warns_about_audio_beyond_the_window():
    model, fe = tiny_model("whisper")
    with pytest.warns(UserWarning, match="longer than the Whisper window"):
        res = hf.pooled_hidden_states(model, [np.ones(20000, np.float32)], feature_extractor=fe, progress=False)
    assert res.n_frames.tolist() == [50]


def test_frame_labels_give_frame_rows(waves, tmp_path):
    model, fe = tiny_model("wav2vec2")
    counts = hf.valid_frame_counts(model, [w.shape[0] for w in waves])
    rng = np.random.default_rng(3)
    frame_labels = [np.where(rng.random(n) < 0.25, -100, rng.integers(0, 3, n)) for n in counts]
    res = hf.pooled_hidden_states(
        model, waves, feature_extractor=fe, batch_size=3, frame_labels=frame_labels, layers=[0, -1], progress=False
    )
    kept = [fl != -100 for fl in frame_labels]
    assert res.layers == [0, 3]
    assert res.labels.tolist() == np.concatenate([fl[k] for fl, k in zip(frame_labels, kept)]).tolist()
    assert res.utterance.tolist() == np.repeat(np.arange(len(waves)), [int(k.sum()) for k in kept]).tolist()
    for i, w in enumerate(waves):
        states, _ = _one_by_one(model, fe, w)
        rows = res.utterance == i
        np.testing.assert_allclose(res[0][rows], states[0][kept[i]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res[1][rows], states[3][kept[i]], rtol=1e-5, atol=1e-5)
    bad = list(frame_labels)
    bad[2] = bad[2][:-1]
    with pytest.raises(ValueError, match=r"frame_labels\[2\] has shape .* utterance 2 has 37 valid frames"):
        hf.pooled_hidden_states(model, waves, feature_extractor=fe, frame_labels=bad, progress=False)
    with pytest.raises(ValueError, match="frame_labels has 2 entries"):
        hf.pooled_hidden_states(model, waves, feature_extractor=fe, frame_labels=bad[:2], progress=False)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_out_dir_streams_layers_into_a_layer_store(waves, tmp_path, dtype):
    model, fe = tiny_model("hubert")
    ref = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=3, progress=False)
    labels = ["a", "b"] * (len(waves) // 2) + ["a"] * (len(waves) % 2)
    res = hf.pooled_hidden_states(
        model,
        waves,
        feature_extractor=fe,
        batch_size=3,
        out_dir=tmp_path / "emb",
        dtype=dtype,
        progress=False,
        labels=labels,
        meta={"checkpoint": "step-0"},
    )
    assert [p.name for p in res.paths] == ["layer_000.npy", "layer_001.npy", "layer_002.npy", "layer_003.npy"]
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == sorted(
        [p.name for p in res.paths] + ["labels", "store.json"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # no temporary directory left
    store = fc.open_store(tmp_path / "emb")
    assert store.labels.tolist() == labels and store.meta["checkpoint"] == "step-0"
    assert store.meta["pooling"] == "mean over valid frames" and store.meta["hidden_states"] == [0, 1, 2, 3]
    assert store.meta["model_class"] == type(model).__name__
    tol = 1e-6 if dtype == "float32" else 2e-3 * max(float(np.abs(r).max()) for r in ref)
    for path, arr, expected in zip(res.paths, res, ref):
        assert isinstance(arr, np.memmap)
        on_disk = np.load(path)
        assert on_disk.dtype == np.dtype(dtype) and on_disk.shape == (len(waves), 32)
        np.testing.assert_allclose(on_disk.astype(np.float32), expected, rtol=0, atol=tol)
    with pytest.raises(FileExistsError, match="overwrite"):
        hf.pooled_hidden_states(
            model, waves, feature_extractor=fe, out_dir=tmp_path / "emb", labels=labels, progress=False
        )
    with pytest.raises(ValueError, match="pass labels="):
        hf.pooled_hidden_states(model, waves, feature_extractor=fe, out_dir=tmp_path / "e2", progress=False)
    assert not (tmp_path / "e2").exists()


def test_out_dir_resumes_an_interrupted_run(waves, tmp_path):
    model, fe = tiny_model("wav2vec2")
    lengths = [len(w) for w in waves]
    labels = list(range(len(waves)))

    class Flaky:
        """Lazily loaded audio that fails once at utterance ``fail_at``."""

        def __init__(self, fail_at):
            self.fail_at, self.loads = fail_at, []

        def __len__(self):
            return len(waves)

        def __getitem__(self, i):
            if i == self.fail_at:
                self.fail_at = None
                raise OSError("disk went away")
            self.loads.append(i)
            return waves[i]

    ref = hf.pooled_hidden_states(model, waves, feature_extractor=fe, batch_size=2, progress=False)
    flaky = Flaky(fail_at=int(np.argmin(lengths)))  # the shortest: in the last batch
    kw = dict(feature_extractor=fe, batch_size=2, lengths=lengths, labels=labels, progress=False)
    with pytest.raises(OSError, match="disk went away"):
        hf.pooled_hidden_states(model, flaky, out_dir=tmp_path / "emb", **kw)
    assert not (tmp_path / "emb").exists()
    with pytest.raises(ValueError, match="partial.*different job"):
        hf.pooled_hidden_states(model, flaky, out_dir=tmp_path / "emb", **{**kw, "dtype": "float16"})
    with pytest.raises(ValueError, match="unfinished write"):
        (tmp_path / "emb").mkdir()
        fc.open_store(tmp_path / "emb")
    (tmp_path / "emb").rmdir()
    flaky.fail_at = int(np.argmin(lengths))
    with pytest.raises(OSError, match="disk went away"):  # not resumable: nothing left behind
        hf.pooled_hidden_states(model, flaky, out_dir=tmp_path / "other", resume=False, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".emb.partial"]
    first = len(flaky.loads)
    spy = _Spy(model)
    res = hf.pooled_hidden_states(model, flaky, out_dir=tmp_path / "emb", **kw)
    spy.handle.remove()
    assert len(spy.calls) == 1  # only the unfinished batch ran again
    assert len(flaky.loads) - first == len(waves)  # the finished batches' audio only read again, to check it
    for arr, expected in zip(res, ref):
        np.testing.assert_allclose(np.asarray(arr), expected, rtol=0, atol=1e-6)
    assert fc.open_store(tmp_path / "emb").labels.tolist() == labels


def test_lazy_sequence_with_lengths_and_2d_input(waves):
    model, fe = tiny_model("wav2vec2")

    class Lazy:
        def __init__(self):
            self.loads = 0

        def __len__(self):
            return len(waves)

        def __getitem__(self, i):
            self.loads += 1
            return waves[i]

    lazy = Lazy()
    res = hf.pooled_hidden_states(
        model, lazy, feature_extractor=fe, lengths=[w.shape[0] for w in waves], progress=False
    )
    assert lazy.loads == len(waves)  # each file read once
    ref = hf.pooled_hidden_states(model, waves, feature_extractor=fe, progress=False)
    for a, b in zip(res, ref):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"lengths\[6\] = 1602 but waveforms\[6\] has 1601 samples"):
        hf.pooled_hidden_states(model, waves, feature_extractor=fe, lengths=[n + 1 for n in LENGTHS], progress=False)

    equal = np.stack([w[:400] for w in waves])  # (N, T) array
    res2 = hf.pooled_hidden_states(model, torch.as_tensor(equal), feature_extractor=fe, progress=False)
    states, _ = _one_by_one(model, fe, equal[5])
    np.testing.assert_allclose(res2[2][5], states[2].mean(0), rtol=0, atol=ATOL)


def test_training_mode_is_restored_and_does_not_matter(waves):
    model, fe = tiny_model("wav2vec2")
    ref = hf.pooled_hidden_states(model, waves[:3], feature_extractor=fe, progress=False)
    model.train()
    res = hf.pooled_hidden_states(model, waves[:3], feature_extractor=fe, progress=False)
    assert model.training
    for a, b in zip(res, ref):
        np.testing.assert_array_equal(a, b)


def test_progress_bar_on_stderr(waves, capsys):
    model, fe = tiny_model("wav2vec2")
    hf.pooled_hidden_states(model, waves[:4], feature_extractor=fe, batch_size=2, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2 batches" in captured.err


def test_bad_inputs_are_refused(waves):
    model, fe = tiny_model("wav2vec2")
    call = hf.pooled_hidden_states
    with pytest.raises(ValueError, match="waveforms is empty"):
        call(model, [], feature_extractor=fe)
    with pytest.raises(ValueError, match=r"waveforms\[1\] must be 1-D"):
        call(model, [waves[0], np.zeros((2, 500), np.float32)], feature_extractor=fe)
    with pytest.raises(ValueError, match=r"waveforms\[0\] contains NaN"):
        call(model, [np.full(500, np.nan, np.float32)], feature_extractor=fe)
    with pytest.raises(ValueError, match=r"waveforms\[1\] has 10 samples, too short"):
        call(model, [waves[0], np.ones(10, np.float32)], feature_extractor=fe)
    with pytest.raises(ValueError, match="waveforms as one array must have shape"):
        call(model, np.zeros(500, np.float32), feature_extractor=fe)
    with pytest.raises(TypeError, match="waveforms must be a sequence"):
        call(model, "audio.wav", feature_extractor=fe)
    with pytest.raises(ValueError, match="sampling_rate=8000 but the feature extractor expects 16000"):
        call(model, waves, feature_extractor=fe, sampling_rate=8000)
    with pytest.raises(ValueError, match="layers: index 4 out of range for 4 hidden states"):
        call(model, waves, feature_extractor=fe, layers=[4], progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        call(model, waves, feature_extractor=fe, batch_size=0)
    with pytest.raises(ValueError, match="dtype must be float32 or float16"):
        call(model, waves, feature_extractor=fe, dtype="int8")
    with pytest.raises(TypeError, match="model must be a Hugging Face"):
        call(torch.nn.Linear(3, 3), waves)


def test_progress_is_checked_before_a_store_is_opened(waves, tmp_path):
    """progress='no' (truthy) is a TypeError, raised before out_dir's partial
    store is made (it used to be left behind)."""
    model, fe = tiny_model("wav2vec2")
    with pytest.raises(TypeError, match=r"progress must be None, True or False, got str 'no'"):
        hf.pooled_hidden_states(
            model, waves[:2], feature_extractor=fe, out_dir=tmp_path / "st", labels=["a", "b"], progress="no"
        )
    assert list(tmp_path.iterdir()) == []


def test_hostile_audio_and_arguments_are_refused(waves):
    """Each of these used to run: int16 samples went in unscaled, a complex array lost
    its imaginary part, sampling_rate=0/16000.5 and float lengths were taken (Whisper:
    ZeroDivisionError), labels=/meta= without out_dir were ignored, and a text model
    failed with KeyError 'input_ids'."""
    model, fe = tiny_model("wav2vec2")
    call = hf.pooled_hidden_states
    pcm = (waves[0] * 3000).astype(np.int16)
    with pytest.raises(TypeError, match=r"waveforms\[1\] has dtype int16: pass float samples"):
        call(model, [waves[0], pcm], feature_extractor=fe)
    with pytest.raises(TypeError, match=r"waveforms\[0\] has dtype int16"):
        call(model, torch.as_tensor(pcm)[None], feature_extractor=fe)
    with pytest.raises(TypeError, match=r"waveforms\[0\] must be a 1-D array of real float samples"):
        call(model, [waves[0] + 1j], feature_extractor=fe)
    whisper, _ = tiny_model("whisper")
    with pytest.raises(ValueError, match="sampling_rate must be positive, got 0"):
        call(whisper, waves[:2], sampling_rate=0)
    with pytest.raises(TypeError, match="sampling_rate must be an integer number of Hz"):
        call(model, waves[:2], sampling_rate=16000.5)
    with pytest.raises(TypeError, match="lengths must be integers"):
        call(model, waves[:2], feature_extractor=fe, lengths=[LENGTHS[0] + 0.7, LENGTHS[1]])
    with pytest.raises(ValueError, match="labels: only for out_dir's layer store"):
        call(model, waves[:2], feature_extractor=fe, labels=["a", "b"])
    with pytest.raises(ValueError, match="meta: only for out_dir"):
        call(model, waves[:2], feature_extractor=fe, meta={"model": "x"})
    with pytest.raises(ValueError, match="overwrite: only for out_dir"):
        call(model, waves[:2], feature_extractor=fe, overwrite=True)
    import transformers

    bert = transformers.BertModel(
        transformers.BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=50
        )
    )
    with pytest.raises(TypeError, match="BertModel takes 'input_ids'.*not a speech model"):
        call(bert, waves[:2])
    # bfloat16 tensors (which numpy lacks) are widened exactly, not refused
    bf16 = torch.as_tensor(waves[0]).to(torch.bfloat16)
    got = call(model, [bf16], feature_extractor=fe, progress=False)
    ref = call(model, [bf16.float().numpy()], feature_extractor=fe, progress=False)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)


def test_default_feature_extractor_normalises_like_the_models_own(waves):
    model, fe = tiny_model("wav2vec2")
    a = hf.pooled_hidden_states(model, waves[:3], feature_extractor=fe, progress=False)
    b = hf.pooled_hidden_states(model, waves[:3], progress=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_import_fastconvex_does_not_import_transformers():
    import subprocess
    import sys

    code = (
        "import sys, fastconvex, fastconvex.hf, fastconvex.cli; fastconvex.cli.build_parser(); "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_half_precision_models_get_inputs_in_their_dtype(waves):
    model, fe = tiny_model("wav2vec2")
    ref = hf.pooled_hidden_states(model, waves[:4], feature_extractor=fe, progress=False)
    res = hf.pooled_hidden_states(model.to(torch.bfloat16), waves[:4], feature_extractor=fe, progress=False)
    for a, b in zip(res, ref):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=0.05)


def _pruned_output_mean(model, fe, wave, keep, family):
    """Oracle: mean over valid frames of what the model cut to ``keep`` blocks
    (final LayerNorm kept, hf.prune's default) outputs for the utterance alone."""
    import copy
    import warnings as _w

    cut = copy.deepcopy(model)
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        hf.prune(cut, keep)
    with torch.inference_mode():
        if family == "whisper":
            feats = torch.as_tensor(fe(wave, sampling_rate=16000, return_tensors="np")["input_features"])
            last = cut(input_features=feats).last_hidden_state
            valid = int(np.ceil(wave.shape[0] / 320))
        else:
            values = torch.as_tensor(fe(wave, sampling_rate=16000, return_tensors="np")["input_values"])
            last = cut(input_values=values).last_hidden_state
            valid = last.shape[1]
    return last[0, :valid].mean(0).numpy()


def _append_output_as_last_state(module, args, output):
    """Forward hook: hidden_states[-1] := last_hidden_state, as transformers 4
    encoders return them (after the final LayerNorm)."""
    if output.hidden_states is not None:
        output.hidden_states = tuple(output.hidden_states[:-1]) + (output.last_hidden_state,)
    return output


@pytest.mark.parametrize(
    "family,kw",
    [
        ("whisper", {}),
        ("wav2vec2", {"stable_layer_norm": True}),
        ("wavlm", {"stable_layer_norm": True}),
    ],
)
@pytest.mark.parametrize("last_state", ["as_returned", "normalised"])
def test_final_norm_apply_scores_what_the_pruned_model_outputs(waves, family, kw, last_state):
    """Whatever the encoder returns as its last hidden state (transformers 5
    wav2vec2-family: before the LayerNorm; Whisper and transformers 4: after
    it), ``final_norm="apply"`` normalises each state exactly once. The
    LayerNorm gets random weights so that applying it twice would show."""
    import warnings as _w

    from fastconvex.hf.models.layout import speech_encoder

    model, fe = tiny_model(family, **kw)
    norm = model.layer_norm if family == "whisper" else model.encoder.layer_norm
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        norm.weight.copy_(1.0 + 0.5 * torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=gen))
    if last_state == "normalised":
        speech_encoder(model).register_forward_hook(_append_output_as_last_state)
    data = waves[:3]
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        res = hf.pooled_hidden_states(
            model, data, feature_extractor=fe, batch_size=2, final_norm="apply", progress=False
        )
    assert not [c for c in caught if "pre-LN encoder" in str(c.message)]  # handled, not warned
    raw = hf.pooled_hidden_states(model, data, feature_extractor=fe, batch_size=2, progress=False)
    n_blocks = hf.num_blocks(model)
    assert len(res) == n_blocks + 1
    for i, w in enumerate(data):
        for keep in range(1, n_blocks + 1):
            np.testing.assert_allclose(res[keep][i], _pruned_output_mean(model, fe, w, keep, family), rtol=0, atol=ATOL)
        # state 0 (no block run): the LayerNorm of the input frames, then the mean
        states, _ = _one_by_one(model, fe, w, family=family)
        with torch.inference_mode():
            expected0 = norm(torch.as_tensor(states[0])).mean(0).numpy()
        np.testing.assert_allclose(res[0][i], expected0, rtol=0, atol=ATOL)
    # the raw states differ from the normalised ones below the last block
    assert not np.allclose(res[1], raw[1], atol=1e-3)


def test_final_norm_apply_needs_a_final_layer_norm(waves):
    import warnings as _w

    model, fe = tiny_model("wav2vec2")  # post-LN: no final LayerNorm
    with pytest.raises(ValueError, match='final_norm="apply": Wav2Vec2Model has no final LayerNorm'):
        hf.pooled_hidden_states(model, waves[:1], feature_extractor=fe, final_norm="apply", progress=False)
    with pytest.raises(ValueError, match='final_norm must be "raw" or "apply"'):
        hf.pooled_hidden_states(model, waves[:1], feature_extractor=fe, final_norm="keep", progress=False)
    # a pre-LN model pruned with final_norm="identity" has no final LayerNorm left
    pre_ln, fe2 = tiny_model("wav2vec2", stable_layer_norm=True)
    hf.prune(pre_ln, 1, final_norm="identity")
    with pytest.raises(ValueError, match="nn.Identity"):
        hf.pooled_hidden_states(pre_ln, waves[:1], feature_extractor=fe2, final_norm="apply", progress=False)
    with _w.catch_warnings(record=True) as caught:  # and nothing to warn of with "raw"
        _w.simplefilter("always")
        hf.pooled_hidden_states(pre_ln, waves[:1], feature_extractor=fe2, progress=False)
    assert not [c for c in caught if "pre-LN encoder" in str(c.message)]
