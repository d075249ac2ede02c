"""Euclidean convexity in sweeps (``fastconvex.sweep(measure="euclidean")``).

A Euclidean task needs each utterance's whole sequence, so its store must be a
*frame store*: rows are frames in utterance order with ``labels/utterance.npy``
and nothing dropped (``fastconvex embed --frames``). The task reads its layer
as padded sequences (:meth:`LayerStore.sequences`) and scores it with the same
per-layer function as :func:`fastconvex.layer_euclidean_scores`, on the pairs
drawn once per store from the utterances' labels and the seed by the same
:func:`fastconvex.euclidean.api.plan_euclidean`: the numbers equal
``layer_euclidean_scores([s.sequences(i)[0] for i ...], s.utterance_labels(),
hf.predict_from_layer(model), lengths=...)`` bit for bit.

The classifier is a model directory (every worker loads it itself, once per
process; the driver never loads it) or, on the local engine, a
``predict_from_layer`` callable. Its fingerprint goes into every result's
settings, so one model's results are never reused for another:

- a directory: sha256 over the name and sha256 of ``config.json`` and of every
  weight file in it (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``) -- the
  content, so a copy of the model keeps its finished results and retrained
  weights never do;
- a :class:`fastconvex.hf.LayerPredictor`: sha256 over its model's class,
  configuration and every parameter and buffer;
- another callable: its ``fingerprint`` attribute (a string), required.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastconvex.core.pairs import PairPlan
from fastconvex.core.results import Convexity
from fastconvex.hf.models.load import ModelFolderError
from fastconvex.store import LayerStore
from fastconvex.store.format import _file_sha256

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

__all__ = [
    "EuclideanPlan",
    "ModelFolderError",
    "check_store",
    "load_classifier",
    "model_fingerprint",
    "plan_store",
    "preload_model",
    "score_euclidean_task",
]

_PREDICTORS: dict[tuple[str, str | None], tuple[str, Any]] = {}


@dataclass(frozen=True)
class EuclideanPlan:
    """What every Euclidean task of one store shares (sent to Ray workers:
    the pairs, never arrays or the model).

    Attributes
    ----------
    classes, pairs, n_sampled, batch_size, seed : from ``plan_euclidean``
    model : the model directory the worker loads, or None (``predictor``)
    fingerprint : the model's fingerprint (see the module docstring)
    hidden_states : the model's hidden-state index of each store layer
    predictor : a ``predict_from_layer`` callable (local engine only)
    label_map : {data label: class index} (checked), or None: labels matched by name
    """

    classes: list[Hashable]
    pairs: PairPlan
    n_sampled: int
    batch_size: int
    seed: int | None
    model: str | None
    fingerprint: str
    hidden_states: list[int]
    predictor: Any = None
    label_map: dict[Hashable, int] | None = None


def model_fingerprint(model: Any) -> str:
    """The fingerprint of a model directory or ``predict_from_layer`` callable."""
    if isinstance(model, (str, os.PathLike)):
        root = Path(model)
        if not root.is_dir():
            raise FileNotFoundError(f"model folder {str(model)!r} is not a directory")
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"model folder {str(model)!r} has no config.json: not a Hugging Face model folder")
        files = sorted(
            f for f in root.iterdir() if f.is_file() and (f.name == "config.json" or f.suffix in WEIGHT_SUFFIXES)
        )
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.name}\0{_file_sha256(f)}\n".encode())
        return "dir:" + digest.hexdigest()
    given = getattr(model, "fingerprint", None)
    if isinstance(given, str) and given:
        return "given:" + given
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "state_dict") and hasattr(inner, "config"):
        digest = hashlib.sha256(type(inner).__name__.encode())
        digest.update(inner.config.to_json_string(use_diff=False).encode())
        import torch

        for name, tensor in inner.state_dict().items():
            digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}".encode())
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # any dtype, bfloat16 too
            digest.update(raw.numpy().tobytes())
        return "weights:" + digest.hexdigest()
    raise ValueError(
        "model: a predict_from_layer callable without a model cannot be told apart from another, so its "
        "results could be reused for the wrong model; give the model directory, an hf.predict_from_layer(...) "
        "predictor, or set a string .fingerprint on the callable"
    )


def _model_shape(model: Any) -> tuple[int | None, int | None]:
    """(hidden size, hidden states) of the model, when known without loading it."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model) / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"model folder {str(model)!r}: {path.name} is not a readable config ({exc})") from None
        from fastconvex.hf.models.layout import (
            is_audio_classifier,  # here: torch only where a model is in play
        )

        arch = config.get("architectures") or []
        if arch and not any(is_audio_classifier(str(a)) for a in arch):
            raise ValueError(
                f"model folder {str(model)!r}: {path.name} names a {arch[0]}, not an audio classifier "
                "(*ForSequenceClassification or WhisperForAudioClassification)"
            )
        blocks = config.get("encoder_layers", config.get("num_hidden_layers"))  # Whisper: its encoder's
        return config.get("hidden_size", config.get("d_model")), None if blocks is None else int(blocks) + 1
    inner = getattr(model, "model", None)
    config = getattr(inner, "config", None)
    size = getattr(config, "hidden_size", None) if config is not None else None
    return size, getattr(model, "num_layers", None)


