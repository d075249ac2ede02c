#!/usr/bin/env bash
# On the device: a sweep with num_gpus=1 Ray tasks against
# layer_scores(..., device="cuda") in one process (bench/bench_sweep.py --gpu):
# per-layer times and bit-for-bit equality. Needs the carried .whl/ built here by
# bench/prepare_device_ray.sh (Ray is not on the device image).
#   bash bench/gpu_sweep.sh            # N = 2e5, D = 768, 13 layers
#   SWEEP_N=30000 SWEEP_D=256 SWEEP_LAYERS=4 bash bench/gpu_sweep.sh
# Writes $OUT/gpu_sweep.json (the output's last lines go to stdout). Called by bench/gpu_check.sh
# when GPU_CHECK_SWEEP_S is set (seconds), or on its own.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
TAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
SITE="${RAY_SITE:-/tmp/ray_site}"
if ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_sweep: no CUDA device (this script times num_gpus=1 Ray tasks; see bench/bench_sweep.py for the CPU benchmark)" >&2
  exit 2
fi

# run alone (not from gpu_check.sh): fastconvex installed as gpu_check.sh does, offline
. bench/_install_offline.sh
ensure_fastconvex gpu_sweep
if ! (cd / && "$PY" -c "import ray" 2>/dev/null); then
  tarball=".whl/ray-site-$TAG.tar.xz"
  if [ ! -f "$tarball" ]; then
    echo "gpu_sweep: no Ray here and no $tarball; run bench/prepare_device_ray.sh with PYVER=${TAG#cp3} first and carry .whl" >&2
    exit 2
  fi
  mkdir -p "$SITE"
  tar -C "$SITE" -xJf "$tarball" || exit 2
  if ls ".whl/deps-$TAG"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" ".whl/deps-$TAG"/*.whl \
      || { echo "gpu_sweep: installing .whl/deps-$TAG failed" >&2; exit 2; }
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "gpu_sweep: ray $(cd / && "$PY" -c 'import ray; print(ray.__version__, ray.__file__)')" || exit 2
set -o pipefail
"$PY" -u bench/bench_sweep.py --gpu --n "${SWEEP_N:-200000}" --d "${SWEEP_D:-768}" \
  --layers "${SWEEP_LAYERS:-13}" --tmp "${SWEEP_TMP:-/tmp}" --json "$OUT/gpu_sweep.json" 2>&1 | tail -n 40
