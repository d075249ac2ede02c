"""Issue 24, reuse integrity: a sweep reuses only what is proven unchanged
(store bytes, labels, settings, pair draw, result files), one sweep writes
into an output directory at a time, the command reports what it computed,
and the store and sweep errors name their files."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_sweep import assert_same, make_stores
from test_sweep_euclidean import euclid  # noqa: F401  (tiny classifier and its frame store)

import fastconvex as fc
from fastconvex.cli import main

KW = dict(pairs=30, plot=False)


def _task_files(out: Path) -> list[Path]:
    return sorted((out / "tasks").rglob("*.json"))


# ---- 1. store bytes verified before reuse and before scoring -----------------------------------


def test_layer_replaced_after_a_sweep_is_never_reused(tmp_path):
    stores = make_stores(tmp_path)
    out = tmp_path / "out"
    fc.sweep(stores, out_dir=out, verbose=False, **KW)
    # another array of the same shape and dtype: open_store's shape and size checks pass
    other = np.random.default_rng(5).standard_normal((37, 6)).astype(np.float32)
    np.save(stores[1].path / "layer_001.npy", other)
    pattern = r"store1/layer_001\.npy: content differs from store\.json's sha256.*rerun embed/save_store"
    with pytest.raises(ValueError, match=pattern):
        fc.sweep(stores, out_dir=out, verbose=False, **KW)  # the finished result of that layer
    with pytest.raises(ValueError, match=r"1 of 9 sweep task\(s\) failed.*" + pattern):
        fc.sweep(stores, out_dir=tmp_path / "fresh", verbose=False, **KW)  # scored afresh: refused first
    assert len(_task_files(tmp_path / "fresh")) == 8  # no result of the changed layer


def test_labels_rewritten_in_place_are_refused(tmp_path):
    stores = make_stores(tmp_path)
    out = tmp_path / "out"
    fc.sweep(stores, out_dir=out, verbose=False, **KW)
    labels = np.load(stores[1].path / "labels" / "labels.npy")
    np.save(stores[1].path / "labels" / "labels.npy", labels[::-1].copy())  # same shape, same dtype
    with pytest.raises(ValueError, match=r"store1/labels/labels\.npy: content differs from store\.json's sha256"):
        fc.sweep(stores, out_dir=out, verbose=False, **KW)
    with pytest.raises(ValueError, match=r"labels\.npy: content differs"):
        fc.open_store(stores[1].path)


def test_an_opened_store_is_verified_again_when_swept(tmp_path):
    store = make_stores(tmp_path)[0]  # opened before its labels change
    path = store.path / "labels" / "labels.npy"
    np.save(path, np.load(path)[::-1].copy())
    with pytest.raises(ValueError, match=r"labels\.npy: content differs"):
        fc.sweep(store, out_dir=tmp_path / "out", verbose=False, **KW)


# ---- 2. the pair draw is part of the key --------------------------------------------------------


def test_result_records_the_pair_draw(tmp_path):
    stores = make_stores(tmp_path)[:1]
    fc.sweep(stores, out_dir=tmp_path / "out", verbose=False, **KW)
    record = json.loads(_task_files(tmp_path / "out")[0].read_text())
    assert len(record["pairs"]) == 64 and record["version"] == 1  # a sha256 of the plan, and the format


# ---- 3. seed=None: a new draw, recorded, never merged --------------------------------------------


def test_seed_none_records_its_draw_and_never_merges_two(tmp_path, capsys):
    store = make_stores(tmp_path)[1]
    out = tmp_path / "out"
    first = fc.sweep(store, out_dir=out, seed=None, layers=[0, 1], **KW)
    seed = json.loads((out / "sweep.json").read_text())["settings"]["seed"]
    assert isinstance(seed, int) and first["store1"].layers[0].seed == seed
    assert f"seed=None drew seed {seed}" in capsys.readouterr().err
    assert_same(first["store1"], fc.layer_scores(store.layers[:2], store.labels, pairs=30, seed=seed))
    # the same out_dir with seed=None again: refused, naming the recorded seed
    with pytest.raises(ValueError, match=rf"other settings \(seed {seed} there, \d+ now.*seed={seed} resumes"):
        fc.sweep(store, out_dir=out, seed=None, layers=[0, 1], **KW)
    # a run killed before its merged outputs: nothing of it is merged into a new draw
    for name in ("sweep.json", "sweep.csv"):
        (out / name).unlink()
    _task_files(out)[0].unlink()
    capsys.readouterr()
    again = fc.sweep(store, out_dir=out, seed=None, layers=[0, 1], **KW)
    assert "reusing 0 finished result(s)" in capsys.readouterr().err
    new_seed = again["store1"].layers[0].seed
    assert new_seed != seed and again["store1"].layers[1].seed == new_seed
    assert_same(again["store1"], fc.layer_scores(store.layers[:2], store.labels, pairs=30, seed=new_seed))
    # the logged seed resumes that draw
    capsys.readouterr()
    fc.sweep(store, out_dir=out, seed=new_seed, layers=[0, 1], **KW)
    assert "reusing 2 finished result(s)" in capsys.readouterr().err


# ---- 4. result files carry a checksum -----------------------------------------------------------


def test_edited_or_truncated_result_is_recomputed_and_named(tmp_path, capsys):
    stores = make_stores(tmp_path)[:1]
    out = tmp_path / "out"
    first = fc.sweep(stores, out_dir=out, **KW)
    edited, truncated = _task_files(out)[:2]
    doc = json.loads(edited.read_text())
    doc["fields"]["score"] = 0.999  # a plausible number, by hand
    edited.write_text(json.dumps(doc))
    truncated.write_text(truncated.read_text()[:-40])
    capsys.readouterr()
    again = fc.sweep(stores, out_dir=out, **KW)
    err = capsys.readouterr().err
    assert f"{edited} does not match its sha256 checksum (edited or damaged): recomputing it" in err
    assert f"{truncated} is not valid JSON" in err and "reusing 1 finished result(s)" in err
    assert_same(again["store0"], first["store0"])
    assert json.loads(edited.read_text())["fields"]["score"] == first["store0"].layers[0].score


def test_result_without_checksum_is_not_trusted(tmp_path, capsys):
    stores = make_stores(tmp_path)[:1]
    out = tmp_path / "out"
    fc.sweep(stores, out_dir=out, layers=[0], **KW)
    (path,) = _task_files(out)
    doc = json.loads(path.read_text())
    del doc["sha256"]
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    fc.sweep(stores, out_dir=out, layers=[0], **KW)
    assert f"{path} carries no checksum" in capsys.readouterr().err


# ---- 5. one writer per output directory ---------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import fastconvex as fc
    import fastconvex.sweeps.api as sw
    import fastconvex.sweeps.task as task_mod

    store, out, started, go = sys.argv[1:5]
    real = sw.run_layer_task

    def held(*args, **kwargs):  # the sweep holds out_dir's lock until the test lets it go on
        Path(started).touch()
        while not Path(go).exists():
            time.sleep(0.05)
        return real(*args, **kwargs)

    sw.run_layer_task = held
    fc.sweep(store, out_dir=out, pairs=30, plot=False, verbose=False, layers=[0])
""")