def check_store(store: LayerStore, layers: list[int] | None, model: Any) -> tuple[Any, list[int]]:
    """(utterance labels, model hidden-state index of each store layer) of a
    frame store that ``model`` can score; ValueError naming what does not fit."""
    if layers is None:
        layers = list(range(store.n_layers))
    labels = store.utterance_labels()  # refuses a pooled store or mixed labels, naming the file
    dim = int(store.manifest["layers"][0]["shape"][1])
    hidden = store.meta.get("hidden_states")
    hidden = (
        [int(h) for h in hidden]
        if isinstance(hidden, list) and len(hidden) == store.n_layers
        else list(range(store.n_layers))
    )
    size, n_states = _model_shape(model)
    if size is not None and int(size) != dim:
        raise ValueError(
            f"model: hidden size {size} differs from store {store.name!r}'s dimension D={dim} "
            "(the store must hold this classifier's own hidden states)"
        )
    if n_states is not None:
        bad = [hidden[i] for i in layers if not -n_states <= hidden[i] < n_states]
        if bad:
            raise ValueError(
                f"store {store.name!r} holds hidden state {bad[0]}, but the model has {n_states} (0..{n_states - 1})"
            )
    return labels, hidden


def model_classes(model: Any) -> Any:
    """What the classifier predicts, as its ``predict_from_layer`` will (an
    object whose ``labels`` are its classes in index order): a directory's
    ``config.id2label`` (its config only: the driver never loads the weights,
    and never the folder's code), or the callable itself."""
    if isinstance(model, (str, os.PathLike)):
        from types import SimpleNamespace

        from fastconvex.hf.models.layout import class_labels
        from fastconvex.hf.models.load import load_config

        return SimpleNamespace(labels=class_labels(load_config(model, "model folder")))
    return model


def check_labels(
    store: LayerStore, model: Any, *, label_map: Any = None, min_class_size: Any = 2, labels: Any = None
) -> dict[Hashable, int] | None:
    """The store's utterance labels (``labels``, else read) must map onto the
    classifier's classes (by name, or through ``label_map``): a ValueError
    naming the store before any task runs. Returns ``label_map`` checked, as
    a plain dict (None without one)."""
    from fastconvex.euclidean.api import check_label_classes
    from fastconvex.euclidean.segments import check_label_map

    try:
        check_label_classes(
            store.utterance_labels() if labels is None else labels,
            model_classes(model),
            min_class_size=min_class_size,
            label_map=label_map,
        )
    except ValueError as exc:
        raise ValueError(f"store {store.name!r}: {exc}") from None
    return None if label_map is None else check_label_map(label_map, None)


def plan_store(
    store: LayerStore,
    layers: list[int],
    *,
    model: Any,
    fingerprint: str,
    n_sampled: Any,
    pairs: Any,
    exact: Any,
    batch_size: Any,
    seed: Any,
    min_class_size: Any,
    label_map: Any = None,
) -> EuclideanPlan:
    """Check ``store`` against the model and draw its pairs (once per store)."""
    from fastconvex.euclidean.api import plan_euclidean

    labels, hidden = check_store(store, layers, model)
    classes, plan, n_sampled, batch_size, seed = plan_euclidean(
        labels,
        int(labels.shape[0]),
        n_sampled=n_sampled,
        pairs=pairs,
        exact=exact,
        batch_size=batch_size,
        seed=seed,
        min_class_size=min_class_size,
    )
    label_map = check_labels(store, model, label_map=label_map, min_class_size=min_class_size, labels=labels)
    directory = str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) else None
    return EuclideanPlan(
        classes,
        plan,
        n_sampled,
        batch_size,
        seed,
        directory,
        fingerprint,
        hidden,
        None if directory is not None else model,
        label_map,
    )


def label_map_setting(label_map: dict[Hashable, int] | None) -> list[list[Any]]:
    """``label_map`` as it enters a result's settings (JSON: [label, index]
    pairs, so integer and string labels stay apart)."""
    return sorted(([k, int(v)] for k, v in (label_map or {}).items()), key=repr)


