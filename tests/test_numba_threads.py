"""Scoring on the CPU leaves torch's thread count as the user set it.

Numba's OpenMP layer sets the process's OpenMP thread count when its pool starts,
and torch reads its intra-op count from the same runtime (kernels/numba/threads.py).
Each case runs in a fresh interpreter: the pool starts once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

SCORE = """
import numpy as np
import fastconvex as fc
x = np.random.default_rng(0).standard_normal((61, 5))
fc.layer_scores([x], [f"c{i % 3}" for i in range(61)], k=4, backend="numba")
"""


def run(script: str, **env: str) -> dict:
    environment = {
        key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", script], env={**environment, **env}, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_first(start_pool: str, threads: int) -> str:
    """torch in use with ``threads`` threads, then Numba's pool started by ``start_pool``."""
    return f"""
import json, torch
torch.set_num_threads({threads})
torch.ones(4) @ torch.ones(4)
before = torch.get_num_threads()
{start_pool}
import numba
print(json.dumps({{"before": before, "after": torch.get_num_threads(), "numba": numba.get_num_threads(),
                   "layer": numba.threading_layer()}}))
"""


@pytest.mark.parametrize("threads", [1, 3])
def test_scoring_keeps_the_torch_thread_count_set_before(threads):
    seen = run(torch_first(SCORE, threads), NUMBA_NUM_THREADS="2")
    assert seen["before"] == threads
    assert seen["after"] == threads
    assert seen["numba"] == 2  # Numba keeps its own count for its kernels


def test_numba_alone_changes_it_so_the_case_above_is_real():
    """The hazard the kernels guard against: Numba's OpenMP layer, started on its own,
    switches torch to Numba's count. If this ever fails, Numba no longer does so and
    kernels/numba/threads.py can go."""
    seen = run(torch_first("import numba; numba.get_num_threads()", 1), NUMBA_NUM_THREADS="2")
    assert seen["layer"] == "omp"
    assert (seen["before"], seen["after"]) == (1, 2)


def test_scoring_before_torch_is_imported_keeps_omp_num_threads():
    script = (
        SCORE
        + """
import json, torch
print(json.dumps({"torch": torch.get_num_threads()}))
"""
    )
    assert run(script, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2") == {"torch": 1}
