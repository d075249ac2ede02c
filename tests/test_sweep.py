"""fastconvex.sweep on the local engine (Ray: tests/test_sweep_ray.py) and the
``fastconvex sweep`` command."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

import fastconvex as fc
from fastconvex.cli import main

ESTIMATORS = {"pairs": dict(pairs=40), "sources": dict(sources=5, pairs=None), "exact": dict(exact=True)}


def make_stores(root, *, n=(41, 37, 30), layers=3, seed=0):
    """Three small stores: string labels, int labels, mixed labels (one class of
    one member, a duplicate row, odd sizes)."""
    rng = np.random.default_rng(seed)
    kinds = [
        lambda m: np.array(["yes", "no", "up"])[rng.integers(0, 3, m)],
        lambda m: rng.integers(0, 4, m),
        lambda m: [("a", 1), "b", 7][:1] * (m // 2) + ["b"] * (m - m // 2 - 1) + [7],
    ]
    stores = []
    for j, (m, label_fn) in enumerate(zip(n, kinds)):
        xs = [rng.standard_normal((m, 6)).astype(np.float32) for _ in range(layers)]
        xs[0][3] = xs[0][5]  # an exact duplicate
        stores.append(fc.save_store(root / f"store{j}", xs, label_fn(m), meta={"model": f"m{j}"}))
    return stores


def assert_same(sweep_result, reference):
    assert sweep_result.to_dict() == reference.to_dict()  # every float equal, bit for bit
    np.testing.assert_array_equal(sweep_result.scores, reference.scores)
    np.testing.assert_array_equal(sweep_result.per_class, reference.per_class)
    assert sweep_result.classes == reference.classes


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_sweep_equals_layer_scores(tmp_path, estimator):
    stores = make_stores(tmp_path)
    kw = dict(k=4, seed=3, **ESTIMATORS[estimator])
    result = fc.sweep([s.path for s in stores], out_dir=tmp_path / "out", verbose=False, plot=False, **kw)
    assert list(result) == ["store0", "store1", "store2"]
    for s in stores:
        assert_same(result[s.name], fc.layer_scores(s.layers, s.labels, **kw))
    assert result["store2"].classes == [("a", 1), "b", 7]  # labels keep their types
    # each task's file says where it ran: this process's host, no Ray, no GPU
    import socket

    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "tasks").glob("*/*.json"))]
    assert len(records) == 9
    assert all(
        r["ran_on"] == {"engine": "local", "gpu_ids": None, "host": socket.gethostname(), "device": None}
        for r in records
    )


def test_outputs_json_csv_plot(tmp_path, capsys):
    stores = make_stores(tmp_path)
    result = fc.sweep(stores, out_dir=tmp_path / "out", pairs=30, layers=[0, 2])
    out = tmp_path / "out"
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["settings"]["estimator"] == "pairs" and doc["computed"] == 6 and doc["reused"] == 0
    assert doc["stores"]["store1"]["layer_indices"] == [0, 2]
    assert doc["stores"]["store1"]["scores"] == result["store1"].scores.tolist()
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and [r["layer"] for r in rows[:2]] == ["0", "2"]
    for r in rows:
        c = result[r["store"]].layers[[0, 2].index(int(r["layer"]))]
        assert float(r["score"]) == c.score and int(r["n_pairs"]) == c.total_pairs
    assert (out / "sweep.png").stat().st_size > 1000
    err = capsys.readouterr().err
    assert "reusing 0 finished result(s)" in err and "store2 layer 2: score" in err


def test_results_written_before_the_plot(tmp_path, monkeypatch):
    stores = make_stores(tmp_path)[:1]

    def broken_plot(*a, **k):
        raise RuntimeError("plotting broke")

    monkeypatch.setattr("fastconvex.plot.plot_layer_scores", broken_plot)
    with pytest.raises(RuntimeError, match="plotting broke"):
        fc.sweep(stores, out_dir=tmp_path / "out", pairs=30, verbose=False)
    assert (tmp_path / "out" / "sweep.json").exists() and (tmp_path / "out" / "sweep.csv").exists()


def test_resume_recomputes_only_missing_results(tmp_path, capsys):
    stores = make_stores(tmp_path)
    kw = dict(pairs=30, out_dir=tmp_path / "out", plot=False)
    first = fc.sweep(stores, **kw)
    files = sorted((tmp_path / "out" / "tasks").rglob("*.json"))
    assert len(files) == 9
    files[1].unlink()
    files[4].unlink()
    files[7].write_text("{half a json")  # a torn file from elsewhere is not trusted
    kept = {f: f.stat().st_mtime_ns for f in files if f.exists() and f != files[7]}
    capsys.readouterr()
    again = fc.sweep(stores, **kw)
    err = capsys.readouterr().err
    assert "reusing 6 finished result(s)" in err and "computing 3" in err
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())  # reused, not rewritten
    for name in first:
        assert_same(again[name], first[name])


def test_other_settings_or_content_are_never_reused(tmp_path, capsys):
    stores = make_stores(tmp_path)
    fc.sweep(stores, out_dir=tmp_path / "out", pairs=30, plot=False)
    for change in (dict(pairs=31), dict(pairs=30, k=5), dict(pairs=30, seed=1), dict(sources=3, pairs=None)):
        capsys.readouterr()
        fc.sweep(stores, out_dir=tmp_path / "out", plot=False, overwrite=True, **change)
        assert "reusing 0 finished result(s)" in capsys.readouterr().err, change
    # same name, new content: recomputed, and the numbers follow the new content
    rng = np.random.default_rng(9)
    new = fc.save_store(
        stores[0].path,
        [rng.standard_normal((41, 6)).astype(np.float32) for _ in range(3)],
        stores[0].labels,
        overwrite=True,
    )
    capsys.readouterr()
    result = fc.sweep(stores[:1] and [new.path], out_dir=tmp_path / "out", pairs=30, plot=False, overwrite=True)
    assert "reusing 0 finished result(s)" in capsys.readouterr().err
    assert_same(result["store0"], fc.layer_scores(new.layers, new.labels, pairs=30))


def test_bad_arguments(tmp_path, monkeypatch):
    stores = make_stores(tmp_path)
    with pytest.raises(ValueError, match="engine must be one of"):
        fc.sweep(stores, out_dir=tmp_path / "o", engine="spark")
    with pytest.raises(ValueError, match="address.*engine='ray'"):
        fc.sweep(stores, out_dir=tmp_path / "o", address="auto")
    with pytest.raises(ValueError, match="store0.*has 3 layers.*no layer 3"):
        fc.sweep(stores, out_dir=tmp_path / "o", layers=[3])
    with pytest.raises(ValueError, match="share the name"):
        fc.sweep([stores[0], stores[0].path], out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="k must be < the number of points"):
        fc.sweep(stores, out_dir=tmp_path / "o", k=30)
    # a misspelt backend is refused up front: no out_dir, no failing tasks
    with pytest.raises(ValueError, match=r"^backend must be one of .*got 'nunba'"):
        fc.sweep(stores, out_dir=tmp_path / "o", backend="nunba", verbose=False, plot=False)
    assert not (tmp_path / "o").exists()
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r'pip install "fastconvex\[ray\]"'):
        fc.sweep(stores, out_dir=tmp_path / "o", engine="ray")


def test_failing_task_is_reported_and_others_kept(tmp_path):
    stores = make_stores(tmp_path)
    bad = np.load(stores[1].path / "layer_001.npy", mmap_mode="r+")
    bad[2, 1] = np.nan  # same size, so the store still opens; the layer check names it
    bad.flush()
    # recorded in the manifest as the store's content (else the sha256 check refuses it first)
    from fastconvex.store.format import _array_sha256

    manifest = json.loads((stores[1].path / "store.json").read_text())
    manifest["layers"][1]["sha256"] = _array_sha256(bad)
    (stores[1].path / "store.json").write_text(json.dumps(manifest))
    del bad
    with pytest.raises(ValueError, match=r"1 of 9 sweep task\(s\) failed.*store1.*layer 1.*non-finite.*row 2"):
        fc.sweep(stores, out_dir=tmp_path / "out", pairs=30, verbose=False)
    assert len(list((tmp_path / "out" / "tasks").rglob("*.json"))) == 8


def test_cli_sweep(tmp_path, capsys, monkeypatch):
    stores = make_stores(tmp_path)
    paths = [str(s.path) for s in stores]
    assert main(["sweep", *paths, "--out-dir", str(tmp_path / "out"), "--pairs", "30", "--layers", "0,1"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].split()[:3] == ["store", "layer", "convexity"] and len(lines) == 7
    ref = fc.layer_scores(stores[2].layers[:2], stores[2].labels, pairs=30)
    assert f"{100 * ref.scores[1]:.2f}" in lines[6]
    assert (
        main(
            [
                "sweep",
                *paths,
                "--out-dir",
                str(tmp_path / "out"),
                "--pairs",
                "30",
                "--layers",
                "0,1",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["reused"] == 6 and doc["stores"]["store2"]["scores"] == ref.scores.tolist()
    assert main(["sweep", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["sweep", *paths, "--out-dir", str(tmp_path / "o"), "--engine", "ray"]) == 2  # an extra to install
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err


def test_progress_bar_over_tasks(tmp_path, capsys):
    stores = make_stores(tmp_path)
    fc.sweep(stores, out_dir=tmp_path / "out", pairs=30, plot=False, progress=True, layers=[1])
    err = capsys.readouterr().err
    assert "sweep: 100%" in err and "3/3" in err and "failed=0" in err
    assert "store1 layer 1: score" not in err  # the bar replaces the per-task lines


def test_cli_sweep_logs_a_line_per_task_when_stderr_is_no_terminal(tmp_path, capsys):
    # docs/scale.md: a tqdm bar when stderr is a terminal, else one log line per
    # finished task (the command used to force the bar into logs)
    stores = make_stores(tmp_path)
    assert (
        main(
            [
                "sweep",
                *[str(s.path) for s in stores],
                "--out-dir",
                str(tmp_path / "out"),
                "--pairs",
                "30",
                "--layers",
                "1",
                "--no-plot",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "store1 layer 1: score" in err and "[3/3]" in err
    assert "\r" not in err and "sweep: 100%" not in err
