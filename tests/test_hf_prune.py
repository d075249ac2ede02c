"""prune / save_pruned / load_pruned on tiny random models of every family (no downloads)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import stat
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastconvex import hf  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf

LAYERS = 3
POST_LN = [
    ("wav2vec2", {}),
    ("wav2vec2", {"feat_extract_norm": "group"}),
    ("hubert", {}),
    ("wavlm", {}),
    ("data2vec-audio", {}),
]
PRE_LN = [  # a final LayerNorm after the last block
    ("wav2vec2", {"stable_layer_norm": True}),
    ("hubert", {"stable_layer_norm": True}),
    ("wavlm", {"stable_layer_norm": True}),
    ("whisper", {}),
]


def _ids(cases):
    return [f"{fam}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'base'}" for fam, kw in cases]


def _inputs(family, fe, n=1700, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    waves = [rng.standard_normal(n - 97 * i).astype(np.float32) for i in range(batch)]
    if family == "whisper":
        feats = fe(waves, sampling_rate=16000, return_tensors="np")["input_features"]
        return {"input_features": torch.as_tensor(feats)}
    values = np.zeros((batch, n), dtype=np.float32)
    for i, w in enumerate(waves):
        values[i, : w.shape[0]] = w
    return {"input_values": torch.as_tensor(values)}


def _run(model, inputs):
    with torch.inference_mode():
        return model(**inputs, output_hidden_states=True)


def _final_norm(model):
    enc = model if not hasattr(model, "base_model") or model.base_model is model else model.base_model
    return enc.encoder.layer_norm if hasattr(enc, "encoder") else enc.layer_norm


@pytest.mark.parametrize("family,kw", POST_LN, ids=_ids(POST_LN))
@pytest.mark.parametrize("keep", [1, 2, 3])
def test_prune_reproduces_hidden_state_post_ln(family, kw, keep):
    model, fe = tiny_model(family, layers=LAYERS, **kw)
    inputs = _inputs(family, fe)
    original = _run(model, inputs).hidden_states
    assert len(original) == LAYERS + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # post-LN models: nothing to warn about
        pruned = hf.prune(model, keep)
    assert pruned is model
    out = _run(pruned, inputs)
    assert torch.equal(out.last_hidden_state, original[keep])
    assert len(out.hidden_states) == keep + 1
    for h in range(keep + 1):
        assert torch.equal(out.hidden_states[h], original[h])
    assert model.config.num_hidden_layers == keep
    assert hf.num_blocks(model) == keep
    assert model.fastconvex_pruning == {"original_layers": LAYERS, "kept_layers": keep, "final_norm": "none"}


@pytest.mark.parametrize("family,kw", PRE_LN, ids=_ids(PRE_LN))
@pytest.mark.parametrize("keep", [1, 2, 3])
def test_prune_pre_ln_final_norm_options(family, kw, keep):
    model, fe = tiny_model(family, layers=LAYERS, **kw)
    inputs = _inputs(family, fe)
    original = _run(model, inputs)
    norm = copy.deepcopy(_final_norm(model))

    kept = copy.deepcopy(model)
    if keep < LAYERS:
        with pytest.warns(UserWarning, match="LayerNorm"):
            hf.prune(kept, keep, final_norm="keep")
        with torch.inference_mode():
            expected = norm(original.hidden_states[keep])
        torch.testing.assert_close(_run(kept, inputs).last_hidden_state, expected, rtol=0, atol=1e-6)
    else:
        hf.prune(kept, keep, final_norm="keep")
        assert torch.equal(_run(kept, inputs).last_hidden_state, original.last_hidden_state)
    assert isinstance(_final_norm(kept), torch.nn.LayerNorm)

    ident = copy.deepcopy(model)
    hf.prune(ident, keep, final_norm="identity")
    assert torch.equal(_run(ident, inputs).last_hidden_state, original.hidden_states[keep])


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
def test_tied_last_hidden_state_without_the_transformers5_decorator(family, monkeypatch):
    """transformers 4 encoders have no ``capture_outputs`` decorator and append
    their output (after the final LayerNorm) as the last hidden state: an
    encoder whose ``forward`` carries no such decorator counts as tied; a
    ``config.tie_last_hidden_states`` setting overrides both."""
    from fastconvex.hf.models.layout import speech_encoder, ties_last_hidden_state

    model, _ = tiny_model(family, layers=LAYERS, stable_layer_norm=True)
    enc = speech_encoder(model)
    # the installed encoder: transformers 5 reads it from the decorator (not tied);
    # transformers 4's forward appends the normalised output (tied)
    assert ties_last_hidden_state(model) == (int(transformers.__version__.split(".")[0]) < 5)
    monkeypatch.setattr(type(enc), "forward", lambda self, *args, **kwargs: None)  # undecorated
    assert ties_last_hidden_state(model)
    monkeypatch.setattr(enc.config, "tie_last_hidden_states", False, raising=False)
    assert not ties_last_hidden_state(model)


@pytest.mark.parametrize("family,kw", POST_LN + PRE_LN, ids=_ids(POST_LN + PRE_LN))
def test_save_then_from_pretrained_gives_identical_outputs(family, kw, tmp_path):
    model, fe = tiny_model(family, layers=LAYERS, **kw)
    inputs = _inputs(family, fe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.prune(model, 2)
    before = _run(model, inputs)
    prov = hf.save_pruned(model, tmp_path, feature_extractor=fe, scores=[0.1, 0.4, 0.3, 0.2], source="tiny", seed=7)
    loaded = type(model).from_pretrained(tmp_path).eval()
    after = _run(loaded, inputs)
    assert torch.equal(after.last_hidden_state, before.last_hidden_state)
    assert len(after.hidden_states) == 3
    assert hf.num_blocks(loaded) == 2
    fe2 = transformers.AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(fe2) is type(fe)
    record = json.loads(prov.read_text())
    assert record["source"] == "tiny"
    assert record["original_layers"] == LAYERS
    assert record["kept_layers"] == 2
    assert record["seed"] == 7
    assert record["scores"] == {"scores": [0.1, 0.4, 0.3, 0.2]}
    assert record["versions"]["torch"] == metadata.version("torch")
    assert record["versions"]["transformers"] == transformers.__version__


@pytest.mark.parametrize("family,kw", PRE_LN, ids=_ids(PRE_LN))
def test_identity_final_norm_survives_save_with_load_pruned(family, kw, tmp_path):
    model, fe = tiny_model(family, layers=LAYERS, **kw)
    inputs = _inputs(family, fe)
    original = _run(model, inputs).hidden_states
    hf.prune(model, 1, final_norm="identity")
    with pytest.warns(UserWarning, match="load_pruned"):
        hf.save_pruned(model, tmp_path)
    loaded = hf.load_pruned(tmp_path).eval()
    assert type(loaded) is type(model)
    assert torch.equal(_run(loaded, inputs).last_hidden_state, original[1])
    assert loaded.fastconvex_pruning == {"original_layers": LAYERS, "kept_layers": 1, "final_norm": "identity"}


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"])
def test_weighted_layer_sum_head_is_sliced_and_matches_oracle(family):
    model, fe = tiny_model(family, layers=LAYERS, head="sequence")
    with torch.no_grad():
        model.layer_weights.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
    inputs = _inputs(family, fe, batch=1)
    original = _run(model, inputs).hidden_states
    keep = 2
    if family == "whisper":
        with pytest.warns(UserWarning, match="LayerNorm"):
            hf.prune(model, keep)
    else:
        hf.prune(model, keep)
    assert model.layer_weights.shape == (keep + 1,)
    assert torch.equal(model.layer_weights.detach(), torch.tensor([0.3, -0.2, 0.5]))
    assert model.config.num_hidden_layers == keep
    # oracle: the head's weighted sum over the first keep+1 original hidden states
    states = list(original[:keep])
    with torch.inference_mode():
        if family == "whisper":  # the pruned encoder's last state is normalised (a tied last hidden state)
            states.append(model.encoder.layer_norm(original[keep]))
        else:
            states.append(original[keep])
        w = torch.softmax(model.layer_weights, dim=-1)
        mixed = (torch.stack(states, dim=1) * w[None, :, None, None]).sum(dim=1)
        logits = model.classifier(model.projector(mixed).mean(dim=1))
        got = model(**inputs).logits
    torch.testing.assert_close(got, logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper"])
def test_layerdrop_is_zero_after_pruning(family):
    drop = {"encoder_layerdrop": 0.5} if family == "whisper" else {"layerdrop": 0.5}
    model, fe = tiny_model(family, layers=LAYERS, **drop)
    inputs = _inputs(family, fe, n=800, batch=1)

    def train_outputs():  # dropouts are 0 in the tiny configs: only layerdrop can change the output
        model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            outs = [model(**inputs).last_hidden_state for _ in range(8)]
        model.eval()
        return outs

    before = train_outputs()
    assert not all(torch.equal(o, before[0]) for o in before)  # layerdrop is active before pruning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.prune(model, 2)
    if family == "whisper":
        assert model.config.encoder_layerdrop == 0.0 and model.layerdrop == 0.0
    else:
        assert model.config.layerdrop == 0.0
    expected = _run(model, inputs).last_hidden_state
    for out in train_outputs():
        assert torch.equal(out, expected)


@pytest.mark.parametrize("stable", [False, True])
def test_wavlm_keeps_relative_position_bias(stable, tmp_path):
    model, fe = tiny_model("wavlm", layers=LAYERS, stable_layer_norm=stable)
    inputs = _inputs("wavlm", fe)
    original = _run(model, inputs).hidden_states
    bias = model.encoder.layers[0].attention.rel_attn_embed.weight.detach().clone()
    hf.prune(model, 2, final_norm="identity")
    assert [hasattr(layer.attention, "rel_attn_embed") for layer in model.encoder.layers] == [True, False]
    assert torch.equal(model.encoder.layers[0].attention.rel_attn_embed.weight, bias)
    assert torch.equal(_run(model, inputs).last_hidden_state, original[2])
    hf.prune(model, 1, final_norm="identity")  # prune again: still block 0 with its bias
    assert torch.equal(_run(model, inputs).last_hidden_state, original[1])
    assert model.fastconvex_pruning["original_layers"] == LAYERS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.save_pruned(model, tmp_path)
    loaded = hf.load_pruned(tmp_path).eval()
    assert torch.equal(loaded.encoder.layers[0].attention.rel_attn_embed.weight, bias)
    assert torch.equal(_run(loaded, inputs).last_hidden_state, original[1])
    assert (
        json.loads((tmp_path / importlib.import_module("fastconvex.hf.models.save").PROVENANCE_FILE).read_text())[
            "original_layers"
        ]
        == LAYERS
    )


def test_whisper_seq2seq_prunes_the_encoder_only(tmp_path):
    model, fe = tiny_model("whisper", layers=LAYERS, head="ctc")  # WhisperForConditionalGeneration
    inputs = _inputs("whisper", fe, batch=1)
    inputs["decoder_input_ids"] = torch.tensor([[1, 5, 6]])
    with torch.inference_mode():
        original = model(**inputs, output_hidden_states=True).encoder_hidden_states
    hf.prune(model, 2, final_norm="identity")
    assert model.config.encoder_layers == 2 and model.config.decoder_layers == 1
    assert len(model.model.encoder.layers) == 2 and len(model.model.decoder.layers) == 1
    with torch.inference_mode():
        out = model(**inputs)
    assert torch.equal(out.encoder_last_hidden_state, original[2])
    assert out.logits.shape == (1, 3, model.config.vocab_size)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_prune_refuses_bad_keep(family):
    model, _ = tiny_model(family, layers=LAYERS)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        hf.prune(model, 0)
    with pytest.raises(ValueError, match="keep must be at least 1"):
        hf.prune(model, -1)
    with pytest.raises(ValueError, match=r"keep=4 exceeds the model's 3 transformer blocks"):
        hf.prune(model, 4)
    with pytest.raises(TypeError, match="keep must be an integer"):
        hf.prune(model, 1.0)
    with pytest.raises(TypeError, match="keep must be an integer"):
        hf.prune(model, True)
    with pytest.raises(ValueError, match="final_norm"):
        hf.prune(model, 1, final_norm="drop")
    assert hf.num_blocks(model) == LAYERS  # nothing was changed by the refusals
    hf.prune(model, np.int64(LAYERS))
    assert hf.num_blocks(model) == LAYERS


def test_prune_rejects_non_models():
    with pytest.raises(TypeError, match="model must be a Hugging Face"):
        hf.prune(torch.nn.Linear(2, 2), 1)


def test_provenance_is_strict_json(tmp_path):
    model, _fe = tiny_model("hubert", layers=LAYERS)
    hf.prune(model, 1)
    prov = hf.save_pruned(model, tmp_path / "out", scores=np.array([0.5, np.nan, 0.25, 0.1]), extra={"n": np.int64(3)})
    text = prov.read_text()
    assert "NaN" not in text
    record = json.loads(text)
    assert record["scores"] == {"scores": [0.5, None, 0.25, 0.1]}
    assert record["extra"] == {"n": 3}
    assert record["kept_layers"] == 1 and record["original_layers"] == LAYERS and record["final_norm"] == "none"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        hf.save_pruned(model, tmp_path / "file")


def test_save_pruned_refuses_a_non_empty_directory_without_overwrite(tmp_path):
    """save_pruned wrote into any existing directory -- e.g. the one the original
    model was loaded from -- replacing its config and weights without a word."""
    model, fe = tiny_model("wav2vec2", layers=LAYERS)
    original = tmp_path / "original"
    model.save_pretrained(original)
    before = {p.name: p.read_bytes() for p in original.iterdir()}
    hf.prune(model, 1)
    with pytest.raises(ValueError, match=r"'.*original' exists and is not empty \(pass overwrite=True"):
        hf.save_pruned(model, original, feature_extractor=fe)
    assert {p.name: p.read_bytes() for p in original.iterdir()} == before
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        hf.save_pruned(model, original, overwrite="no")
    hf.save_pruned(model, original, feature_extractor=fe, overwrite=True)
    assert transformers.AutoConfig.from_pretrained(original).num_hidden_layers == 1
    hf.save_pruned(model, tmp_path / "empty")  # a new (or empty) directory needs no overwrite


def test_save_pruned_leaves_no_half_written_model(tmp_path, monkeypatch):
    """The files are written beside the target and moved in whole: a save that
    fails half-way leaves the directory as it was and no temporary behind."""
    model, fe = tiny_model("wav2vec2", layers=LAYERS)
    out = tmp_path / "cut"
    hf.save_pruned(hf.prune(model, 2), out, feature_extractor=fe)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = type(model).save_pretrained

    def dies_half_way(self, path, **kw):
        real(self, path, **kw)
        (Path(path) / "model.safetensors").write_bytes(b"half")  # a torn weights file
        raise OSError("disk full")

    monkeypatch.setattr(type(model), "save_pretrained", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pruned(hf.prune(model, 1), out, feature_extractor=fe, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut"]
    assert transformers.AutoConfig.from_pretrained(out).num_hidden_layers == 2


def test_saved_directories_get_the_umask_permissions(tmp_path):
    from fastconvex.core.atomic import staged_directory

    old = os.umask(0o022)
    try:
        for replace in (True, False):
            with staged_directory(tmp_path / f"d{replace}", replace=replace) as tmp:
                (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    for replace in (True, False):  # not mkdtemp's 0700: others on a cluster can read a model
        assert stat.S_IMODE((tmp_path / f"d{replace}").stat().st_mode) == 0o755
        assert (tmp_path / f"d{replace}" / "f").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dFalse", "dTrue"]


def test_save_pruned_through_a_link_to_another_file_system(tmp_path):
    """The files are staged inside the target (so on its file system) and
    moved in: a target that links to another disk works, and nothing is left
    behind. /dev/shm (tmpfs) is another file system than tmp_path here."""
    model, fe = tiny_model("wav2vec2", layers=LAYERS)
    shm = Path("/dev/shm")
    elsewhere = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path))
    try:
        link = tmp_path / "link"
        link.symlink_to(elsewhere, target_is_directory=True)
        hf.save_pruned(hf.prune(model, 2), link, feature_extractor=fe)
        assert {"config.json", "preprocessor_config.json", "fastconvex_pruning.json"} <= {
            p.name for p in elsewhere.iterdir()
        }
        assert not [p for p in elsewhere.iterdir() if p.name.startswith(".")]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["link"]
        assert transformers.AutoConfig.from_pretrained(link).num_hidden_layers == 2
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_staged_files_move_in_with_the_named_ones_last_and_need_only_the_target_writable(tmp_path, monkeypatch):
    from fastconvex.core import atomic as _atomic

    out = tmp_path / "shared" / "mine"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("kept")
    denied = {tmp_path / "shared"}  # a read-only parent: writing into mine needs only mine
    monkeypatch.setattr(_atomic.os, "access", lambda p, mode: Path(p) not in denied)
    with pytest.raises(ValueError, match=r"directory '.*shared' is not writable"):
        _atomic.check_output_dir(out, "out", True, whole=True)  # replacing it whole would need the parent
    assert _atomic.check_output_dir(out, "out", True, whole=False) == out
    moved = []
    real = os.replace
    monkeypatch.setattr(_atomic.os, "replace", lambda a, b: (moved.append(Path(b).name), real(a, b)))
    monkeypatch.setattr(_atomic.os, "umask", lambda *a: pytest.fail("the umask is process-wide: never set it"))
    with _atomic.staged_directory(out, replace=False, last=("config.json", "z.json")) as tmp:
        assert tmp.parent == out  # staged on the target's own file system
        for name in ("z.json", "config.json", "weights.bin", "a.json"):
            (tmp / name).write_text(name)
    assert moved == ["a.json", "weights.bin", "config.json", "z.json"]
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "config.json", "old.txt", "weights.bin", "z.json"]
