"""Held-out splits and the linear probe (multinomial logistic regression)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def split_indices(
    labels: Sequence, groups: Sequence, *, test_fraction: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split. Distinct groups shared by several labels (voices) are held out
    whole; otherwise (one group per item) a stratified split per label."""
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    rng = np.random.default_rng([seed, 3])
    uniq = np.unique(groups)
    test = np.zeros(len(labels), dtype=bool)
    if len(uniq) < len(groups):  # grouped: hold out whole groups
        n_test = max(1, int(round(test_fraction * len(uniq))))
        held = set(rng.permutation(uniq)[:n_test].tolist())
        test = np.array([g in held for g in groups])
    else:
        for lab in np.unique(labels):
            idx = np.flatnonzero(labels == lab)
            n_test = max(1, int(round(test_fraction * len(idx))))
            test[rng.permutation(idx)[:n_test]] = True
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError("split: need at least one training and one test item")
    return train_idx, test_idx


def dataset_split(ds, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` of a task: the fixed split in ``meta[i]["split"]``
    when the task has one (``asterisk-language-unseen``: other voices and prompts),
    else :func:`split_indices` on its labels and groups."""
    splits = [m.get("split") for m in ds.meta]
    if ds.meta and all(splits):
        s = np.asarray(splits)
        return np.flatnonzero(s == "train"), np.flatnonzero(s == "test")
    return split_indices(ds.labels, ds.groups, test_fraction=test_fraction, seed=seed)


@dataclass
class Probe:
    classes: list
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.asarray(self.classes)[np.argmax(z @ self.weight + self.bias, axis=1)]

    def accuracy(self, x: np.ndarray, y: Sequence) -> float:
        return float(np.mean(self.predict(x) == np.asarray(y)))


def fit_probe(x: np.ndarray, y: Sequence, *, l2: float = 1e-3, max_iter: int = 200) -> Probe:
    """Multinomial logistic regression on standardised features (L-BFGS, float64, deterministic)."""
    import torch

    x = np.asarray(x, dtype=np.float64)
    classes = sorted(set(np.asarray(y).tolist()))
    code = {c: i for i, c in enumerate(classes)}
    t = torch.as_tensor([code[v] for v in np.asarray(y).tolist()], dtype=torch.long)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = torch.as_tensor((x - mean) / scale)
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, t) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Probe(classes, mean, scale, w.detach().numpy().copy(), b.detach().numpy().copy())


def probe_accuracy(x: np.ndarray, y: Sequence, train_idx: np.ndarray, test_idx: np.ndarray) -> float:
    y = np.asarray(y)
    return fit_probe(x[train_idx], y[train_idx]).accuracy(x[test_idx], y[test_idx])
