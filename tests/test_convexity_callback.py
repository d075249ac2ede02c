"""hf.ConvexityCallback: convexity of a fixed probe while a model is trained.

The oracle of every point is the definition: ``layer_scores(pooled_hidden_states(
model as it was at that step, probe), labels, same settings)``, with the model's
state recorded by a second callback at the same event (and once through
``save_pretrained``/``from_pretrained``)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import transformers  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex import hf  # noqa: E402
from fastconvex.hf.testing import tiny_model  # noqa: E402

pytestmark = pytest.mark.hf
RATE = 16000


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tones(n, seed, seconds=0.2, noise=0.05):
    """Noisy tones of two pitches (labels "low"/"high"), all of one length."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds)) / RATE
    labels = ["low" if i % 2 == 0 else "high" for i in range(n)]
    waves = [
        (
            rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (300.0 if i % 2 == 0 else 3000.0) * t + rng.uniform(0, 6.3))
            + noise * rng.normal(size=t.size)
        ).astype(np.float32)
        for i in range(n)
    ]
    return waves, labels


class Clips(torch.utils.data.Dataset):
    def __init__(self, waves, labels, fe, classes):
        self.x = fe(waves, sampling_rate=RATE, return_tensors="pt")["input_values"]
        self.y = torch.tensor([classes.index(c) for c in labels])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_values": self.x[i], "labels": self.y[i]}


def classifier(seed=0):
    """A tiny wav2vec2 with a fresh head for the classes "low" and "high" (hf.classification_model)."""
    base, fe = tiny_model("wav2vec2", seed=seed)
    return hf.classification_model(base, ["low", "high"], seed=seed), fe


class Recorder(transformers.TrainerCallback):
    """Keeps a copy of the model's weights at every event the convexity callback
    scores at, and every log it is given (a stand-in for a report_to integration)."""

    def __init__(self):
        self.states, self.logs = {}, []

    def _keep(self, state, model):
        self.states[state.global_step] = copy.deepcopy(model.state_dict())

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._keep(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kw):
        self._keep(state, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        self._keep(state, model)

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs or {}))

    def on_evaluate(self, args, state, control, **kw):
        self.evaluated = [*getattr(self, "evaluated", []), state.global_step]


def trainer_for(model, fe, out, callbacks, *, epochs=2, seed=0, eval_dataset=None, **args):
    waves, labels = tones(16, seed=1)
    settings = dict(
        output_dir=str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        seed=seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    settings.update(args)
    return transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**settings),
        train_dataset=Clips(waves, labels, fe, ["low", "high"]),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )


PROBE = tones(12, seed=5, noise=1.5)  # noisy enough that no layer is perfectly convex
SCORING = dict(k=3, pairs=40, seed=2)


def oracle(model, fe, state_dict, **scoring):
    again = copy.deepcopy(model)
    again.load_state_dict(state_dict)
    pooled = hf.pooled_hidden_states(again, PROBE[0], feature_extractor=fe, progress=False)
    return fc.layer_scores(list(pooled), PROBE[1], **{**SCORING, **scoring})


