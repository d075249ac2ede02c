"""The paper's experiment: score the pretrained layers, cut, fine-tune, compare.

For one Whisper model and one task (:class:`~fastconvex.demo.config.Dataset`):

1. the encoder's context is cut to the task's clips (:func:`fastconvex.hf.cut_whisper_context`):
   fine-tuning at Whisper's 30 s window is impractical on a CPU, and the outputs
   change with the context (the full window attends to its padding), so the layers
   are scored **in the context that is fine-tuned**;
2. graph convexity of every pretrained layer in that context, and the cut by the
   paper's rule (:func:`fastconvex.hf.choose_cut` via :func:`~fastconvex.demo.models.choose_keep`);
3. every cut in ``keeps`` (the full model, the convexity cut and the others) is
   fine-tuned with the same budget and seeds by :func:`fastconvex.hf.finetune`
   (the transformers ``Trainer``), on the same held-out split;
4. parameters, training time and the classifier's latency (measured in
   alternation on the same machine) per cut;
5. optionally, both convexity measures per layer of the fine-tuned full classifier:
   graph convexity of its pooled states and Euclidean convexity through its own
   remaining blocks and head (:func:`fastconvex.layer_euclidean_scores` with
   :func:`fastconvex.hf.predict_from_layer`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fastconvex.demo.config import SAMPLE_RATE, Dataset, FinetuneSettings, parse_keeps
from fastconvex.demo.models import (
    choose_keep,
    encode_pooled,
    encoder_latencies,
    prune_whisper,
)

#: The plateau rule's tolerance: the shallowest cut whose convexity reaches this fraction of
#: the best layer's. Fixed before any fine-tuning result was seen, by convention (as a 95 %
#: share of explained variance picks a number of components), not tuned on the results.
PLATEAU_RATIO = 0.95
CUT_RULES = ("argmax", "1se", "plateau")


def plateau_keep(scores: Sequence[float], n_blocks: int, ratio: float = PLATEAU_RATIO) -> int:
    """The shallowest cut h >= 1 (blocks kept) whose hidden state's convexity is at
    least ``ratio`` times the best hidden state's; 1 when no block reaches it (the
    input, h = 0, far the most convex: the argmax rule keeps one block then too)."""
    values = np.asarray(scores, dtype=np.float64)[: n_blocks + 1]
    best = float(values.max())
    for h in range(1, n_blocks + 1):
        if values[h] >= ratio * best:
            return h
    return 1


def rule_keeps(scores: Any, n_blocks: int) -> dict[str, int]:
    """The cut each rule chooses from the pretrained layers' convexity: the paper's
    argmax, the one-standard-error rule (the shallowest layer within one standard
    error of the best) and the plateau rule (:func:`plateau_keep`)."""
    return {
        "argmax": choose_keep(scores, n_blocks, "argmax")[0],
        "1se": choose_keep(scores, n_blocks, "1se")[0],
        "plateau": plateau_keep(scores.scores, n_blocks),
    }


def context_seconds_for(ds: Dataset, requested: float | None) -> float:
    """The encoder context for a task: ``requested``, or the longest clip rounded
    up to a whole second (Whisper's feature extractor pads to whole seconds). A
    clip longer than the context is an error, never cut silently."""
    longest = max(len(a) for a in ds.audio) / SAMPLE_RATE
    seconds = requested if requested is not None else float(math.ceil(longest - 1e-9))
    if longest > seconds + 1e-9:
        raise ValueError(
            f"{ds.name}: the longest clip is {longest:.2f} s, longer than the {seconds:g} s context; "
            "give a longer --context-seconds"
        )
    return float(seconds)


def keeps_for(spec: str, n_blocks: int, rule_keep: int) -> list[int]:
    """Block counts to fine-tune, always with the full model and the convexity cut:
    ``"all"``; ``"spread"``, four evenly spread counts from 1 to ``n_blocks``;
    ``"auto"``, all up to 4 blocks, else the spread; or a comma list."""
    parsed = parse_keeps(spec)
    if parsed == "auto":
        parsed = "all" if n_blocks <= 4 else "spread"
    if parsed == "all":
        keeps = set(range(1, n_blocks + 1))
    elif parsed == "spread":
        keeps = {int(k) for k in np.round(np.linspace(1, n_blocks, 4))}
    else:
        keeps = set(parsed)
        bad = sorted(k for k in keeps if k > n_blocks)
        if bad:
            raise ValueError(f"--keeps: {bad} not in 1..{n_blocks}")
    return sorted(keeps | {n_blocks, rule_keep}, reverse=True)


def context_model(model: Any, feature_extractor: Any, seconds: float) -> tuple[Any, Any]:
    """A copy of the Whisper model with its encoder context cut to ``seconds``, and
    the feature extractor that pads to it."""
    import copy

    from fastconvex.hf import context_feature_extractor, cut_whisper_context

    cut = cut_whisper_context(copy.deepcopy(model), seconds)
    return cut, context_feature_extractor(cut, feature_extractor)


def score_pretrained(
    model: Any,
    feature_extractor: Any,
    ds: Dataset,
    *,
    k: int,
    pairs: int,
    seed: int,
    backend: str,
    device: Any,
    final_norm: str = "apply",
) -> Any:
    """Graph convexity of every hidden state of ``model``'s encoder on ``ds`` (LayerScores)."""
    import fastconvex as fc

    states = encode_pooled(model.model.encoder, feature_extractor, ds.audio, final_norm=final_norm, device=device)
    return fc.layer_scores(
        states, np.asarray(ds.labels), k=k, pairs=pairs, seed=seed, backend=backend, device=device, progress=False
    )


def finetune_cuts(
    model: Any,
    feature_extractor: Any,
    ds: Dataset,
    split: tuple[np.ndarray, np.ndarray],
    keeps: Sequence[int],
    settings: FinetuneSettings,
    *,
    model_name: str,
    device: Any = None,
    log: Callable[[str], None] = print,
    tracker: Any = None,
) -> tuple[list[dict], dict[int, Any]]:
    """Fine-tune ``model`` cut to each of ``keeps`` blocks, once per seed.
    ``tracker`` (a :class:`fastconvex.hf.ConvexityCallback`) follows the full
    model's fine-tuning with the first seed.

    Returns the rows (``model, keep, seed, accuracy, train_seconds, infer_ms,
    params, n_train, n_eval``) and, per keep, the classifier of the first seed.
    ``infer_ms`` is the median latency of the classifier on ``latency_batch``
    inputs of the cut context, measured for all keeps in alternation.
    """
    from fastconvex.hf import finetune

    n_blocks = len(model.model.encoder.layers)
    rows: list[dict] = []
    classifiers: dict[int, Any] = {}
    for keep in keeps:
        base = prune_whisper(model, keep) if keep < n_blocks else model
        for seed in settings.seeds:
            res = finetune(
                base,
                ds.audio,
                ds.labels,
                eval_split=split,
                epochs=settings.epochs,
                lr=settings.lr,
                batch_size=settings.batch_size,
                seed=seed,
                feature_extractor=feature_extractor,
                progress=False,
                callbacks=[tracker] if tracker is not None and keep == n_blocks and seed == settings.seeds[0] else None,
            )
            rows.append(
                {
                    "model": model_name,
                    "keep": int(keep),
                    "seed": int(seed),
                    "accuracy": float(res.accuracy),
                    "train_seconds": float(res.train_seconds),
                    "infer_ms": None,
                    "params": int(res.params),
                    "n_train": int(res.n_train),
                    "n_eval": int(res.n_eval),
                }
            )
            log(
                f"{model_name} {ds.name}: keep {keep}/{n_blocks} seed {seed}: accuracy "
                f"{100 * res.accuracy:.1f}% in {res.train_seconds:.0f} s"
            )
            if keep not in classifiers:
                classifiers[keep] = res.model
    lat = encoder_latencies(
        dict(sorted(classifiers.items(), reverse=True)),
        reps=settings.latency_reps,
        batch=settings.latency_batch,
        device=device,
    )
    for r in rows:
        r["infer_ms"] = lat[r["keep"]]["median_ms"]
    return rows, classifiers


def both_measures(
    classifier: Any,
    feature_extractor: Any,
    ds: Dataset,
    settings: FinetuneSettings,
    *,
    k: int,
    pairs: int,
    seed: int,
    backend: str,
    device: Any = None,
) -> dict:
    """Graph and Euclidean convexity per layer of a fine-tuned Whisper classifier,
    on the same data, with their rank agreement across layers."""
    from scipy.stats import spearmanr

    import fastconvex as fc
    from fastconvex.hf import hidden_state_sequences, predict_from_layer

    labels = np.asarray(ds.labels)
    t0 = time.perf_counter()
    pooled = encode_pooled(classifier.encoder, feature_extractor, ds.audio, final_norm="raw", device=device)
    graph = fc.layer_scores(pooled, labels, k=k, pairs=pairs, seed=seed, backend=backend, device=device, progress=False)
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    seqs, lengths = hidden_state_sequences(classifier, ds.audio, feature_extractor=feature_extractor, progress=False)
    euclid = fc.layer_euclidean_scores(
        seqs,
        labels,
        predict_from_layer(classifier),
        n_sampled=settings.n_sampled,
        pairs=settings.euclidean_pairs,
        seed=seed,
        lengths=lengths,
        progress=False,
    )
    t_euclid = time.perf_counter() - t0
    rho = spearmanr(graph.scores, euclid.scores)
    return {
        "graph": [float(s) for s in graph.scores],
        "graph_stderr": [float(s) for s in graph.stderr],
        "euclidean": [float(s) for s in euclid.scores],
        "euclidean_stderr": [float(s) for s in euclid.stderr],
        "euclidean_pairs_per_class": settings.euclidean_pairs,
        "n_sampled": settings.n_sampled,
        "spearman": float(rho.statistic) if np.isfinite(rho.statistic) else None,
        "best_layer_graph": int(np.argmax(graph.scores)),
        "best_layer_euclidean": int(np.argmax(euclid.scores)),
        "pooled_states": "raw hidden states, mean over the valid frames; Euclidean: whole sequences",
        "seconds": {"graph": t_graph, "euclidean": t_euclid},
    }


def run_finetune_task(
    model: Any,
    feature_extractor: Any,
    ds: Dataset,
    split: tuple[np.ndarray, np.ndarray],
    settings: FinetuneSettings,
    *,
    model_name: str,
    k: int,
    pairs: int,
    seed: int,
    backend: str,
    rule: str = "argmax",
    device: Any = None,
    full_context_scores: Any = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The whole experiment for one model and one task; returns its report entry."""
    t_start = time.perf_counter()
    seconds = context_seconds_for(ds, settings.context_seconds)
    ctx_model, ctx_fe = context_model(model, feature_extractor, seconds)
    n_blocks = len(ctx_model.model.encoder.layers)
    t0 = time.perf_counter()
    scores = score_pretrained(ctx_model, ctx_fe, ds, k=k, pairs=pairs, seed=seed, backend=backend, device=device)
    t_score = time.perf_counter() - t0
    rule_keep, note = choose_keep(scores, n_blocks, rule)
    rules = rule_keeps(scores, n_blocks)
    keeps = sorted(set(keeps_for(settings.keeps, n_blocks, rule_keep)) | set(rules.values()), reverse=True)
    log(
        f"{model_name} {ds.name}: convexity at {seconds:g} s context "
        + " ".join(f"{100 * s:.1f}" for s in scores.scores)
        + f"; cut: keep {rule_keep} of {n_blocks}; "
        f"fine-tuning keeps {keeps} x seeds {list(settings.seeds)}"
    )
    tracker, tracking_skipped = None, None
    if settings.track_probe:
        from fastconvex.hf import ConvexityCallback
        from fastconvex.hf.train.splits import probe_of

        probe = probe_of(ds.labels, split[1], settings.track_probe, seed)
        try:
            tracker = ConvexityCallback(
                [ds.audio[i] for i in probe],
                [ds.labels[i] for i in probe],
                feature_extractor=ctx_fe,
                k=k,
                pairs=pairs,
                seed=seed,
            )
        except ValueError as exc:  # a held-out split too small to score (said, and recorded in the report)
            tracking_skipped = f"the held-out clips cannot be scored: {exc}"
            log(f"{model_name} {ds.name}: the fine-tuning is not tracked: {tracking_skipped}")
    rows, classifiers = finetune_cuts(
        ctx_model, ctx_fe, ds, split, keeps, settings, model_name=model_name, device=device, log=log, tracker=tracker
    )
    entry: dict[str, Any] = {
        "model": model_name,
        "n_blocks": n_blocks,
        "context_seconds": seconds,
        "scores": [float(s) for s in scores.scores],
        "stderr": [float(s) for s in scores.stderr],
        "rule_keep": int(rule_keep),
        "rule_note": note,
        "cut_rules": {name: int(keep) for name, keep in rules.items()},
        "plateau_ratio": PLATEAU_RATIO,
        "keeps": [int(x) for x in keeps],
        "rows": rows,
        "settings": {
            "epochs": settings.epochs,
            "lr": settings.lr,
            "batch_size": settings.batch_size,
            "seeds": list(settings.seeds),
            "latency_batch": settings.latency_batch,
        },
        "timings": {"score_s": t_score},
    }
    if tracking_skipped is not None:
        entry["trajectory_skipped"] = tracking_skipped
    if tracker is not None:
        entry["trajectory"] = {
            "probe_clips": len(tracker.audio),
            "layers": tracker.history[0].layers,
            "steps": [p.step for p in tracker.history],
            "epochs": [p.epoch for p in tracker.history],
            "scores": [[float(v) for v in p.scores.scores] for p in tracker.history],
            "stderr": [[float(v) for v in p.scores.stderr] for p in tracker.history],
        }
    if full_context_scores is not None:
        entry["scores_full_context"] = [float(s) for s in full_context_scores.scores]
        entry["stderr_full_context"] = [float(s) for s in full_context_scores.stderr]
    if settings.euclidean and model_name == settings.models[0]:
        log(f"{model_name} {ds.name}: graph and Euclidean convexity of the fine-tuned full classifier")
        entry["finetuned_measures"] = both_measures(
            classifiers[n_blocks],
            ctx_fe,
            ds,
            settings,
            k=k,
            pairs=pairs,
            seed=seed,
            backend=backend,
            device=device,
        )
    entry["timings"]["total_s"] = time.perf_counter() - t_start
    return entry


def unit_key(
    model_name: str, ds: Dataset, split: tuple[np.ndarray, np.ndarray], settings: FinetuneSettings, scoring: dict
) -> str:
    """A fingerprint of everything one model x task result depends on: the data
    (audio bytes, labels, split), the settings and the scoring options."""
    import hashlib
    import json
    from dataclasses import asdict

    h = hashlib.sha256()
    payload = {
        "model": model_name,
        "task": ds.name,
        "labels": list(map(str, ds.labels)),
        "split": [np.asarray(s).tolist() for s in split],
        "settings": asdict(settings),
        "scoring": scoring,
    }
    h.update(json.dumps(payload, sort_keys=True, default=str).encode())
    for a in ds.audio:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def run_experiment(
    settings: FinetuneSettings,
    datasets: Sequence[Dataset],
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    report: dict,
    *,
    out_dir: Any,
    scoring: dict,
    loaded: dict[str, tuple[Any, Any]],
    full_context_scores: dict[tuple[str, str], Any],
    device: Any = None,
    log: Callable[[str], None] = print,
    save: Callable[[], None] = lambda: None,
) -> None:
    """Every model x task of the experiment, each written atomically to
    ``out_dir/finetune/<model>-<task>.json`` when it finishes and reused by a rerun
    with the same data and settings; ``report["tasks"][task]`` gains ``finetune``
    (the rows) and ``finetune_models`` (the full entries)."""
    import json
    from pathlib import Path

    from fastconvex.core.atomic import write_json_atomic
    from fastconvex.demo.finetune_report import summarize
    from fastconvex.demo.models import load_whisper

    unit_dir = Path(out_dir) / "finetune"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in settings.models:
        for ds in datasets:
            path = unit_dir / f"{name}-{ds.name}.json"
            key = unit_key(name, ds, splits[ds.name], settings, scoring)
            entry = None
            if path.is_file():
                try:
                    old = json.loads(path.read_text())
                except (OSError, ValueError):
                    old = None
                if old is not None and old.get("key") == key:
                    entry = old
                    log(f"{name} {ds.name}: reusing the finished result in {path}")
            if entry is None:
                if name not in loaded:
                    loaded[name] = load_whisper(name, device=device)
                model, processor = loaded[name]
                entry = run_finetune_task(
                    model,
                    processor.feature_extractor,
                    ds,
                    splits[ds.name],
                    settings,
                    model_name=name,
                    device=device,
                    full_context_scores=full_context_scores.get((name, ds.name)),
                    log=log,
                    **scoring,
                )
                entry["summary"] = summarize(entry)
                entry["key"] = key
                write_json_atomic(path, entry)
            task = report["tasks"][ds.name]
            task.setdefault("finetune", []).extend(entry["rows"])
            task.setdefault("finetune_models", {})[name] = entry
            save()
