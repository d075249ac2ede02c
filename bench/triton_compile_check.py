"""Compile-only check of the kNN Triton kernel for Hopper (sm_90), no GPU needed.

Compiles ``kernels/triton/knn.py``'s ``_knn_candidates_kernel`` with the triton
found first on ``sys.path`` (e.g. ``PYTHONPATH=/tmp/t36 python
bench/triton_compile_check.py`` for Triton 3.6, plain ``python`` for the local
install) over

* every combination of ``tt.divisibility = 16`` on the integer arguments
  (M, N, keys_per_split, n_split) -- the kernel marks them do_not_specialize,
  but layout-pass bugs in Triton 3.6 showed up only with some of them divisible,
  so all are checked;
* the block configurations of ``bench/gpu_check.py``'s ``configs_tune`` plus the
  launcher's defaults, num_warps 4 and 8, the candidate slots of k = 10, 20, 64
  (KP = 32, 64, 128) and the input precisions tf32, tf32x3, ieee.

The full divisibility cross product is run for the k = 10 TF32 case (the hot
path); the other (KP, precision) pairs use "none" and "all" divisible.
Exit status 1 if anything fails.  ``--quick`` checks only the defaults.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# keep in sync with configs_tune in bench/gpu_check.py main() (CUDA branch) and
# the defaults of kernels/triton/knn.py's knn()
DEFAULT = {"block_m": 128, "block_n": 128, "block_k": 32, "num_warps": 8, "num_stages": 3}
CONFIGS = [
    DEFAULT,
    {"block_m": 64, "block_n": 128, "block_k": 32, "num_warps": 8, "num_stages": 3},
    {"block_m": 128, "block_n": 256, "block_k": 32, "num_warps": 8, "num_stages": 3},
    {"block_m": 128, "block_n": 128, "block_k": 32, "num_warps": 8, "num_stages": 4},
]
INTS = ["M", "N", "keys_per_split", "n_split"]
PTRS = {"xq_ptr": "*fp32", "xk_ptr": "*fp32", "sq_ptr": "*fp32", "qidx_ptr": "*i64",
        "out_d_ptr": "*fp32", "out_i_ptr": "*i32"}


def load_kernel():
    spec = importlib.util.spec_from_file_location(
        "fc_knn_kernel", os.path.join(ROOT, "kernels", "triton", "knn.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._knn_candidates_kernel


def compile_one(fn, cfg, kp, prec, div, nw, dp=768):
    names = fn.arg_names
    const = {"DP": dp, "BLOCK_M": cfg["block_m"], "BLOCK_N": cfg["block_n"],
             "BLOCK_K": cfg["block_k"], "KP": kp, "PRECISION": prec}
    sig = {}
    for n in names:
        if n in PTRS:
            sig[n] = PTRS[n]
        elif n in const:
            sig[n] = "constexpr"
        else:
            sig[n] = "i32"
    attrs = {}
    for i, n in enumerate(names):
        if n in PTRS or (n in INTS and div[INTS.index(n)]):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": nw, "num_stages": cfg["num_stages"]})


def main() -> int:
    quick = "--quick" in sys.argv
    fn = load_kernel()
    print(f"triton {triton.__version__} from {os.path.dirname(triton.__file__)}", flush=True)
    all_div = list(itertools.product([False, True], repeat=len(INTS)))
    jobs = []
    for cfg in ([DEFAULT] if quick else CONFIGS):
        for kp, prec in itertools.product((32, 64, 128), ("tf32", "tf32x3", "ieee")):
            if quick and (kp, prec) != (32, "tf32"):
                continue
            hot = (kp, prec) == (32, "tf32")
            divs = all_div if hot else [all_div[0], all_div[-1]]
            # the launcher caps block_m at 64 when KP > 64 (register lists)
            c = dict(cfg, block_m=min(cfg["block_m"], 64)) if kp > 64 else cfg
            for div in divs:
                for nw in (4, 8):
                    jobs.append((c, kp, prec, div, nw))
    # deduplicate (the KP > 64 cap can map configs onto each other)
    seen, uniq = set(), []
    for j in jobs:
        key = (tuple(sorted(j[0].items())), *j[1:])
        if key not in seen:
            seen.add(key)
            uniq.append(j)
    ok = bad = 0
    t0 = time.time()
    for cfg, kp, prec, div, nw in uniq:
        try:
            k = compile_one(fn, cfg, kp, prec, div, nw)
            ok += 1
            md = k.metadata
            if (div == all_div[0] and nw == cfg["num_warps"] and prec == "tf32"):
                print(f"  ok {cfg} KP={kp} {prec} nw={nw}: shared memory "
                      f"{getattr(md, 'shared', '?')} B, wgmma {'wgmma' in k.asm.get('ptx', '')}",
                      flush=True)
        except Exception as e:  # noqa: BLE001
            bad += 1
            msg = str(e).strip().splitlines()
            print(f"FAIL {cfg} KP={kp} {prec} div={div} nw={nw}: {msg[-1][:160] if msg else e!r}",
                  flush=True)
    print(f"triton {triton.__version__}: {ok} compiled, {bad} failed ({time.time() - t0:.0f}s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
