"""The demo's experiment: data, scores, the cut, the pruned model and its measurements."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fastconvex.demo.config import Dataset, DemoConfig, cache_root
from fastconvex.demo.data_asterisk import ASTERISK_TASKS
from fastconvex.demo.data_fillets import (
    SPEAKERS_HINT,
    fetch_fillets,
    find_fillets_files,
    load_speakers,
)
from fastconvex.demo.data_words import make_words
from fastconvex.demo.models import (
    choose_keep,
    count_params,
    encode_pooled,
    encoder_latencies,
    encoder_output_pooled,
    prune_whisper,
    save_pruned_model,
)
from fastconvex.demo.probe import dataset_split, fit_probe, probe_accuracy
from fastconvex.demo.report import _json_default, _versions, plot_finetune, plot_report, plot_trajectory


def load_task(name: str, cfg: DemoConfig, log) -> Dataset:
    """The data set of task ``name`` (see :data:`~fastconvex.demo.config.TASKS`)."""
    if name == "words":
        return make_words(cfg.words_voices, cfg.seed, log=log)
    if name == "speakers":
        if not find_fillets_files("cs") or not find_fillets_files("nl"):
            if not cfg.fetch:
                raise RuntimeError(f"fillets-ng voice data not found: {SPEAKERS_HINT}")
            fetch_fillets(cache_root() / "fillets-ng", log=log)
        return load_speakers(cfg.speaker_clips, cfg.seed)
    return ASTERISK_TASKS[name](cfg.asterisk_clips, cfg.seed, fetch=cfg.fetch, log=log)


#: encoder blocks of the Whisper models the fine-tuning experiment knows (OpenAI's published
#: architectures; the keys of fastconvex.hf.whisper_models.WHISPER_MODELS), so that --keeps is
#: checked for every model before any model is loaded
ENCODER_BLOCKS = {"tiny.en": 4, "base": 6}


def check_finetune_keeps(models: Sequence[str], spec: str) -> None:
    """``--keeps`` block counts beyond a fine-tuned model's encoder raise ValueError naming the
    model (the rules ``auto``, ``all`` and ``spread`` fit every model)."""
    from fastconvex.demo.config import parse_keeps

    keeps = parse_keeps(spec)
    if not isinstance(keeps, tuple):
        return
    for name in models:
        n_blocks = ENCODER_BLOCKS.get(name)  # a model not listed is checked when it is fine-tuned
        bad = sorted(k for k in keeps if n_blocks is not None and k > n_blocks)
        if bad:
            raise ValueError(f"--keeps: {bad} not in 1..{n_blocks} (Whisper {name}'s encoder blocks)")


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo; returns the report (also written to ``cfg.out_dir/report.json``)."""
    import torch

    import fastconvex as fc
    from fastconvex.hf.ct2_whisper import find_whisper_ct2_dir, load_ct2_whisper

    t_start = time.perf_counter()
    log = cfg.log or (lambda msg: None if cfg.quiet else print(msg, file=sys.stderr, flush=True))
    timings: dict[str, float] = {}
    skipped: dict[str, str] = {}
    if cfg.finetune is not None:  # a cut a fine-tuned model cannot make fails now, not after hours of work
        check_finetune_keeps(cfg.finetune.models, cfg.finetune.keeps)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- model
    t0 = time.perf_counter()
    src = Path(cfg.model_dir) if cfg.model_dir else find_whisper_ct2_dir()
    model, processor = load_ct2_whisper(src)
    device = torch.device(cfg.device) if cfg.device else torch.device("cpu")
    model.to(device)
    encoder = model.model.encoder
    n_blocks = len(encoder.layers)
    if cfg.keep is not None and not 1 <= cfg.keep <= n_blocks:  # before the data and encoding (minutes)
        raise ValueError(f"--keep must be in 1..{n_blocks} (the encoder's blocks), got {cfg.keep}")
    timings["model_load_s"] = time.perf_counter() - t0
    log(f"model: Whisper tiny.en from {src} ({timings['model_load_s']:.1f} s, {n_blocks} encoder blocks)")

    # ---- data
    datasets: list[Dataset] = []
    for name in cfg.tasks:
        t0 = time.perf_counter()
        try:
            datasets.append(load_task(name, cfg, log))
        except (RuntimeError, ValueError, subprocess.CalledProcessError, OSError) as exc:
            skipped[name] = " ".join(str(exc).split())
            log(f"{name}: skipped: {skipped[name]}")
            continue
        timings[f"{name}_data_s"] = time.perf_counter() - t0
        log(f"{name}: {len(datasets[-1])} clips ready in {timings[f'{name}_data_s']:.1f} s")
    if cfg.finetune is not None:  # before any work: every clip must fit the fine-tuning context
        from fastconvex.demo.finetune import context_seconds_for

        for ds in datasets:
            context_seconds_for(ds, cfg.finetune.context_seconds)
    if not datasets:
        raise RuntimeError("no task could run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))

    # ---- full model measurements
    report: dict[str, Any] = {
        "model": {
            "name": "Whisper tiny.en",
            "source": str(src),
            "license": "MIT (OpenAI Whisper)",
            "encoder_layers": n_blocks,
            "hidden_size": int(model.config.d_model),
        },
        "settings": {
            "quick": cfg.quick,
            "seed": cfg.seed,
            "k": cfg.k,
            "pairs": cfg.pairs,
            "backend": cfg.backend,
            "device": str(device),
            "final_norm": cfg.final_norm,
            "cut_rule": cfg.cut_rule,
            "pooling": "mean over the first ceil(n_samples/320) encoder frames",
        },
        "full_model": {
            "params_total": count_params(model),
            "params_encoder": count_params(encoder),
            "latency": None,  # measured at the end, alternating with the pruned encoders
        },
        "tasks": {},
        "skipped": skipped,
    }

    cut_encoders: dict[int, Any] = {n_blocks: encoder}
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    full_context_scores: dict[tuple[str, str], Any] = {}
    for ds in datasets:
        t0 = time.perf_counter()
        last = [0.0]

        def progress(i, n, name=ds.name, last=last):
            now = time.perf_counter()
            if now - last[0] > 10 or i == n:
                last[0] = now
                log(f"{name}: encoded {i}/{n}")

        states = encode_pooled(
            encoder, processor.feature_extractor, ds.audio, final_norm=cfg.final_norm, device=device, progress=progress
        )
        t_enc = time.perf_counter() - t0
        labels = np.asarray(ds.labels)
        t0 = time.perf_counter()
        scores = fc.layer_scores(
            states,
            labels,
            k=cfg.k,
            pairs=cfg.pairs,
            seed=cfg.seed,
            backend=cfg.backend,
            device=cfg.device,
            progress=False,
        )
        t_score = time.perf_counter() - t0
        train_idx, test_idx = dataset_split(ds, seed=cfg.seed)
        splits[ds.name] = (train_idx, test_idx)
        if cfg.final_norm == "apply":
            full_context_scores[("tiny.en", ds.name)] = scores
        probe = [probe_accuracy(states[h], labels, train_idx, test_idx) for h in range(states.shape[0])]
        if cfg.keep is not None:
            keep, note = int(cfg.keep), "set by --keep"  # checked against n_blocks when the model loaded
        else:
            keep, note = choose_keep(scores, n_blocks, cfg.cut_rule)
        log(
            f"{ds.name}: convexity per layer "
            + " ".join(f"{100 * s:.1f}" for s in scores.scores)
            + f"; cut: keep {keep} of {n_blocks} blocks"
        )

        # ---- prune, save, measure
        pruned = prune_whisper(model, keep)
        p_enc = pruned.model.encoder
        t1 = time.perf_counter()
        if keep < n_blocks or cfg.final_norm == "raw":
            pooled_pruned = encoder_output_pooled(p_enc, processor.feature_extractor, ds.audio, device=device)
        else:  # nothing cut: the "pruned" encoder is the full one, whose output was pooled above
            pooled_pruned = states[n_blocks]
        t_pruned = time.perf_counter() - t1
        acc_pruned = probe_accuracy(pooled_pruned, labels, train_idx, test_idx)
        ref = states[keep] if cfg.final_norm == "apply" else None
        diff = float(np.max(np.abs(pooled_pruned - ref))) if ref is not None else None
        cut_encoders.setdefault(keep, p_enc)
        saved = None
        if cfg.save_models and keep < n_blocks:
            final_probe = fit_probe(pooled_pruned[train_idx], labels[train_idx])
            saved = cfg.out_dir / f"whisper-tiny.en-{ds.name}-keep{keep}"
            save_pruned_model(
                pruned,
                processor,
                saved,
                scores=scores,
                seed=cfg.seed,
                original_layers=n_blocks,
                extra={"task": ds.name, "probe_accuracy": acc_pruned},
            )
            np.savez(
                saved / "probe.npz",
                classes=np.asarray(final_probe.classes),
                mean=final_probe.mean,
                scale=final_probe.scale,
                weight=final_probe.weight,
                bias=final_probe.bias,
            )
        report["tasks"][ds.name] = {
            "source": ds.source,
            "n": len(ds),
            "classes": sorted(set(ds.labels)),
            "class_counts": {c: int(np.sum(labels == c)) for c in sorted(set(ds.labels))},
            "split": {"by": ds.split_by, "n_train": len(train_idx), "n_test": len(test_idx)},
            "scores": [float(s) for s in scores.scores],
            "stderr": [float(s) for s in scores.stderr],
            "best_layer": int(scores.best_layer),
            "probe_accuracy": [float(a) for a in probe],
            "convexity": scores.to_dict(),
            "cut": {
                "keep": keep,
                "note": note,
                "params_total": count_params(pruned),
                "params_encoder": count_params(p_enc),
                "latency": None,  # filled in below
                "probe_full": float(probe[n_blocks]),
                "probe_pruned": acc_pruned,
                "max_abs_diff_pruned_vs_scored_state": diff,
                "saved": str(saved) if saved else None,
            },
            "timings": {"encode_s": t_enc, "score_s": t_score, "pruned_encode_s": t_pruned},
        }
        del pruned  # its encoder stays in cut_encoders for the latency

    # ---- latency of the full and the pruned encoders, measured in alternation
    t0 = time.perf_counter()
    log(f"timing the encoders ({', '.join(f'{k} blocks' for k in sorted(cut_encoders))}), {cfg.latency_reps} runs each")
    lat = encoder_latencies(dict(sorted(cut_encoders.items(), reverse=True)), reps=cfg.latency_reps, device=device)
    timings["latency_s"] = time.perf_counter() - t0
    report["full_model"]["latency"] = lat[n_blocks]
    for r in report["tasks"].values():
        r["cut"]["latency"] = lat[r["cut"]["keep"]]
    report["timings"] = {**timings, "total_s": time.perf_counter() - t_start}
    report["environment"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(),
    }
    from fastconvex.core.atomic import write_text_atomic

    report["json"] = str(cfg.out_dir / "report.json")
    report["png"] = None

    def save_report() -> None:
        report["timings"]["total_s"] = time.perf_counter() - t_start
        write_text_atomic(cfg.out_dir / "report.json", json.dumps(report, indent=2, default=_json_default) + "\n")

    save_report()  # before the plot: a plot that fails never loses the results
    if cfg.finetune is not None:
        from fastconvex.demo.finetune import run_experiment

        t0 = time.perf_counter()
        run_experiment(
            cfg.finetune,
            datasets,
            splits,
            report,
            out_dir=cfg.out_dir,
            scoring={"k": cfg.k, "pairs": cfg.pairs, "seed": cfg.seed, "backend": cfg.backend, "rule": cfg.cut_rule},
            loaded={"tiny.en": (model, processor)},
            full_context_scores=full_context_scores,
            device=device,
            log=log,
            save=save_report,
        )
        report["timings"]["finetune_s"] = time.perf_counter() - t0
        report["settings"]["finetune"] = asdict(cfg.finetune)
        save_report()
    try:
        png = plot_report(report, cfg.out_dir / "demo.png")
    except Exception as exc:  # noqa: BLE001 - keep the report; say why there is no plot
        log(f"no demo.png: {exc}; the results are in {report['json']}")
        png = None
    report["finetune_png"] = report["trajectory_png"] = None
    if cfg.finetune is not None:
        for key, plot, name in (
            ("finetune_png", plot_finetune, "finetune.png"),
            ("trajectory_png", plot_trajectory, "trajectory.png"),
        ):
            try:
                report[key] = plot(report, cfg.out_dir / name)
            except Exception as exc:  # noqa: BLE001 - keep the report; say why there is no plot
                log(f"no {name}: {exc}; the results are in {report['json']}")
    if png is None and "matplotlib" not in sys.modules:
        log("no demo.png: matplotlib is not installed (pip install 'fastconvex[demo]')")
    report["png"] = str(png) if png else None
    save_report()
    return report
