"""CPU kernels (Numba): exact blocked kNN, union graph, batched shortest-path statistics."""

from fastconvex.kernels.numba.threads import start as _start_threads

# Numba's pool starts here, before any kernel runs, so that its start leaves the
# process's OpenMP thread count (torch's intra-op count) as it was (see threads.py).
_start_threads()
