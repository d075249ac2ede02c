"""Saving a pruned model with its provenance, and loading it back."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fastconvex.core.atomic import check_output_dir, staged_directory
from fastconvex.core.inputs import check_bool
from fastconvex.hf.models.layout import (
    encoder_blocks,
    final_norm_module,
    resolve_model_class,
)
from fastconvex.hf.models.load import _FINAL_NORM_FLAG, restore_final_norm

__all__ = ["PROVENANCE_FILE", "jsonable", "load_pruned", "package_versions", "save_pruned"]

PROVENANCE_FILE = "fastconvex_pruning.json"


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that shape the scores and the model."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("fastconvex", "numpy", "scipy", "numba", "torch", "triton", "transformers", "soundfile"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays as Python ones and NaN/inf as None (strict JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    feature_extractor: Any = None,
    scores: Any = None,
    source: str | None = None,
    seed: int | None = None,
    original_layers: int | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a pruned model, its feature extractor and a provenance file.

    ``type(model).from_pretrained(path)`` (or ``AutoModel...``) then gives the
    pruned model back; with ``final_norm="identity"`` use :func:`load_pruned`.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Usually the output of :func:`prune`.
    path : path
        Output directory (created if needed).
    feature_extractor : optional
        Saved alongside (``save_pretrained``), so ``AutoFeatureExtractor`` works on ``path``.
    scores : LayerScores or array-like, optional
        The per-layer scores behind the cut (``to_dict()`` is stored when available).
    source : str, optional
        The original model (hub id or path).
    seed : int, optional
        Seed used for scoring.
    original_layers : int, optional
        Block count before pruning (default: from ``model.fastconvex_pruning``).
    extra : dict, optional
        More JSON-serialisable provenance.
    overwrite : bool
        Write into a non-empty ``path`` (its model files are replaced); without
        it such a directory is refused before anything is written.

    Returns
    -------
    pathlib.Path
        The provenance file, ``path / "fastconvex_pruning.json"``, holding the source,
        original and kept blocks, final-norm handling, scores, seed and package versions.
    """
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    out = check_output_dir(path, "path", check_bool("overwrite", overwrite), action="write into it", whole=False)
    info = getattr(model, "fastconvex_pruning", None) or {}
    kept = len(encoder_blocks(model)[2])
    if info.get("final_norm") == "identity":
        warnings.warn(
            "the model's final LayerNorm was replaced by nn.Identity; load it with fastconvex.hf.load_pruned "
            "(a plain from_pretrained re-creates a freshly initialised LayerNorm)",
            stacklevel=2,
        )
    if scores is None:
        score_record = None
    elif hasattr(scores, "to_dict"):
        score_record = scores.to_dict()
    else:
        score_record = {"scores": np.asarray(scores, dtype=np.float64).tolist()}
    record = {
        "format": "fastconvex-pruning/1",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "model_class": type(model).__name__,
        "original_layers": int(original_layers) if original_layers is not None else info.get("original_layers", kept),
        "kept_layers": kept,
        "final_norm": info.get("final_norm", "none"),
        "seed": seed,
        "scores": score_record,
        "versions": package_versions(),
    }
    if extra:
        record["extra"] = extra
    # staged inside ``out`` and moved in file by file, config.json last: no half-written weights
    with staged_directory(out, replace=False, last=("config.json", PROVENANCE_FILE)) as tmp:
        model.save_pretrained(tmp)
        if feature_extractor is not None:
            feature_extractor.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(
            json.dumps(jsonable(record), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
    return out / PROVENANCE_FILE


def load_pruned(path: str | os.PathLike[str], *, model_class: Any = None, **kwargs: Any) -> nn.Module:
    """Load a model written by :func:`save_pruned`, restoring ``final_norm="identity"``.

    Parameters
    ----------
    path : path
        Directory written by :func:`save_pruned` (any ``save_pretrained`` directory works).
    model_class : type, optional
        Class to load with; default: the class named in ``config.architectures``
        (``transformers.AutoModel`` if none).
    **kwargs
        Passed to ``from_pretrained``.

    Returns
    -------
    transformers.PreTrainedModel

    Raises
    ------
    ValueError
        The folder needs its own Python code (never run), or its weights do
        not match the model (missing, unexpected or reshaped tensors, named).
    """
    src = Path(path)
    if not src.is_dir():
        raise FileNotFoundError(f"path {str(src)!r} is not a directory")
    from fastconvex.hf.models.load import load_checked, load_config

    if model_class is None:
        model_class = resolve_model_class(load_config(src, "path"))
    # never the folder's own code, and its weights must match the model exactly
    model = restore_final_norm(load_checked(model_class, src, what="path", **kwargs))
    blocks = len(encoder_blocks(model)[2])
    prov = src / PROVENANCE_FILE
    original = blocks
    if prov.is_file():
        try:
            original = int(json.loads(prov.read_text(encoding="utf-8")).get("original_layers", blocks))
        except (ValueError, TypeError):
            original = blocks
    model.fastconvex_pruning = {
        "original_layers": original,
        "kept_layers": blocks,
        "final_norm": getattr(model.config, _FINAL_NORM_FLAG, "keep" if final_norm_module(model) else "none"),
    }
    return model
