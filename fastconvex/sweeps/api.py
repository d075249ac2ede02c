"""``fastconvex.sweep``: every layer of every layer store, one task per
(store, layer), each finished task written atomically so a rerun resumes.

The pair plan of a store is made once, from its labels and the seed, by the
same :func:`fastconvex.graph.plan.plan_scoring` that ``layer_scores`` uses, and each
task runs the same :func:`fastconvex.graph.api.score_layer` on the layer it reads
from the store itself: a sweep's numbers equal
``layer_scores(store.layers, store.labels)`` bit for bit, on either engine.

A finished result is reused only when everything it depends on is proven
unchanged: its file's checksum verifies, its record (the store's content
fingerprint, every scoring setting, the digest of the pair draw, the layer)
equals the new task's, its format version is this code's, and the layer it
came from still hashes to the manifest's sha256 (the labels are verified
whenever a store is opened). See docs/scale.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastconvex.backends.select import check_backend_name, resolve_backend
from fastconvex.core.devices import check_device, check_device_here
from fastconvex.core.inputs import check_seed
from fastconvex.core.pairs import DEFAULT_PAIRS, resolve_estimator
from fastconvex.core.results import Convexity, LayerScores, stack_layers
from fastconvex.graph.plan import check_engine, plan_scoring
from fastconvex.runners.base import Runner
from fastconvex.runners.local import LocalRunner
from fastconvex.runners.ray import RayRunner
from fastconvex.store import LayerStore, open_store
from fastconvex.store.format import plan_sha256
from fastconvex.sweeps.euclidean import (
    check_euclidean_options,
    label_map_setting,
    model_fingerprint,
    plan_store,
    preload_model,
    release_predictors,
)
from fastconvex.sweeps.output import (
    Reporter,
    check_earlier_outputs,
    format_table,
    output_lock,
    write_outputs,
)
from fastconvex.sweeps.task import LayerTask, ran_as, read_result, run_layer_task

__all__ = ["LayerTask", "SweepResults", "format_table", "run_layer_task", "sweep"]


class SweepResults(dict):
    """What :func:`sweep` returns: a dict of store name ->
    :class:`~fastconvex.LayerScores`, with ``document``, the merged result this
    run wrote to ``sweep.json`` (the command line reports it, so a report is
    always what this run computed). ``dict(r)`` and ``r.copy()`` give a plain
    dict of the scores, without ``document``."""

    def __init__(self, results: dict[str, LayerScores], document: dict[str, Any]) -> None:
        super().__init__(results)
        self.document = document


def _open_stores(stores: Any) -> list[LayerStore]:
    if isinstance(stores, (str, os.PathLike, LayerStore)):
        stores = [stores]
    try:
        items = list(stores)
    except TypeError:
        raise TypeError(
            f"stores must be a store path, a LayerStore, or a list of them; got {type(stores).__name__}"
        ) from None
    if not items:
        raise ValueError("stores is empty: nothing to sweep")
    # an opened LayerStore is opened again: its labels verified now, not when it was opened
    opened = [open_store(s.path if isinstance(s, LayerStore) else s) for s in items]
    names = [s.name for s in opened]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        paths = [str(s.path) for s in opened if s.name in dup]
        raise ValueError(
            f"stores share the name(s) {dup} ({', '.join(paths)}): give each store a distinct name "
            "(meta['name'] or directory)"
        )
    return opened


def _layer_indices(layers: Any, store: LayerStore) -> list[int]:
    if layers is None:
        return list(range(store.n_layers))
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be None or a sequence of layer indices, got {layers!r}")
    out = []
    for i in layers:
        if isinstance(i, bool) or (not isinstance(i, (int,)) and not hasattr(i, "__index__")):
            raise TypeError(f"layers must hold integers, got {i!r}")
        i = int(i)
        if not -store.n_layers <= i < store.n_layers:
            raise ValueError(
                f"layers: store {store.name!r} ({store.path}) has {store.n_layers} layers "
                f"(0..{store.n_layers - 1}), no layer {i}"
            )
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


def _labels_file(store: LayerStore) -> Path:
    return store.path / store.manifest["labels"]["file"]


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
    retries: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    verbose: bool = True,
    plot: bool = True,
) -> SweepResults:
    """Score every layer of every store; resumable, on this machine or on Ray.

    Parameters
    ----------
    stores : a store path or :class:`~fastconvex.store.LayerStore`, or a list of them
        (distinct names). Each is opened (again) here: its labels are verified
        against its manifest.
    out_dir : directory for the per-task results (``tasks/<store>/``) and the
        merged ``sweep.json``, ``sweep.csv`` and ``sweep.png``. A finished task
        there is reused when its file's checksum verifies, it was made with the
        same settings, pair draw and store content, and the layer it came from
        still hashes to its manifest's sha256 (else it is recomputed, and the
        log names the file). One sweep at a time writes into ``out_dir``: a
        second is refused (:class:`fastconvex.store.OutputDirectoryBusy`,
        naming the holder's pid and host).
    engine : "local" (this process, one task after another) or "ray" (one remote
        task per (store, layer): ``num_gpus=1`` when the cluster has GPUs, else
        ``num_cpus=1``; the worker reads its layer from the store, so the store
        must be on storage every node sees).
    address : Ray address (``"auto"``, ``"ray://host:10001"``, ...); default: the
        running Ray, ``RAY_ADDRESS``, or a new local one. Only with ``engine="ray"``.
    layers : layer indices to score in every store (default: all).
    k, pairs, sources, exact, seed, min_class_size, backend, device
        As in :func:`fastconvex.layer_scores`. ``seed=None`` draws a seed, logs
        it and records it in the results: every such run is a new draw, never
        merged with another (pass the logged seed to resume one).
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
        fingerprint goes into each result (see :mod:`fastconvex.sweeps.euclidean`).
    n_sampled, batch_size, label_map : euclidean: as in
        :func:`fastconvex.layer_euclidean_scores` (``device`` is where the worker
        loads the model); every store's labels are checked against the model's
        classes (``config.id2label``) before any task runs.
    retries : ``engine="ray"`` only: times Ray reruns a task whose worker or
        node died (default 3).
    overwrite : replace merged outputs (``sweep.json``, ``sweep.csv``,
        ``sweep.png``) in ``out_dir`` that a sweep with other settings, or over
        other stores or layers, wrote; without it such a sweep is refused
        before any work.
    progress : tqdm bar over tasks (None: when stderr is a terminal); when stderr
        is not a terminal, a log line per finished task instead.
    verbose : log lines (reused results, per-task lines, written files) on stderr.
    plot : also write ``sweep.png`` (needs matplotlib; written after the results).

    Returns
    -------
    SweepResults
        A dict of store name -> LayerScores: row i of each is the i-th scored
        layer (``layers`` order), equal bit for bit to
        ``layer_scores([store.layer(i) for i in layers], store.labels, ...)``;
        its ``document`` is what this run wrote to ``sweep.json`` (what it
        computed and reused, never read back from ``out_dir``).
    """
    shards = _check_options(
        engine=engine,
        address=address,
        retries=retries,
        overwrite=overwrite,
        device=device,
        measure=measure,
        model=model,
        label_map=label_map,
        backend=backend,
        k=k,
        sources=sources,
        shards=shards,
    )
    estimator, budget = resolve_estimator(pairs, sources, exact)
    drawn = check_seed(seed) is None
    if drawn:  # recorded in every result and in sweep.json: this draw is never mixed with another
        seed = secrets.randbits(63)
    opened = _open_stores(stores)
    selections = {s.name: _layer_indices(layers, s) for s in opened}
    plans = _plan_stores(
        opened,
        selections,
        measure=measure,
        model=model,
        k=k,
        pairs=pairs,
        sources=sources,
        exact=exact,
        seed=seed,
        min_class_size=min_class_size,
        n_sampled=n_sampled,
        batch_size=batch_size,
        label_map=label_map,
    )
    if measure == "euclidean" and engine == "local":
        # the model folder loaded once, into the cache its tasks use, before out_dir is touched: a folder
        # that cannot be used (weights not matching its config, its own code) is one error, not one per
        # task. On Ray the driver may have no GPU (nor the workers' paths): each worker loads it, once.
        preload_model(plans[opened[0].name], device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _locked_sweep(
            out,
            opened,
            selections,
            plans,
            engine=engine,
            address=address,
            k=k,
            estimator=estimator,
            budget=budget,
            drawn=drawn,
            min_class_size=min_class_size,
            backend=backend,
            device=device,
            shards=shards,
            measure=measure,
            retries=retries,
            overwrite=overwrite,
            progress=progress,
            verbose=verbose,
            plot=plot,
        )


def _check_options(
    *,
    engine: str,
    address: Any,
    retries: Any,
    overwrite: Any,
    device: Any,
    measure: Any,
    model: Any,
    label_map: Any,
    backend: Any,
    k: Any,
    sources: Any,
    shards: Any,
) -> int | None:
    """Every option checked before a store is read or ``out_dir`` touched;
    returns ``shards`` checked."""
    shards = check_engine(engine, shards)
    if address is not None and engine != "ray":
        raise ValueError("address is a Ray cluster address: it needs engine='ray'")
    if retries is not None:
        if engine != "ray":
            raise ValueError(
                "retries applies to engine='ray' (Ray reruns a task whose worker or node died); "
                "the local engine runs each task once, and a rerun resumes"
            )
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    if engine == "ray":
        from fastconvex.runners.session import require_ray

        require_ray()
        check_device(device)  # the workers' devices are checked where they run
    else:
        check_device_here(device)  # a usage error before any work, not the first task's after the stores are read
    if measure not in ("graph", "euclidean"):
        raise ValueError(f'measure must be "graph" or "euclidean", got {measure!r}')
    if measure == "euclidean":
        check_euclidean_options(k=k, sources=sources, backend=backend, shards=shards, model=model, engine=engine)
    elif model is not None:
        raise ValueError('model applies to measure="euclidean" only')
    elif label_map is not None:
        raise ValueError('label_map applies to measure="euclidean" only')
    else:  # the name only on Ray (the workers resolve "auto" where they run), before out_dir and any task
        check_backend_name(backend)
        if engine == "local":  # Triton missing, or a CPU backend with a CUDA device: before the stores are read
            resolve_backend(backend, device=device)
    return shards


def _plan_stores(
    opened: list[LayerStore],
    selections: dict[str, list[int]],
    *,
    measure: str,
    model: Any,
    k: int,
    pairs: Any,
    sources: Any,
    exact: bool,
    seed: int | None,
    min_class_size: int,
    n_sampled: Any,
    batch_size: Any,
    label_map: Any,
) -> dict[str, Any]:
    """Each store's plan (its pairs drawn once from its labels and the seed);
    an error names the file it is about: the labels, or the store."""
    plans: dict[str, Any] = {}
    fingerprint = model_fingerprint(model) if measure == "euclidean" else None
    for s in opened:
        try:
            if measure == "euclidean":
                assert fingerprint is not None  # measure == "euclidean"
                plans[s.name] = plan_store(
                    s,
                    selections[s.name],
                    model=model,
                    fingerprint=fingerprint,
                    n_sampled=n_sampled,
                    pairs=pairs,
                    exact=exact,
                    batch_size=batch_size,
                    seed=seed,
                    min_class_size=min_class_size,
                    label_map=label_map,
                )
            else:
                plans[s.name] = plan_scoring(
                    s.labels, k=k, pairs=pairs, sources=sources, exact=exact, seed=seed, min_class_size=min_class_size
                )
        except (ValueError, TypeError) as exc:  # named by the file it is about: the labels, or the store
            text = str(exc)
            if str(s.path) in text:
                raise
            where = s.path if measure == "euclidean" else _labels_file(s)
            raise type(exc)(f"store {s.name!r} ({where}): {text}") from exc
    return plans


def _locked_sweep(
    out: Path,
    opened: list[LayerStore],
    selections: dict[str, list[int]],
    plans: dict[str, Any],
    *,
    engine: str,
    address: str | None,
    k: int,
    estimator: str,
    budget: int,
    drawn: bool,
    min_class_size: int,
    backend: str,
    device: Any,
    shards: int | None,
    measure: str,
    retries: int | None,
    overwrite: bool,
    progress: bool | None,
    verbose: bool,
    plot: bool,
) -> SweepResults:
    """The sweep proper, while this process holds ``out``'s lock."""
    first = plans[opened[0].name]
    settings = {
        "k": int(k),
        "estimator": estimator,
        "budget": int(budget),
        "seed": first.seed,
        "min_class_size": int(min_class_size),
        "backend": backend,
        "device": None if device is None else str(device),
    }
    if measure == "euclidean":
        settings = {
            "measure": "euclidean",
            "model": first.fingerprint,
            "n_sampled": first.n_sampled,
            "batch_size": first.batch_size,
            **{key: settings[key] for key in ("estimator", "budget", "seed", "min_class_size", "device")},
        }
        if first.label_map is not None:  # absent otherwise, so finished sweeps without one stay reusable
            settings["label_map"] = label_map_setting(first.label_map)
    check_earlier_outputs(out, settings, selections, overwrite, drawn=drawn)
    if drawn and verbose:
        print(
            f"sweep: seed=None drew seed {first.seed}: a new pair draw, never merged with another "
            f"(seed={first.seed} resumes this sweep)",
            file=sys.stderr,
            flush=True,
        )
    with contextlib.ExitStack() as stack:
        ray = None
        if engine == "ray":  # connected before the keys are made: they hold what the cluster will run on
            from fastconvex.runners.session import check_cluster_device, ray_session

            ray = stack.enter_context(ray_session(address, quiet=not verbose))
            check_cluster_device(ray, device)
        classifier = getattr(first, "model", None) or getattr(first, "predictor", None)  # Euclidean plans only
        resolved = ran_as(measure, backend, device, ray, model=classifier)
        runner: Runner = LocalRunner() if ray is None else RayRunner(ray, retries=3 if retries is None else retries)
        return _run_tasks(
            out,
            opened,
            selections,
            plans,
            settings,
            resolved,
            runner=runner,
            drawn=drawn,
            backend=backend,
            device=device,
            shards=shards,
            progress=progress,
            verbose=verbose,
            plot=plot,
        )


def _run_tasks(
    out: Path,
    opened: list[LayerStore],
    selections: dict[str, list[int]],
    plans: dict[str, Any],
    settings: dict[str, Any],
    resolved: dict[str, str],
    *,
    runner: Runner,
    drawn: bool,
    backend: str,
    device: Any,
    shards: int | None,
    progress: bool | None,
    verbose: bool,
    plot: bool,
) -> SweepResults:
    """Reuse what verifies, compute the rest, write the merged outputs."""

    def log(line: str) -> None:
        if verbose:
            print(f"sweep: {line}", file=sys.stderr, flush=True)

    results: dict[tuple[str, int], Convexity] = {}
    reused: list[tuple[LayerStore, int]] = []
    pending: list[LayerTask] = []
    for s in opened:
        folder = out / "tasks" / _safe(s.name)
        folder.mkdir(parents=True, exist_ok=True)
        pair_digest = plan_sha256(plans[s.name].pairs)
        for i in selections[s.name]:
            record = {
                "settings": settings,
                "store": s.name,
                "fingerprint": s.fingerprint,
                "pairs": pair_digest,
                "ran_as": resolved,
                "layer": i,
            }
            key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
            path = folder / f"layer_{i:03d}.{key}.json"
            # absolute paths: workers elsewhere (another cwd, another node) open them
            task = LayerTask(str(s.path.resolve()), s.name, s.fingerprint, i, str(path.resolve()), record)
            old, why = read_result(path, record, plans[s.name].classes)
            if old is not None:
                reused.append((s, i))
                results[(s.name, i)] = old
            else:
                if why is not None:
                    log(f"{path} {why}: recomputing it")
                pending.append(task)
    # a result is reused only while the layer it came from is unchanged: the
    # layers hashed a few at a time (plain reads; hashlib releases the GIL), the
    # first changed one refused, naming its file
    if reused:
        with ThreadPoolExecutor(max_workers=min(4, len(reused)), thread_name_prefix="fastconvex-verify") as pool:
            for _ in pool.map(lambda item: item[0].verify_layer(item[1]), reused):
                pass
    total = len(results) + len(pending)
    log(
        f"{total} task(s) over {len(opened)} store(s); reusing {len(results)} finished result(s) "
        f"from {out}, computing {len(pending)} on engine {runner.name!r}"
    )

    def on_done(task: LayerTask, result: Convexity) -> None:
        results[(task.store_name, task.layer)] = result
        report.finished(task, result)

    report = Reporter(total, len(results), progress, verbose)
    start = time.perf_counter()
    try:
        shared = {name: runner.share(plan) for name, plan in plans.items()}  # once per store
        calls = [(task, (task, shared[task.store_name], backend, device, shards)) for task in pending]
        failures = runner.run(
            run_layer_task,
            calls,
            on_done=on_done,
            running=report.running,
            on_failed=lambda task, exc: report.finished(task, None, exc),
        )
    finally:
        report.close()
        release_predictors()  # a model the local engine loaded is not kept after the sweep
    if failures:
        task, exc = failures[0]
        # a seed=None rerun draws a new seed: only the drawn one resumes this sweep
        resume = f"rerun with seed={settings['seed']} to resume" if drawn else "a rerun resumes"
        msg = (
            f"{len(failures)} of {len(pending)} sweep task(s) failed (finished ones are saved in {out}; "
            f"{resume}); first: store {task.store_name!r} layer {task.layer}: {exc}"
        )
        raise (type(exc) if isinstance(exc, (ValueError, TypeError)) else RuntimeError)(msg) from exc

    merged = {
        s.name: stack_layers([results[(s.name, i)] for i in selections[s.name]], plans[s.name].classes) for s in opened
    }
    doc = write_outputs(
        out,
        opened,
        selections,
        merged,
        settings,
        reused=total - len(pending),
        computed=len(pending),
        seconds=time.perf_counter() - start,
        plot=plot,
        verbose=verbose,
    )
    return SweepResults(merged, doc)
