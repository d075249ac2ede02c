"""The rest of a Hugging Face audio classifier after layer l, as a callable for
:func:`fastconvex.layer_euclidean_scores`."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import nn

from fastconvex.hf.models.layout import (
    class_labels,
    encoder_blocks,
    final_norm_module,
    is_audio_classifier,
    is_whisper,
    model_device,
    ties_last_hidden_state,
)

__all__ = ["LayerPredictor", "predict_from_layer"]


def _bidirectional_mask(encoder: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
    """The attention mask the encoder's own forward builds from a (B, T) frame mask."""
    try:
        from transformers.masking_utils import create_bidirectional_mask
    except ImportError:  # transformers 4.x: the additive 4-D mask
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        return additive.expand(mask.shape[0], 1, mask.shape[1], mask.shape[1])
    return create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask)


class LayerPredictor:
    """``predictor(layer, batch, mask=None)`` -> the model's predicted labels for
    hidden states ``batch`` (B, T, D) taken as its hidden state ``layer``.

    Built by :func:`predict_from_layer`; see there. Attributes: ``device``
    (the model's), ``labels`` (every label it can return), ``num_layers``
    (hidden states, blocks + 1).
    """

    def __init__(self, model: nn.Module, *, id2label: bool = True) -> None:
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"model must be a Hugging Face audio classifier, got {type(model).__name__}")
        name = type(model).__name__
        if not is_audio_classifier(name) or not (
            isinstance(getattr(model, "projector", None), nn.Module)
            and isinstance(getattr(model, "classifier", None), nn.Module)
        ):
            raise TypeError(
                f"model: {name} is not a supported audio classifier (Wav2Vec2/Hubert/WavLM/Data2VecAudio"
                "ForSequenceClassification or WhisperForAudioClassification, with projector and classifier)"
            )
        if getattr(model.config, "use_weighted_layer_sum", False):
            raise ValueError(
                f"model: {name} has config.use_weighted_layer_sum=True: its head mixes every layer's hidden "
                "state, so the prediction from one layer's state alone is undefined"
            )
        self.model = model
        self.owner, _, self.blocks = encoder_blocks(model)
        self.whisper = is_whisper(model)
        self.norm_site = final_norm_module(model)
        self.tied_last = ties_last_hidden_state(model)
        self.num_layers = len(self.blocks) + 1
        self.device = model_device(model)
        self.dtype = next((p.dtype for p in model.parameters()), torch.float32)
        first = self.blocks[0]
        self.position_bias = "position_bias" in inspect.signature(type(first).forward).parameters
        names = class_labels(model.config, id2label=id2label)
        if id2label:
            self.label_array = np.empty(len(names), dtype=object)
            self.label_array[:] = names
        else:
            self.label_array = np.arange(len(names), dtype=np.int64)
        self.labels = self.label_array.tolist()

    def _check_layer(self, layer: Any) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer must be an integer hidden-state index, got {type(layer).__name__}")
        layer = int(layer)
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is out of range: the model has hidden states 0..{self.num_layers - 1}")
        return layer

    def _as_tensor(self, batch: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
        if h.ndim != 3 or h.shape[-1] != self.model.config.hidden_size:
            raise ValueError(
                f"batch must be hidden states (B, T, D={self.model.config.hidden_size}), got shape {tuple(h.shape)}"
            )
        h = h.to(device=self.device, dtype=self.dtype)
        if mask is None:
            return h, None
        if self.whisper:
            raise ValueError(
                "mask: the Whisper encoder attends to and pools every frame (its input is padded to "
                "max_source_positions); pass no attention_mask/lengths for it"
            )
        m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if tuple(m.shape) != tuple(h.shape[:2]):
            raise ValueError(f"mask must have shape (B, T) = {tuple(h.shape[:2])}, got {tuple(m.shape)}")
        return h, m.to(device=self.device, dtype=torch.bool)

    def _blocks(self, layer: int, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.whisper:
            attn = None
        elif self.position_bias:  # WavLM: the raw frame mask, and block 0's relative position bias
            attn = mask
        else:
            attn = None if mask is None else _bidirectional_mask(self.owner, h, mask)
        bias = None
        if self.position_bias and layer > 0:
            att = self.blocks[0].attention
            t = h.shape[1]
            bias = att.compute_bias(t, t).unsqueeze(0).repeat(h.shape[0], 1, 1, 1).view(-1, t, t)
        for i in range(layer, len(self.blocks)):
            block = self.blocks[i]
            if self.position_bias:
                # WavLM's post-LN block takes its index (transformers 4 and 5); the pre-LN one does not
                extra = {"index": i} if _takes(block, "index") else {}
                out = block(h, attention_mask=attn, position_bias=bias, **extra)
                h, bias = out[0], out[1]
            elif self.whisper:
                # transformers 4's Whisper block requires a head mask argument; 5 has none
                extra = {"layer_head_mask": None} if _takes(block, "layer_head_mask") else {}
                out = block(h, None, **extra)
                h = out[0] if isinstance(out, tuple) else out
            else:
                out = block(h, attention_mask=attn)
                h = out[0] if isinstance(out, tuple) else out
        if self.norm_site is not None and not (layer == len(self.blocks) and self.tied_last):
            h = getattr(*self.norm_site)(h)
        return h

    def logits(self, layer: int, batch: Any, mask: Any = None) -> torch.Tensor:
        """(B, num_labels) logits of the classifier for ``batch`` as hidden state ``layer``."""
        layer = self._check_layer(layer)
        if self.model.training:
            raise ValueError("model is in training mode (dropout, layer drop): call model.eval() first")
        h, m = self._as_tensor(batch, mask)
        with torch.inference_mode():
            h = self.model.projector(self._blocks(layer, h, m))
            if m is None:
                pooled = h.mean(dim=1)
            else:
                w = m.to(h.dtype)[:, :, None]
                pooled = (h * w).sum(dim=1) / w.sum(dim=1)
            return self.model.classifier(pooled)

    def __call__(self, layer: int, batch: Any, mask: Any = None) -> np.ndarray:
        ids = self.logits(layer, batch, mask).argmax(dim=-1).cpu().numpy()
        return self.label_array[ids]

    def at(self, layer: int) -> Any:
        """The predictor of one layer: ``predict(batch, mask=None)`` for
        :func:`fastconvex.euclidean_convexity` (keeps ``device`` and ``labels``)."""
        from fastconvex.euclidean.api import _AtLayer

        return _AtLayer(self, self._check_layer(layer))


def predict_from_layer(model: nn.Module, *, id2label: bool = True) -> LayerPredictor:
    """The rest of a Hugging Face audio classifier after each hidden state.

    ``predictor = predict_from_layer(model)`` is a callable
    ``predictor(layer, batch, mask=None)`` for
    :func:`fastconvex.layer_euclidean_scores`: it treats ``batch`` (B, T, D)
    as the model's hidden state ``layer`` (0 = the transformer's input, i =
    output of block i, as in ``output_hidden_states=True``) and runs what the
    model runs after it: blocks ``layer``..L-1 with the model's own attention
    masks (and WavLM's relative position bias), the encoder's final LayerNorm
    (stable-layer-norm models and Whisper; not again on a hidden state that
    already went through it, such as Whisper's last), the projector, the mean
    over valid frames (``mask``, else all frames, as the model pools) and the
    classifier; the argmax is mapped to a label by ``config.id2label``.
    Batches (numpy or torch) are moved to the model's device and dtype; the
    model runs under ``torch.inference_mode()`` and must be in ``eval()`` mode.

    Parameters
    ----------
    model : transformers model
        ``Wav2Vec2ForSequenceClassification``, ``HubertForSequenceClassification``,
        ``WavLMForSequenceClassification``, ``Data2VecAudioForSequenceClassification``
        (base or stable-layer-norm layouts, pruned or not) or
        ``WhisperForAudioClassification``, with ``use_weighted_layer_sum=False``
        (a head that mixes every layer has no prediction from one layer).
    id2label : bool
        Return ``config.id2label`` names (default), or the class ids (ints) when
        the data's labels are ids. ``.labels`` lists them in class order: the
        Euclidean scorers refuse data whose labels are not among them (before
        any forward pass) unless ``label_map={data label: class index}`` maps
        them.

    Returns
    -------
    LayerPredictor
        Also ``.logits(layer, batch, mask=None)`` (B, C), ``.at(layer)`` (a
        one-layer ``predict`` for :func:`fastconvex.euclidean_convexity`),
        ``.device``, ``.labels``, ``.num_layers``.

    Examples
    --------
    >>> out = model(inputs, attention_mask=am, output_hidden_states=True)   # doctest: +SKIP
    >>> frames = model._get_feature_vector_attention_mask(out.hidden_states[0].shape[1], am)  # doctest: +SKIP
    >>> fc.layer_euclidean_scores(out.hidden_states, labels, hf.predict_from_layer(model),
    ...                           attention_mask=frames)                    # doctest: +SKIP
    """
    return LayerPredictor(model, id2label=id2label)


def _takes(module: Any, name: str) -> bool:
    """Whether ``module``'s forward names the parameter ``name`` (the block
    signatures differ between transformers versions)."""
    return name in inspect.signature(type(module).forward).parameters
