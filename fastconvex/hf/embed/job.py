"""Embedding a labelled audio corpus into a layer store, in this process or
split over Ray workers (``fastconvex embed --engine ray``).

Both engines write the same store: the same rows in the same order. The Ray
engine splits the utterances into contiguous chunks; each chunk is one plain
Ray task (:func:`embed_chunk`, a thin wrapper's body) that loads the model
once per worker process, pools its chunk with ``pooled_hidden_states`` and
writes those rows into the store's (shared) partial directory, then marks the
chunk done. Utterances are batched within a chunk rather than over the whole
corpus, so models whose output depends on padding may differ from the one-
process store by what batching allows (float rounding; exactly equal for
models batched only by equal length, e.g. wav2vec2-base).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.hf.embed.audio import AudioFiles
from fastconvex.hf.embed.pooling import pooled_hidden_states, valid_frame_counts
from fastconvex.runners.base import LOCAL, Placement

_MODELS: dict[tuple[str, str | None, str | None], tuple[Any, Any, dict[str, str] | None]] = {}


def chunk_rows(n: int, chunk_size: int) -> list[range]:
    """The utterances of each chunk of a Ray embedding run (chunk ``c`` is
    ``chunk_rows(n, chunk_size)[c]``): contiguous, ``chunk_size`` each, the
    last one shorter. Part of the resume key (``chunk_size``): a chunk's done
    marker records the audio of exactly these rows."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return [range(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


@dataclass(frozen=True)
class EmbedJob:
    """What every chunk of an embedding run shares."""

    model: str
    model_class: str | None
    device: str | None
    paths: list[str]
    sampling_rate: int
    batch_size: int
    dtype: str
    layers: list[int] | None
    final_norm: str
    mix_lengths: bool
    partial_dir: str
    layer_files: list[str]
    frames: bool = False  # every valid frame a row (``embed --frames``)
    row_offsets: list[int] | None = None  # frames: first row of each utterance, and the total
    # The driver's model (SIGNATURE_KEYS of its store's resume key: class, configuration,
    # weights, feature extractor): a worker that loads anything else refuses to write.
    signature: dict[str, str] | None = None


def _model(job: EmbedJob) -> tuple[Any, Any]:
    """The job's model and feature extractor, loaded once per worker process
    (again if the job names another model), and checked to be the model the
    driver hashed into the store's resume key: its class, configuration,
    weights and feature extractor."""
    key = (job.model, job.model_class, job.device)
    cached = _MODELS.get(key)
    if cached is None or cached[2] != job.signature:
        from fastconvex.hf.models.load import load_model

        _MODELS.clear()
        model, fe = load_model(job.model, job.model_class, job.device)
        if job.signature is not None:
            from fastconvex.hf.embed.featurise import _feature_extractor_for
            from fastconvex.hf.embed.store_out import SIGNATURE_NAMES, model_signature

            mine = model_signature(model, _feature_extractor_for(model, fe, job.sampling_rate))
            changed = [SIGNATURE_NAMES[k] for k in job.signature if mine.get(k) != job.signature[k]]
            if changed:
                raise ValueError(
                    f"model {job.model!r}: {' and '.join(changed)} changed since the embedding run "
                    "started (the store's rows would mix two models); rerun with --overwrite to "
                    "start over"
                )
        _MODELS[key] = (model, fe, job.signature)
    return _MODELS[key][0], _MODELS[key][1]


def embed_chunk(
    job: EmbedJob, chunk: int, rows: Sequence[int], lengths: Sequence[int], *, placement: Placement = LOCAL
) -> int:
    """Pool utterances ``rows`` and write them into the partial store; returns
    the number of rows written. A Ray task given a GPU (``placement``) embeds on
    it when the job names no device."""
    if job.device is None and placement.gpu_ids:
        job = dataclasses.replace(job, device="cuda")
    from fastconvex.core.atomic import writing
    from fastconvex.hf.embed.store_out import HashedWaveforms

    model, fe = _model(job)
    audio = HashedWaveforms(AudioFiles([job.paths[i] for i in rows], sampling_rate=job.sampling_rate))
    start, stop, frame_labels = rows[0], rows[-1] + 1, None
    if job.frames:  # every valid frame kept (any label but -100 keeps it; the store holds the real ones)
        assert job.row_offsets is not None
        start, stop = job.row_offsets[start], job.row_offsets[stop]
        counts = valid_frame_counts(model, list(lengths), feature_extractor=fe)
        frame_labels = [np.zeros(int(c), np.int64) for c in counts]
    pooled = pooled_hidden_states(
        model,
        audio,
        sampling_rate=job.sampling_rate,
        batch_size=job.batch_size,
        feature_extractor=fe,
        layers=job.layers,
        dtype=job.dtype,
        lengths=list(lengths),
        mix_lengths=job.mix_lengths,
        progress=False,
        final_norm=job.final_norm,
        frame_labels=frame_labels,
    )
    part = Path(job.partial_dir)
    for file, values in zip(job.layer_files, pooled):
        if values.shape[0] != stop - start:
            raise ValueError(f"chunk {chunk}: {values.shape[0]} rows, but the store expects {stop - start}")
        with writing(part / file):  # reserved on disk by the driver (StoreWriter.allocate): no SIGBUS
            out = np.load(part / file, mmap_mode="r+", allow_pickle=False)
            out[start:stop] = values
            out.flush()
            del out
    from fastconvex.store import mark_block_done

    mark_block_done(part, chunk, {"audio_sha256": [audio.sha256[k] for k in range(len(rows))]})
    return len(rows)


def probe_layers(
    model: Any, fe: Any, wave: np.ndarray, *, sampling_rate: int, layers: Sequence[int] | None, final_norm: str
) -> tuple[list[int], int]:
    """(hidden-state indices, D) that the job will write, from one utterance."""

    pooled = pooled_hidden_states(
        model,
        [wave],
        sampling_rate=sampling_rate,
        feature_extractor=fe,
        layers=layers,
        progress=False,
        final_norm=final_norm,
    )
    return list(pooled.layers), int(pooled[0].shape[1])


def embed_on_ray(
    job: EmbedJob,
    writer: Any,
    lengths: np.ndarray,
    *,
    chunk_size: int,
    address: str | None,
    retries: int,
    verbose: bool,
) -> tuple[int, int]:
    """Run the chunks not yet done as Ray tasks; returns (chunks run, chunks
    reused). A chunk that failed on every retry is raised once the others have
    ended: the chunks done stay done, and a rerun resumes."""
    from fastconvex.runners.ray import RayRunner
    from fastconvex.runners.session import ray_session

    chunks = chunk_rows(int(lengths.shape[0]), chunk_size)
    done = writer.done_blocks()
    todo = [c for c in range(len(chunks)) if c not in done]
    finished = len(done)

    def on_done(c: int, _rows: int) -> None:
        nonlocal finished
        finished += 1
        if verbose:
            print(f"embed: chunk {c} done ({finished}/{len(chunks)})", file=sys.stderr, flush=True)

    with ray_session(address, quiet=not verbose) as ray:
        runner = RayRunner(ray, retries=retries)
        shared = runner.share(job)
        calls = [(c, (shared, c, list(chunks[c]), lengths[list(chunks[c])].tolist())) for c in todo]
        failures = runner.run(embed_chunk, calls, on_done=on_done)
    if failures:
        raise failures[0][1]
    return len(todo), len(done)
