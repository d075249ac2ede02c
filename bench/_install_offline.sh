# Sourced by bench/gpu_check.sh and bench/gpu_sweep.sh (needs $PY and $OUT; run from
# the repository root): make `import fastconvex` work on a machine without network.
# fastconvex maps kernels/{numba,triton} to fastconvex.kernels.{numba,triton} (pyproject
# package-dir): it must be installed (editable, offline) or assembled on PYTHONPATH
# from symlinks. GPU_CHECK_NO_INSTALL=1: never pip install (use the symlink tree).
# Usage: ensure_fastconvex NAME   (NAME prefixes the messages)
can_import_fastconvex() { (cd / && "$PY" -c "import fastconvex, fastconvex.kernels.triton.knn; fastconvex.graph_convexity" 2>/dev/null); }
ensure_fastconvex() {
  if ! can_import_fastconvex && [ "${GPU_CHECK_NO_INSTALL:-0}" != "1" ]; then
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e . >"$OUT/pip_install.log" 2>&1 \
      || echo "$1: pip install -e . failed (see $OUT/pip_install.log); using a PYTHONPATH tree" >&2
  fi
  if ! can_import_fastconvex; then
    local tree
    tree="$(mktemp -d)/site"
    mkdir -p "$tree/fastconvex"
    for f in "$PWD"/fastconvex/*; do [ "${f##*/}" = kernels ] || ln -s "$f" "$tree/fastconvex/"; done
    mkdir -p "$tree/fastconvex/kernels"
    ln -s "$PWD/fastconvex/kernels/__init__.py" "$tree/fastconvex/kernels/"
    for d in numba triton; do ln -s "$PWD/kernels/$d" "$tree/fastconvex/kernels/$d"; done
    export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
  fi
  echo "$1: fastconvex from $(cd / && "$PY" -c 'import fastconvex; print(fastconvex.__file__)')"
}
