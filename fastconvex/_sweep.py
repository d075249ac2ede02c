"""``fastconvex.sweep``: every layer of every layer store, one task per
(store, layer), each finished task written atomically so a rerun resumes.

The pair plan of a store is made once, from its labels and the seed, by the
same :func:`fastconvex._core.plan_scoring` that ``layer_scores`` uses, and each
task runs the same :func:`fastconvex._core.score_layer` on the layer it reads
from the store itself: a sweep's numbers equal
``layer_scores(store.layers, store.labels)`` bit for bit, on either engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

from ._backends import check_backend_name
from ._core import ScoringPlan, check_engine, plan_scoring, score_layer, stack_layers
from ._inputs import check_embeddings
from ._pairs import DEFAULT_PAIRS, resolve_estimator
from ._results import Convexity, LayerScores
from ._sweep_euclidean import (
    EuclideanPlan,
    check_euclidean_options,
    label_map_setting,
    model_fingerprint,
    plan_store,
    release_predictors,
    score_euclidean_task,
)
from ._sweep_out import Reporter, format_table, write_outputs
from .store import LayerStore, open_store, write_json_atomic

RESULT_FORMAT = "fastconvex-sweep-task"

__all__ = ["LayerTask", "run_layer_task", "sweep", "format_table"]


@dataclass(frozen=True)
class LayerTask:
    """One (store, layer) unit of a sweep.

    Attributes
    ----------
    store_path : the store's directory (workers open it themselves)
    store_name : its name in the results
    fingerprint : the store's content fingerprint when the sweep was planned
    layer : layer index in the store
    result_path : where the finished result is written (atomically)
    record : settings, fingerprint and layer, written beside the result
    """

    store_path: str
    store_name: str
    fingerprint: str
    layer: int
    result_path: str
    record: dict[str, Any]


def run_layer_task(task: LayerTask, plan: ScoringPlan | EuclideanPlan, backend: str = "auto", device: Any = None,
                   shards: int | None = None, ran_on: dict[str, Any] | None = None) -> Convexity:
    """Score one layer of one store and write the result (the body of every
    sweep task, local or remote): open the store, read the layer (a memmap),
    check it as ``layer_scores`` does, score it with :func:`score_layer` (split
    over ``shards`` Ray tasks when given) -- or, with a Euclidean plan, read it
    as sequences and score it as ``layer_euclidean_scores`` does -- and write
    ``{record, result}`` to ``task.result_path`` via a temporary file, with
    ``ran_on``: where it ran (host, device, and from the Ray engine its engine,
    node and GPU ids; provenance only, never part of the reuse key)."""
    store = open_store(task.store_path)
    if store.fingerprint != task.fingerprint:
        raise ValueError(
            f"store {task.store_name!r} ({task.store_path}) changed while the sweep ran "
            "(its content fingerprint differs); rerun the sweep"
        )
    if isinstance(plan, EuclideanPlan):
        result = score_euclidean_task(store, task.layer, plan, device)
    else:
        x = check_embeddings(store.layer(task.layer), name=f"store {task.store_name!r} layer {task.layer}",
                             convert=False)
        result = score_layer(x, plan, backend=backend, device=device, engine="local" if shards is None else "ray",
                             shards=shards)
    where = {"engine": "local", "gpu_ids": None, **(ran_on or {}), "host": socket.gethostname(),
             "device": None if device is None else str(device)}
    write_json_atomic(task.result_path, {**task.record, "format": RESULT_FORMAT, "result": result.to_dict(),
                                         "fields": convexity_fields(result), "ran_on": where})
    return result


_PER_CLASS = ("per_class", "per_class_stderr", "n_pairs")


def convexity_fields(result: Convexity) -> dict[str, Any]:
    """Every field of ``result`` as JSON-ready values (per-class dicts as lists
    in class order; NaN and inf kept, as Python's json writes and reads them),
    so :func:`convexity_from_fields` rebuilds it exactly."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Convexity):
        value = getattr(result, f.name)
        out[f.name] = list(value.values()) if f.name in _PER_CLASS else value
    return json.loads(json.dumps(out, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def convexity_from_fields(fields: dict[str, Any], classes: Sequence[Hashable]) -> Convexity:
    """Inverse of :func:`convexity_fields` given the class list."""
    values = dict(fields)
    for name in _PER_CLASS:
        if len(values[name]) != len(classes):
            raise ValueError(f"{name} has {len(values[name])} classes, expected {len(classes)}")
        values[name] = dict(zip(classes, values[name]))
    return Convexity(**values)


def _open_stores(stores: Any) -> list[LayerStore]:
    if isinstance(stores, (str, os.PathLike, LayerStore)):
        stores = [stores]
    try:
        items = list(stores)
    except TypeError:
        raise TypeError(f"stores must be a store path, a LayerStore, or a list of them; got {type(stores).__name__}") from None
    if not items:
        raise ValueError("stores is empty: nothing to sweep")
    opened = [s if isinstance(s, LayerStore) else open_store(s) for s in items]
    names = [s.name for s in opened]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"stores share the name(s) {dup}: give each store a distinct name (meta['name'] or directory)")
    return opened


def _layer_indices(layers: Any, store: LayerStore) -> list[int]:
    if layers is None:
        return list(range(store.n_layers))
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be None or a sequence of layer indices, got {layers!r}")
    out = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, (int,)) and not hasattr(i, "__index__"):
            raise TypeError(f"layers must hold integers, got {i!r}")
        i = int(i)
        if not -store.n_layers <= i < store.n_layers:
            raise ValueError(f"layers: store {store.name!r} has {store.n_layers} layers (0..{store.n_layers - 1}), no layer {i}")
        out.append(i % store.n_layers)
    if not out:
        raise ValueError("layers is empty: nothing to sweep")
    if len(set(out)) != len(out):
        raise ValueError(f"layers repeats a layer: {list(layers)}")
    return out


def _safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if safe != name or not safe:
        safe = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return safe


def _reusable(path: Path, record: dict[str, Any], classes: Sequence[Hashable]) -> Convexity | None:
    """The finished result at ``path`` if it was made with exactly ``record``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("format") != RESULT_FORMAT or any(data.get(k) != v for k, v in record.items()):
            return None
        return convexity_from_fields(data["fields"], classes)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_local(tasks: list[LayerTask], plans: dict[str, ScoringPlan], backend: str, device: Any,
               report: Reporter, on_done: Callable[[LayerTask, Convexity], None]) -> list[tuple[LayerTask, BaseException]]:
    failures = []
    for task in tasks:
        report.running(1)
        try:
            result = run_layer_task(task, plans[task.store_name], backend, device)
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            failures.append((task, exc))
            report.finished(task, None, exc)
            continue
        on_done(task, result)
        report.finished(task, result)
    return failures


def sweep(
    stores: Any,
    *,
    out_dir: str | os.PathLike[str],
    engine: str = "local",
    address: str | None = None,
    layers: Sequence[int] | None = None,
    k: int = 10,
    pairs: int | None = DEFAULT_PAIRS,
    sources: int | None = None,
    exact: bool = False,
    seed: int | None = 0,
    min_class_size: int = 2,
    backend: str = "auto",
    device: Any = None,
    shards: int | None = None,
    measure: str = "graph",
    model: Any = None,
    n_sampled: int = 10,
    batch_size: int = 1024,
    label_map: Any = None,
    retries: int = 3,
    progress: bool | None = None,
    verbose: bool = True,
    plot: bool = True,
) -> dict[str, LayerScores]:
    """Score every layer of every store; resumable, on this machine or on Ray.

    Parameters
    ----------
    stores : a store path or :class:`~fastconvex.store.LayerStore`, or a list of them
        (distinct names).
    out_dir : directory for the per-task results (``tasks/<store>/``) and the
        merged ``sweep.json``, ``sweep.csv`` and ``sweep.png``. Finished tasks
        there whose settings and store fingerprint match are reused.
    engine : "local" (this process, one task after another) or "ray" (one remote
        task per (store, layer): ``num_gpus=1`` when the cluster has GPUs, else
        ``num_cpus=1``; the worker reads its layer from the store, so the store
        must be on storage every node sees).
    address : Ray address (``"auto"``, ``"ray://host:10001"``, ...); default: the
        running Ray, ``RAY_ADDRESS``, or a new local one. Only with ``engine="ray"``.
    layers : layer indices to score in every store (default: all).
    k, pairs, sources, exact, seed, min_class_size, backend, device
        As in :func:`fastconvex.layer_scores`.
    shards : split each layer's kNN and shortest paths over this many Ray tasks
        (for layers too big for one worker; ``engine="ray"`` only; same numbers).
    measure : "graph" (default) or "euclidean": Euclidean convexity through
        ``model``'s remaining layers, on frame stores (``fastconvex embed
        --frames``; each layer read as padded sequences), the pairs drawn once
        per store from the utterances' labels, so row i equals
        ``layer_euclidean_scores`` of the store's sequences bit for bit.
        ``k``, ``sources``, ``backend`` and ``shards`` are graph-only.
    model : euclidean: the classifier -- a model directory (each worker loads
        it; the only form on Ray) or a ``hf.predict_from_layer`` callable; its
        fingerprint goes into each result (see :mod:`fastconvex._sweep_euclidean`).
    n_sampled, batch_size, label_map : euclidean: as in
        :func:`fastconvex.layer_euclidean_scores` (``device`` is where the worker
        loads the model); every store's labels are checked against the model's
        classes (``config.id2label``) before any task runs.
    retries : times Ray reruns a task whose worker or node died.
    progress : tqdm bar over tasks (None: when stderr is a terminal); when stderr
        is not a terminal, a log line per finished task instead.
    verbose : log lines (reused results, per-task lines, written files) on stderr.
    plot : also write ``sweep.png`` (needs matplotlib; written after the results).

    Returns
    -------
    dict of store name -> LayerScores
        Row i of each is the i-th scored layer (``layers`` order); equal bit for
        bit to ``layer_scores([store.layer(i) for i in layers], store.labels, ...)``.
    """
    shards = check_engine(engine, shards)
    if address is not None and engine != "ray":
        raise ValueError("address is a Ray cluster address: it needs engine='ray'")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if engine == "ray":
        from ._ray import require_ray

        require_ray()
    if measure not in ("graph", "euclidean"):
        raise ValueError(f'measure must be "graph" or "euclidean", got {measure!r}')
    if measure == "euclidean":
        check_euclidean_options(k=k, sources=sources, backend=backend, shards=shards, model=model, engine=engine)
    elif model is not None:
        raise ValueError('model applies to measure="euclidean" only')
    elif label_map is not None:
        raise ValueError('label_map applies to measure="euclidean" only')
    else:  # the name only (the workers resolve "auto" where they run), before out_dir and any task
        check_backend_name(backend)
    estimator, budget = resolve_estimator(pairs, sources, exact)
    opened = _open_stores(stores)
    selections = {s.name: _layer_indices(layers, s) for s in opened}
    plans: dict[str, Any]
    if measure == "euclidean":
        fingerprint = model_fingerprint(model)
        plans = {s.name: plan_store(s, selections[s.name], model=model, fingerprint=fingerprint,
                                    n_sampled=n_sampled, pairs=pairs, exact=exact, batch_size=batch_size, seed=seed,
                                    min_class_size=min_class_size, label_map=label_map)
                 for s in opened}
    else:
        plans = {
            s.name: plan_scoring(s.labels, k=k, pairs=pairs, sources=sources, exact=exact, seed=seed,
                                 min_class_size=min_class_size)
            for s in opened
        }
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"k": int(k), "estimator": estimator, "budget": int(budget), "seed": plans[opened[0].name].seed,
                "min_class_size": int(min_class_size), "backend": backend,
                "device": None if device is None else str(device)}
    if measure == "euclidean":  # graph settings stay as they were, so finished graph sweeps stay reusable
        first = plans[opened[0].name]
        settings = {"measure": "euclidean", "model": first.fingerprint, "n_sampled": first.n_sampled,
                    "batch_size": first.batch_size, **{key: settings[key] for key in (
                        "estimator", "budget", "seed", "min_class_size", "device")}}
        if first.label_map is not None:  # absent otherwise, so finished sweeps without one stay reusable
            settings["label_map"] = label_map_setting(first.label_map)

    results: dict[tuple[str, int], Convexity] = {}
    pending: list[LayerTask] = []
    for s in opened:
        folder = out / "tasks" / _safe(s.name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in selections[s.name]:
            record = {"settings": settings, "store": s.name, "fingerprint": s.fingerprint, "layer": i}
            key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
            path = folder / f"layer_{i:03d}.{key}.json"
            # absolute paths: workers elsewhere (another cwd, another node) open them
            task = LayerTask(str(s.path.resolve()), s.name, s.fingerprint, i, str(path.resolve()), record)
            old = _reusable(path, record, plans[s.name].classes)
            if old is not None:
                results[(s.name, i)] = old
            else:
                pending.append(task)
    total = len(results) + len(pending)
    if verbose:
        print(f"sweep: {total} task(s) over {len(opened)} store(s); reusing {len(results)} finished result(s) "
              f"from {out}, computing {len(pending)} on engine {engine!r}", file=sys.stderr, flush=True)

    def on_done(task: LayerTask, result: Convexity) -> None:
        results[(task.store_name, task.layer)] = result

    report = Reporter(total, len(results), progress, verbose)
    start = time.perf_counter()
    try:
        if engine == "local":
            failures = _run_local(pending, plans, backend, device, report, on_done)  # shards is None here
        else:
            from ._ray import run_on_ray

            failures = run_on_ray(pending, plans, backend=backend, device=device, shards=shards, address=address,
                                  retries=retries, report=report, on_done=on_done)
    finally:
        report.close()
        release_predictors()  # a model the local engine loaded is not kept after the sweep
    if failures:
        task, exc = failures[0]
        msg = (f"{len(failures)} of {len(pending)} sweep task(s) failed (finished ones are saved in {out}; "
               f"a rerun resumes); first: store {task.store_name!r} layer {task.layer}: {exc}")
        raise (type(exc) if isinstance(exc, (ValueError, TypeError)) else RuntimeError)(msg) from exc

    merged = {s.name: stack_layers([results[(s.name, i)] for i in selections[s.name]], plans[s.name].classes)
              for s in opened}
    write_outputs(out, opened, selections, merged, settings, reused=total - len(pending),
                   computed=len(pending), seconds=time.perf_counter() - start, plot=plot, verbose=verbose)
    return merged
