"""The input forms of ``layer_scores`` (docs/api.md, "Input forms of layer_scores")
turned into L matrices (N, D)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastconvex.core.inputs import (
    IGNORE_INDEX,
    as_rectangular,
    check_embeddings,
    check_frame_dtype,
    is_torch_tensor,
    labels_to_array,
    to_numpy,
)


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def _split_layers(hidden_states: Any) -> list[Any]:
    if is_torch_tensor(hidden_states) or isinstance(hidden_states, np.ndarray):
        if hidden_states.ndim not in (3, 4):
            raise ValueError(
                "hidden_states as one array must be 3-D (L, N, D) or 4-D (L, B, T, D), "
                f"got shape {_shape(hidden_states)}"
            )
        return [hidden_states[i] for i in range(hidden_states.shape[0])]
    if isinstance(hidden_states, (str, bytes, dict)) or not hasattr(hidden_states, "__iter__"):
        raise TypeError(
            "hidden_states must be a sequence of per-layer arrays/tensors or one "
            f"3-D/4-D array, got {type(hidden_states).__name__}"
        )
    layers = list(hidden_states)
    for i, layer in enumerate(layers):
        if not (is_torch_tensor(layer) or isinstance(layer, np.ndarray)):
            layers[i] = as_rectangular(layer, f"hidden_states[{i}]")
    return layers


def _valid_frames(batch: int, frames: int, attention_mask: Any, lengths: Any) -> np.ndarray:
    """(B, T) bool mask of real frames."""
    if attention_mask is not None and lengths is not None:
        raise ValueError("give attention_mask or lengths, not both")
    if attention_mask is not None:
        mask = to_numpy(attention_mask)
        if mask.shape != (batch, frames):
            raise ValueError(f"attention_mask must have shape (B, T) = {(batch, frames)}, got {mask.shape}")
        if mask.dtype.kind not in "biu" or (mask.dtype.kind in "iu" and not np.isin(mask, (0, 1)).all()):
            raise ValueError("attention_mask must hold only 0/1 (or booleans)")
        return mask.astype(bool)
    if lengths is not None:
        lens = to_numpy(lengths)
        if lens.shape != (batch,):
            raise ValueError(f"lengths must have shape (B,) = ({batch},), got {lens.shape}")
        if lens.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers (frames), got dtype {lens.dtype}")
        if (lens < 0).any():
            row = int(np.flatnonzero(lens < 0)[0])
            raise ValueError(f"lengths[{row}] is negative ({int(lens[row])})")
        if (lens > frames).any():
            row = int(np.flatnonzero(lens > frames)[0])
            raise ValueError(f"lengths[{row}] = {int(lens[row])} exceeds T = {frames} frames")
        return np.arange(frames)[None, :] < lens[:, None]
    return np.ones((batch, frames), dtype=bool)


def _ignored(labels: np.ndarray) -> np.ndarray:
    """Which frame labels are the ignore index -100."""
    if labels.dtype.kind in "iuf":
        return labels == IGNORE_INDEX
    if labels.dtype == object:
        return np.vectorize(
            lambda v: (
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v == IGNORE_INDEX
            ),
            otypes=[bool],
        )(labels)
    return np.zeros(labels.shape, dtype=bool)


def _non_finite_frame(layer: Any, mask: np.ndarray, name: str) -> None:
    """Raise for the first NaN/inf in a *valid* frame of (B, T, D) ``layer``,
    naming the utterance and frame (padding frames may hold anything)."""
    if is_torch_tensor(layer):
        import torch

        bad = ~torch.isfinite(layer).all(dim=-1).cpu().numpy() & mask
    else:  # in blocks of utterances: memory-mapped layers never load whole
        step = max(1, (1 << 16) // max(1, layer.shape[1]))
        bad = np.zeros(mask.shape, dtype=bool)
        for b0 in range(0, layer.shape[0], step):
            bad[b0 : b0 + step] = ~np.isfinite(layer[b0 : b0 + step]).all(axis=-1)
            bad[b0 : b0 + step] &= mask[b0 : b0 + step]
            if bad[b0 : b0 + step].any():
                break
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(f"{name} has a non-finite value (NaN or inf) in utterance {int(b)}, frame {int(t)}")


def _pool(layer: Any, mask: np.ndarray, name: str) -> Any:
    """Mean over valid frames of (B, T, D) -> (B, D), in the layer's own library
    (float64 layers in float64). NaN/inf in padding frames is ignored; in a
    valid frame it raises, naming the utterance and frame."""
    if is_torch_tensor(layer):
        import torch

        dtype = torch.float64 if layer.dtype == torch.float64 else torch.float32
        m = torch.as_tensor(mask, device=layer.device, dtype=dtype)
        x = layer.to(dtype)
        pooled = (x * m[:, :, None]).sum(1) / m.sum(1, keepdim=True)
        rows = (~torch.isfinite(pooled).all(dim=1)).cpu().numpy()
        if rows.any():
            _non_finite_frame(layer, mask, name)
            keep = torch.as_tensor(mask, device=layer.device)[:, :, None]
            for b in np.flatnonzero(rows):  # non-finite only in padding
                pooled[b] = torch.where(keep[b], x[b], 0).sum(0) / m[b].sum()
        return pooled
    m = mask.astype(np.float64)
    pooled = np.einsum("btd,bt->bd", layer, m, dtype=np.float64) / m.sum(1, keepdims=True)
    rows = ~np.isfinite(pooled).all(axis=1)
    if rows.any():
        _non_finite_frame(layer, mask, name)
        for b in np.flatnonzero(rows):  # non-finite only in padding
            pooled[b] = np.asarray(layer[b][mask[b]], dtype=np.float64).mean(axis=0)
    return pooled.astype(layer.dtype if layer.dtype in (np.float32, np.float64) else np.float64)


def prepare_layers(
    hidden_states: Any, labels: Any, *, attention_mask: Any = None, lengths: Any = None
) -> tuple[list[Any], np.ndarray]:
    """Validate ``hidden_states``/``labels`` and return L (N, D) matrices and
    the (N,) labels they are scored with."""
    layers = _split_layers(hidden_states)
    if not layers:
        raise ValueError("hidden_states is empty: no layer to score")
    ranks = {layer.ndim for layer in layers}
    if len(ranks) != 1 or ranks.pop() not in (2, 3):
        bad = next(i for i, layer in enumerate(layers) if layer.ndim not in (2, 3) or layer.ndim != layers[0].ndim)
        raise ValueError(
            f"hidden_states[{bad}] has shape {_shape(layers[bad])}: every layer must be "
            f"(N, D) or every layer (B, T, D) (layer 0 has shape {_shape(layers[0])})"
        )
    lead = _shape(layers[0])[:-1]
    for i, layer in enumerate(layers):
        if _shape(layer)[:-1] != lead:
            what = "N" if layers[0].ndim == 2 else "(B, T)"
            raise ValueError(
                f"hidden_states[{i}] has {what} = {_shape(layer)[:-1]}, but hidden_states[0] "
                f"has {lead}: every layer must embed the same points"
            )
    label_array = labels_to_array(labels)

    if layers[0].ndim == 2:
        if attention_mask is not None or lengths is not None:
            raise ValueError("attention_mask/lengths apply to (B, T, D) hidden states only")
        if label_array.ndim != 1 or label_array.shape[0] != lead[0]:
            raise ValueError(f"labels must have shape (N,) = ({lead[0]},) for (N, D) layers, got {label_array.shape}")
        # validated here, converted to a kernel float type one layer at a time
        # by the engines (memory-mapped float16 layers never all load at once)
        return [
            check_embeddings(x, name=f"hidden_states[{i}]", convert=False) for i, x in enumerate(layers)
        ], label_array

    batch, frames = lead
    mask = _valid_frames(batch, frames, attention_mask, lengths)
    if label_array.ndim == 1:  # utterance-level: pool
        if label_array.shape[0] != batch:
            raise ValueError(f"labels has {label_array.shape[0]} entries but hidden states have B={batch} utterances")
        empty = ~mask.any(axis=1)
        if empty.any():
            raise ValueError(f"utterance {int(np.flatnonzero(empty)[0])} has no valid frames")
        out = []
        for i, layer in enumerate(layers):
            check_frame_dtype(layer, name=f"hidden_states[{i}]")
            out.append(_pool(layer, mask, f"hidden_states[{i}]"))
        return out, label_array
    if label_array.shape != (batch, frames):
        raise ValueError(f"frame labels must have shape (B, T) = {(batch, frames)}, got {label_array.shape}")
    keep = mask & ~_ignored(label_array)
    if not keep.any():
        raise ValueError("no frame is left to score: every frame is padding or labelled -100")
    flat = np.flatnonzero(keep.ravel())
    out = []
    for i, layer in enumerate(layers):
        frames_2d = layer.reshape(batch * frames, layer.shape[-1])
        if is_torch_tensor(layer):
            import torch

            sel = frames_2d[torch.as_tensor(flat, device=layer.device)]
        else:
            sel = frames_2d[flat]
        check_frame_dtype(layer, name=f"hidden_states[{i}]")
        try:
            out.append(check_embeddings(sel, name=f"hidden_states[{i}] (selected frames)"))
        except ValueError:
            # a row of the selection means nothing to the caller: name the
            # utterance and frame instead (padding frames were not selected)
            _non_finite_frame(layer, keep, f"hidden_states[{i}]")
            raise
    return out, label_array.reshape(-1)[flat]
