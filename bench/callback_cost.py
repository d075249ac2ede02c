"""What hf.ConvexityCallback costs: its share of the training time of the demo's
fine-tuning of Whisper tiny.en (the words task, the demo's context cut, split and
settings: 6 epochs, lr 1e-4, batch 16, seed 0), with the command line's default
probe (``fastconvex finetune --track-convexity``: 100 held-out clips, stratified)
and the default estimator (k=10, pairs=5000).

The same fine-tuning runs twice in one process, without and with the callback
(alternating which goes first with ``--order``); the run with the callback must
end with the same weights (the callback leaves the run as it was) or nothing is
reported. Prints one JSON object: both training times, the callback's time per
point and in all, and its share of the training time with it.

    python bench/callback_cost.py [--probe-size 100] [--order plain-first|tracked-first] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-size", type=int, default=100)
    parser.add_argument("--order", choices=["plain-first", "tracked-first"], default="plain-first")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from fastconvex import hf
    from fastconvex.demo.config import DemoConfig, FinetuneSettings
    from fastconvex.demo.experiment import load_task
    from fastconvex.demo.finetune import context_model, context_seconds_for, finetune_cuts
    from fastconvex.demo.models import load_whisper
    from fastconvex.demo.probe import dataset_split
    from fastconvex.hf.train.splits import probe_of

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cfg, settings = DemoConfig(), FinetuneSettings()
    ds = load_task("words", cfg, log)
    model, processor = load_whisper("tiny.en")
    ctx_model, ctx_fe = context_model(model, processor.feature_extractor, context_seconds_for(ds, None))
    split = dataset_split(ds, seed=cfg.seed)
    probe = probe_of(ds.labels, split[1], args.probe_size, cfg.seed)

    n_blocks = len(ctx_model.model.encoder.layers)
    one_seed = dataclasses.replace(settings, seeds=(cfg.seed,), latency_reps=1)

    def finetune(tracker: object) -> tuple[float, dict, object]:
        """The demo's own fine-tuning of the full model (``finetune_cuts``), one seed."""
        rows, classifiers = finetune_cuts(
            ctx_model, ctx_fe, ds, split, [n_blocks], one_seed, model_name="tiny.en", log=log, tracker=tracker
        )
        return rows[0]["train_seconds"], rows[0], classifiers[n_blocks]

    cb = hf.ConvexityCallback(
        [ds.audio[i] for i in probe], [ds.labels[i] for i in probe], feature_extractor=ctx_fe, k=cfg.k, pairs=cfg.pairs
    )
    # the callback's whole work at each point: scoring, the Trainer's log, the history file
    point_seconds: list[float] = []
    score_point = cb._score_point

    def timed_point(*a):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return score_point(*a)
        finally:
            point_seconds.append(time.perf_counter() - start)

    cb._score_point = timed_point
    runs = {}
    for name in ("plain", "tracked") if args.order == "plain-first" else ("tracked", "plain"):
        log(f"fine-tuning Whisper tiny.en on words ({name})")
        runs[name] = finetune(cb if name == "tracked" else None)
    (t_plain, plain, plain_model), (t_tracked, tracked, tracked_model) = runs["plain"], runs["tracked"]
    same = all(
        torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(), tracked_model.state_dict().values())
    )
    if not same or plain["accuracy"] != tracked["accuracy"]:
        print("refusing to report: the run with the callback ended with other weights", file=sys.stderr)
        return 1
    callback_s = float(np.sum(point_seconds))
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "task": "words",
        "model": "tiny.en",
        "n_train": plain["n_train"],
        "epochs": settings.epochs,
        "probe_clips": len(probe),
        "k": cfg.k,
        "pairs": cfg.pairs,
        "order": args.order,
        "train_seconds_without": t_plain,
        "train_seconds_with": t_tracked,
        "points": len(cb.history),
        "seconds_per_point": [round(s, 3) for s in point_seconds],
        "callback_seconds": callback_s,
        "callback_share_of_training": callback_s / t_tracked,
        "extra_share_of_training": (t_tracked - t_plain) / t_tracked,
        "same_weights": same,
        "accuracy": plain["accuracy"],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
