"""Compile-only check of the kNN Triton kernel for Hopper (sm_90), no GPU needed.

Compiles ``kernels/triton/knn.py``'s ``_knn_candidates_kernel`` with the triton
found first on ``sys.path`` (e.g. ``PYTHONPATH=/tmp/t36 python
bench/studies/triton_compile_check.py`` for Triton 3.6, plain ``python`` for the local
install) over

* every combination of ``tt.divisibility = 16`` on the integer arguments
  (M, N, keys_per_split, n_split) -- the kernel marks them do_not_specialize,
  but layout-pass bugs in Triton 3.6 showed up only with some of them divisible,
  so all are checked;
* the block configurations of ``bench/_gpu_check_knn.py``'s ``configs_tune`` plus the
  launcher's defaults, num_warps 4 and 8, the candidate slots of k = 10, 20, 64
  (KP = 32, 64, 128) and the precision tiers fp16 (float16 operands), tf32,
  tf32x3, ieee.

The full divisibility cross product is run for the k = 10 fp16 and TF32 cases
(the default tiers); the other (KP, precision) pairs use "none" and "all"
divisible.
It also compiles ``kernels/triton/paths.py``'s ``_relax_kernel`` (the path
sweep) for every divisibility of its integer arguments (N, B, NBB), the tile
shapes 8 x 32 (the launcher's default on CUDA), 16 x 32, 32 x 32
(the former default), 64 x 32 and 32 x 64, num_warps 4
and 8, and both state layouts (packed, wide): Triton 3.6's layout passes can
fail on this kernel (see the comment on its 2-D layout).

It compiles the symmetric candidate kernel (``_knn_candidates_sym_kernel``,
``knn(..., symmetric=True)``) for its tile shapes and the fp16 and TF32x3 tiers,
the path kernel with its "vertex" activity rule too, and the fused class-sum
kernels.

It compiles ``_exact_sq_dist_kernel`` (the float64 re-rank) for float32,
float64, float16 and bfloat16 data and checks that its PTX holds no fused multiply-add
(``fma``): the distances must round as the CPU backends' loop does.

Exit status 1 if anything fails.  ``--quick`` checks only the defaults.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/studies/ -> checkout

# keep in sync with configs_tune in bench/_gpu_check_knn.py knn_timings() (CUDA branch) and
# the defaults of kernels/triton/knn.py's knn()
DEFAULT = {"block_m": 128, "block_n": 256, "block_k": 32, "num_warps": 8, "num_stages": 3}
CONFIGS = [
    DEFAULT,
    dict(DEFAULT, mask_every_tile=True),
    dict(DEFAULT, block_n=128),
    dict(DEFAULT, block_n=128, mask_every_tile=True),
    dict(DEFAULT, num_stages=4),
    dict(DEFAULT, block_k=64),
    dict(DEFAULT, flat_loop=True),
]
INTS = ["M", "N", "keys_per_split", "n_split"]
PTRS = {
    "xq_ptr": "*fp32",
    "xk_ptr": "*fp32",
    "sq_ptr": "*fp32",
    "qidx_ptr": "*i64",
    "out_d_ptr": "*fp32",
    "out_i_ptr": "*i32",
}


def load_module(name):
    """``kernels/triton/<name>.py`` of this checkout (not an installed copy), as a
    submodule of a stand-in package so its relative imports resolve."""
    pkg = "fc_triton_kernels"
    if pkg not in sys.modules:
        where = os.path.join(ROOT, "kernels", "triton")
        spec = importlib.util.spec_from_file_location(
            pkg, os.path.join(where, "__init__.py"), submodule_search_locations=[where]
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules[pkg] = mod
        spec.loader.exec_module(mod)
    return importlib.import_module(f"{pkg}.{name}")


def load_kernel():
    return load_module("knn")._knn_candidates_kernel


def resource_usage(kernel) -> str:
    """Registers per thread and local (spill) memory of a compiled kernel, read
    from its cubin with the cuobjdump that ships with Triton, plus the programs
    one SM can hold on that register budget (64 K registers, 64 warps)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        try:
            out = subprocess.run(
                [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=60
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            return f"(cuobjdump unavailable: {e})"
    m = re.search(r"REG:(\d+).*?LOCAL:(\d+)", out)
    if not m:
        return "(no resource usage in cuobjdump output)"
    regs, local = int(m.group(1)), int(m.group(2))
    nw = kernel.metadata.num_warps
    per_warp = -(-regs * 32 // 256) * 256  # allocation granularity: 256 registers per warp
    programs = min(65536 // (per_warp * nw), 64 // nw)
    return f"{regs} registers/thread, {local} B local, {programs} programs/SM"


PATH_INTS = ["N", "B", "NBB"]
PATH_PTRS = {
    "indptr_ptr": "*i64",
    "nbr_ptr": "*i64",
    "w_ptr": "*fp64",
    "codes_ptr": "*i64",
    "scode_ptr": "*i64",
    "svert_ptr": "*i64",
    "d_in": "*fp64",
    "h_in": "*i32",
    "s_in": "*i32",
    "d_out": "*fp64",
    "h_out": "*i32",
    "s_out": "*i32",
    "act_in": "*i8",
    "chg_in": "*i8",
    "act_out": "*i8",
    "chg_out": "*i8",
    "count_ptr": "*i64",
}


def compile_for_sm90(fn, pointers, ints, divisible, constexprs, options):
    """Compile ``fn`` for sm_90: ``pointers`` maps pointer arguments to their
    types (all 16-byte aligned), the integer arguments named in ``ints`` are
    i32 and marked divisible by 16 where ``divisible`` says so, and every
    other argument is a constexpr from ``constexprs``."""
    sig, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in pointers:
            sig[n] = pointers[n]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in constexprs:
            sig[n] = "constexpr"
        else:
            sig[n] = "i32"
            if divisible[ints.index(n)]:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def failure(e: Exception) -> str:
    """The last line of a compiler error, shortened."""
    msg = str(e).strip().splitlines()
    return msg[-1][:160] if msg else repr(e)


def compile_relax(fn, bv, bb, div, nw, packed=True, maxnreg=None, vertex_act=False):
    options = {"num_warps": nw}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    no_hops = load_module("paths")._NO_HOPS
    return compile_for_sm90(
        fn,
        PATH_PTRS,
        PATH_INTS,
        div,
        {"BV": bv, "BB": bb, "PACKED": packed, "NO_HOPS": no_hops, "VERTEX_ACT": vertex_act},
        options,
    )


def check_paths(quick: bool) -> tuple[int, int]:
    fn = load_module("paths")._relax_kernel
    all_div = list(itertools.product([False, True], repeat=len(PATH_INTS)))
    shapes = [(8, 32)] if quick else [(8, 32), (16, 32), (32, 32), (64, 32), (32, 64)]
    jobs = [
        (bv, bb, div, nw, packed, None, va)
        for (bv, bb), div, nw, packed, va in itertools.product(shapes, all_div, (4, 8), (True, False), (False, True))
    ]
    # the register caps gpu_check times (max_registers=), default tile and warps
    jobs += [(8, 32, all_div[-1], 4, True, cap, False) for cap in (96, 64)]
    ok = bad = 0
    for bv, bb, div, nw, packed, cap, va in jobs:
        name = f"paths {'packed' if packed else 'wide'}{' vertex-activity' if va else ''} BV={bv} BB={bb}"
        try:
            k = compile_relax(fn, bv, bb, div, nw, packed, cap, va)
            ok += 1
            if all(div):
                print(f"  ok {name} nw={nw}{'' if cap is None else f' maxnreg={cap}'}: {resource_usage(k)}", flush=True)
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"FAIL {name} div={div} nw={nw} maxnreg={cap}: {failure(e)}", flush=True)
    print(f"paths kernel: {ok} compiled, {bad} failed", flush=True)
    return ok, bad


def check_class_sums() -> tuple[int, int]:
    """The fused class-sum kernels of ``kernels/triton/paths.py`` (both state layouts)."""
    mod = load_module("paths")
    ok = bad = 0
    jobs = [
        (
            mod._class_sums_kernel,
            {
                "d_ptr": "*fp64",
                "h_ptr": "*i32",
                "s_ptr": "*i32",
                "codes_ptr": "*i64",
                "scode_ptr": "*i64",
                "svert_ptr": "*i64",
                "psum_ptr": "*fp64",
                "psq_ptr": "*fp64",
                "punr_ptr": "*i64",
            },
            ["N", "B"],
            {"CHUNK": mod._SUM_CHUNK, "RB": mod._SUM_ROWS, "BB": mod._SUM_COLS, "PACKED": packed},
        )
        for packed in (True, False)
    ]
    jobs.append(
        (
            mod._sum_chunks_kernel,
            {
                "psum_ptr": "*fp64",
                "psq_ptr": "*fp64",
                "punr_ptr": "*i64",
                "sum_ptr": "*fp64",
                "sq_ptr": "*fp64",
                "unr_ptr": "*i64",
            },
            ["n_chunks", "B"],
            {"BB": mod._SUM_COLS},
        )
    )
    for fn, ptrs, ints, const in jobs:
        # the integer arguments are do_not_specialize: one compiled layout, so
        # one summation order, whatever the batch width (a B divisible by 16
        # would otherwise get another reduction layout)
        missing = sorted(set(ints) - set(fn.do_not_specialize))
        if missing:
            bad += 1
            print(f"FAIL {fn.__name__}: {missing} not in do_not_specialize", flush=True)
            continue
        for div in [(False,) * len(ints)]:
            name = f"{fn.__name__} {const}"
            try:
                k = compile_for_sm90(fn, ptrs, ints, list(div), const, {"num_warps": 4})
                ok += 1
                if not any(div):
                    print(f"  ok {name}: {resource_usage(k)}", flush=True)
            except Exception as e:  # noqa: BLE001
                bad += 1
                print(f"FAIL {name} div={div}: {failure(e)}", flush=True)
    print(f"class-sum kernels: {ok} compiled, {bad} failed", flush=True)
    return ok, bad


SYM_PTRS = {
    "xs_ptr": "*fp32",
    "sq_ptr": "*fp32",
    "row_d_ptr": "*fp32",
    "row_i_ptr": "*i32",
    "col_key_ptr": "*i32",
    "col_i_ptr": "*i32",
    "col_thr_ptr": "*i32",
    "lock_ptr": "*i32",
}


def check_symmetric(quick: bool) -> tuple[int, int]:
    """The symmetric candidate kernel (``knn(..., symmetric=True)``): the
    default tile, and 128 x 128, for the fp16 and float32 tiers, N divisible
    by 16 or not; registers and spills beside the one-sided kernel's."""
    fn = load_module("knn")._knn_candidates_sym_kernel
    shapes = [(128, 256, 8, False), (128, 256, 8, True)]
    if not quick:
        shapes += [(128, 128, 8, False), (64, 256, 8, False), (64, 256, 8, True), (128, 128, 4, False)]
    ok = bad = 0
    for (bm, bn, nw, stagger), prec, div in itertools.product(shapes, ("fp16", "tf32x3"), ([False], [True])):
        if bn == 256 and prec != "fp16":
            continue  # the launcher's float32 tiers use 128-wide tiles
        name = f"symmetric BLOCK_M={bm} BLOCK_N={bn}{' staggered' if stagger else ''} {prec} nw={nw}"
        const = {
            "DP": 768,
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "BLOCK_K": 32,
            "KP": 32,
            "PRECISION": prec,
            "STAGGER": stagger,
        }
        ptrs = dict(SYM_PTRS, **({"xs_ptr": "*fp16"} if prec == "fp16" else {}))
        try:
            k = compile_for_sm90(fn, ptrs, ["N"], div, const, {"num_warps": nw, "num_stages": 3})
            ok += 1
            if not div[0]:
                print(
                    f"  ok {name}: shared memory {getattr(k.metadata, 'shared', '?')} B, "
                    f"wgmma {'wgmma' in k.asm.get('ptx', '')}, {resource_usage(k)}",
                    flush=True,
                )
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"FAIL {name} div={div}: {failure(e)}", flush=True)
    print(f"symmetric kNN kernel: {ok} compiled, {bad} failed", flush=True)
    return ok, bad


def check_exact_dist() -> tuple[int, int]:
    """The float64 re-rank kernel, for each data type; no fma in its PTX."""
    fn = load_module("knn")._exact_sq_dist_kernel
    ints = ["n_pairs", "KC", "D", "stride_row", "stride_col"]
    ok = bad = 0
    for dtype, div in itertools.product(
        ("*fp32", "*fp64", "*fp16", "*bf16"), ([False] * 5, [True, True, True, True, False])
    ):
        name = f"exact_sq_dist x={dtype} divisible={div}"
        try:
            k = compile_for_sm90(
                fn,
                {"x_ptr": dtype, "rows_ptr": "*i64", "cand_ptr": "*i64", "out_ptr": "*fp64"},
                ints,
                div,
                {"BLOCK_P": 128},
                {"num_warps": 4, "enable_fp_fusion": False},
            )
            fused = len(re.findall(r"\bfma\.rn\.f64", k.asm["ptx"]))
            if fused:
                raise RuntimeError(f"{fused} fma.rn.f64 in the PTX (the sums would round differently)")
            ok += 1
            if not any(div):
                print(f"  ok {name}: no fma, {resource_usage(k)}", flush=True)
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"FAIL {name}: {failure(e)}", flush=True)
    print(f"exact distance kernel: {ok} compiled, {bad} failed", flush=True)
    return ok, bad


def compile_one(fn, cfg, kp, prec, div, nw, dp=768):
    const = {
        "DP": dp,
        "BLOCK_M": cfg["block_m"],
        "BLOCK_N": cfg["block_n"],
        "BLOCK_K": cfg["block_k"],
        "KP": kp,
        "PRECISION": prec,
        "FLAT": bool(cfg.get("flat_loop", False)),
        "MASK_EVERY_TILE": bool(cfg.get("mask_every_tile", False)),
    }
    pointers = dict(PTRS, **({"xq_ptr": "*fp16", "xk_ptr": "*fp16"} if prec == "fp16" else {}))
    return compile_for_sm90(fn, pointers, INTS, div, const, {"num_warps": nw, "num_stages": cfg["num_stages"]})


def main() -> int:
    quick = "--quick" in sys.argv
    fn = load_kernel()
    print(f"triton {triton.__version__} from {os.path.dirname(triton.__file__)}", flush=True)
    all_div = list(itertools.product([False, True], repeat=len(INTS)))
    jobs = []
    for cfg in [DEFAULT] if quick else CONFIGS:
        for kp, prec in itertools.product((32, 64, 128), ("fp16", "tf32", "tf32x3", "ieee")):
            hot = kp == 32 and prec in ("fp16", "tf32")  # the default tiers at k = 10
            if quick and not hot:
                continue
            divs = all_div if hot else [all_div[0], all_div[-1]]
            # block_n 256 only for KP <= 32 (the launcher uses it for the fp16
            # tier alone; the float32 tiers are compiled at 256 too, for
            # explicit block_n), block_m capped at 64 when KP > 64 (register lists)
            c = dict(cfg, block_n=min(cfg["block_n"], 128)) if kp > 32 else cfg
            c = dict(c, block_m=min(c["block_m"], 64)) if kp > 64 else c
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
            if div == all_div[0] and nw == cfg["num_warps"] and prec in ("fp16", "tf32"):
                print(
                    f"  ok {cfg} KP={kp} {prec} nw={nw}: shared memory "
                    f"{getattr(md, 'shared', '?')} B, wgmma {'wgmma' in k.asm.get('ptx', '')}, "
                    f"{resource_usage(k)}",
                    flush=True,
                )
        except Exception as e:  # noqa: BLE001
            bad += 1
            print(f"FAIL {cfg} KP={kp} {prec} div={div} nw={nw}: {failure(e)}", flush=True)
    p_ok, p_bad = check_paths(quick)
    e_ok, e_bad = check_exact_dist()
    s_ok, s_bad = check_symmetric(quick)
    c_ok, c_bad = check_class_sums()
    ok, bad = ok + p_ok + e_ok + s_ok + c_ok, bad + p_bad + e_bad + s_bad + c_bad
    print(f"triton {triton.__version__}: {ok} compiled, {bad} failed ({time.time() - t0:.0f}s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
