"""fastconvex.sweep on a local Ray (``ray.init(num_cpus=2)``): the same numbers
as ``layer_scores``, and a worker that dies is retried. Few and small: one Ray
for the whole module, shut down after it."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")  # in the [test] extra; the rest of fastconvex never needs it

import numpy as np  # noqa: E402
from test_cli_score_prune import speech  # noqa: E402,F401  (tiny model and labelled audio)
from test_sweep import ESTIMATORS, assert_same, make_stores  # noqa: E402
from test_sweep_euclidean import KW, euclid  # noqa: E402,F401  (tiny classifier and its frame store)
from test_sweep_euclidean import _reference as euclidean_reference  # noqa: E402

import fastconvex as fc  # noqa: E402
from fastconvex.cli import main  # noqa: E402
from fastconvex.sweeps.task import CRASH_ENV  # noqa: E402


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    crash_dir = tmp_path_factory.mktemp("crash")
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {CRASH_ENV: str(crash_dir)}}
    )
    yield crash_dir
    ray.shutdown()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return make_stores(tmp_path_factory.mktemp("stores"))


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_ray_sweep_equals_layer_scores(local_ray, stores, tmp_path, estimator):
    kw = dict(k=4, seed=3, **ESTIMATORS[estimator])
    result = fc.sweep(stores, out_dir=tmp_path / "out", engine="ray", verbose=False, plot=False, **kw)
    for s in stores:
        assert_same(result[s.name], fc.layer_scores(s.layers, s.labels, **kw))
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_ray_euclidean_sweep_equals_layer_euclidean_scores(local_ray, euclid, tmp_path, capsys):  # noqa: F811
    root, model, _ = euclid
    store = fc.open_store(root / "store")  # embed --frames, one process
    # embed --frames on Ray: the same frame store (rows, utterance index, labels; values to batching's rounding)
    assert (
        main(
            [
                "embed",
                str(root / "model"),
                "--audio",
                str(root / "audio"),
                "--out-dir",
                str(tmp_path / "r"),
                "--frames",
                "--engine",
                "ray",
                "--chunk-size",
                "5",
                "--batch-size",
                "3",
                "--quiet",
            ]
        )
        == 0
    ), capsys.readouterr().err
    on_ray = fc.open_store(tmp_path / "r")
    assert on_ray.meta["pooling"] == "frames" and on_ray.meta["ignored_frames"] == 0
    np.testing.assert_array_equal(on_ray.utterance, store.utterance)
    np.testing.assert_array_equal(on_ray.labels, store.labels)
    for i in range(store.n_layers):
        np.testing.assert_allclose(on_ray.layer(i), store.layer(i), rtol=1e-5, atol=1e-6)
    result = fc.sweep(
        store,
        out_dir=tmp_path / "out",
        engine="ray",
        measure="euclidean",
        model=root / "model",
        verbose=False,
        plot=False,
        **KW,
    )  # each worker loads the model from its directory
    assert_same(result[store.name], euclidean_reference(store, model))


def test_worker_that_exits_is_retried(local_ray, stores, tmp_path, capsys):
    marker = local_ray / "crash_store1_2"
    marker.write_text("exit on the first try")
    result = fc.sweep(stores, out_dir=tmp_path / "out", engine="ray", pairs=30, plot=False)
    assert not marker.exists()  # the worker scoring store1 layer 2 did exit once
    for s in stores:
        assert_same(result[s.name], fc.layer_scores(s.layers, s.labels, pairs=30))
    # and a rerun on Ray reuses every result
    capsys.readouterr()
    fc.sweep(stores, out_dir=tmp_path / "out", engine="ray", pairs=30, plot=False)
    assert "reusing 9 finished result(s)" in capsys.readouterr().err


def test_worker_exit_without_retries_fails_the_sweep_clearly(local_ray, stores, tmp_path):
    (local_ray / "crash_store0_1").write_text("no retry allowed")
    with pytest.raises(RuntimeError, match=r"1 of 3 sweep task.*a rerun resumes.*store0.*layer 1: The worker died"):
        fc.sweep(stores[:1], out_dir=tmp_path / "out", engine="ray", pairs=30, retries=0, plot=False, verbose=False)


def test_cuda_on_a_cluster_without_gpus_fails_before_any_task(local_ray, stores, tmp_path):
    no_gpu = r"device='cuda' was requested, but the Ray cluster has no GPU \(resources: CPU 2"
    with pytest.raises(RuntimeError, match=no_gpu):
        fc.sweep(stores[:1], out_dir=tmp_path / "out", engine="ray", pairs=30, device="cuda", plot=False, verbose=False)
    assert not list((tmp_path / "out").rglob("*.json"))


@pytest.mark.hf
def test_embed_on_ray_equals_one_process(local_ray, speech, tmp_path, capsys):  # noqa: F811
    from fastconvex.cli import main

    root, _, _ = speech
    common = [str(root / "model"), "--audio", str(root / "audio"), "--batch-size", "4", "--quiet"]
    assert main(["embed", *common, "--out-dir", str(tmp_path / "one")]) == 0
    assert main(["embed", *common, "--out-dir", str(tmp_path / "ray"), "--engine", "ray", "--chunk-size", "7"]) == 0
    one, distributed = fc.open_store(tmp_path / "one"), fc.open_store(tmp_path / "ray")
    assert distributed.labels.tolist() == one.labels.tolist() and len(distributed) == len(one) == 4
    for a, b in zip(distributed.layers, one.layers):  # same rows, same order
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "ray"]  # no partial directory left


@pytest.mark.hf
def test_embed_on_ray_resumes_after_its_driver_is_killed(local_ray, speech, tmp_path, capsys):  # noqa: F811
    """A Ray embed whose driver is killed (SIGKILL) once some chunks are done
    resumes on rerun: only the missing chunks are embedded, and the store
    equals the one-process store."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from fastconvex.cli import main

    root, _, _ = speech
    common = [str(root / "model"), "--audio", str(root / "audio"), "--batch-size", "1"]
    ray_args = ["--engine", "ray", "--chunk-size", "1", "--address", ray.get_runtime_context().gcs_address]
    out = tmp_path / "ray"
    done = tmp_path / ".ray.partial" / "done"
    driver = subprocess.Popen(
        [sys.executable, "-m", "fastconvex", "embed", *common, "--quiet", "--out-dir", str(out), *ray_args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (done.is_dir() and any(done.iterdir())):
        assert driver.poll() is None, driver.stderr.read()  # still running: not finished, not failed
        assert time.monotonic() < deadline, "no chunk finished in 240 s"
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started
    driver.wait()
    assert not out.exists()  # interrupted: no store yet, only the partial write
    n_done = len(list(done.iterdir()))
    capsys.readouterr()
    assert main(["embed", *common, "--out-dir", str(out), *ray_args]) == 0
    err = capsys.readouterr().err
    ran, reused = (int(v) for v in re.search(r"embed: (\d+) chunk\(s\) embedded on Ray, (\d+) reused", err).groups())
    assert reused >= n_done >= 1 and ran >= 1 and ran + reused == 24  # 24 utterances, one per chunk
    assert main(["embed", *common, "--quiet", "--out-dir", str(tmp_path / "one")]) == 0
    one, resumed = fc.open_store(tmp_path / "one"), fc.open_store(out)
    assert resumed.labels.tolist() == one.labels.tolist()
    for a, b in zip(resumed.layers, one.layers):  # same rows, same order
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_sharded_equals_one_process(local_ray, estimator):
    rng = np.random.default_rng(11)
    x = rng.integers(0, 4, (157, 3)).astype(np.float32)  # ties and duplicate rows
    x[:40] = rng.standard_normal((40, 3))
    labels = np.array(["s", "t", "u", "v"])[rng.integers(0, 4, 157)]
    kw = dict(k=5, seed=2, **ESTIMATORS[estimator])
    one = fc.graph_convexity(x, labels, **kw)
    assert fc.graph_convexity(x, labels, engine="ray", shards=3, **kw).to_dict() == one.to_dict()
    if estimator == "pairs":  # more shards than CPUs, and the layer_scores path
        assert fc.graph_convexity(x, labels, engine="ray", shards=7, **kw).to_dict() == one.to_dict()
        layers = [x, rng.standard_normal((157, 4))]
        assert_same(
            fc.layer_scores(layers, labels, engine="ray", shards=2, **kw), fc.layer_scores(layers, labels, **kw)
        )


def test_sharded_sweep(local_ray, stores, tmp_path):
    result = fc.sweep(stores[:2], out_dir=tmp_path / "out", engine="ray", shards=2, pairs=30, verbose=False, plot=False)
    for s in stores[:2]:
        assert_same(result[s.name], fc.layer_scores(s.layers, s.labels, pairs=30))
    with pytest.raises(ValueError, match="needs engine='ray'"):
        fc.sweep(stores, out_dir=tmp_path / "o", shards=2)
    with pytest.raises(ValueError, match="shards the Numba kernels"):
        fc.graph_convexity(stores[0].layers[0], stores[0].labels, engine="ray", shards=2, backend="naive")
