"""Convexity while a model is fine-tuned: a ``transformers.TrainerCallback``
that scores a fixed probe set before training and at every epoch end (or every
N steps, or each evaluation), on the same pairs at every point.

A point is exactly ``layer_scores(pooled_hidden_states(model, audio), labels,
...)`` of the model as it is at that step -- the same functions, the same
settings -- so the model saved at that step gives the same numbers again.
The points reach the Trainer's own log (``state.log_history``, so every
checkpoint's ``trainer_state.json``, and the ``report_to`` integrations, as
``convexity/layer_<h>``) and ``convexity.jsonl`` in the Trainer's
``output_dir``; resuming from a checkpoint keeps the earlier points.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import secrets
import time
import warnings
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconvex.core.atomic import write_text_atomic
from fastconvex.core.inputs import check_bool, check_int, check_seed, encode_labels, labels_to_array
from fastconvex.core.pairs import DEFAULT_PAIRS
from fastconvex.core.results import LayerScores, convexity_fields, convexity_from_fields, label_keys, stack_layers
from fastconvex.euclidean.api import plan_euclidean
from fastconvex.graph.plan import plan_scoring
from fastconvex.store.format import plan_sha256

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["HISTORY_FILE", "MEASURES", "ConvexityCallback", "ConvexityPoint"]

HISTORY_FILE = "convexity.jsonl"
MEASURES = ("graph", "euclidean", "both")
_FORMAT = "fastconvex-convexity-history"


@dataclass(frozen=True)
class ConvexityPoint:
    """The probe's convexity at one point of training.

    Attributes
    ----------
    step : int
        Optimizer steps done (0: before training).
    epoch : float
        Epochs done (``state.epoch``; 0.0 before training).
    scores : LayerScores
        Per layer, of the measure asked for (``measure="both"``: graph).
    layers : list of int
        The hidden-state index of each score (0: the transformer's input).
    euclidean : LayerScores or None
        ``measure="both"``: the Euclidean scores (``scores`` holds the graph ones).
    """

    step: int
    epoch: float
    scores: LayerScores
    layers: list[int]
    euclidean: LayerScores | None = None

    def metrics(self, prefix: str = "convexity") -> dict[str, float]:
        """The flat numbers a Trainer logs: ``convexity/layer_<h>`` per hidden
        state ``h`` (a fraction in [0, 1]) and ``convexity/best_layer``;
        Euclidean ones under ``euclidean_convexity/`` when both are scored."""
        out: dict[str, float] = {}
        parts = [(prefix, self.scores)]
        if self.euclidean is not None:
            parts.append((f"euclidean_{prefix}", self.euclidean))
        for name, scores in parts:
            for h, value in zip(self.layers, scores.scores):
                out[f"{name}/layer_{h}"] = float(value)
            out[f"{name}/best_layer"] = float(self.layers[scores.best_layer])
        return out


def _check_every(every: Any) -> str | int:
    if isinstance(every, str):
        if every in ("epoch", "eval"):
            return every
    elif not isinstance(every, bool) and isinstance(every, (int, np.integer)):
        if int(every) >= 1:
            return int(every)
        raise ValueError(f'every must be "epoch", "eval" or a number of optimizer steps >= 1, got {every!r}')
    raise ValueError(f'every must be "epoch", "eval" or a number of optimizer steps >= 1, got {every!r}')


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _audio_digest(audio: Sequence[Any]) -> str:
    """A sha256 of the probe's samples (each clip as float32, with its length):
    the history file records which probe its points are of."""
    h = hashlib.sha256()
    for i in range(len(audio)):
        clip = np.ascontiguousarray(np.asarray(audio[i], dtype=np.float32).reshape(-1))
        h.update(str(clip.shape[0]).encode())
        h.update(clip.tobytes())
    return h.hexdigest()[:16]


def _config_of(feature_extractor: Any) -> Any:
    to_dict = getattr(feature_extractor, "to_dict", None)
    return None if to_dict is None else {k: v for k, v in to_dict().items() if not k.startswith("_")}


@contextlib.contextmanager
def _training_state_kept(model: Any) -> Iterator[None]:
    """Leave the training run as it was: the model's train/eval mode and every
    random generator the run draws from (Python's, NumPy's global, torch's CPU
    and CUDA ones), so training with and without the callback is the same."""
    from fastconvex.hf.train.trainer import keep_global_rngs

    mode = model.training
    try:
        with keep_global_rngs(cuda=True):
            yield
    finally:
        model.train(mode)


def _trainer_calling() -> Any:
    """The ``transformers.Trainer`` whose event is being handled (the nearest
    caller frame whose ``self`` is one), or None: a callback is given the
    state and the model, not the Trainer, and ``Trainer.log`` is the one
    path into ``log_history`` and every ``report_to`` integration."""
    try:
        from transformers import Trainer
    except ImportError:  # pragma: no cover - a TrainerCallback needs transformers
        return None
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


def _distributed() -> Any:
    """``torch.distributed`` when a process group of more than one process is
    running (DDP under torchrun), else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("ConvexityCallback needs transformers: pip install 'fastconvex[hf]'") from exc
    return TrainerCallback


class ConvexityCallback(_callback_base()):  # type: ignore[misc]
    """Convexity of a fixed probe set while a model is trained (a ``transformers.TrainerCallback``).

    Parameters
    ----------
    audio : sequence of array-like, shape (T_i,) each
        The probe's mono waveforms at ``sampling_rate`` (an :class:`~fastconvex.hf.AudioFiles` works).
    labels : sequence, shape (N,)
        One class per clip; every class at least two clips.
    feature_extractor, sampling_rate, layers
        As in :func:`fastconvex.hf.pooled_hidden_states` (``layers``: hidden-state indices; default all).
    every : "epoch" | "eval" | int
        When to score besides before training: at every epoch end, at each
        evaluation, or every ``every`` optimizer steps.
    k, pairs, sources, exact, seed
        As in :func:`fastconvex.layer_scores`; the pairs are drawn once from
        ``labels`` and ``seed`` and are the same at every point (``seed=None``:
        a seed drawn once, when the callback is made, and kept).
    measure : "graph" | "euclidean" | "both"
        "euclidean": Euclidean convexity through the model's own remaining
        blocks and head (:func:`fastconvex.hf.predict_from_layer`; classifiers
        whose ``id2label`` names the probe's classes).

    Attributes
    ----------
    history : list of ConvexityPoint
        In step order; the same in every process of a multi-process run.

    Notes
    -----
    Under a multi-process Trainer (DDP) the probe is scored once, by the first
    process, and the point is sent to the others. Scoring runs under
    ``torch.inference_mode()`` with the model in ``eval()`` mode, and leaves
    its mode, device, gradients and the run's random generators as they were.
    """

    def __init__(
        self,
        audio: Sequence[Any],
        labels: Sequence[Hashable] | np.ndarray,
        *,
        feature_extractor: Any = None,
        sampling_rate: int = 16000,
        layers: Sequence[int] | None = None,
        every: str | int = "epoch",
        k: int = 10,
        pairs: int | None = DEFAULT_PAIRS,
        sources: int | None = None,
        exact: bool = False,
        seed: int | None = 0,
        measure: str = "graph",
    ) -> None:
        if isinstance(audio, (str, bytes)) or not hasattr(audio, "__len__"):
            raise TypeError(f"audio must be a sequence of 1-D waveforms, got {type(audio).__name__}")
        label_array = labels_to_array(labels)
        if label_array.ndim != 1:
            raise ValueError(f"labels must be 1-D (one class per clip), got shape {label_array.shape}")
        if label_array.shape[0] != len(audio):
            raise ValueError(f"labels has {label_array.shape[0]} entries but audio has {len(audio)} clips")
        codes, classes = encode_labels(label_array)
        sizes = np.bincount(codes, minlength=len(classes))
        lonely = [classes[c] for c in np.flatnonzero(sizes < 2)]
        if lonely:
            shown = ", ".join(repr(c) for c in lonely[:5]) + (" ..." if len(lonely) > 5 else "")
            raise ValueError(
                f"the probe has {len(lonely)} class(es) with one clip ({shown}): convexity needs at least two "
                "clips of a class (pairs of the same class); add clips or leave the class out of the probe"
            )
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        if measure != "graph" and sources is not None:
            raise ValueError(f'sources=S is a graph estimator; the Euclidean measure (measure="{measure}") draws pairs')
        if measure == "euclidean" and k != 10:
            raise ValueError('k is the graph measure\'s neighbour count; measure="euclidean" has no graph')
        # (the Euclidean measure's own settings, n_sampled and batch_size, stay at their defaults)
        if layers is not None:
            layers = [check_int("layers", h, minimum=0) for h in layers]
            if not layers:
                raise ValueError("layers is empty: give hidden-state indices, or None for all")
        self.every = _check_every(every)
        self.sampling_rate = check_int("sampling_rate", sampling_rate, minimum=1)
        exact = check_bool("exact", exact)
        self._seed_drawn = check_seed(seed) is None
        if self._seed_drawn:  # drawn once: every point must score the same pairs
            seed = secrets.randbits(63)
        self._plan_args: dict[str, Any] = {
            "label_array": label_array,
            "k": k,
            "pairs": pairs,
            "sources": sources,
            "exact": exact,
        }
        rate = getattr(audio, "sampling_rate", None)
        if rate is not None and int(rate) != self.sampling_rate:
            raise ValueError(f"audio is loaded at {rate} Hz but sampling_rate={self.sampling_rate}")
        self._audio_digest = _audio_digest(audio)
        self.audio = audio
        self.labels = label_array
        self.classes = classes
        self._codes = codes
        self.feature_extractor = feature_extractor
        self.layers = None if layers is None else list(layers)
        self.measure = measure
        self.scoring: dict[str, Any] = {"k": k, "pairs": pairs, "sources": sources, "exact": exact, "seed": seed}
        # the pairs drawn here as layer_scores (layer_euclidean_scores) will draw them at every
        # point: bad settings fail now, and the draw's digest identifies the history file
        assert seed is not None  # drawn above when None
        self._draw_pairs(int(seed))
        self.history: list[ConvexityPoint] = []

    # ---- what the probe is, for the history file ------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "layers": self.layers,
            "sampling_rate": self.sampling_rate,
            "n_clips": len(self.audio),
            "classes": label_keys(self.classes),
            "labels": _digest(self._codes.tolist()),
            "pairs_drawn": self._pairs_drawn,
            "audio": self._audio_digest,
            "feature_extractor": _digest(_config_of(self.feature_extractor)),
            **{
                key: (value if not isinstance(value, np.integer) else int(value)) for key, value in self.scoring.items()
            },
        }

    # ---- checks before any training step ----------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Everything that could fail at the first point, checked before training:
        a speech model with hidden states; for the Euclidean measure, a
        classifier whose classes are the probe's."""
        from fastconvex.hf.models.layout import is_audio_classifier, speech_encoder

        if model is None:
            raise ValueError("ConvexityCallback needs the model being trained (the Trainer passes it)")
        speech_encoder(model)  # a transformers model, or a TypeError naming what it is
        from fastconvex.hf.models.layout import num_blocks

        n_states = num_blocks(model) + 1
        if self.layers is not None and max(self.layers) >= n_states:
            raise ValueError(
                f"layers: {max(self.layers)} is out of range for {n_states} hidden states (0..{n_states - 1})"
            )
        main_input = getattr(model, "main_input_name", None)
        if main_input not in ("input_values", "input_features"):
            raise TypeError(
                f"{type(model).__name__} takes {main_input!r}, not audio: ConvexityCallback scores speech models "
                "(wav2vec2, HuBERT, WavLM, Data2VecAudio, Whisper) on an audio probe"
            )
        if self.measure in ("euclidean", "both"):
            name = type(model).__name__
            if not is_audio_classifier(name):
                raise ValueError(
                    f'measure="{self.measure}" needs a classifier with a head (a *ForSequenceClassification or '
                    f"WhisperForAudioClassification); {name} has none: use measure='graph'"
                )
            from fastconvex.euclidean.api import check_label_classes
            from fastconvex.hf.models.predict import predict_from_layer

            with _training_state_kept(model):  # the predictor runs the model in eval mode
                model.eval()
                check_label_classes(self.labels, predict_from_layer(model))

    # ---- the history file ---------------------------------------------------------------------
    def _history_file(self, args: Any) -> Path | None:
        out = getattr(args, "output_dir", None)
        return None if not out else Path(out) / HISTORY_FILE

    def _line(self, point: ConvexityPoint) -> dict[str, Any]:
        line: dict[str, Any] = {
            "format": _FORMAT,
            "step": point.step,
            "epoch": point.epoch,
            "layers": point.layers,
            "settings": self._settings(),
            "scores": [float(s) for s in point.scores.scores],
            "fields": [convexity_fields(c) for c in point.scores.layers],
        }
        if point.euclidean is not None:
            line["euclidean_fields"] = [convexity_fields(c) for c in point.euclidean.layers]
        return line

    def _point(self, line: dict[str, Any]) -> ConvexityPoint:
        def scores(fields: list[dict[str, Any]]) -> LayerScores:
            return stack_layers([convexity_from_fields(f, self.classes) for f in fields], self.classes)

        euclidean = line.get("euclidean_fields")
        return ConvexityPoint(
            step=int(line["step"]),
            epoch=float(line["epoch"]),
            scores=scores(line["fields"]),
            layers=[int(h) for h in line["layers"]],
            euclidean=None if euclidean is None else scores(euclidean),
        )

    def _read_history(self, file: Path, up_to_step: int) -> list[ConvexityPoint]:
        """The points of a resumed run: those at or before the checkpoint's step
        (later ones are scored again, never twice); a history made with other
        settings or another probe is refused before training."""
        points = []
        settings = self._settings()
        lines = file.read_text(encoding="utf-8").splitlines()
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
                ok = line.get("format") == _FORMAT
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{file} line {number} is not a fastconvex convexity history line")
            if self._seed_drawn and line["settings"].get("seed") != self.scoring["seed"]:
                # seed=None: the run being resumed drew its seed; its points are scored on that draw
                self._draw_pairs(int(line["settings"]["seed"]))
                settings = self._settings()
            if line["settings"] != settings:
                raise ValueError(
                    f"{file} holds points of another probe or other settings ({line['settings']}, now {settings}): "
                    "resuming would mix them; give the callback the same probe and settings, or another output_dir"
                )
            if int(line["step"]) <= up_to_step:
                points.append(self._point(line))
        points.sort(key=lambda p: p.step)
        return points

    def _draw_pairs(self, seed: int) -> None:
        """Draw the pairs of ``seed`` and keep the draw's digest: when the callback is
        made, and again with a resumed ``seed=None`` run's drawn seed."""
        a = self._plan_args
        drawn = []
        if self.measure in ("graph", "both"):
            plan = plan_scoring(
                a["label_array"], k=a["k"], pairs=a["pairs"], sources=a["sources"], exact=a["exact"], seed=seed
            )
            drawn.append(plan_sha256(plan.pairs))
        if self.measure in ("euclidean", "both"):
            _, eplan, _, _, _ = plan_euclidean(
                a["label_array"],
                len(self.audio),
                n_sampled=10,
                pairs=a["pairs"],
                exact=a["exact"],
                batch_size=1024,
                seed=seed,
                min_class_size=2,
            )
            drawn.append(plan_sha256(eplan))
        self._pairs_drawn = _digest(drawn)
        self.scoring["seed"] = seed

    def _check_against_log(self, file: Path, state: Any) -> None:
        """The kept points must be those the checkpoint logged (its ``log_history``,
        restored by the Trainer): a file another run wrote into this ``output_dir``
        is refused, not mixed in."""
        logged = {}
        for entry in state.log_history:
            if "step" in entry and self.history:
                keys = [f"convexity/layer_{h}" for h in self.history[0].layers]
                if all(key in entry for key in keys):
                    logged[int(entry["step"])] = [entry[key] for key in keys]
        for point in self.history:
            if point.step not in logged or not np.array_equal(
                np.asarray(logged[point.step], dtype=np.float64), np.asarray(point.scores.scores, dtype=np.float64)
            ):
                raise ValueError(
                    f"{file}: the point at step {point.step} is not the one the checkpoint logged (its "
                    "trainer_state.json): the file is of another run in this output_dir; move it away to resume"
                )

    def save_history(self, path: str | Path) -> Path:
        """Write ``history`` to ``path`` as JSON lines, one point a line (the
        ``convexity.jsonl`` format), replacing the file atomically: a run
        killed while writing leaves the old file whole."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, "".join(json.dumps(self._line(p)) + "\n" for p in self.history))

    def _write_history(self, args: Any) -> None:
        file = self._history_file(args)
        if file is not None:
            self.save_history(file)

    # ---- scoring ------------------------------------------------------------------------------
    def score(self, model: Any) -> tuple[LayerScores, list[int], LayerScores | None]:
        """The probe's convexity of ``model`` as it is now (``scores``, hidden-state
        indices, Euclidean scores when ``measure="both"``)."""
        from fastconvex.euclidean.api import layer_euclidean_scores
        from fastconvex.graph.api import layer_scores
        from fastconvex.hf.embed.pooling import pooled_hidden_states

        graph = euclidean = None
        with _training_state_kept(model):
            if self.measure in ("graph", "both"):
                pooled = pooled_hidden_states(
                    model,
                    self.audio,
                    sampling_rate=self.sampling_rate,
                    feature_extractor=self.feature_extractor,
                    layers=self.layers,
                    progress=False,
                )
                layers = list(pooled.layers)
                graph = layer_scores(list(pooled), self.labels, progress=False, **self.scoring)
            if self.measure in ("euclidean", "both"):
                from fastconvex.hf.embed.sequences import hidden_state_sequences
                from fastconvex.hf.models.predict import predict_from_layer

                states, n_frames = hidden_state_sequences(
                    model,
                    self.audio,
                    sampling_rate=self.sampling_rate,
                    feature_extractor=self.feature_extractor,
                    progress=False,
                )
                scoring = {key: value for key, value in self.scoring.items() if key not in ("k", "sources")}
                model.eval()  # dropout and layer drop off, as pooled_hidden_states runs it (mode restored after)
                # every hidden state goes through the model's own remaining blocks (the predictor's
                # layer index is the position in its input); the layers asked for are kept after
                every_layer = layer_euclidean_scores(
                    states, self.labels, predict_from_layer(model), lengths=n_frames, progress=False, **scoring
                )
                layers_e = list(range(len(states))) if self.layers is None else self.layers
                euclidean = stack_layers([every_layer.layers[h] for h in layers_e], every_layer.classes)
                if graph is None:
                    layers = layers_e
        if graph is None:
            assert euclidean is not None
            return euclidean, layers, None
        return graph, layers, euclidean

    def _score_point(self, args: Any, state: Any, model: Any) -> None:
        step = int(state.global_step)
        if any(p.step == step for p in self.history):
            return  # already scored at this step (an evaluation right after an epoch end)
        point, error = None, None
        dist = _distributed()
        if state.is_world_process_zero:
            try:
                scores, layers, euclidean = self.score(model)
                point = ConvexityPoint(step, float(state.epoch or 0.0), scores, layers, euclidean)
            except Exception as exc:
                if dist is None:
                    raise
                error = f"{type(exc).__name__}: {exc}"  # sent on: no process waits for a point that never comes
        if dist is not None:  # one process scored; every process keeps the same point
            box = [(point, error)]
            dist.broadcast_object_list(box, src=0)
            point, error = box[0]
            if error is not None:
                raise RuntimeError(f"ConvexityCallback: scoring the probe failed on the first process: {error}")
        assert point is not None
        self.history.append(point)
        if state.is_world_process_zero:
            self._write_history(args)
        trainer = _trainer_calling()
        if trainer is not None:
            trainer.log(point.metrics())  # log_history and every report_to integration
        else:
            state.log_history.append({**point.metrics(), "epoch": point.epoch, "step": step})

    # ---- the Trainer's events ----------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.check_model(model)
        if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            raise ValueError(
                "ConvexityCallback scores the probe in the first process alone, which a model sharded over "
                "processes (FSDP, DeepSpeed) cannot do; train with DDP, or score saved checkpoints instead"
            )
        dist = _distributed()
        if dist is not None and self._seed_drawn:  # seed=None: every process scores with the first one's draw
            box = [self.scoring["seed"]]
            dist.broadcast_object_list(box, src=0)
            if box[0] != self.scoring["seed"]:
                self._draw_pairs(int(box[0]))
        if self.every == "eval" and getattr(args, "eval_strategy", getattr(args, "evaluation_strategy", "no")) in (
            "no",
            None,
        ):
            raise ValueError('every="eval" scores at each evaluation, but the Trainer\'s eval_strategy is "no"')
        step = int(state.global_step)
        file = self._history_file(args)
        self.history = []
        if step > 0 and file is not None and file.is_file():  # resumed from a checkpoint
            self.history = self._read_history(file, step)
            self._check_against_log(file, state)
        if not any(p.step == 0 for p in self.history):
            if step > 0:
                raise ValueError(
                    f"the run resumes at step {step} but {file or 'the output_dir'} holds no point before training "
                    "(another output_dir, or a first run without the callback): the trajectory would have no start"
                )
            if file is not None and file.is_file() and state.is_world_process_zero:
                # a new run in an output_dir that holds an earlier run's history: kept beside it
                kept = file.with_name(f"{file.stem}.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
                os.replace(file, kept)
                warnings.warn(f"{file} held an earlier run's points: moved to {kept}", UserWarning, stacklevel=2)
            self._score_point(args, state, model)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every == "epoch":
            self._score_point(args, state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if isinstance(self.every, int) and state.global_step % self.every == 0:
            self._score_point(args, state, model)

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every == "eval":
            self._score_point(args, state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # the trained model always has a point (every=N or "eval" need not end on one)
        self._score_point(args, state, model)

    # ---- looking at it ------------------------------------------------------------------------
    def plot(self) -> Figure:
        """A figure: the convexity of each layer against the optimizer step (with
        ``measure="both"``, the graph scores; the Euclidean ones are in ``history``)."""
        from fastconvex.plot import plot_convexity_history

        return plot_convexity_history(self.history)
