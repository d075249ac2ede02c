"""What the fine-tuning experiment found: per-cut statistics, the rank correlation
of pretrained convexity with fine-tuned accuracy, full vs the convexity cut, the
table and the figure."""

from __future__ import annotations

from typing import Any

import numpy as np


def per_keep(rows: list[dict]) -> dict[int, dict]:
    """Mean and spread (sample s.d., 0 for one seed) of each cut's rows."""
    out: dict[int, dict] = {}
    for keep in sorted({r["keep"] for r in rows}):
        rs = [r for r in rows if r["keep"] == keep]
        acc = np.array([r["accuracy"] for r in rs], dtype=np.float64)
        out[keep] = {
            "accuracy_mean": float(acc.mean()),
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "seeds": len(rs),
            "train_seconds": float(np.mean([r["train_seconds"] for r in rs])),
            "infer_ms": float(rs[0]["infer_ms"]) if rs[0]["infer_ms"] is not None else None,
            "params": int(rs[0]["params"]),
        }
    return out


def summarize(entry: dict) -> dict:
    """The experiment's findings for one model x task.

    ``spearman``: rank correlation, over the fine-tuned cuts, of the pretrained
    layer's convexity (at the fine-tuning context) with the mean held-out accuracy
    of the model cut there (None with fewer than 3 cuts or no variation).
    ``full_vs_cut``: accuracy difference (cut - full), and the fractions of
    parameters, training time and latency the cut saves.
    """
    from scipy.stats import spearmanr

    stats = per_keep(entry["rows"])
    keeps = sorted(stats)
    conv = [entry["scores"][k] for k in keeps]
    acc = [stats[k]["accuracy_mean"] for k in keeps]
    rho = p = None
    if len(keeps) >= 3 and np.ptp(conv) > 0 and np.ptp(acc) > 0:
        res = spearmanr(conv, acc)
        rho, p = float(res.statistic), float(res.pvalue)
    full, cut = stats[entry["n_blocks"]], stats[entry["rule_keep"]]

    def saved(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or a == 0 else 1.0 - b / a

    best_keep = max(keeps, key=lambda k: (stats[k]["accuracy_mean"], -k))
    out = {
        "per_keep": {str(k): v for k, v in stats.items()},
        "spearman": rho,
        "spearman_p": p,
        "n_cuts": len(keeps),
        "full_vs_cut": {
            "keep": entry["rule_keep"],
            "accuracy_full": full["accuracy_mean"],
            "accuracy_cut": cut["accuracy_mean"],
            "accuracy_diff": cut["accuracy_mean"] - full["accuracy_mean"],
            "params_saved": saved(full["params"], cut["params"]),
            "train_time_saved": saved(full["train_seconds"], cut["train_seconds"]),
            "latency_saved": saved(full["infer_ms"], cut["infer_ms"]),
        },
        "best_keep": best_keep,
    }
    if "cut_rules" in entry:
        out["cut_rules"] = {
            rule: {
                "keep": keep,
                "accuracy": stats[keep]["accuracy_mean"] if keep in stats else None,
                "accuracy_diff": stats[keep]["accuracy_mean"] - full["accuracy_mean"] if keep in stats else None,
                "params": stats[keep]["params"] if keep in stats else None,
                "params_saved": saved(full["params"], stats[keep]["params"]) if keep in stats else None,
            }
            for rule, keep in entry["cut_rules"].items()
        }
    if "trajectory" in entry:
        out["trajectory"] = trajectory_summary(entry["trajectory"])
    return out


def trajectory_summary(trajectory: dict) -> dict:
    """Before and after fine-tuning, per hidden state, of the tracked full model,
    and whether convexity rose in the last layers (the papers' finding): the
    mean change over the deeper half of the hidden states (h > n / 2, the last
    always among them) is positive."""
    before = np.asarray(trajectory["scores"][0], dtype=np.float64)
    after = np.asarray(trajectory["scores"][-1], dtype=np.float64)
    layers = list(trajectory["layers"])
    last = [i for i, h in enumerate(layers) if h > max(layers) / 2]
    change = after - before
    return {
        "layers": layers,
        "before": before.tolist(),
        "after": after.tolist(),
        "change": change.tolist(),
        "last_layers": [layers[i] for i in last],
        "last_layers_change": float(change[last].mean()),
        "rose_in_last_layers": bool(change[last].mean() > 0),
    }


def _pm(mean: float, sd: float, seeds: int) -> str:
    return f"{100 * mean:5.1f}" + (f" ± {100 * sd:4.1f}" if seeds > 1 else "       ")


def format_finetune(report: dict) -> str:
    """The experiment's tables: per model x task, every cut, then the claim."""
    lines: list[str] = []
    for task, t in report["tasks"].items():
        for entry in t.get("finetune_models", {}).values():
            s = entry["summary"]
            lines.append(
                f"{entry['model']} / {task}: fine-tuned at a {entry['context_seconds']:g} s context, "
                f"{entry['settings']['epochs']:g} epochs, lr {entry['settings']['lr']:g}, "
                f"seeds {entry['settings']['seeds']}"
            )
            has_full = "scores_full_context" in entry
            head = f"{'blocks':>6} | {'convexity %':>11}" + (f" | {'at 30 s %':>9}" if has_full else "")
            head += f" | {'accuracy %':>14} | {'params':>8} | {'train s':>7} | {'infer ms':>8}"
            lines.append(head)
            lines.append("-" * len(head))
            for k in range(entry["n_blocks"], 0, -1):
                row = f"{k:>6} | {100 * entry['scores'][k]:>11.1f}"
                if has_full:
                    row += f" | {100 * entry['scores_full_context'][k]:>9.1f}"
                st = s["per_keep"].get(str(k))
                if st is None:
                    row += f" | {'-':>14} | {'':>8} | {'':>7} | {'':>8}"
                else:
                    row += (
                        f" | {_pm(st['accuracy_mean'], st['accuracy_sd'], st['seeds']):>14} | "
                        f"{st['params'] / 1e6:>6.2f} M | {st['train_seconds']:>7.0f} | {st['infer_ms']:>8.1f}"
                    )
                marks = ("  <- convexity cut" if k == entry["rule_keep"] else "") + (
                    "  (full)" if k == entry["n_blocks"] else ""
                )
                lines.append(row + marks)
            f = s["full_vs_cut"]
            rho = (
                "n/a"
                if s["spearman"] is None
                else f"{s['spearman']:+.2f} (p={s['spearman_p']:.2f}, {s['n_cuts']} cuts)"
            )
            lines.append(
                f"convexity cut keeps {f['keep']} of {entry['n_blocks']} blocks: accuracy {100 * f['accuracy_diff']:+.1f} "
                f"points vs full, {_pct(f['params_saved'])} fewer parameters, {_pct(f['latency_saved'])} lower latency, "
                f"{_pct(f['train_time_saved'])} less training time; Spearman(convexity, accuracy) {rho}"
            )
            rules = s.get("cut_rules")
            if rules:
                lines.append(
                    "cut rules (pretrained convexity; plateau: the shallowest cut reaching "
                    f"{100 * entry.get('plateau_ratio', 0.95):.0f}% of the best): "
                    + "; ".join(
                        f"{name} keeps {r['keep']}"
                        + (
                            ""
                            if r["accuracy"] is None
                            else f" ({100 * r['accuracy']:.1f}%, {r['params'] / 1e6:.2f} M params)"
                        )
                        for name, r in rules.items()
                    )
                )
            t = s.get("trajectory")
            if t:
                lines.append(
                    f"full model through fine-tuning ({entry['trajectory']['probe_clips']} held-out clips), "
                    "convexity % per hidden state before -> after: "
                    + " ".join(
                        f"{h}:{100 * a:.1f}->{100 * b:.1f}" for h, a, b in zip(t["layers"], t["before"], t["after"])
                    )
                    + f"; rose in the last layers ({', '.join(map(str, t['last_layers']))}): "
                    + ("yes" if t["rose_in_last_layers"] else "no")
                    + f" ({100 * t['last_layers_change']:+.1f} points)"
                )
            m = entry.get("finetuned_measures")
            if m:
                lines.append(
                    "fine-tuned full classifier, per layer: graph "
                    + " ".join(f"{100 * v:.1f}" for v in m["graph"])
                    + " | Euclidean "
                    + " ".join(f"{100 * v:.1f}" for v in m["euclidean"])
                    + (f" | Spearman {m['spearman']:+.2f}" if m["spearman"] is not None else "")
                )
            lines.append("")
    return "\n".join(lines).rstrip()


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def finetune_figure(report: dict) -> Any:
    """Per task: fine-tuned accuracy of the model cut at layer h against the
    pretrained convexity of layer h, a line per model, Spearman's rho in the legend."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    tasks = [t for t, v in report["tasks"].items() if v.get("finetune_models")]
    if not tasks:
        return None
    fig = Figure(figsize=(5.2 * len(tasks), 4.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for entry in report["tasks"][task]["finetune_models"].values():
            s = entry["summary"]
            keeps = sorted(int(k) for k in s["per_keep"])
            x = [100 * entry["scores"][k] for k in keeps]
            y = [100 * s["per_keep"][str(k)]["accuracy_mean"] for k in keeps]
            e = [100 * s["per_keep"][str(k)]["accuracy_sd"] for k in keeps]
            rho = "" if s["spearman"] is None else f", ρ={s['spearman']:+.2f}"
            line = ax.errorbar(x, y, yerr=e, marker="o", ls=":", capsize=3, label=f"{entry['model']}{rho}")
            for k, xi, yi in zip(keeps, x, y):
                star = "*" if k == entry["rule_keep"] else ""
                ax.annotate(
                    f"{k}{star}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=line[0].get_color(),
                )
        ax.set_xlabel("pretrained convexity of layer h (%)")
        ax.set_ylabel("held-out accuracy, fine-tuned model cut at h (%)")
        ax.set_title(f"{task} (labels: blocks kept; * convexity cut)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trajectory_figure(report: dict) -> Any:
    """Per model x task: the convexity of each hidden state of the full model
    against the optimizer step of its fine-tuning (None without a tracked run)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from types import SimpleNamespace

    from fastconvex.plot import plot_convexity_history

    panels = [
        (task, entry)
        for task, t in report["tasks"].items()
        for entry in t.get("finetune_models", {}).values()
        if "trajectory" in entry
    ]
    if not panels:
        return None
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (task, entry) in zip(axes, panels):
        tr = entry["trajectory"]
        points = [
            SimpleNamespace(
                step=step, layers=tr["layers"], scores=SimpleNamespace(scores=np.asarray(scores), layers=[])
            )
            for step, scores in zip(tr["steps"], tr["scores"])
        ]
        plot_convexity_history(points, ax=ax)
        ax.set_title(f"{entry['model']} / {task}: fine-tuning the full model", fontsize="medium")
    return fig
