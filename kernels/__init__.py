"""Compute kernels of fastconvex, shipped as ``fastconvex.kernels``.

Kernels take arrays and return arrays: no validation, no public API.
``numba/`` holds the CPU kernels, ``triton/`` the GPU kernels (which also run
under ``TRITON_INTERPRET=1`` on CPU tensors).
"""
