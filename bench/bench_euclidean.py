"""Per-layer Euclidean convexity of a wav2vec2 audio classifier: fastconvex
against the authors' ``nnconvexity`` 0.1.1, same predictor, same pairs, one run.

    python bench/bench_euclidean.py [--n 60] [--classes 3] [--hidden 32] [--layers 3]
                                    [--seconds 0.05] [--device cpu] [--repeat 3] [--json FILE]

A classifier (``fastconvex.hf.testing.tiny_model``: random weights, hidden size
``--hidden``, ``--layers`` blocks, 20 samples per frame) labels ``--n`` random utterances; their own
hidden states (N, T, D) are scored at every layer, every unordered same-class
pair (so neither side samples: the same pairs), 10 points per segment, both
through ``fastconvex.hf.predict_from_layer(model)``:

- fastconvex: ``fc.layer_euclidean_scores(..., exact=True)`` (points of many
  pairs per forward pass, ``--batch`` at a time);
- nnconvexity: ``compute_euclidean_convexity(states, labels, predict_from_middle,
  layer, n_pairs=all)`` per layer (one forward pass of 10 points per pair).

The two are timed alternately, ``--repeat`` times each (``speedup``: best over
best; ``paired_ratios``: each nnconvexity run over the fastconvex run just
before it, which a machine shared with other work disturbs less), and the
numbers must agree after nnconvexity's rounding to 2 decimals (the script
exits 1 otherwise). Prints one JSON object (also to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

import fastconvex as fc
from fastconvex import hf
from fastconvex.hf.testing import tiny_model


def build(args: argparse.Namespace):
    """(predictor, hidden states (L, N, T, D) numpy, labels (N,) names)."""
    model, _ = tiny_model(
        "wav2vec2",
        head="sequence",
        weighted_layer_sum=False,
        seed=args.seed,
        layers=args.layers,
        hidden_size=args.hidden,
    )
    model.config.id2label = {i: f"class{i}" for i in range(3)}
    with torch.no_grad():
        model.classifier.weight.mul_(40.0)  # random heads barely vary: spread the logits
    model.to(args.device).eval()
    rng = np.random.default_rng(args.seed)
    samples = int(args.seconds * 16000)
    t = np.arange(samples)
    wav = np.stack(
        [np.sin(t * rng.uniform(0.05, 1.5)) + rng.uniform(0.1, 1) * rng.normal(size=samples) for _ in range(args.n)]
    ).astype(np.float32)
    with torch.no_grad():
        out = model(torch.as_tensor(wav, device=args.device), output_hidden_states=True)
    states = torch.stack(out.hidden_states).cpu().numpy()
    # the model's own answers as labels (a classifier scored on data it gets
    # right), every --classes-th one replaced at random (some it gets wrong)
    labels = np.array([f"class{i}" for i in out.logits.argmax(-1).cpu().numpy()])
    flip = np.arange(args.n) % args.classes == 0
    labels[flip] = [f"class{i}" for i in rng.integers(0, 3, int(flip.sum()))]
    return hf.predict_from_layer(model), states, labels


def run_fastconvex(predictor, states, labels, batch):
    r = fc.layer_euclidean_scores(list(states), labels, predictor, exact=True, batch_size=batch, progress=False)
    return [(round(100 * c.score, 2), {k: round(100 * v, 2) for k, v in c.per_class.items()}) for c in r.layers]


def run_nnconvexity(predictor, states, labels):
    from nnconvexity.euclidean import compute_euclidean_convexity

    budget = len(labels) ** 2  # above every class's number of pairs: all of them
    out = []
    for layer in range(states.shape[0]):
        mean, per_class = compute_euclidean_convexity(
            states[layer],
            labels,
            lambda feats, lay: predictor(lay, feats),
            layer,
            n_pairs=budget,
        )
        out.append((mean, {str(k): v for k, v in per_class.items()}))
    return out


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60, help="utterances (default 60)")
    parser.add_argument("--classes", type=int, default=3, help="every --classes-th label is drawn at random")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size (default 32)")
    parser.add_argument("--layers", type=int, default=3, help="transformer blocks (default 3)")
    parser.add_argument("--seconds", type=float, default=0.05, help="utterance length (default 0.05 s: 39 frames)")
    parser.add_argument("--batch", type=int, default=1024, help="fastconvex points per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)

    predictor, states, labels = build(args)
    run_fastconvex(predictor, states, labels, args.batch)  # warm-up (allocator, kernels)
    fast_t, slow_t = [], []
    for _ in range(args.repeat):
        t, fast = timed(lambda: run_fastconvex(predictor, states, labels, args.batch))
        fast_t.append(t)
        t, slow = timed(lambda: run_nnconvexity(predictor, states, labels))
        slow_t.append(t)
    same = all(
        f[0] == s[0] and all(f[1][k] == v for k, v in s[1].items() if not np.isnan(v)) for f, s in zip(fast, slow)
    )
    classes, counts = np.unique(labels, return_counts=True)
    result = {
        "what": "per-layer Euclidean convexity, every same-class pair, 10 points per segment",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(args.device),
            "gpu": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else None,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "hidden_states": list(states.shape),
        "class_sizes": {str(c): int(n) for c, n in zip(classes, counts)},
        "pairs_per_layer": int(sum(c * (c - 1) // 2 for c in counts)),
        "fastconvex_s": min(fast_t),
        "nnconvexity_s": min(slow_t),
        "speedup": min(slow_t) / min(fast_t),
        "paired_ratios": [s / f for s, f in zip(slow_t, fast_t)],
        "median_paired_ratio": float(np.median([s / f for s, f in zip(slow_t, fast_t)])),
        "all_times": {"fastconvex": fast_t, "nnconvexity": slow_t},
        "same_numbers": bool(same),
        "scores_percent": {"fastconvex": [f[0] for f in fast], "nnconvexity": [float(s[0]) for s in slow]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