def test_every_point_is_layer_scores_of_the_model_at_that_step(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    rec = Recorder()
    trainer_for(model, fe, tmp_path, [cb, rec]).train()
    steps = [p.step for p in cb.history]
    assert steps == [0, 2, 4] and [p.epoch for p in cb.history] == [0.0, 1.0, 2.0]
    for point in cb.history:
        expected = oracle(model, fe, rec.states[point.step])
        np.testing.assert_array_equal(point.scores.scores, expected.scores)
        np.testing.assert_array_equal(point.scores.stderr, expected.stderr)
        assert point.layers == list(range(len(expected.scores)))
    # the weights changed, and so did the scores: the points are not one number repeated
    assert not np.array_equal(cb.history[0].scores.scores, cb.history[-1].scores.scores)


def test_a_saved_and_reloaded_model_gives_the_same_point(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(model, fe, tmp_path / "run", [cb], epochs=1).train()
    model.save_pretrained(tmp_path / "saved")
    back = transformers.Wav2Vec2ForSequenceClassification.from_pretrained(tmp_path / "saved")
    pooled = hf.pooled_hidden_states(back, PROBE[0], feature_extractor=fe, progress=False)
    np.testing.assert_array_equal(
        cb.history[-1].scores.scores, fc.layer_scores(list(pooled), PROBE[1], **SCORING).scores
    )


def test_training_with_the_callback_leaves_the_run_as_it_was(tmp_path):
    plain, fe = classifier()
    tracked, _ = classifier()
    trainer_for(plain, fe, tmp_path / "a", []).train()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, every=1, **SCORING)
    tracked.train()
    trainer_for(tracked, fe, tmp_path / "b", [cb]).train()
    assert len(cb.history) == 5  # before training and after each of 4 steps
    a, b = plain.state_dict(), tracked.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_scoring_keeps_mode_device_gradients_and_random_state():
    model, fe = classifier()
    model.train()
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 0.5)
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    torch.manual_seed(11)
    np.random.seed(11)  # noqa: NPY002 - the global state a Trainer draws from
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)  # noqa: NPY002
    torch.manual_seed(11)
    np.random.seed(11)  # noqa: NPY002
    cb.score(model)
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert torch.equal(model.classifier.weight.grad, torch.full_like(model.classifier.weight, 0.5))
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)  # noqa: NPY002


def test_seed_none_draws_one_seed_for_every_point():
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, k=3, pairs=40, seed=None)
    seed = cb.scoring["seed"]
    assert isinstance(seed, int) and seed >= 0
    first, again = cb.score(model)[0], cb.score(model)[0]
    np.testing.assert_array_equal(first.scores, again.scores)
    pooled = hf.pooled_hidden_states(model, PROBE[0], feature_extractor=fe, progress=False)
    np.testing.assert_array_equal(
        first.scores, fc.layer_scores(list(pooled), PROBE[1], k=3, pairs=40, seed=seed).scores
    )


def test_points_reach_the_trainers_log_and_its_integrations(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    rec = Recorder()
    trainer = trainer_for(model, fe, tmp_path, [cb, rec])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "convexity/layer_0" in entry]
    assert [entry["step"] for entry in logged] == [0, 2, 4]
    for entry, point in zip(logged, cb.history):
        assert entry["convexity/layer_3"] == pytest.approx(point.scores.scores[3], abs=0)
        assert entry["convexity/best_layer"] == point.scores.best_layer
    assert [log["convexity/layer_1"] for log in rec.logs if "convexity/layer_1" in log] == [
        p.scores.scores[1] for p in cb.history
    ]