def load_classifier(directory: str | os.PathLike[str], device: Any = None) -> Any:
    """The audio classifier of a model folder, in eval mode on ``device``:
    loaded only as it claims to be (:mod:`fastconvex.hf.models.load`: never its own
    code, weights matching its config exactly); errors name it as "model
    folder", which is ``--model`` on the command line and ``model=`` in the API."""
    from fastconvex.core.devices import check_device_here
    from fastconvex.hf.models.layout import resolve_model_class
    from fastconvex.hf.models.load import load_checked, load_config, restore_final_norm

    check_device_here(device, "device")
    config = load_config(directory, "model folder")
    model = restore_final_norm(load_checked(resolve_model_class(config), directory, what="model folder"))
    if device is not None:
        model = model.to(device)
    return model.eval()


def _predictor(plan: EuclideanPlan, device: Any) -> Callable[..., Any]:
    """The plan's ``predict_from_layer``: its callable, or its model directory
    loaded once per process (checked against the fingerprint when loaded).
    A model that fails to load fails once per process: the error is kept, so
    the process's further tasks say it again without loading the model again."""
    if plan.model is None:
        return plan.predictor
    key = (plan.model, None if device is None else str(device))
    cached = _PREDICTORS.get(key)
    if cached is None or cached[0] != plan.fingerprint:
        from fastconvex.hf.models.predict import predict_from_layer

        _PREDICTORS.clear()  # one model per worker process
        if model_fingerprint(plan.model) != plan.fingerprint:
            raise ValueError(
                f"model folder {plan.model!r} changed while the sweep ran (its fingerprint differs); rerun the sweep"
            )
        try:
            model = load_classifier(plan.model, None if device is None else str(device))
        except (ValueError, OSError) as exc:
            _PREDICTORS[key] = (plan.fingerprint, exc)
            raise
        _PREDICTORS[key] = cached = (plan.fingerprint, predict_from_layer(model))
    if isinstance(cached[1], BaseException):
        failed = cached[1]
        raise type(failed)(*failed.args)
    return cached[1]


def preload_model(plan: EuclideanPlan, device: Any) -> None:
    """Load the plan's model folder into this process's cache (the one its
    tasks use, so it is loaded once): on the local engine, before the sweep
    touches its output directory, so that a folder that cannot be used is one
    error up front (a :class:`ModelFolderError`), not one per task. A failure
    is not kept."""
    try:
        _predictor(plan, device)
    except ValueError as exc:
        release_predictors()
        raise ModelFolderError(str(exc)) from exc
    except BaseException:
        release_predictors()
        raise


def release_predictors() -> None:
    """Drop the models loaded in this process (the local engine, after a sweep)."""
    _PREDICTORS.clear()


def score_euclidean_task(store: LayerStore, layer: int, plan: EuclideanPlan, device: Any = None) -> Convexity:
    """Euclidean convexity of one store layer (the body of a Euclidean task)."""
    from fastconvex.euclidean.api import _AtLayer, euclidean_layer
    from fastconvex.euclidean.segments import check_frame_mask, check_items

    name = f"store {store.name!r} layer {layer} ({store.layer_file(layer)})"
    x, lengths = store.sequences(layer)
    x = check_items(x, name=name)
    mask = check_frame_mask(x, None, lengths, name=name)
    del lengths
    predict = _AtLayer(_predictor(plan, device), plan.hidden_states[layer])
    return euclidean_layer(
        x,
        mask,
        plan.pairs,
        plan.classes,
        predict,
        n_sampled=plan.n_sampled,
        batch_size=plan.batch_size,
        seed=plan.seed,
        label_map=plan.label_map,
    )


def check_euclidean_options(*, k: int, sources: Any, backend: str, shards: Any, model: Any, engine: str) -> None:
    """Graph-only options are errors with ``measure="euclidean"``; so is a
    callable model on Ray (workers load the model from its directory)."""
    if model is None:
        raise ValueError(
            'measure="euclidean" needs model=, the classifier directory (or a predict_from_layer '
            "callable) that labels the sampled points"
        )
    for what, given in (
        ("k", k != 10),
        ("sources", sources is not None),
        ("backend", backend != "auto"),
        ("shards", shards is not None),
    ):
        if given:
            raise ValueError(f'{what} applies to graph convexity; measure="euclidean" builds no graph')
    if engine == "ray" and not isinstance(model, (str, os.PathLike)):
        raise ValueError(
            'engine="ray" needs model= as a model directory that every worker can read '
            "(the driver never ships the model)"
        )
