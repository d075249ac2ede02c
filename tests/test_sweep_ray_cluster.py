"""Simulated multi-node Ray clusters: a sweep survives losing a node mid-sweep,
and on a cluster with GPUs each task asks for one and is given it."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from test_sweep import assert_same  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex.sweeps.task import task_device  # noqa: E402

N_LAYERS = 8


def test_node_removed_mid_sweep(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.array(["a", "b", "c", "d", "e"])[rng.integers(0, 5, 1500)]
    store = fc.save_store(
        tmp_path / "big", (rng.standard_normal((1500, 16)).astype(np.float32) for _ in range(N_LAYERS)), labels
    )
    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    # the head schedules nothing; two worker nodes of one CPU each run the tasks
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    doomed = cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    out = tmp_path / "out"
    box: dict = {}
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)

        def run():
            try:
                box["result"] = fc.sweep([store.path], out_dir=out, engine="ray", pairs=2000, plot=False, verbose=False)
            except BaseException as exc:  # noqa: BLE001 - reported below
                box["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while not list(out.glob("tasks/*/*.json")) and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.02)
        cluster.remove_node(doomed)
        done_at_removal = len(list(out.glob("tasks/*/*.json")))
        thread.join(timeout=180)
        assert not thread.is_alive(), "the sweep did not finish after the node was removed"
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert "error" not in box, box.get("error")
    assert 1 <= done_at_removal < N_LAYERS  # the node really went away mid-sweep
    assert_same(box["result"]["big"], fc.layer_scores(store.layers, store.labels, pairs=2000))


def test_tasks_ask_for_a_gpu_when_the_cluster_has_one(tmp_path):
    """A node that declares one GPU (Ray does not check that it exists) and two
    CPUs: every task is given GPU 0 (so asked for ``num_gpus=1``), runs there,
    and scores (numba) exactly as one process does."""
    rng = np.random.default_rng(5)
    labels = np.array(["x", "y", "z"])[rng.integers(0, 3, 90)]
    store = fc.save_store(tmp_path / "s", [rng.standard_normal((90, 8)).astype(np.float32) for _ in range(3)], labels)
    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    node = cluster.add_node(num_cpus=2, num_gpus=1)
    out = tmp_path / "out"
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        result = fc.sweep(
            [store.path], out_dir=out, engine="ray", backend="numba", pairs=300, plot=False, verbose=False
        )
        # what the keys hold on this cluster with device=None: the GPU each task is given
        from fastconvex.sweeps.task import ran_as

        planned = {m: ran_as(m, "auto", None, ray) for m in ("graph", "euclidean")}
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert_same(result["s"], fc.layer_scores(store.layers, store.labels, pairs=300))
    ran_on = [json.loads(p.read_text())["ran_on"] for p in sorted(out.glob("tasks/*/*.json"))]
    assert len(ran_on) == 3
    for where in ran_on:
        assert where["engine"] == "ray" and where["gpu_ids"] == [0] and where["node"] == node.node_id
        assert where["device"] is None  # numba: the backend does not take the GPU
    assert {json.dumps(json.loads(p.read_text())["ran_as"]) for p in out.glob("tasks/*/*.json")} == {
        '{"backend": "numba"}'
    }
    assert planned == {"graph": {"backend": "triton"}, "euclidean": {"device": "cuda"}}


@pytest.mark.parametrize(
    "backend, device, gpu_ids, expected",
    [
        ("auto", None, [0], "cuda"),  # the GPU Ray assigned is the only one the task sees
        ("triton", None, [3], "cuda"),
        ("numba", None, [0], None),  # a CPU backend keeps its own device
        ("auto", "cpu", [0], "cpu"),  # a device the caller named is kept
        ("auto", None, [], None),  # no GPU given: the backend chooses
    ],
)
def test_task_device(backend, device, gpu_ids, expected):
    assert task_device(backend, device, gpu_ids) == expected


def test_quiet_sweep_on_a_ray_it_starts_prints_nothing_on_stderr(tmp_path):
    """--quiet keeps Ray's own log lines (start-up, token notice) off stderr
    too. A separate process: pytest's log capture would hide them here."""
    import subprocess
    import sys

    rng = np.random.default_rng(6)
    store = fc.save_store(
        tmp_path / "q", [rng.standard_normal((60, 5)).astype(np.float32) for _ in range(2)], rng.integers(0, 3, 60)
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastconvex",
            "sweep",
            str(store.path),
            "--out-dir",
            str(tmp_path / "o"),
            "--engine",
            "ray",
            "--quiet",
            "--no-plot",
            "--pairs",
            "200",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    got = json.loads(run.stdout)["stores"]["q"]["scores"]
    assert got == fc.layer_scores(store.layers, store.labels, pairs=200).scores.tolist()