def test_the_history_file_has_one_line_per_point(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, layers=[1, 3], **SCORING)
    trainer_for(model, fe, tmp_path, [cb]).train()
    lines = [json.loads(line) for line in (tmp_path / "convexity.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4]
    assert all(line["layers"] == [1, 3] for line in lines)
    assert [line["scores"] for line in lines] == [p.scores.scores.tolist() for p in cb.history]


def test_a_resumed_run_keeps_the_earlier_points_and_never_repeats_one(tmp_path):
    model, fe = classifier()
    whole = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path / "whole", [whole], epochs=3).train()

    first = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path / "run", [first], epochs=3, save_strategy="epoch").train()
    # a later run resumes from the checkpoint of epoch 1; the file holds points up to epoch 3
    resumed = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer = trainer_for(copy.deepcopy(model), fe, tmp_path / "run", [resumed], epochs=3, save_strategy="epoch")
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert [p.step for p in resumed.history] == [0, 2, 4, 6]
    for a, b in zip(resumed.history, whole.history):
        np.testing.assert_allclose(a.scores.scores, b.scores.scores, rtol=0, atol=1e-12)
    lines = [json.loads(x) for x in (tmp_path / "run" / "convexity.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 4, 6]


def test_a_history_of_another_probe_is_refused_before_training(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path, [cb], epochs=2, save_strategy="epoch").train()
    other = hf.ConvexityCallback(*PROBE, feature_extractor=fe, k=4, pairs=40, seed=2)
    trainer = trainer_for(copy.deepcopy(model), fe, tmp_path, [other], epochs=2, save_strategy="epoch")
    with pytest.raises(ValueError, match="another probe or other settings"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_every_n_steps_and_every_evaluation(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, every=3, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path / "n", [cb], epochs=3).train()
    assert [p.step for p in cb.history] == [0, 3, 6]
    ev = hf.ConvexityCallback(*PROBE, feature_extractor=fe, every="eval", **SCORING)
    waves, labels = tones(8, seed=9)
    held_out = Clips(waves, labels, fe, ["low", "high"])
    rec = Recorder()
    trainer = trainer_for(
        copy.deepcopy(model),
        fe,
        tmp_path / "e",
        [ev, rec],
        epochs=2,
        eval_dataset=held_out,
        eval_strategy="steps",
        eval_steps=3,
    )
    trainer.train()
    assert 3 in rec.evaluated and [p.step for p in ev.history] == [0, *rec.evaluated]


def test_euclidean_and_both_measures_equal_layer_euclidean_scores(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, measure="both", **SCORING)
    rec = Recorder()
    trainer_for(model, fe, tmp_path, [cb, rec], epochs=1).train()
    for point in cb.history:
        again = copy.deepcopy(model)
        again.load_state_dict(rec.states[point.step])
        again.eval()
        states, n_frames = hf.hidden_state_sequences(again, PROBE[0], feature_extractor=fe, progress=False)
        expected = fc.layer_euclidean_scores(
            states, PROBE[1], hf.predict_from_layer(again), lengths=n_frames, pairs=40, seed=2
        )
        np.testing.assert_array_equal(point.euclidean.scores, expected.scores)
        assert point.euclidean.layers[0].measure == "euclidean" and point.scores.layers[0].measure == "graph"
    eu = hf.ConvexityCallback(*PROBE, feature_extractor=fe, measure="euclidean", pairs=40, seed=2)
    scores, layers, extra = eu.score(model)
    assert extra is None and scores.layers[0].measure == "euclidean" and layers == list(range(len(scores.scores)))


def test_finetune_passes_callbacks_to_its_trainer():
    base, fe = tiny_model("wav2vec2", seed=0)
    waves, labels = tones(16, seed=1)
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    hf.finetune(base, waves, labels, epochs=2, batch_size=8, lr=3e-3, progress=False, callbacks=[cb])
    assert [p.step for p in cb.history] == [0, 2, 4]
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a str"):
        hf.finetune(base, waves, labels, epochs=1, progress=False, callbacks=["convexity"])


def test_the_plot_has_one_line_per_layer(tmp_path):
    pytest.importorskip("matplotlib")
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, layers=[0, 2, 3], **SCORING)
    trainer_for(model, fe, tmp_path, [cb], epochs=1).train()
    fig = cb.plot()
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    assert list(lines[1].get_xdata()) == [0, 2] and list(lines[1].get_ydata()) == [
        100 * p.scores.scores[1] for p in cb.history
    ]


# ---- bad input: refused when the callback is made or when training starts ----------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: hf.ConvexityCallback(PROBE[0], PROBE[1][:-1]), "labels has 11 entries but audio has 12"),
        (lambda: hf.ConvexityCallback(PROBE[0][:3], ["a", "a", "b"]), r"1 class\(es\) with one clip \('b'\)"),
        (lambda: hf.ConvexityCallback(*PROBE, every=0), "every must be"),
        (lambda: hf.ConvexityCallback(*PROBE, every="step"), "every must be"),
        (lambda: hf.ConvexityCallback(*PROBE, measure="frames"), "measure must be one of"),
        (lambda: hf.ConvexityCallback(*PROBE, k=12), "k must be < the number of points N=12, got k=12"),
        (lambda: hf.ConvexityCallback(*PROBE, measure="euclidean", sources=3), "sources=S is a graph estimator"),
    ],
)
def test_bad_settings_are_refused_when_the_callback_is_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _refused_before_any_step(tmp_path, model, fe, cb, error, match):
    before = copy.deepcopy(model.state_dict())
    trainer = trainer_for(model, fe, tmp_path, [cb])
    with pytest.raises(error, match=match):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[key], model.state_dict()[key]) for key in before)


