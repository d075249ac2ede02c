"""Files written by fastconvex before its restructuring into folders (version
0.1.0 as of commit 738474e: ``tests/data/v010``, a layer store and a finished
sweep over it) are read and reused as they are: a change of module layout
never invalidates a user's stores or finished sweep results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import fastconvex as fc

DATA = Path(__file__).parent / "data" / "v010"


def test_an_old_store_opens_and_its_layers_verify(tmp_path):
    shutil.copytree(DATA / "store", tmp_path / "store")
    store = fc.open_store(tmp_path / "store")
    assert store.n_layers == 2 and store.meta["model"] == "fixture"
    assert list(np.unique(store.labels)) == ["a", "b", "sil"]
    for i in range(store.n_layers):
        store.verify_layer(i)  # raises on a sha256 that does not match


def test_an_old_sweep_is_reused_whole_and_its_numbers_are_those_of_layer_scores(tmp_path):
    shutil.copytree(DATA, tmp_path / "v010")
    old_tasks = sorted((tmp_path / "v010" / "sweep" / "tasks").rglob("*.json"))
    before = {p: p.read_bytes() for p in old_tasks}
    result = fc.sweep(
        [tmp_path / "v010" / "store"], out_dir=tmp_path / "v010" / "sweep", pairs=20, seed=3, plot=False, verbose=False
    )
    doc = result.document
    assert (doc["reused"], doc["computed"]) == (2, 0)
    assert {p: p.read_bytes() for p in sorted((tmp_path / "v010" / "sweep" / "tasks").rglob("*.json"))} == before
    store = fc.open_store(tmp_path / "v010" / "store")
    fresh = fc.layer_scores(store.layers, store.labels, pairs=20, seed=3)
    np.testing.assert_array_equal(result["store"].scores, fresh.scores)
    old = json.loads((DATA / "sweep" / "sweep.json").read_text())
    assert doc["stores"]["store"]["scores"] == old["stores"]["store"]["scores"]
