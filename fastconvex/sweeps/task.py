"""One sweep task: score one layer of one store and write its result file,
the same function in this process and on a Ray worker; and how a finished
result is recognised and read back (its record, its checksum, what it ran as)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastconvex.backends.select import ENV_VAR, resolve_backend
from fastconvex.core.inputs import check_embeddings
from fastconvex.core.results import Convexity, convexity_fields, convexity_from_fields
from fastconvex.graph.api import score_layer
from fastconvex.graph.plan import ScoringPlan
from fastconvex.runners.base import LOCAL, Placement
from fastconvex.store import open_store, write_json_atomic
from fastconvex.store.format import json_sha256
from fastconvex.store.read import StoreError
from fastconvex.sweeps.euclidean import (
    EuclideanPlan,
    score_euclidean_task,
)

RESULT_FORMAT = "fastconvex-sweep-task"


# What a task result means. Bump it when a change would make the numbers of
# earlier result files wrong (how a layer is scored, what a field holds), so
# that they are recomputed rather than merged with new ones.
RESULT_VERSION = 1


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


def run_layer_task(
    task: LayerTask,
    plan: ScoringPlan | EuclideanPlan,
    backend: str = "auto",
    device: Any = None,
    shards: int | None = None,
    *,
    placement: Placement = LOCAL,
) -> Convexity:
    """Score one layer of one store and write the result (the body of every
    sweep task, local or remote): open the store, read the layer (a memmap),
    check it as ``layer_scores`` does, score it with :func:`score_layer` (split
    over ``shards`` Ray tasks when given) -- or, with a Euclidean plan, read it
    as sequences and score it as ``layer_euclidean_scores`` does -- and write
    ``{record, result}`` to ``task.result_path`` via a temporary file, with
    where it ran (host, device, and on Ray the node and GPU ids; provenance
    only, never part of the reuse key). On Ray (``placement``) a task given a
    GPU scores on it: ``device="cuda"`` (the GPU Ray assigned) unless a device
    was named."""
    if placement.engine == "ray":
        device = task_device(backend, device, list(placement.gpu_ids or ()))
        _crash_if_asked(task)
    store = open_store(task.store_path)  # the labels are verified against the manifest here
    if store.fingerprint != task.fingerprint:
        raise StoreError(
            f"store {task.store_name!r} ({task.store_path}) changed while the sweep ran "
            f"(its {store.path / 'store.json'} differs); rerun the sweep"
        )
    # The layer's bytes are hashed against the manifest's sha256 on a thread of
    # their own while the layer is scored, and the result is written only once
    # they verify: a file changed since the store was written is refused, naming
    # it, and on a GPU the hash (one pass over the file at sha256's speed on one
    # core) hides behind the scoring instead of adding to it.
    # The layer's file is opened once (hold_layer): the thread hashes that open
    # file and the scorer reads its memmap (store.layer and store.sequences
    # return it), so a file renamed over the path meanwhile is neither hashed
    # nor scored; what was scored is what was verified.
    layer = store.hold_layer(task.layer)
    stop = threading.Event()
    try:
        # what the key says the result is made with, checked before any work:
        # the backend resolved here (and then used as resolved), or the
        # device type the classifier runs on
        if isinstance(plan, EuclideanPlan):
            _check_ran_as(task, {"device": _model_device_type(plan.model or plan.predictor, device)})
        else:
            backend = resolve_backend(backend, layer, device)
            _check_ran_as(task, {"backend": backend})
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastconvex-verify") as pool:
            verified = pool.submit(store.verify_layer, task.layer, _stop=stop)
            try:
                if isinstance(plan, EuclideanPlan):
                    result = score_euclidean_task(store, task.layer, plan, device)
                else:
                    x = check_embeddings(
                        layer,
                        name=f"store {task.store_name!r} layer {task.layer} ({store.layer_file(task.layer)})",
                        convert=False,
                    )
                    result = score_layer(
                        x,
                        plan,
                        backend=backend,
                        device=device,
                        engine="local" if shards is None else "ray",
                        shards=shards,
                    )
            except Exception:
                if not verified.cancel():
                    verified.result()  # a changed file explains a failed scoring better than its own error
                raise
            except BaseException:
                # Ctrl-C or exit: never replaced by the hash's verdict nor
                # delayed by the rest of the hash (the pool's exit waits for it)
                verified.cancel()
                stop.set()
                raise
            verified.result()
    finally:
        store.release_layers()
    if not isinstance(plan, EuclideanPlan):
        _check_ran_as(task, {"backend": result.backend})  # what the scorer reports it used
    where = {**placement.provenance(), "host": socket.gethostname(), "device": None if device is None else str(device)}
    write_result(
        task.result_path,
        {
            **task.record,
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "result": result.to_dict(),
            "fields": convexity_fields(result),
            "ran_on": where,
        },
    )
    return result


def _device_type(device: Any) -> str:
    """ "cpu" or "cuda": the kind of device a task scores on (None: the CPU)."""
    if device is None:
        return "cpu"
    import torch

    return torch.device(device).type


def _model_device_type(model: Any, device: Any) -> str:
    """The device type a Euclidean task's classifier runs on: that of an
    ``hf.predict_from_layer`` callable's model (it runs where it is), else
    ``device``'s (where a model directory is loaded)."""
    inner = None if isinstance(model, (str, os.PathLike)) else getattr(model, "model", None)
    if inner is not None and hasattr(inner, "parameters"):
        for parameter in inner.parameters():
            return str(parameter.device.type)
    return _device_type(device)


