"""The engines that score one layer (Numba on the CPU, Triton on the GPU, the
naive oracle, Numba sharded over Ray) and the one function that picks one
(:func:`fastconvex.backends.select.get_engine`). An engine is given arrays and
a pair plan; it never imports the code that uses it."""