def test_a_second_sweep_into_a_busy_out_dir_is_refused(tmp_path):
    store = make_stores(tmp_path)[0]
    out, started, go = tmp_path / "out", tmp_path / "started", tmp_path / "go"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.path), str(out), str(started), str(go)])
    try:
        for _ in range(1200):  # wait (at most 2 minutes) until the holder is inside its sweep
            if started.exists() or holder.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), "the first sweep never started"
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastconvex",
                "sweep",
                str(store.path),
                "--out-dir",
                str(out),
                "--pairs",
                "30",
                "--no-plot",
                "--layers",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert second.stderr.count("\n") == 1 and second.stdout == ""
        assert f"out_dir {str(out)!r} is in use by another sweep (pid {holder.pid} on host" in second.stderr
    finally:
        go.touch()
        assert holder.wait(timeout=120) == 0
    assert not (out / ".sweep.lock.holder").exists()
    fc.sweep(store, out_dir=out, layers=[0], verbose=False, **KW)  # free again once the holder finished


# ---- 6. the command reports what it computed ----------------------------------------------------


def test_command_reports_its_own_results_not_the_file(tmp_path, capsys, monkeypatch):
    stores = make_stores(tmp_path)[:1]
    import fastconvex.sweeps.output as sweep_out

    real = sweep_out.write_json_atomic

    def then_another_run_writes(path, obj):  # another writer replaces sweep.json right after this run
        real(path, obj)
        if Path(path).name == "sweep.json":
            real(
                path,
                {
                    **obj,
                    "computed": -1,
                    "stores": {"store0": {**obj["stores"]["store0"], "scores": [0.5] * 3, "layer_indices": [0, 1, 2]}},
                },
            )

    monkeypatch.setattr(sweep_out, "write_json_atomic", then_another_run_writes)
    assert (
        main(
            [
                "sweep",
                str(stores[0].path),
                "--out-dir",
                str(tmp_path / "out"),
                "--pairs",
                "30",
                "--no-plot",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    ref = fc.layer_scores(stores[0].layers, stores[0].labels, pairs=30)
    assert doc["computed"] == 3 and doc["stores"]["store0"]["scores"] == ref.scores.tolist()


# ---- 7. links out of the store ------------------------------------------------------------------


@pytest.mark.parametrize("member", ["layer_001.npy", "labels/labels.npy"])
def test_symlink_out_of_the_store_is_refused(tmp_path, member):
    store = make_stores(tmp_path)[0]
    elsewhere = tmp_path / "elsewhere.npy"
    os.replace(store.path / member, elsewhere)
    os.symlink(elsewhere, store.path / member)
    with pytest.raises(ValueError, match=rf"store0/{member}: resolves to {elsewhere}, outside the store"):
        fc.open_store(store.path)
    # a link inside the store is its own content
    os.unlink(store.path / member)
    os.replace(elsewhere, store.path / "kept.npy")
    os.symlink(store.path / "kept.npy", store.path / member)
    fc.open_store(store.path).verify()


# ---- 8. merged outputs of other settings are not replaced unasked -------------------------------


def test_outputs_of_other_settings_need_overwrite(tmp_path, capsys):
    stores = make_stores(tmp_path)[:1]
    out = tmp_path / "out"
    paths = [str(stores[0].path), "--out-dir", str(out), "--no-plot"]
    assert main(["sweep", *paths, "--pairs", "30"]) == 0
    before = (out / "sweep.json").read_bytes()
    capsys.readouterr()
    assert main(["sweep", *paths, "--pairs", "31"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "sweep.json was written by a sweep with other settings (budget 30 there, 31 now)" in err
        and "--overwrite" in err
    )
    assert (out / "sweep.json").read_bytes() == before and len(_task_files(out)) == 3  # nothing computed
    # fewer layers than the earlier sweep would drop its merged rows
    with pytest.raises(ValueError, match=r"also holds store 'store0' layer\(s\) \[2\]"):
        fc.sweep(stores, out_dir=out, layers=[0, 1], **KW)
    assert main(["sweep", *paths, "--pairs", "31", "--overwrite"]) == 0
    assert json.loads((out / "sweep.json").read_text())["settings"]["budget"] == 31
    # a sweep.csv that no sweep.json explains
    (out / "sweep.json").unlink()
    with pytest.raises(ValueError, match=r"holds sweep\.csv but no sweep\.json"):
        fc.sweep(stores, out_dir=out, **KW)


# ---- 9. options checked before any work ---------------------------------------------------------


def test_cuda_without_cuda_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = make_stores(tmp_path)[0]
    out = tmp_path / "out"
    assert main(["sweep", str(store.path), "--out-dir", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device='cuda' was requested, but no CUDA device is visible" in err
    assert not out.exists()


def test_retries_only_with_ray(tmp_path, capsys):
    store = make_stores(tmp_path)[0]
    out = tmp_path / "out"
    assert main(["sweep", str(store.path), "--out-dir", str(out), "--retries", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "retries applies to engine='ray'" in err and not out.exists()
    with pytest.raises(ValueError, match="retries applies to engine='ray'"):
        fc.sweep(store, out_dir=out, retries=2)


# ---- 10. errors name their files ----------------------------------------------------------------


def test_errors_name_the_files(tmp_path):
    store = fc.save_store(tmp_path / "s", [np.ones((4, 2), np.float32)], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=rf"store 's' \({tmp_path / 's' / 'labels' / 'labels.npy'}\): .*class"):
        fc.sweep(store, out_dir=tmp_path / "out", verbose=False, k=2, **KW)
    twin = fc.save_store(tmp_path / "t" / "s", [np.ones((4, 2), np.float32)], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=rf"share the name\(s\) \['s'\] \({tmp_path / 's'}, {twin.path}\)"):
        fc.sweep([store.path, twin.path], out_dir=tmp_path / "out", verbose=False, **KW)


def test_euclidean_store_errors_name_the_store(euclid, tmp_path, capsys):  # noqa: F811
    root, _, _ = euclid
    narrow = fc.save_store(tmp_path / "narrow", [np.zeros((4, 5), np.float32)], [1, 1, 2, 2], utterance=[0, 0, 1, 1])
    assert (
        main(
            [
                "sweep",
                str(narrow.path),
                "--out-dir",
                str(tmp_path / "o"),
                "--measure",
                "euclidean",
                "--model",
                str(root / "model"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"STORE {narrow.path}: model: hidden size 32 differs" in err
    with pytest.raises(ValueError, match=rf"store 'narrow' \({narrow.path}\): model: hidden size 32 differs"):
        fc.sweep(narrow, out_dir=tmp_path / "o", measure="euclidean", model=root / "model", verbose=False)


# ---- issue 24 review: what a sweep verifies is what it scores, and what it leaves --------------


def test_no_plot_removes_an_earlier_sweep_png(tmp_path):
    pytest.importorskip("matplotlib")
    store = make_stores(tmp_path)[0]
    out = tmp_path / "out"
    fc.sweep(store, out_dir=out, pairs=30, plot=True, verbose=False)
    assert (out / "sweep.png").is_file()
    fc.sweep(store, out_dir=out, pairs=30, plot=False, verbose=False, overwrite=True, k=5)  # other numbers
    assert not (out / "sweep.png").exists()  # no plot of the earlier sweep beside these results
    assert json.loads((out / "sweep.json").read_text())["settings"]["k"] == 5


def test_the_backend_a_result_was_made_with_is_part_of_its_key(tmp_path, monkeypatch):
    """backend="auto" resolved to another backend (here through FASTCONVEX_BACKEND)
    is another result: Triton's and Numba's numbers agree to ~1e-6, not bit for bit."""
    store = make_stores(tmp_path)[0]
    out = tmp_path / "out"
    monkeypatch.delenv("FASTCONVEX_BACKEND", raising=False)
    fc.sweep(store, out_dir=out, verbose=False, **KW)
    assert json.loads(_task_files(out)[0].read_text())["ran_as"] == {"backend": "numba"}
    monkeypatch.setenv("FASTCONVEX_BACKEND", "naive")
    doc = fc.sweep(store, out_dir=out, verbose=False, **KW).document
    assert doc["computed"] == 3 and doc["reused"] == 0  # not the numba results under the same settings
    assert (
        sorted(json.loads(p.read_text())["ran_as"]["backend"] for p in _task_files(out))
        == ["naive"] * 3 + ["numba"] * 3
    )


class _FakeRay:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_ran_as_resolves_the_device_type_of_a_ray_cluster(monkeypatch):
    from fastconvex.sweeps.task import ran_as

    monkeypatch.delenv("FASTCONVEX_BACKEND", raising=False)
    gpu, cpu = _FakeRay(CPU=8, GPU=1), _FakeRay(CPU=8)
    assert ran_as("euclidean", "auto", None, gpu) == {"device": "cuda"}  # task_device: the GPU Ray assigns
    assert ran_as("euclidean", "auto", None, cpu) == {"device": "cpu"}
    assert ran_as("euclidean", "auto", "cpu", gpu) == {"device": "cpu"}  # a named device is kept
    assert ran_as("euclidean", "auto", None) == {"device": "cpu"}  # local, no device: the CPU
    assert ran_as("graph", "auto", None, gpu) == {"backend": "triton"}
    assert ran_as("graph", "auto", None, cpu) == {"backend": "numba"}
    assert ran_as("graph", "numba", None, gpu) == {"backend": "numba"}
    # an hf.predict_from_layer callable runs where its model is, whatever device= says
    from types import SimpleNamespace

    on_gpu = SimpleNamespace(
        model=SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=SimpleNamespace(type="cuda"))]))
    )
    assert ran_as("euclidean", "auto", None, model=on_gpu) == {"device": "cuda"}
    assert ran_as("euclidean", "auto", None, model="a/model/dir") == {"device": "cpu"}


def test_a_task_that_ran_otherwise_than_its_key_says_writes_nothing(tmp_path):
    from fastconvex.graph.plan import plan_scoring
    from fastconvex.sweeps.task import LayerTask, run_layer_task

    store = make_stores(tmp_path)[0]
    result = tmp_path / "result.json"
    task = LayerTask(str(store.path), store.name, store.fingerprint, 0, str(result), {"ran_as": {"backend": "triton"}})
    with pytest.raises(
        RuntimeError,
        match=r"scored with \{'backend': 'numba'\}, but the sweep resolved "
        r"\{'backend': 'triton'\}",
    ):
        run_layer_task(task, plan_scoring(store.labels, pairs=30, seed=0), backend="numba")
    assert not result.exists()


@pytest.mark.parametrize(
    "dtype,shape",
    [
        ("float32", (37, 6)),
        ("float16", (5, 3)),
        (">f8", (11, 7)),
        ("int8", (13, 1)),
        ("float64", (0, 4)),
        ("uint16", (1, 9)),
    ],
)
def test_plain_read_hash_equals_the_manifest_hash(tmp_path, monkeypatch, dtype, shape):
    import fastconvex.store.read as sr
    from fastconvex.store.format import _array_sha256

    monkeypatch.setattr(sr, "_HASH_BLOCK", 7)  # blocks that end inside rows and values
    x = (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)
    file = tmp_path / "x.npy"
    np.save(file, x)
    _, _, offset = sr._npy_header(file)
    with open(file, "rb") as fh:
        assert sr._data_sha256(fh.fileno(), offset, x.nbytes, file) == _array_sha256(x)
    assert sr._data_sha256 is not None and len(sr._buffers.block) == 7


def test_a_stores_layers_verify_with_the_plain_read_hash(tmp_path, monkeypatch):
    import fastconvex.store.read as sr

    monkeypatch.setattr(sr, "_HASH_BLOCK", 1000)  # several blocks per layer
    store = make_stores(tmp_path)[2]
    for i in range(store.n_layers):
        store.verify_layer(i)
    np.save(store.path / "layer_002.npy", np.load(store.path / "layer_002.npy")[::-1].copy())
    with pytest.raises(fc.store.StoreError, match=r"layer_002\.npy: content differs"):
        store.verify_layer(2)


def test_a_held_layer_is_verified_and_scored_from_one_open_file(tmp_path):
    store = make_stores(tmp_path)[0]
    original = np.array(store.layer(1))
    held = store.hold_layer(1)
    other = tmp_path / "other.npy"
    np.save(other, original[::-1].copy())  # same shape and dtype, other content
    os.replace(other, store.layer_file(1))  # renamed over the path, as an atomic writer does
    store.verify_layer(1)  # the held file: unchanged
    np.testing.assert_array_equal(store.layer(1), original)
    np.testing.assert_array_equal(held, original)
    with pytest.raises(ValueError, match="content differs"):
        fc.open_store(store.path).verify_layer(1)  # the path now names the new file


def test_a_layer_renamed_over_while_a_task_runs_is_scored_as_verified(tmp_path, monkeypatch):
    """The file is replaced between the task's open and its hash: the task must
    hash and score the same file (before, the hash opened the path again)."""
    from fastconvex.store.read import LayerStore

    store = make_stores(tmp_path)[0]
    ref = fc.layer_scores(store.layers, store.labels, pairs=30)
    real = LayerStore.verify_layer
    swapped = []

    def replaced_first(self, index, **kwargs):
        if not swapped:
            other = tmp_path / "other.npy"
            np.save(other, np.load(self.layer_file(index))[::-1].copy())
            os.replace(other, self.layer_file(index))
            swapped.append(index)
        return real(self, index, **kwargs)

    monkeypatch.setattr(LayerStore, "verify_layer", replaced_first)
    got = fc.sweep(store, out_dir=tmp_path / "out", layers=[0], verbose=False, **KW)["store0"]
    assert swapped == [0]
    assert got.scores[0] == ref.scores[0]  # the bytes verified are the bytes scored: the original ones


@pytest.mark.parametrize("how", ["edited", "linked"])
def test_a_changed_store_file_is_a_data_error_in_the_command(tmp_path, capsys, how):
    store = make_stores(tmp_path)[0]
    layer = store.layer_file(1)
    if how == "edited":
        np.save(layer, np.load(layer)[::-1].copy())
        argv_layers = ["--layers", "1"]
    else:
        elsewhere = tmp_path / "elsewhere.npy"
        os.replace(layer, elsewhere)
        os.symlink(elsewhere, layer)
        argv_layers = []
    assert (
        main(
            [
                "sweep",
                str(store.path),
                "--out-dir",
                str(tmp_path / "out"),
                "--pairs",
                "30",
                "--no-plot",
                "--quiet",
                *argv_layers,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(layer) in err
    assert ("content differs" if how == "edited" else "outside the store") in err


def test_a_failed_seed_none_sweep_names_the_seed_that_resumes_it(tmp_path, monkeypatch, capsys):
    import fastconvex.sweeps.api as sw
    import fastconvex.sweeps.task as task_mod

    store = make_stores(tmp_path)[0]
    monkeypatch.setattr(sw.secrets, "randbits", lambda bits: 123456789)
    real = task_mod.score_layer
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(task_mod, "score_layer", second_fails)
    with pytest.raises(
        RuntimeError,
        match=r"rerun with seed=123456789 to resume\); first: store 'store0' layer 1: "
        r"worker lost",
    ) as info:
        fc.sweep(store, out_dir=tmp_path / "out", seed=None, verbose=False, **KW)
    assert "a rerun resumes" not in str(info.value)
    monkeypatch.setattr(task_mod, "score_layer", real)
    doc = fc.sweep(store, out_dir=tmp_path / "out", seed=123456789, verbose=False, **KW).document
    assert doc["reused"] == 2 and doc["computed"] == 1  # that seed does resume it


def test_a_cpu_backend_with_a_cuda_device_fails_before_the_stores_are_read(tmp_path, monkeypatch):
    import torch

    import fastconvex.sweeps.task as task_mod

    store = make_stores(tmp_path)[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def not_yet(*args, **kwargs):
        raise AssertionError("a store was read before the backend was resolved")

    monkeypatch.setattr(task_mod, "open_store", not_yet)
    with pytest.raises(RuntimeError, match=r"backend='numba' runs on the CPU; it cannot use device='cuda'"):
        fc.sweep(store, out_dir=tmp_path / "out", backend="numba", device="cuda", verbose=False, **KW)
    assert not (tmp_path / "out").exists()


# ---- open files, interrupts, index checks, hashing without preadv -------------------------------


_EMFILE_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    import numpy as np
    import fastconvex as fc
    import fastconvex.sweeps.api as sw
    import fastconvex.sweeps.task as task_mod

    errors = []
    run_layer_task = sw.run_layer_task

    def recorded(*args, **kwargs):  # each task's error, as text (no traceback kept here)
        try:
            return run_layer_task(*args, **kwargs)
        except Exception as exc:
            errors.append(str(exc))
            raise

    sw.run_layer_task = recorded
    root = sys.argv[1]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 20)
    warm = fc.save_store(os.path.join(root, "warm"), [rng.standard_normal((20, 4)).astype(np.float32)], labels)
    fc.sweep(warm, out_dir=os.path.join(root, "warm-out"), pairs=30, plot=False, verbose=False)  # JIT, imports
    store = fc.save_store(os.path.join(root, "s"),
                          [rng.standard_normal((20, 4)).astype(np.float32) for _ in range(60)], labels)
    for i in range(60):  # every layer changed in place: same shape and dtype, other content
        np.save(store.layer_file(i), rng.standard_normal((20, 4)).astype(np.float32))
    baseline = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (baseline + 40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        fc.sweep(store, out_dir=os.path.join(root, "out"), pairs=30, plot=False, verbose=False)
    except ValueError as exc:
        print(str(exc).splitlines()[0])
    print(sum("content differs" in e for e in errors), "content errors of", len(errors))
""")


def test_failed_tasks_do_not_keep_their_layer_files_open(tmp_path):
    """60 failed tasks under an fd limit 40 above the baseline: each task's file
    is closed when it ends (before, a failed task's traceback kept its open file
    and memmap until the sweep ended, and the sweep ran out of descriptors)."""
    script = tmp_path / "emfile.py"
    script.write_text(_EMFILE_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr
    first, counts = run.stdout.splitlines()[-2:]
    assert first.startswith("60 of 60 sweep task(s) failed"), run.stdout
    assert counts == "60 content errors of 60", run.stdout  # none "cannot be opened (Too many open files)"


def _fds_into(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with_link = os.path.join("/proc/self/fd", fd)
        with contextlib.suppress(OSError):
            n += os.readlink(with_link).startswith(str(path))
    return n


def test_a_finished_task_leaves_no_open_file_of_its_store(tmp_path, monkeypatch):
    import fastconvex.sweeps.task as task_mod
    from fastconvex.graph.plan import plan_scoring
    from fastconvex.sweeps.task import LayerTask, run_layer_task

    opened = []  # the task's LayerStore, kept alive: its files must be closed, not merely collected
    monkeypatch.setattr(task_mod, "open_store", lambda path: opened.append(fc.open_store(path)) or opened[-1])
    store = make_stores(tmp_path)[0]
    task = LayerTask(str(store.path), store.name, store.fingerprint, 1, str(tmp_path / "result.json"), {})
    before = _fds_into(store.path)
    result = run_layer_task(task, plan_scoring(store.labels, pairs=30, seed=0), backend="numba")
    assert result is not None and (tmp_path / "result.json").exists() and len(opened) == 1
    assert _fds_into(store.path) == before


def test_release_layers_closes_held_files_and_keeps_memmaps_valid(tmp_path):
    store = make_stores(tmp_path)[0]
    original = np.array(np.load(store.layer_file(2)))
    held = store.hold_layer(2)
    assert _fds_into(store.path) >= 1
    store.release_layers()
    del store._held  # nothing may still reach the file object
    np.testing.assert_array_equal(held, original)  # the memmap maps its own descriptor
    del held
    import gc

    gc.collect()
    assert _fds_into(tmp_path / "store0") == 0


def test_ctrl_c_while_scoring_a_changed_layer_is_not_replaced(tmp_path, monkeypatch):
    """A KeyboardInterrupt from the scorer propagates as itself, even when the
    layer's hash also fails (before, the StoreError replaced it and the sweep
    counted it as one more failed task)."""
    import fastconvex.sweeps.task as task_mod

    store = make_stores(tmp_path)[0]
    for i in range(store.n_layers):  # every layer fails its verification
        np.save(store.layer_file(i), np.load(store.layer_file(i))[::-1].copy())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(task_mod, "score_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fc.sweep(store, out_dir=tmp_path / "out", verbose=False, **KW)


def test_a_stopped_hash_stops_between_blocks(tmp_path, monkeypatch):
    import threading

    import fastconvex.store.read as sr

    monkeypatch.setattr(sr, "_HASH_BLOCK", 16)
    store = make_stores(tmp_path)[0]
    stop = threading.Event()
    stop.set()
    with pytest.raises(sr._Stopped):
        store.verify_layer(0, _stop=stop)


def test_index_checks_open_nothing(tmp_path, monkeypatch):
    store = make_stores(tmp_path)[0]
    opened = []
    monkeypatch.setattr(np, "load", lambda *a, **k: opened.append(a) or pytest.fail("np.load called"))
    with pytest.raises(IndexError, match=r"store 'store0' \(.*store0\) has 3 layers, no layer 3"):
        store.verify_layer(3)
    store.verify_layer(-1)  # the last layer, hashed from its own open file
    assert store.hold_layer(np.int64(-2)).shape == (41, 6)
    assert opened == []


def test_layers_hash_through_the_memmap_without_preadv(tmp_path, monkeypatch):
    import fastconvex.store.read as sr
    from fastconvex.store.format import _array_sha256

    monkeypatch.setattr(sr, "_HASH_BLOCK", 7)  # blocks that end inside rows and values
    store = make_stores(tmp_path)[1]
    with_preadv = [store.verify_layer(i) for i in range(store.n_layers)]
    monkeypatch.delattr(os, "preadv")
    assert with_preadv == [store.verify_layer(i) for i in range(store.n_layers)]  # every layer verifies
    x = np.load(store.layer_file(1))
    held = sr._LayerFile(store.layer_file(1), x.shape, x.dtype)
    try:
        assert held.sha256() == _array_sha256(x)
    finally:
        held.fh.close()
    np.save(store.layer_file(2), np.load(store.layer_file(2))[::-1].copy())
    with pytest.raises(fc.store.StoreError, match=r"layer_002\.npy: content differs"):
        store.verify_layer(2)


def test_a_task_whose_key_names_another_backend_fails_before_scoring(tmp_path, monkeypatch):
    """The backend is resolved and compared with the key before the layer is
    scored (before, a whole layer was scored and then thrown away)."""
    import fastconvex.sweeps.api as sw
    import fastconvex.sweeps.task as task_mod
    from fastconvex.graph.plan import plan_scoring

    store = make_stores(tmp_path)[0]
    monkeypatch.setattr(task_mod, "score_layer", lambda *a, **k: pytest.fail("scored before the key was checked"))
    task = sw.LayerTask(
        str(store.path), store.name, store.fingerprint, 0, str(tmp_path / "r.json"), {"ran_as": {"backend": "triton"}}
    )
    with pytest.raises(RuntimeError, match=r"scored with \{'backend': 'numba'\}, but the sweep resolved"):
        sw.run_layer_task(task, plan_scoring(store.labels, pairs=30, seed=0), backend="numba")
    monkeypatch.setenv("FASTCONVEX_BACKEND", "naive")
    with pytest.raises(RuntimeError, match=r"scored with \{'backend': 'naive'\}"):  # auto, resolved as the key's
        sw.run_layer_task(task, plan_scoring(store.labels, pairs=30, seed=0), backend="auto")
    assert not (tmp_path / "r.json").exists()


def test_sweep_results_is_exported_and_copies_are_plain_dicts(tmp_path):
    r = fc.sweep(make_stores(tmp_path)[0], out_dir=tmp_path / "out", verbose=False, **KW)
    assert type(r) is fc.SweepResults and "SweepResults" in fc.__all__
    assert r.document["computed"] == 3
    assert type(dict(r)) is dict and type(r.copy()) is dict and not hasattr(r.copy(), "document")
