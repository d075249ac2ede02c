#!/usr/bin/env bash
# One device call: install fastconvex (offline), then bench/gpu_check.py.
#   bash bench/gpu_check.sh                      # on a CUDA machine (420 s of checks,
#                                                # up to 300 s of 13-layer study, 90 s of
#                                                # CPU kNN (bench/knn_cpu.py), 60 s of
#                                                # kNN profile, then up to 120 s of tests;
#                                                # GPU_CHECK_SKIP_KNN_TIMING=1, GPU_CHECK_SKIP=
#                                                # exact and GPU_CHECK_PROFILE_S=0 shorten it)
#   GPU_CHECK_SMALL=1 bash bench/gpu_check.sh    # tiny sizes; CPU via TRITON_INTERPRET=1
# GPU_CHECK_NO_INSTALL=1: never pip install (use the symlink tree on PYTHONPATH).
# The A/B stages, the 13-layer study and the Ray sweep in one device command
# (under its 600 s; carry [".whl"]):
#   export PYTHON=python3 PYTHONUNBUFFERED=1 GPU_CHECK_SKIP_KNN_TIMING=1 GPU_CHECK_SKIP=exact,layer \
#     GPU_CHECK_PROFILE_S=0 GPU_CHECK_BUDGET=90 GPU_CHECK_KNN_AB_S=110 GPU_CHECK_PATHS_TUNE_S=50 \
#     GPU_CHECK_STUDY_S=190 GPU_CHECK_SWEEP_S=120 GPU_CHECK_PYTEST_S=0; bash bench/gpu_check.sh
#   then, while the machine is warm, the device tests: GPU_CHECK_PYTEST_S=120 with
#   GPU_CHECK_BUDGET=0 and GPU_CHECK_{KNN_AB,PATHS_TUNE,STUDY,SWEEP,PROFILE}_S=0.
# GPU_CHECK_KNN_AB_S=120, GPU_CHECK_PATHS_TUNE_S=60 (defaults): the A/B stages.
# GPU_CHECK_SWEEP_S=150: also a Ray sweep with num_gpus=1 tasks (bench/gpu_sweep.sh;
#   Ray travels in .whl/, built here by bench/prepare_device_ray.sh; call
#   the device with carry [".whl"]). Off by default.
# Writes $OUT/gpu_check.json and $OUT/gpu_check.log (OUT default ./gpu_check_out).
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"

if ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  if [ "${GPU_CHECK_SMALL:-0}" != "1" ]; then
    echo "gpu_check: no CUDA device; run with GPU_CHECK_SMALL=1 (interpreter) instead" >&2
    exit 2
  fi
  export TRITON_INTERPRET=1
fi

. bench/_install_offline.sh
ensure_fastconvex gpu_check
"$PY" -u bench/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"
rc="${PIPESTATUS[0]}"
# The A/B stages before the study (which reruns itself with what they
# find faster and identical): the symmetric kNN against the one-sided kernel at
# N = 1e5 and 1e6 (bench/knn_ab.py; GPU_CHECK_KNN_AB_S=0 skips it; a hang of
# its spin locks ends at the timeout) and the path kernel's "vertex" activity rule
# against "tile" at N = 1e6 (bench/paths_tune.py; GPU_CHECK_PATHS_TUNE_S=0 skips it).
if [ "${TRITON_INTERPRET:-0}" != "1" ] && [ "${GPU_CHECK_KNN_AB_S:-120}" != "0" ]; then
  timeout "${GPU_CHECK_KNN_AB_S:-120}" "$PY" -u bench/knn_ab.py 2>&1 | tail -n 16
fi
if [ "${TRITON_INTERPRET:-0}" != "1" ] && [ "${GPU_CHECK_PATHS_TUNE_S:-60}" != "0" ]; then
  PATHS_TUNE_GRID=activity timeout "${GPU_CHECK_PATHS_TUNE_S:-60}" "$PY" -u bench/paths_tune.py 2>&1 | tail -n 12
fi
# The 13-layer study at N = 1e6 (the whole-study target of docs/benchmarks.md):
# layer_scores timed end to end and per phase, checked against Numba on a
# subsample; GPU_CHECK_STUDY_S=0 skips it.
if [ "${GPU_CHECK_STUDY_S:-300}" != "0" ]; then
  timeout "${GPU_CHECK_STUDY_S:-300}" "$PY" -u bench/gpu_study.py 2>&1 | tee "$OUT/gpu_study.log"
  study_rc="${PIPESTATUS[0]}"
  [ "$study_rc" = 0 ] || rc="$study_rc"
fi
# A sweep on Ray with num_gpus=1 tasks against layer_scores in one process (what the
# Ray tasks cost on a GPU)
if [ "${TRITON_INTERPRET:-0}" != "1" ] && [ "${GPU_CHECK_SWEEP_S:-0}" != "0" ]; then
  timeout "${GPU_CHECK_SWEEP_S}" bash bench/gpu_sweep.sh
  sweep_rc=$?
  [ "$sweep_rc" = 0 ] || { echo "gpu_check: gpu_sweep.sh exited $sweep_rc" >&2; rc="$sweep_rc"; }
fi
# The CPU kNN on the device host's CPU (server CPUs there may multiply bfloat16
# in hardware, AMX or AVX512-BF16, which this project's CI machines lack): its
# time against the torch float32 / bfloat16 products, rows per tier
# (bench/knn_cpu.py; GPU_CHECK_CPU_KNN_S=0 skips it).
if [ "${GPU_CHECK_CPU_KNN_S:-90}" != "0" ]; then
  if [ "${GPU_CHECK_SMALL:-0}" = "1" ]; then cpu_knn_size="--n 3000 --dim 64 --repeat 1"; else cpu_knn_size="--n 20000 --repeat 3"; fi
  # shellcheck disable=SC2086
  timeout "${GPU_CHECK_CPU_KNN_S:-90}" "$PY" -u bench/knn_cpu.py $cpu_knn_size --out "$OUT/knn_cpu.json" 2>&1 | tail -n 8 | tee "$OUT/knn_cpu.log"
  cpu_knn_rc="${PIPESTATUS[0]}"
  [ "$cpu_knn_rc" = 0 ] || { echo "gpu_check: knn_cpu.py exited $cpu_knn_rc" >&2; rc="$cpu_knn_rc"; }
fi
# Where the kNN's time goes at N = 1e6 (phases, CUDA kernels): bench/knn_profile.py
if [ "${TRITON_INTERPRET:-0}" != "1" ] && [ "${GPU_CHECK_PROFILE_S:-60}" != "0" ]; then
  timeout "${GPU_CHECK_PROFILE_S:-60}" "$PY" -u bench/knn_profile.py 2>&1 | tail -n 45 | tee "$OUT/knn_profile.log"
fi
# Then the Triton tests on the device (odd sizes, ties, the flat loop, scales),
# after the figures are saved; GPU_CHECK_PYTEST_S=0 skips them.
if [ "${TRITON_INTERPRET:-0}" != "1" ] && [ "${GPU_CHECK_PYTEST_S:-120}" != "0" ]; then
  timeout "${GPU_CHECK_PYTEST_S:-120}" "$PY" -m pytest -q -p no:cacheprovider -m triton tests/test_triton.py tests/test_duplicates.py tests/test_knn.py \
    2>&1 | tail -n 30 | tee "$OUT/pytest_cuda.log"
fi
exit "$rc"
