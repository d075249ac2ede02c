"""The cut (how many blocks to keep) and pruning; saving and loading are in ``_prune_io``."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
from torch import nn

from fastconvex.hf.models.layout import (
    distinct_configs,
    encoder_blocks,
    final_norm_module,
    is_whisper,
    layer_count_key,
    speech_encoder,
    ties_last_hidden_state,
)
from fastconvex.hf.models.load import _FINAL_NORM_FLAG

__all__ = ["choose_cut", "prune"]


def _scores_and_stderr(scores: Any, stderr: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(scores, "scores") and hasattr(scores, "best_layer"):  # a LayerScores
        values = np.asarray(scores.scores, dtype=np.float64)
        se = np.asarray(scores.stderr, dtype=np.float64) if stderr is None else np.asarray(stderr, dtype=np.float64)
    else:
        try:
            values = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"scores must be a LayerScores or a 1-D array of per-layer scores, got {type(scores).__name__}"
            ) from exc
        se = None if stderr is None else np.asarray(stderr, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(
            f"scores must be 1-D with one score per hidden state (at least 2: the input and one block), got shape {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"scores has a non-finite value at layer {bad}")
    if se is not None and se.shape != values.shape:
        raise ValueError(f"stderr has shape {se.shape} but scores has shape {values.shape}")
    return values, se


def choose_cut(scores: Any, rule: Literal["argmax", "1se"] = "argmax", *, stderr: Any = None) -> int:
    """Number of transformer blocks to keep, from per-layer convexity scores.

    Scores are indexed by hidden state: 0 is the transformer's input, h the output
    of block h.  Keeping blocks 0..h-1 reproduces hidden state h, so the cut at
    hidden state h keeps ``h`` blocks.

    Parameters
    ----------
    scores : LayerScores or array-like, shape (L + 1,)
        Convexity of every hidden state, in order (``LayerScores`` from
        ``fastconvex.layer_scores`` over all hidden states).
    rule : {"argmax", "1se"}
        ``"argmax"`` (the paper's rule): the layer of maximal convexity (the first
        one on ties; a block that ties with the input, layer 0, wins).  ``"1se"``: the shallowest layer h >= 1 whose score is within
        one standard error of the maximum (a shorter model that is not
        distinguishably worse); needs standard errors.
    stderr : array-like, shape (L + 1,), optional
        Standard errors when ``scores`` is an array (a LayerScores brings its own).

    Returns
    -------
    int
        ``keep``, the number of blocks to keep, in 1..L.

    Raises
    ------
    ValueError
        If the chosen layer is 0 (the transformer's input is the most convex: there
        is no block to keep), a score is NaN/inf, the shape is wrong, the rule is
        unknown, or ``"1se"`` has no standard errors.
    """
    values, se = _scores_and_stderr(scores, stderr)
    if rule == "argmax":
        best = int(np.argmax(values))
        if best == 0 and values[1:].max() == values[0]:  # a block ties with the input: keep the block
            best = 1 + int(np.argmax(values[1:]))
    elif rule == "1se":
        if se is None:
            raise ValueError('rule="1se" needs standard errors: pass a LayerScores or stderr=')
        top = int(np.argmax(values))
        threshold = values[top] - se[top]
        candidates = [h for h in range(1, values.shape[0]) if values[h] >= threshold]
        best = candidates[0] if candidates else top
    else:
        raise ValueError(f'rule must be "argmax" or "1se", got {rule!r}')
    if best == 0:
        raise ValueError(
            "choose_cut: the most convex layer is 0, the transformer's input (before any block): "
            f"score {values[0]:.4f} vs at most {values[1:].max():.4f} after a block; there is no block to keep. "
            "Check the labels and audio, or choose keep yourself"
        )
    return best


def _check_keep(keep: Any, n_blocks: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)):
        raise TypeError(f"keep must be an integer number of blocks, got {type(keep).__name__} {keep!r}")
    keep = int(keep)
    if keep < 1:
        raise ValueError(
            f"keep must be at least 1, got {keep}: keep=0 would remove every transformer block "
            "(hidden state 0 is the transformer's input)"
        )
    if keep > n_blocks:
        raise ValueError(f"keep={keep} exceeds the model's {n_blocks} transformer blocks")
    return keep


def prune(model: nn.Module, keep: int, *, final_norm: Literal["keep", "identity"] = "keep") -> nn.Module:
    """Keep only the first ``keep`` transformer blocks of a speech model, in place.

    After pruning, the model's ``last_hidden_state`` for a post-LN ("base") model
    equals the original model's ``hidden_states[keep]`` exactly (eval mode).

    What changes:

    * the block list is cut to ``keep`` blocks; the config's layer count
      (``num_hidden_layers``, or ``encoder_layers`` for Whisper) is set to ``keep``;
    * ``layer_weights`` of weighted-layer-sum heads (``use_weighted_layer_sum``) are
      sliced to their first ``keep + 1`` entries;
    * layerdrop is set to 0 (``config.layerdrop`` / ``config.encoder_layerdrop`` and
      the encoder modules' ``layerdrop``);
    * WavLM's relative position bias lives in block 0 and is kept with it.

    Models with a final LayerNorm after the last block -- stable-layer-norm "large"
    models (``config.do_stable_layer_norm=True``) and the pre-LN Whisper encoder --
    produce ``LN(hidden_states[keep])``, whereas the scored hidden state lacks that
    norm.  ``final_norm`` picks:

    * ``"keep"`` (default): keep the final LayerNorm (pretrained weights, loads with a
      plain ``from_pretrained``); ``last_hidden_state == LN(hidden_states[keep])``.
      A warning says so when ``keep`` is less than the block count.
    * ``"identity"``: replace it with ``nn.Identity`` so that ``last_hidden_state``
      equals ``hidden_states[keep]`` exactly.  The config records
      ``fastconvex_final_norm="identity"``; reload with :func:`load_pruned` (a plain
      ``from_pretrained`` re-creates a freshly initialised LayerNorm).  If the model's
      own ``hidden_states[keep]`` already includes the norm (Whisper's last hidden
      state, ``keep`` = all blocks) the norm is kept.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Wav2Vec2, HuBERT, WavLM, Data2VecAudio (base model or any head) or Whisper
        (encoder, ``WhisperModel``, ``WhisperForConditionalGeneration``,
        ``WhisperForAudioClassification``; only the encoder is pruned).
    keep : int
        Number of blocks to keep, 1..num_blocks (see :func:`choose_cut`).
    final_norm : {"keep", "identity"}
        See above; irrelevant for post-LN models.

    Returns
    -------
    transformers.PreTrainedModel
        The same model object, pruned.  ``model.fastconvex_pruning`` holds
        ``{"original_layers", "kept_layers", "final_norm"}``.

    Raises
    ------
    TypeError
        ``keep`` not an integer; an unsupported model.
    ValueError
        ``keep < 1`` or ``keep`` > the number of blocks; unknown ``final_norm``.
    """
    if final_norm not in ("keep", "identity"):
        raise ValueError(f'final_norm must be "keep" or "identity", got {final_norm!r}')
    owner, attr, blocks = encoder_blocks(model)
    n_blocks = len(blocks)
    keep = _check_keep(keep, n_blocks)
    previous = getattr(model, "fastconvex_pruning", None)
    original = int(previous["original_layers"]) if isinstance(previous, dict) else n_blocks
    tied = ties_last_hidden_state(model)

    # 1. blocks
    setattr(owner, attr, nn.ModuleList(list(blocks)[:keep]))

    # 2. layer count and layerdrop in every config object
    count_key = layer_count_key(model)
    for cfg in distinct_configs(model):
        if is_whisper(model) or hasattr(cfg, count_key):
            setattr(cfg, count_key, keep)
        if (
            is_whisper(model)
            and "num_hidden_layers" not in getattr(cfg, "attribute_map", {})
            and hasattr(cfg, "num_hidden_layers")
        ):
            # transformers 4's WhisperConfig keeps num_hidden_layers apart from
            # encoder_layers (5 aliases the two); its classification head reads it
            cfg.num_hidden_layers = keep
        if hasattr(cfg, "layerdrop"):
            cfg.layerdrop = 0.0
        if is_whisper(model) and hasattr(cfg, "encoder_layerdrop"):
            cfg.encoder_layerdrop = 0.0
    for module in speech_encoder(model).modules():
        if isinstance(getattr(module, "layerdrop", None), float):
            module.layerdrop = 0.0

    # 3. weighted-layer-sum heads
    for module in model.modules():
        weights = getattr(module, "layer_weights", None)
        if isinstance(weights, nn.Parameter) and weights.ndim == 1:
            if weights.shape[0] != n_blocks + 1:
                raise ValueError(
                    f"model: {type(module).__name__}.layer_weights has {weights.shape[0]} entries, "
                    f"expected {n_blocks + 1} (blocks + 1)"
                )
            module.layer_weights = nn.Parameter(weights.data[: keep + 1].clone(), requires_grad=weights.requires_grad)

    # 4. the final LayerNorm of pre-LN encoders
    effective = "none"
    norm = final_norm_module(model)
    if norm is not None:
        norm_owner, norm_attr = norm
        already_identity = isinstance(getattr(norm_owner, norm_attr), nn.Identity)
        effective = "identity" if already_identity else "keep"
        if final_norm == "identity" and not already_identity and not (keep == n_blocks and tied):
            setattr(norm_owner, norm_attr, nn.Identity())
            effective = "identity"
        elif final_norm == "keep" and keep < n_blocks and not already_identity:
            warnings.warn(
                f"{type(model).__name__} applies a final LayerNorm after its last block; the pruned model outputs "
                f"LayerNorm(hidden_states[{keep}]), not the scored hidden_states[{keep}] itself. "
                'Use final_norm="identity" for the exact hidden state',
                stacklevel=2,
            )
        for cfg in distinct_configs(model):
            if effective == "identity":
                setattr(cfg, _FINAL_NORM_FLAG, "identity")
            elif hasattr(cfg, _FINAL_NORM_FLAG):
                delattr(cfg, _FINAL_NORM_FLAG)

    model.fastconvex_pruning = {"original_layers": original, "kept_layers": keep, "final_norm": effective}
    return model
