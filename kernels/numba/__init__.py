"""CPU kernels (Numba): exact blocked kNN, union graph, batched shortest-path statistics."""
