"""Numba's thread pool, started without changing the process's OpenMP thread count.

Numba's OpenMP threading layer, when it starts (the first parallel call, or the first
``numba.get_num_threads()``), calls ``omp_set_num_threads(NUMBA_NUM_THREADS)`` on the
process's OpenMP runtime (numba/numba#9387). A CPU build of PyTorch shares that
runtime (one ``libgomp.so.1`` per process) and reads its intra-op thread count from
it. So a user who fixed torch's thread count (``torch.set_num_threads(1)`` or
``OMP_NUM_THREADS``, as one does for reproducible training) had it switched to
Numba's count the first time fastconvex scored anything: in the middle of a training
run when :class:`fastconvex.hf.ConvexityCallback` scores at step 0. Floating-point
reductions depend on the number of threads, so the run's weights then differed from
those of the same run without the callback, and so did those of every later run in
the process.

:func:`start` starts the pool once, when ``fastconvex.kernels.numba`` is first
imported (every kernel module is imported through it), and sets the runtime's thread
count back to what it was. It sets back the thread count only: the nesting that
Numba's layer switches on is what its own nested parallel regions need, and torch
never nests its regions.
"""

from __future__ import annotations

import ctypes
import sys

import numba

# The OpenMP runtime that Numba's ``omp`` layer links: loading it by this name gives
# a copy already loaded under it, else the system's, which Numba's layer would load
# itself. A process can hold two copies (torch bundles its own): which one torch
# reads is checked below, through torch, whatever this one was.
OPENMP_RUNTIME = "libgomp.so.1"


def _openmp_runtime() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(OPENMP_RUNTIME)
    except OSError:  # no GNU OpenMP here: Numba's ``omp`` layer cannot use it either
        return None


def start() -> int:
    """Start Numba's thread pool if it has not started, keeping the OpenMP runtime's
    thread count (and so torch's intra-op thread count) as it was.

    Returns
    -------
    int
        Numba's number of threads.
    """
    torch = sys.modules.get("torch")  # never imported here: only a torch already in use matters
    # read first: torch sets the runtime's count when it first reads it
    torch_before = int(torch.get_num_threads()) if torch is not None else None
    runtime = _openmp_runtime()
    openmp_before = int(runtime.omp_get_max_threads()) if runtime is not None else None
    threads = int(numba.get_num_threads())  # starts the pool (once per process)
    if numba.threading_layer() != "omp":
        return threads
    if runtime is not None:
        runtime.omp_set_num_threads(openmp_before)
    if torch is not None and torch.get_num_threads() != torch_before:
        # torch reads another copy or another runtime (LLVM's, Intel's) than the one set back above
        torch.set_num_threads(torch_before)
    return threads
