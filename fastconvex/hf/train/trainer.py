"""The ``transformers.Trainer`` run behind :func:`fastconvex.hf.finetune`: quiet, no
checkpoints, a fastconvex progress bar."""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch import nn

from fastconvex.hf.quiet import quiet_transformers

__all__ = ["predict_logits", "train"]


@contextlib.contextmanager
def keep_global_rngs(*, cuda: bool = False) -> Iterator[None]:
    """Give the caller's random states back afterwards: Python's, NumPy's global and
    torch's CPU generator (``Trainer`` reseeds them), and with ``cuda`` every CUDA
    device's too."""
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - the global state Trainer reseeds
    devices = list(range(torch.cuda.device_count())) if cuda and torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


def _trainer(model: nn.Module, dataset: Any, collate: Callable[..., Any], output_dir: str, **settings: Any) -> Any:
    import transformers
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from fastconvex.hf.models.layout import model_device

    args = transformers.TrainingArguments(
        output_dir=output_dir,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        use_cpu=model_device(model).type == "cpu",
        **settings,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    for callback in (PrinterCallback, ProgressCallback):  # no prints, no tqdm of its own
        trainer.remove_callback(callback)
    return trainer


def _progress_callback(enabled: bool | None) -> Any:
    from transformers import TrainerCallback

    from fastconvex.core.progress import progress_bar, show_progress

    class _Bar(TrainerCallback):
        bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar = progress_bar(state.max_steps, "steps", enabled=show_progress(enabled), desc="fine-tuning")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _Bar()


def train(
    model: nn.Module,
    dataset: Any,
    collate: Callable[..., Any],
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    warmup_steps: int,
    weight_decay: float,
    progress: bool | None,
    callbacks: Sequence[Any] = (),
) -> tuple[float, int]:
    """Train ``model`` in place; returns (wall seconds of ``Trainer.train()``, optimiser steps).
    ``callbacks``: the caller's, added to the Trainer after fastconvex's own."""
    with (
        tempfile.TemporaryDirectory(prefix="fastconvex-finetune-") as tmp,
        quiet_transformers(progress_bars=True),
        keep_global_rngs(),
    ):
        trainer = _trainer(
            model,
            dataset,
            collate,
            tmp,
            num_train_epochs=epochs,
            learning_rate=lr,
            per_device_train_batch_size=batch_size,
            seed=seed,
            data_seed=seed,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            lr_scheduler_type="linear",
        )
        bar = _progress_callback(progress)
        trainer.add_callback(bar)
        for callback in callbacks:
            trainer.add_callback(callback)
        try:
            start = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - start
        finally:
            if bar.bar is not None:
                bar.bar.close()
        return seconds, int(trainer.state.global_step)


def predict_logits(
    model: nn.Module, dataset: Any, collate: Callable[..., Any], *, batch_size: int, seed: int
) -> np.ndarray:
    """Logits (N, C) of ``dataset``, in its order (``Trainer.predict``)."""
    with (
        tempfile.TemporaryDirectory(prefix="fastconvex-finetune-") as tmp,
        quiet_transformers(progress_bars=True),
        keep_global_rngs(),
    ):
        trainer = _trainer(model, None, collate, tmp, per_device_eval_batch_size=batch_size, seed=seed)
        out = trainer.predict(dataset)
    logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
    return np.asarray(logits, dtype=np.float64)
