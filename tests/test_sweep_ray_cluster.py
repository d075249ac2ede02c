"""A sweep on a simulated two-node Ray cluster survives losing a node mid-sweep."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

import fastconvex as fc  # noqa: E402

from test_sweep import assert_same  # noqa: E402

N_LAYERS = 8


def test_node_removed_mid_sweep(tmp_path):
    rng = np.random.default_rng(4)
    labels = np.array(["a", "b", "c", "d", "e"])[rng.integers(0, 5, 1500)]
    store = fc.save_store(tmp_path / "big", (rng.standard_normal((1500, 16)).astype(np.float32)
                                             for _ in range(N_LAYERS)), labels)
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
                box["result"] = fc.sweep([store.path], out_dir=out, engine="ray", pairs=2000, plot=False,
                                         verbose=False)
            except BaseException as exc:  # reported below
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