def test_euclidean_on_a_model_without_a_head_is_refused_before_training(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, measure="euclidean", pairs=40)
    base, _ = tiny_model("wav2vec2", seed=0)
    with pytest.raises(ValueError, match="needs a classifier with a head"):
        cb.check_model(base)
    model.config.id2label = {0: "quiet", 1: "loud"}  # a classifier of other classes than the probe's
    _refused_before_any_step(tmp_path, model, fe, cb, ValueError, "low")


def test_a_text_model_is_refused_before_training(tmp_path):
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    text = transformers.BertForSequenceClassification(config)
    cb = hf.ConvexityCallback(*PROBE, **SCORING)
    with pytest.raises(TypeError, match="BertForSequenceClassification takes 'input_ids', not audio"):
        cb.check_model(text)
    with pytest.raises(TypeError):
        cb.check_model(torch.nn.Linear(3, 2))  # not a transformers model: no hidden states to score


def test_every_eval_without_evaluation_is_refused_before_training(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, every="eval", **SCORING)
    _refused_before_any_step(tmp_path, model, fe, cb, ValueError, 'eval_strategy is "no"')


def _torchrun(tmp_path, *extra):
    """tests/ddp_convexity.py under torchrun --nproc_per_node 2 (gloo, CPU)."""
    import os
    import shutil
    import socket
    import subprocess
    from pathlib import Path

    torchrun = shutil.which("torchrun") or pytest.fail("torchrun is not on PATH (it comes with torch)")
    with socket.socket() as free:  # a port for the rendezvous (torchrun's port 0 is not passed on to the workers)
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = Path(__file__).with_name("ddp_convexity.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    argv = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    return subprocess.run(
        [*argv, str(script), str(tmp_path), *extra], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.slow
def test_two_processes_score_once_and_keep_the_same_history(tmp_path):
    """The first process scores, the other receives each point; both logs and histories agree."""
    proc = _torchrun(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert [r["scored"] for r in ranks] == [3, 0]  # before training and at 2 epoch ends, on rank 0 only
    assert ranks[0]["steps"] == ranks[1]["steps"] == ranks[0]["logged"] == ranks[1]["logged"]
    assert ranks[0]["scores"] == ranks[1]["scores"]
    lines = (tmp_path / "run" / "convexity.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == ranks[0]["steps"]


@pytest.mark.slow
def test_a_failure_on_the_first_process_stops_every_process_with_its_reason(tmp_path):
    """No process waits for a point that never comes: rank 1 raises rank 0's error."""
    proc = _torchrun(tmp_path, "fail")
    assert proc.returncode != 0
    assert "a probe clip could not be read" in (tmp_path / "rank0.error").read_text()
    other = (tmp_path / "rank1.error").read_text()
    assert other.startswith("RuntimeError: ConvexityCallback: scoring the probe failed on the first process: OSError")


def test_a_resumed_seed_none_run_adopts_its_drawn_seed(tmp_path):
    model, fe = classifier()
    first = hf.ConvexityCallback(*PROBE, feature_extractor=fe, k=3, pairs=40, seed=None)
    trainer_for(copy.deepcopy(model), fe, tmp_path, [first], epochs=2, save_strategy="epoch").train()
    again = hf.ConvexityCallback(*PROBE, feature_extractor=fe, k=3, pairs=40, seed=None)
    assert again.scoring["seed"] != first.scoring["seed"]
    trainer = trainer_for(copy.deepcopy(model), fe, tmp_path, [again], epochs=2, save_strategy="epoch")
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert again.scoring["seed"] == first.scoring["seed"]
    np.testing.assert_array_equal(again.history[-1].scores.scores, first.history[-1].scores.scores)
    steps = [e["step"] for e in trainer.state.log_history if "convexity/layer_0" in e]
    assert steps == [0, 2, 4]  # each point logged once, the resumed ones included


def test_another_probe_with_the_same_labels_is_refused_on_resume(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path, [cb], epochs=2, save_strategy="epoch").train()
    other_audio = tones(12, seed=6, noise=1.5)[0]  # other clips, the same labels in the same order
    other = hf.ConvexityCallback(other_audio, PROBE[1], feature_extractor=fe, **SCORING)
    trainer = trainer_for(copy.deepcopy(model), fe, tmp_path, [other], epochs=2, save_strategy="epoch")
    with pytest.raises(ValueError, match="another probe or other settings"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_a_history_of_another_run_in_the_output_dir_is_refused_on_resume(tmp_path):
    """Same probe and settings, but the file's points are not those the checkpoint logged."""
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path / "a", [cb], epochs=2, save_strategy="epoch").train()
    faster = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path / "b", [faster], epochs=2, learning_rate=3e-2).train()
    (tmp_path / "b" / "convexity.jsonl").replace(tmp_path / "a" / "convexity.jsonl")
    resumed = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer = trainer_for(copy.deepcopy(model), fe, tmp_path / "a", [resumed], epochs=2, save_strategy="epoch")
    with pytest.raises(ValueError, match="is not the one the checkpoint logged"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))


def test_a_new_run_keeps_an_earlier_history_beside_its_own(tmp_path):
    model, fe = classifier()
    first = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    trainer_for(copy.deepcopy(model), fe, tmp_path, [first], epochs=1).train()
    before = (tmp_path / "convexity.jsonl").read_text()
    second = hf.ConvexityCallback(*PROBE, feature_extractor=fe, **SCORING)
    with pytest.warns(UserWarning, match="held an earlier run's points: moved to"):
        trainer_for(copy.deepcopy(model), fe, tmp_path, [second], epochs=1).train()
    kept = list(tmp_path.glob("convexity.*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == before


def test_layers_out_of_range_and_a_text_model_fail_before_any_step(tmp_path):
    model, fe = classifier()
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, measure="euclidean", layers=[9], pairs=40)
    _refused_before_any_step(tmp_path / "a", model, fe, cb, ValueError, r"layers: 9 is out of range for 4 hidden")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    text = transformers.BertForSequenceClassification(config)
    _refused_before_any_step(tmp_path / "b", text, fe, hf.ConvexityCallback(*PROBE, **SCORING), TypeError, "not audio")


def test_finetune_refuses_a_callback_waiting_for_evaluations():
    base, fe = tiny_model("wav2vec2", seed=0)
    waves, labels = tones(16, seed=1)
    cb = hf.ConvexityCallback(*PROBE, feature_extractor=fe, every="eval", **SCORING)
    with pytest.raises(ValueError, match='every="eval"'):
        hf.finetune(base, waves, labels, epochs=1, progress=False, callbacks=[cb])


def test_a_tracked_whisper_finetune_leaves_later_runs_as_they_were():
    """hf.finetune of a Whisper classifier untracked, tracked, then untracked
    again in one process, at the one thread this module sets: all three end with
    the same weights (nothing the callback does outlives its run; scoring once
    switched torch to Numba's thread count, see kernels/numba/threads.py)."""
    rng = np.random.default_rng(0)
    labels = [f"w{i % 3}" for i in range(36)]
    audio = [
        np.sin(np.arange(16000) * (0.01 + 0.004 * (i % 3))).astype(np.float32)
        + 0.3 * rng.standard_normal(16000).astype(np.float32)
        for i in range(36)
    ]
    model, fe = tiny_model("whisper", head="sequence")

    def run(callbacks):
        res = hf.finetune(
            model, audio, labels, epochs=2, batch_size=8, seed=0, feature_extractor=fe,
            context_seconds=1, progress=False, callbacks=callbacks,
        )  # fmt: skip
        return {key: value.clone() for key, value in res.model.state_dict().items()}

    before = run(None)
    probe = list(range(0, 36, 2))
    tracker = hf.ConvexityCallback(
        [audio[i] for i in probe], [labels[i] for i in probe], feature_extractor=fe, k=3, pairs=200, seed=0
    )
    tracked = run([tracker])
    after = run(None)
    assert len(tracker.history) == 3  # before training and after each epoch
    differ = {
        name: [key for key in before if not torch.equal(before[key], other[key])]
        for name, other in (("tracked", tracked), ("after", after))
    }
    assert differ == {"tracked": [], "after": []}
