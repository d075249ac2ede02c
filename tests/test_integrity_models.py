"""Model folders load only what they claim (fastconvex.hf.models.load): weights that
do not match the config, custom code, truncated or pickled weights and a
missing CUDA device are one clear error, before the model is used.

Why each matters: transformers fills missing tensors with random values and
only warns (``--quiet`` hides the warning), so the numbers would be silently
wrong; a folder with ``auto_map`` makes transformers ask "run the custom
code?" and, answered ``y``, runs it; the others would otherwise surface as an
"internal error" or a traceback that names no file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from fastconvex import hf  # noqa: E402
from fastconvex.cli import main  # noqa: E402
from fastconvex.hf.models.load import load_model  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Two classes of three short noise clips."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir()
        for j in range(3):
            sf.write(root / name / f"u{j}.wav", (0.3 * rng.normal(size=1600)).astype(np.float32), 16000)
    return root


def _save(path, model, fe=None):
    model.save_pretrained(path)
    if fe is not None:
        fe.save_pretrained(path)
    return path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _prune(path, audio, out, *extra):
    return ["prune", str(path), "--audio", str(audio), "--out", str(out), "--keep", "1", "--quiet", *extra]


def _one_line(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


# ---- weights that do not match the config --------------------------------------------------------


def test_missing_encoder_tensors_are_an_error_naming_them(tmp_path, audio, capsys):
    model, fe = tiny_model("wav2vec2", layers=2)
    path = _save(tmp_path / "m", model, fe)
    _edit_config(path, num_hidden_layers=3)  # the config claims a block the weights lack
    with pytest.raises(ValueError) as err:
        load_model(str(path))
    message = str(err.value)
    assert "its weights lack 16 tensors (encoder.layers.2.attention.k_proj.bias," in message
    assert "of Wav2Vec2Model, which would be random values" in message
    assert "classification head" not in message  # the encoder's tensors: no head would excuse them
    with pytest.raises(ValueError, match=r"weights lack 16 tensors \(encoder\.layers\.2\."):
        load_model(str(path), new_head=True)  # a new head never excuses the encoder
    with pytest.raises(ValueError, match=r"weights lack 16 tensors"):
        hf.load_pruned(path)
    # --quiet hides transformers' load report: the mismatch must be the command's one error line
    capsys.readouterr()
    assert main(_prune(path, audio, tmp_path / "out")) == 1
    assert "its weights lack 16 tensors (encoder.layers.2." in _one_line(capsys)
    assert not (tmp_path / "out" / "config.json").exists()
    # a model pruned with final_norm="identity" lacks its final LayerNorm's weights on purpose: it loads
    model, fe = tiny_model("wav2vec2", layers=3, stable_layer_norm=True)
    hf.prune(model, 2, final_norm="identity")
    with pytest.warns(UserWarning, match="replaced by nn.Identity"):
        hf.save_pruned(model, tmp_path / "cut", feature_extractor=fe)
    back, _ = load_model(str(tmp_path / "cut"))
    assert isinstance(back.encoder.layer_norm, torch.nn.Identity)
    # a checkpoint without SpecAugment's mask vector (used only in training) loads, its outputs exact
    model, fe = tiny_model("wav2vec2", layers=2)
    path = _save(tmp_path / "nomask", model, fe)
    _edit_config(path, mask_time_prob=0.05)
    back, _ = load_model(str(path))
    assert hasattr(back, "masked_spec_embed")
    wave = torch.randn(1, 1600)
    with torch.no_grad():
        torch.testing.assert_close(back(wave).last_hidden_state, model.eval()(wave).last_hidden_state, rtol=0, atol=0)


def test_unused_and_reshaped_tensors_are_errors(tmp_path):
    model, fe = tiny_model("wav2vec2", layers=3)
    path = _save(tmp_path / "m", model, fe)
    _edit_config(path, num_hidden_layers=2)  # the weights hold a block the config does not
    with pytest.raises(
        ValueError,
        match=r"its weights hold 16 tensors \(encoder\.layers\.2\..*that Wav2Vec2Model "
        r"does not use",
    ):
        load_model(str(path))
    _edit_config(path, num_hidden_layers=3, intermediate_size=40)
    with pytest.raises(
        ValueError,
        match=r"9 tensors \(encoder\.layers\.0\.feed_forward\.intermediate_dense\.bias, "
        r".*\) have other shapes in the weights than in its config",
    ):
        load_model(str(path))


def test_a_new_head_only_where_one_is_made(tmp_path, audio, capsys, monkeypatch):
    """A folder whose config is a classifier but whose weights are the bare
    encoder: prune refuses it (its head would be random), finetune -- which
    makes a new head anyway -- loads it with the encoder exact."""
    model, fe = tiny_model("wav2vec2", layers=2, seed=4)
    path = _save(tmp_path / "m", model, fe)
    _edit_config(path, architectures=["Wav2Vec2ForSequenceClassification"])
    capsys.readouterr()
    assert main(_prune(path, audio, tmp_path / "out")) == 1
    err = _one_line(capsys)
    assert (
        "its weights lack 4 tensors (classifier.bias, classifier.weight, projector.bias, projector.weight) of "
        "Wav2Vec2ForSequenceClassification"
    ) in err
    assert "a new classification head is allowed only where one is made, as by finetune" in err
    # the intended class loads it as it is
    capsys.readouterr()
    assert main(_prune(path, audio, tmp_path / "out2", "--model-class", "Wav2Vec2Model", "--no-plot", "--k", "2")) == 0
    capsys.readouterr()
    seen = {}

    def fake_finetune(model, *args, **kwargs):
        seen["model"] = model
        raise ValueError("stopped after loading")

    monkeypatch.setattr(hf, "finetune", fake_finetune)
    capsys.readouterr()
    assert main(["finetune", str(path), "--audio", str(audio), "--out-dir", str(tmp_path / "ft"), "--quiet"]) == 1
    assert "stopped after loading" in _one_line(capsys)
    loaded = seen["model"]
    assert type(loaded).__name__ == "Wav2Vec2ForSequenceClassification"
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.wav2vec2.state_dict()[name], tensor, rtol=0, atol=0)


# ---- code in the folder --------------------------------------------------------------------------


def _custom_code_folder(path, marker, *, config_file="config.json"):
    model, fe = tiny_model("wav2vec2", layers=2)
    _save(path, model, fe)
    data = json.loads((path / config_file).read_text())
    data["auto_map"] = {
        "AutoConfig": "evil.EvilConfig",
        "AutoModel": "evil.EvilModel",
        "AutoFeatureExtractor": "evil.EvilFeatureExtractor",
    }
    if config_file == "config.json":
        data["model_type"] = "evil"
        data["architectures"] = ["EvilModel"]
    (path / config_file).write_text(json.dumps(data))
    (path / "evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('the folder code ran')\n"
        "from transformers import Wav2Vec2Config as EvilConfig, Wav2Vec2Model as EvilModel\n"
        "from transformers import Wav2Vec2FeatureExtractor as EvilFeatureExtractor\n"
    )
    return path


def test_custom_code_is_refused_without_a_prompt(tmp_path, audio):
    """Run as a user would, stdin attached and answering "y": no prompt
    appears, the folder's code never runs (no marker file), and the command
    fails with one line naming the config with ``auto_map`` and the code."""
    marker = tmp_path / "MARKER"
    path = _custom_code_folder(tmp_path / "evil", marker)
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "fastconvex", *_prune(path, audio, tmp_path / "out")],
        input="y\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert not marker.exists()  # the "y" on stdin was never read as consent: the folder's code did not run
    assert "custom code?" not in done.stdout + done.stderr
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (
        "needs its own Python code (config.json has auto_map for AutoConfig, AutoFeatureExtractor, "
        "AutoModel; code: evil.py)"
    ) in done.stderr
    with pytest.raises(ValueError, match="needs its own Python code"):
        hf.load_pruned(path)
    assert not marker.exists()


def test_custom_feature_extractor_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    path = _custom_code_folder(tmp_path / "evil", marker, config_file="preprocessor_config.json")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json has auto_map"):
        load_model(str(path))
    assert not marker.exists()


def test_trust_remote_code_is_false_on_every_load(tmp_path, monkeypatch):
    model, fe = tiny_model("wav2vec2", layers=2)
    path = _save(tmp_path / "m", model, fe)
    calls = []

    def recording(cls_attr, owner):
        original = getattr(owner, cls_attr)

        def wrapper(*args, **kwargs):
            calls.append((owner.__name__, kwargs.get("trust_remote_code", "absent")))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, cls_attr, wrapper)

    for owner in (transformers.AutoConfig, transformers.AutoFeatureExtractor, transformers.Wav2Vec2Model):
        recording("from_pretrained", owner)
    recording("from_config", transformers.AutoModelForAudioClassification)
    loaded, _ = load_model(str(path))
    hf.load_pruned(path)
    hf.classification_model(loaded, ["a", "b"])  # the new head of finetune
    assert {name for name, _ in calls} == {
        "AutoConfig",
        "AutoFeatureExtractor",
        "Wav2Vec2Model",
        "AutoModelForAudioClassification",
    }
    assert all(value is False for _, value in calls), calls


# ---- files and devices ---------------------------------------------------------------------------


def test_truncated_safetensors_is_named(tmp_path, audio, capsys):
    model, fe = tiny_model("wav2vec2", layers=2)
    path = _save(tmp_path / "m", model, fe)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a complete safetensors file"):
        load_model(str(path))
    capsys.readouterr()
    assert main(_prune(path, audio, tmp_path / "out")) == 1
    err = _one_line(capsys)
    assert "model.safetensors is not a complete safetensors file" in err and "internal error" not in err


def test_pickle_weights_load_only_as_tensors(tmp_path, audio, capsys):
    model, fe = tiny_model("wav2vec2", layers=2, seed=3)
    plain = _save(tmp_path / "plain", model, fe)
    (plain / "model.safetensors").unlink()
    torch.save(model.state_dict(), plain / "pytorch_model.bin")
    back, _ = load_model(str(plain))  # tensors only: read with weights_only=True
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)

    marker = tmp_path / "PICKLE_RAN"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = _save(tmp_path / "evil", model, fe)
    (evil / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "payload": Payload()}, evil / "pytorch_model.bin")
    with pytest.raises(ValueError, match="its pickle weights need more than tensors"):
        load_model(str(evil))
    capsys.readouterr()
    assert main(_prune(evil, audio, tmp_path / "out")) == 1
    err = _one_line(capsys)
    assert "weights_only=True, since loading a pickle can run code" in err and "internal error" not in err
    assert not marker.exists()

    (evil / "pytorch_model.bin").write_bytes((plain / "pytorch_model.bin").read_bytes()[:5000])
    with pytest.raises(ValueError, match="cannot load its weights .*truncated or corrupt"):
        load_model(str(evil))


def test_an_absent_cuda_device_is_a_usage_error_before_loading(tmp_path, audio, capsys, monkeypatch):
    model, fe = tiny_model("wav2vec2", layers=2)
    path = _save(tmp_path / "m", model, fe)
    if torch.cuda.is_available():
        device, message = f"cuda:{torch.cuda.device_count()}", "CUDA device(s)"
    else:
        device, message = "cuda", "use --device cpu"

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match=message):
        load_model(str(path), device=device)
    for argv in (
        _prune(path, audio, tmp_path / "out", "--device", device),
        [
            "embed",
            str(path),
            "--audio",
            str(audio),
            "--out-dir",
            str(tmp_path / "store"),
            "--quiet",
            "--device",
            device,
        ],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = _one_line(capsys)
        assert f"--device {device!r}" in err and message in err and "internal error" not in err


# ---- what is read, and only that -----------------------------------------------------------------


def test_transformers_without_weights_only_argument_still_loads(tmp_path, monkeypatch):
    """transformers before 4.46 has no ``weights_only`` argument of
    ``from_pretrained`` (passed, it reaches the model's ``__init__``): it is
    passed only where the loader takes it, and the weights load exactly."""
    model, fe = tiny_model("wav2vec2", layers=2, seed=5)
    path = _save(tmp_path / "m", model, fe)
    original = transformers.Wav2Vec2Model.from_pretrained.__func__
    seen = []

    def old_from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        seen.append(sorted(kwargs))
        if "weights_only" in kwargs:  # what transformers 4.40-4.45 does with it
            raise TypeError("Wav2Vec2Model.__init__() got an unexpected keyword argument 'weights_only'")
        return original(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    monkeypatch.setattr(transformers.Wav2Vec2Model, "from_pretrained", classmethod(old_from_pretrained))
    back, _ = load_model(str(path))
    assert seen and all("weights_only" not in kwargs for kwargs in seen)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)


def test_a_wrapped_pickle_refusal_says_pickle(tmp_path, monkeypatch):
    """transformers may wrap torch's weights-only ``UnpicklingError`` in an
    ``OSError`` ("Unable to load weights"): the error still says that the
    pickle needs more than tensors, not that the file is corrupt."""
    import pickle

    model, fe = tiny_model("wav2vec2", layers=2)
    path = _save(tmp_path / "m", model, fe)

    def wrapping(cls, *args, **kwargs):
        try:
            raise pickle.UnpicklingError("Weights only load failed. Unsupported global: GLOBAL pathlib.Path.touch")
        except pickle.UnpicklingError as exc:
            raise OSError("Unable to load weights from pytorch checkpoint file") from exc

    monkeypatch.setattr(transformers.Wav2Vec2Model, "from_pretrained", classmethod(wrapping))
    with pytest.raises(ValueError) as err:
        load_model(str(path))
    assert "its pickle weights need more than tensors to load (Weights only load failed." in str(err.value)
    assert "corrupt" not in str(err.value)


def test_only_the_files_transformers_reads_are_checked(tmp_path):
    """A corrupt ``adapter_model.safetensors`` and a ``tokenizer_config.json``
    with ``auto_map`` are never read by a model load, so they do not refuse
    the folder; a folder with no weights at all says so."""
    model, fe = tiny_model("wav2vec2", layers=2, seed=6)
    path = _save(tmp_path / "m", model, fe)
    (path / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    (path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tok.Tok", None]}}))
    back, _ = load_model(str(path))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0)
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError) as err:
        load_model(str(path))
    assert (
        "has no weight files (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
        "pytorch_model.bin.index.json)"
    ) in str(err.value)
    assert "corrupt" not in str(err.value)