def ran_as(measure: str, backend: str, device: Any, ray: Any = None, model: Any = None) -> dict[str, str]:
    """What a task's numbers depend on beyond its settings: for the graph
    measure the backend that scores it (Triton's float32 kNN tiers and Numba's
    kernels agree to about 1e-6, not bit for bit: tests/test_triton.py), for the
    Euclidean one the device type the model runs on (CPU and GPU logits
    differ, and an argmax can flip). Resolved here, on the driver, as the tasks
    will resolve it -- for Ray (``ray``: the connected module) from the
    cluster's resources, as :func:`fastconvex.runners.session.task_resources` and
    :func:`fastconvex.sweeps.task.task_device` do -- and checked again by each task
    against what it actually used."""
    if ray is not None:
        from fastconvex.sweeps.task import task_device

        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        device = task_device(backend, device, [0] if gpu else [])
    if measure == "euclidean":
        return {"device": _model_device_type(model, device)}
    if ray is None:
        return {"backend": resolve_backend(backend, device=device)}
    if backend == "auto":  # the workers' choice, as resolve_backend makes it there
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
    if backend == "auto":
        backend = "triton" if _device_type(device) == "cuda" else "numba"
    return {"backend": backend}


def _check_ran_as(task: LayerTask, actual: dict[str, str]) -> None:
    """A task's result is written under its key only if it is made as the key
    says (a worker that resolves another backend or device than the driver
    expected, e.g. another FASTCONVEX_BACKEND there, fails instead)."""
    expected = task.record.get("ran_as")
    if not expected:
        return
    if actual != expected:
        raise RuntimeError(
            f"store {task.store_name!r} layer {task.layer} was scored with {actual}, but the sweep "
            f"resolved {expected} for its results on this engine; set device=/backend= explicitly"
        )


def write_result(path: str | os.PathLike[str], content: dict[str, Any]) -> None:
    """Write a task result atomically with ``sha256``, the checksum of the rest
    (its canonical JSON), so an edited or damaged file is never reused."""
    doc = json.loads(json.dumps(content, allow_nan=True))
    doc["sha256"] = json_sha256(doc)
    write_json_atomic(path, doc)


def read_result(path: Path, record: dict[str, Any], classes: Sequence[Hashable]) -> tuple[Convexity | None, str | None]:
    """(the result at ``path``, None) if it verifies and was made with exactly
    ``record`` by this result format; else (None, why not), or (None, None)
    when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"cannot be read ({exc})"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"is not valid JSON (truncated or edited: {exc})"
    if not isinstance(data, dict):
        return None, "is not a task result"
    given = data.pop("sha256", None)
    if given is None:
        return None, "carries no checksum (written by an older fastconvex, or edited)"
    if given != json_sha256(data):
        return None, "does not match its sha256 checksum (edited or damaged)"
    if data.get("format") != RESULT_FORMAT or data.get("version") != RESULT_VERSION:
        return None, (
            f"has result format {data.get('format')!r} version {data.get('version')!r}; this fastconvex "
            f"writes {RESULT_FORMAT!r} version {RESULT_VERSION}"
        )
    if any(data.get(key) != value for key, value in record.items()):
        return None, "was made with other settings, pairs or store content"
    try:
        return convexity_from_fields(data["fields"], classes), None
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"has malformed fields ({type(exc).__name__}: {exc})"


# Fault injection for the test suite only: "DIR" makes each task's worker exit
# (os._exit) on its first attempt at a layer listed in DIR/crash_<store>_<layer>,
# removing the file first so Ray's retry then succeeds.
CRASH_ENV = "FASTCONVEX_TEST_CRASH_DIR"


def _crash_if_asked(task: LayerTask) -> None:
    """The test suite's fault hook: a worker that dies (``os._exit``) once,
    on the layer a marker file in ``$FASTCONVEX_TEST_CRASH_DIR`` names."""
    crash_dir = os.environ.get(CRASH_ENV)
    if crash_dir:
        marker = os.path.join(crash_dir, f"crash_{task.store_name}_{task.layer}")
        if os.path.exists(marker):
            os.remove(marker)
            os._exit(1)


def task_device(backend: str, device: Any, gpu_ids: list[Any]) -> Any:
    """Where a Ray task scores: the device the caller named, else ``"cuda"``
    (the GPU Ray assigned, the only one the task sees) when Ray gave it one and
    the backend can use it, else None (the backend's own choice). "auto" is
    resolved through FASTCONVEX_BACKEND first, as ``resolve_backend`` does on
    the worker (``FASTCONVEX_BACKEND=numba`` scores on the CPU, GPU or not)."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "").strip() or "auto"
    if device is None and backend in ("auto", "triton") and gpu_ids:
        return "cuda"
    return device
