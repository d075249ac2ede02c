"""Progress (issue 13): tqdm bars over layers and inside a layer, plain log
lines where stderr is not a terminal, the same numbers with or without
progress, and one "compiling CPU kernels" line on a cold Numba cache."""

from __future__ import annotations

import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import fastconvex as fc
import fastconvex.backends.numba as backends
import fastconvex.core.progress as progress_mod
from fastconvex.datasets import overlapping_classes
from fastconvex.kernels.numba.graph import union_csr
from fastconvex.kernels.numba.knn import knn
from fastconvex.kernels.numba.paths import class_sums, pair_scores


def test_bars_inside_a_layer_when_it_is_large(monkeypatch, capsys):
    x, y = overlapping_classes(300, 6, 3, seed=0)
    monkeypatch.setattr(backends, "INNER_PROGRESS_MIN_POINTS", 200)
    fc.layer_scores([x, x], y, k=5, sources=40, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err  # stderr is not a terminal here: log lines
    lines = err.splitlines()
    assert any(line.startswith("kNN: 100%") and "300/300 rows" in line for line in lines), err
    assert any(line.startswith("paths: 100%") and "120/120 sources" in line for line in lines), err
    assert any(line.startswith("layers: 100%") and "2/2 layers" in line for line in lines), err
    monkeypatch.setattr(backends, "INNER_PROGRESS_MIN_POINTS", 10**9)
    fc.layer_scores([x, x], y, k=5, sources=40, progress=True)
    err = capsys.readouterr().err
    assert "kNN" not in err and "2/2 layers" in err  # small layers: the outer bar only


def test_a_terminal_gets_a_redrawn_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    x, y = overlapping_classes(60, 4, 3, seed=0)
    fc.layer_scores([x, x, x], y, k=5, pairs=20)  # progress=None: shown on a terminal
    assert "\r" in term.getvalue() and "3/3 layers" in term.getvalue()


def test_log_lines_are_periodic_not_per_update(monkeypatch, capsys):
    bar = progress_mod.progress_bar(1000, "steps", log_every=3600)
    for _ in range(1000):
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the start and the end: no line per update
    assert "0/1000 steps" in lines[0] and "1000/1000 steps" in lines[1]


def test_progress_changes_no_number():
    """The kNN fallback rows (ties in binary data) and the path searches run in
    batches when progress is reported: the results are bitwise the same."""
    rng = np.random.default_rng(0)
    binary = (rng.random((700, 12)) < 0.5).astype(np.float32)
    calls = []
    i0, d0, f0 = knn(binary, 5)
    i1, d1, f1 = knn(binary, 5, block_rows=128, progress=lambda done, total: calls.append((done, total)))
    assert f0 == f1 > 0  # the fallback ran, in batches
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_array_equal(d0, d1)
    assert calls[-1] == (700 + f1, 700 + f1) and calls[0] == (128, 700)

    x, y = overlapping_classes(400, 6, 4, seed=2)
    idx, dist, _ = knn(x, 6)
    indptr, nbr, w = union_csr(idx, dist)
    codes = y.astype(np.int64)
    sizes = np.bincount(codes).astype(np.int64)
    sources = np.arange(400, dtype=np.int64)
    done = []
    plain = class_sums(indptr, nbr, w, codes, sources, sizes)
    batched = class_sums(indptr, nbr, w, codes, sources, sizes, progress=done.append)
    assert sum(done) == 400 and len(done) > 1
    for a, b in zip(plain, batched):
        np.testing.assert_array_equal(a, b)
    ptr = np.arange(0, 401 * 3, 3, dtype=np.int64)
    targets = np.array([(s + d) % 400 for s in range(400) for d in (1, 5, 17)], np.int64)
    done.clear()
    a = pair_scores(indptr, nbr, w, codes, sources, ptr, targets)
    b = pair_scores(indptr, nbr, w, codes, sources, ptr, targets, progress=done.append)
    assert sum(done) == 400
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_compilation_is_announced_once_on_a_cold_cache(monkeypatch, capsys, tmp_path):
    def dispatcher(path):
        return SimpleNamespace(_cache=SimpleNamespace(_cache_file=SimpleNamespace(_index_path=str(path))))

    (tmp_path / "warm.nbi").write_text("")
    monkeypatch.setattr(progress_mod, "_ANNOUNCED", False)
    assert progress_mod.announce_compilation([dispatcher(tmp_path / "warm.nbi")]) is False
    assert capsys.readouterr().err == ""
    cold = [dispatcher(tmp_path / "warm.nbi"), dispatcher(tmp_path / "cold.nbi")]
    assert progress_mod.announce_compilation(cold) is True
    assert capsys.readouterr().err == "fastconvex: compiling CPU kernels, once per install (about 10-30 s)...\n"
    assert progress_mod.announce_compilation(cold) is False  # once per process
    assert capsys.readouterr().err == ""


def test_the_real_kernels_expose_their_cache_index():
    """announce_compilation reads Numba's cache index path: if Numba moves it,
    this fails instead of the message silently never appearing."""
    from fastconvex.kernels.numba import paths

    index = paths._run._cache._cache_file._index_path
    assert index.endswith(".nbi")


@pytest.mark.parametrize("bad", ["no", "false", 0, 1, 0.0])
def test_progress_must_be_none_or_a_bool(bad):
    # progress="no" is truthy: it must not quietly turn the bars on
    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(TypeError, match=rf"progress must be None, True or False, got {type(bad).__name__} {bad!r}"):
        fc.layer_scores([x, x], y, k=3, progress=bad)


def test_progress_takes_numpy_booleans(capsys):
    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    assert fc.layer_scores([x], y, k=3, progress=np.False_).scores.shape == (1,)
