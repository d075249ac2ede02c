"""``fastconvex bench``: fastconvex vs the naive scorer on the same data and pairs."""

from __future__ import annotations

import argparse

from fastconvex.commands._args import non_negative_int, positive_int
from fastconvex.commands._output import UsageError, emit_report, log
from fastconvex.graph.benchmark import format_row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="1000,2000,5000", help="comma-separated numbers of points (default 1000,2000,5000)"
    )
    parser.add_argument("--dim", type=positive_int, default=256, help="embedding dimension (default 256)")
    parser.add_argument("--classes", type=positive_int, default=10, help="number of classes (default 10)")
    parser.add_argument("--k", type=positive_int, default=10, help="neighbours (default 10)")
    parser.add_argument("--pairs", type=positive_int, default=5000, help="pairs per class (default 5000)")
    parser.add_argument(
        "--naive-max",
        type=non_negative_int,
        default=20000,
        help="largest N the naive scorer is run at (O(N^2) memory; default 20000)",
    )
    parser.add_argument("--repeat", type=positive_int, default=1, help="best of this many runs (default 1)")


def run(args: argparse.Namespace) -> int:
    from fastconvex.backends.select import resolve_backend
    from fastconvex.graph.benchmark import compare_to_naive, machine_info

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if not sizes or min(sizes) <= args.k:
        raise UsageError(f"--sizes must be integers larger than --k={args.k}, got {args.sizes!r}")
    if args.classes > min(sizes) // 2:
        raise UsageError(
            f"--classes {args.classes} leaves fewer than 2 points per class at N={min(sizes)}; "
            "give fewer classes or larger --sizes"
        )
    backend = resolve_backend(args.backend, None, args.device)
    if backend == "naive":
        raise UsageError("--backend naive is the baseline itself; choose numba, triton or auto")
    log(args, f"fastconvex bench: {backend} vs naive, overlapping classes, same pairs")
    rows = compare_to_naive(
        sizes,
        dim=args.dim,
        n_classes=args.classes,
        k=args.k,
        pairs=args.pairs,
        seed=args.seed,
        backend=backend,
        device=args.device,
        naive_max=args.naive_max,
        repeat=args.repeat,
        log=lambda s: log(args, s),
    )
    report = {"machine": machine_info(), "backend": backend, "device": args.device, "rows": rows}
    emit_report(args, report, lambda: "\n".join(format_row(r, backend) for r in rows))
    return 0 if all(r.get("agree", True) for r in rows) else 1
