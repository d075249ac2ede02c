"""Compute kernels of fastconvex: ``fastconvex.kernels.numba`` (CPU) and
``fastconvex.kernels.triton`` (GPU; also runs under ``TRITON_INTERPRET=1`` on CPU
tensors).

Kernels take arrays and return arrays: no validation, no public API.

Layout. The kernel sources live in the checkout's top-level ``kernels/numba`` and
``kernels/triton`` folders, mapped onto ``fastconvex.kernels.numba`` and
``fastconvex.kernels.triton`` by ``[tool.setuptools] package-dir`` in
``pyproject.toml``. The top-level ``kernels/`` folder deliberately has no
``__init__.py``: a folder without one is at most a PEP 420 namespace portion, which
loses to a regular package on any ``sys.path`` entry, so Hugging Face's ``kernels``
distribution (imported by transformers) wins even when Python starts in the
checkout root. This file is the package's only ``__init__``; it lives in
``fastconvex/kernels/`` so that nothing named ``kernels`` can be imported as a
regular top-level package from a checkout.
"""
