"""What a sweep shows and writes: the progress reporter (a tqdm bar, or a log
line per task), the merged ``sweep.json``, ``sweep.csv`` and ``sweep.png``
(results before plots, each written atomically) and the table on stdout."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import write_text_atomic
from ._plotfile import save_figure
from ._results import Convexity, LayerScores
from .store import LayerStore, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from ._sweep import LayerTask

__all__ = ["Reporter", "write_outputs", "format_table", "CSV_COLUMNS"]


class Reporter:
    """A tqdm bar over tasks (done, running, failed, ETA) on a terminal; a log
    line per finished task otherwise."""

    def __init__(self, total: int, reused: int, progress: bool | None, verbose: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.verbose = verbose
        self.total, self.done, self.failed = total, reused, 0
        show = self.tty if progress is None else bool(progress)
        self.bar = None
        if show and verbose:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # without tqdm: the log lines below
                self.tty = False
            else:
                self.bar = tqdm(total=total, initial=reused, unit="task", desc="sweep", file=sys.stderr)

    def running(self, n: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(running=n, failed=self.failed, refresh=True)

    def finished(self, task: "LayerTask", result: Convexity | None, error: BaseException | None = None) -> None:
        self.done += 1
        if error is not None:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.verbose and not self.tty:
            what = f"FAILED: {error}" if error is not None else f"score {result.score:.6f} ± {result.stderr:.6f}"
            print(f"sweep: [{self.done}/{self.total}] {task.store_name} layer {task.layer}: {what}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


CSV_COLUMNS = ("store", "layer", "score", "stderr", "macro", "macro_stderr", "n_pairs", "n_unreachable",
               "n_points", "estimator", "k", "seed", "backend", "best")


def write_outputs(out: Path, stores: list[LayerStore], selections: dict[str, list[int]],
                   merged: dict[str, LayerScores], settings: dict[str, Any], *, reused: int, computed: int,
                   seconds: float, plot: bool, verbose: bool) -> None:
    """sweep.json, then sweep.csv, then sweep.png (results before plots)."""
    doc = {
        "settings": settings,
        "reused": reused,
        "computed": computed,
        "seconds": seconds,
        "stores": {
            s.name: {"path": str(s.path), "fingerprint": s.fingerprint, "meta": s.meta,
                     "layer_indices": selections[s.name], **merged[s.name].to_dict(),
                     "best_layer_index": selections[s.name][merged[s.name].best_layer]}
            for s in stores
        },
    }
    write_json_atomic(out / "sweep.json", json.loads(json.dumps(doc, default=str)))
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(CSV_COLUMNS)
    for s in stores:
        res = merged[s.name]
        for row, (i, c) in enumerate(zip(selections[s.name], res.layers)):
            writer.writerow([s.name, i, repr(c.score), repr(c.stderr), repr(c.macro), repr(c.macro_stderr),
                             c.total_pairs, c.n_unreachable, c.n_points, c.estimator, c.k, c.seed,
                             c.backend, int(row == res.best_layer)])
    write_text_atomic(out / "sweep.csv", table.getvalue())
    written = ["sweep.json", "sweep.csv"]
    if plot:
        try:
            from .plot import plot_layer_scores

            names = [s.name for s in stores]
            fig = plot_layer_scores([merged[n] for n in names], labels=names if len(names) > 1 else None)
            sel = selections[names[0]]
            if any(selections[n] != list(range(len(sel))) for n in names):
                if all(selections[n] == sel for n in names):
                    fig.axes[0].set_xticks(range(len(sel)), [str(i) for i in sel])
            if settings.get("measure") == "euclidean":
                title = f"Euclidean convexity per layer (n_sampled={settings['n_sampled']}, {settings['estimator']})"
            else:
                title = f"graph convexity per layer (k={settings['k']}, {settings['estimator']})"
            fig.axes[0].set_title(title)
            save_figure(fig, out / "sweep.png", dpi=120)
            written.append("sweep.png")
        except ImportError as exc:
            if verbose:
                print(f"sweep: no plot ({exc})", file=sys.stderr, flush=True)
    if verbose:
        print(f"sweep: wrote {', '.join(str(out / w) for w in written)}", file=sys.stderr, flush=True)


def format_table(merged: dict[str, LayerScores], layer_indices: dict[str, list[int]] | None = None) -> str:
    """A readable table: store, layer, convexity % ± s.e., best marked."""
    rows = [f"{'store':<24} {'layer':>5}  {'convexity %':>11}  {'± s.e.':>7}  {'macro %':>8}"]
    for name, res in merged.items():
        idx = layer_indices[name] if layer_indices else list(range(len(res)))
        for row, (i, c) in enumerate(zip(idx, res.layers)):
            mark = "  <- best" if row == res.best_layer else ""
            rows.append(f"{name[:24]:<24} {i:>5}  {100 * c.score:>11.2f}  {100 * c.stderr:>7.2f}  "
                        f"{100 * c.macro:>8.2f}{mark}")
    return "\n".join(rows)
