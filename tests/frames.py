"""Frame-level hidden states of a tiny classifier, as the Euclidean tests
score them: one place for the synthetic padded utterances they share."""

from __future__ import annotations

import numpy as np
import torch


def padded_frame_states(model, n: int = 12, seed: int = 0):
    """``n`` padded utterances of 1500-2600 samples (tones in noise) through
    ``model`` with ``output_hidden_states=True``.

    Returns
    -------
    out : the model's output (``.logits``, ``.hidden_states``)
    states : (L, n, T, D) float32, every hidden state
    n_frames : (n,) int64, each utterance's valid frames
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1500, 2600, n)
    wav = np.zeros((n, int(lengths.max())), np.float32)
    am = np.zeros(wav.shape, np.int64)
    for i, m in enumerate(lengths):
        wav[i, :m] = np.sin(np.arange(m) * rng.uniform(0.05, 1.5)) + rng.uniform(0.1, 1) * rng.normal(size=m)
        am[i, :m] = 1
    with torch.no_grad():
        out = model(torch.as_tensor(wav), attention_mask=torch.as_tensor(am), output_hidden_states=True)
    frames = model._get_feature_vector_attention_mask(out.hidden_states[0].shape[1], torch.as_tensor(am))
    states = torch.stack(out.hidden_states).numpy()
    n_frames = frames.sum(1).numpy().astype(np.int64)
    return out, states, n_frames
