#!/usr/bin/env bash
# One device call for Euclidean convexity: the CUDA tests of the
# Euclidean and Hugging Face predictor modules, then bench/bench_euclidean.py
# on the GPU (a wav2vec2 classifier of hidden size 256, fastconvex vs
# nnconvexity on the same pairs, same run). Writes $OUT/*.json and logs.
#   OUT=/tmp/out bash bench/euclidean_gpu.sh
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-./euclidean_gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/env.log"
import importlib
for name in ("torch", "transformers", "nnconvexity", "numba", "hypothesis", "pytest"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING", exc)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else None)
PYEOF
timeout "${EUCLID_PYTEST_S:-150}" "$PY" -m pytest -q -p no:cacheprovider tests/test_euclidean.py tests/test_hf_predict.py \
  2>&1 | tail -n 25 | tee "$OUT/pytest.log"
timeout "${EUCLID_BENCH_S:-240}" "$PY" bench/bench_euclidean.py --device cuda --n 120 --hidden 256 --layers 4 \
  --seconds 0.25 --repeat 2 --json "$OUT/euclidean_gpu.json" 2>&1 | tail -n 40 | tee "$OUT/bench.log"
