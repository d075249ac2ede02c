"""What a sweep shows and writes: the progress reporter (a tqdm bar, or a log
line per task), the merged ``sweep.json``, ``sweep.csv`` and ``sweep.png``
(results before plots, each written atomically) and the table on stdout; and
the guards of its output directory: one writer at a time (:func:`output_lock`)
and no merged output of another sweep replaced unasked
(:func:`check_earlier_outputs`)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastconvex.core.atomic import write_text_atomic
from fastconvex.core.locks import OutputDirectoryBusy
from fastconvex.core.locks import output_lock as _output_lock
from fastconvex.core.plotfile import save_figure
from fastconvex.core.results import Convexity, LayerScores
from fastconvex.store import LayerStore, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from fastconvex.sweeps.task import LayerTask

__all__ = [
    "CSV_COLUMNS",
    "OUTPUTS",
    "OutputDirectoryBusy",
    "Reporter",
    "check_earlier_outputs",
    "format_table",
    "output_lock",
    "write_outputs",
]

OUTPUTS = ("sweep.json", "sweep.csv", "sweep.png")
LOCK_FILE = ".sweep.lock"
HOLDER_FILE = LOCK_FILE + ".holder"


def output_lock(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``out``'s lock for the block: one sweep writes into a directory at a
    time (two would replace each other's merged outputs, and each would report
    a mix); a second is refused at once (:class:`OutputDirectoryBusy`, naming
    the holder). See :func:`fastconvex.core.locks.output_lock`."""
    return _output_lock(out, "another sweep", name=LOCK_FILE, label=f"out_dir {str(out)!r}")


def check_earlier_outputs(
    out: Path, settings: dict[str, Any], selections: dict[str, list[int]], overwrite: bool, *, drawn: bool = False
) -> None:
    """Refuse (ValueError, one line) to replace the merged outputs of another
    sweep in ``out`` without ``overwrite``: a ``sweep.json`` made with other
    settings (a seed=None sweep draws a new seed, so its settings differ), or
    one covering a store or layer this sweep does not (its merged view would be
    lost), or ``sweep.csv``/``sweep.png`` without the ``sweep.json`` that says
    which sweep wrote them. The same sweep (rerun, resumed, or on stores
    rewritten since) replaces them. ``drawn``: this run's seed was drawn
    (seed=None), which the message then says."""
    if overwrite:
        return
    hint = "pass overwrite=True (--overwrite) to replace sweep.json, sweep.csv and sweep.png, or use another out_dir"
    earlier = out / "sweep.json"
    if not earlier.exists():
        present = [name for name in OUTPUTS[1:] if (out / name).exists()]
        if present:
            raise ValueError(
                f"out_dir {str(out)!r} holds {' and '.join(present)} but no sweep.json, so which "
                f"sweep wrote them is unknown; {hint}"
            )
        return
    try:
        doc = json.loads(earlier.read_text(encoding="utf-8"))
        old_settings, old_stores = doc["settings"], doc["stores"]
        old_layers = {name: list(entry["layer_indices"]) for name, entry in old_stores.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{earlier} is not a readable sweep result ({type(exc).__name__}: {exc}); {hint}") from None
    new_settings = json.loads(json.dumps(settings))
    if old_settings != new_settings:
        keys = sorted(set(old_settings) | set(new_settings), key=str)
        diff = [
            f"{key} {old_settings.get(key)!r} there, {new_settings.get(key)!r} now"
            for key in keys
            if old_settings.get(key) != new_settings.get(key)
        ]
        why = "; ".join(diff) or "the settings differ"
        if drawn and old_settings.get("seed") != new_settings.get("seed"):
            why += f"; seed=None drew a new seed, and seed={old_settings.get('seed')!r} resumes the earlier sweep"
        raise ValueError(f"{earlier} was written by a sweep with other settings ({why}); {hint}")
    for name, indices in old_layers.items():
        missing = sorted(set(indices) - set(selections.get(name, [])))
        if missing:
            raise ValueError(
                f"{earlier} also holds store {name!r} layer(s) {missing}, which this sweep does not score; {hint}"
            )


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

    def finished(self, task: LayerTask, result: Convexity | None, error: BaseException | None = None) -> None:
        self.done += 1
        if error is not None:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.verbose and not self.tty:
            what = f"FAILED: {error}" if error is not None else f"score {result.score:.6f} ± {result.stderr:.6f}"
            print(
                f"sweep: [{self.done}/{self.total}] {task.store_name} layer {task.layer}: {what}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


CSV_COLUMNS = (
    "store",
    "layer",
    "score",
    "stderr",
    "macro",
    "macro_stderr",
    "n_pairs",
    "n_unreachable",
    "n_points",
    "estimator",
    "k",
    "seed",
    "backend",
    "best",
)


def write_outputs(
    out: Path,
    stores: list[LayerStore],
    selections: dict[str, list[int]],
    merged: dict[str, LayerScores],
    settings: dict[str, Any],
    *,
    reused: int,
    computed: int,
    seconds: float,
    plot: bool,
    verbose: bool,
) -> dict[str, Any]:
    """sweep.json, then sweep.csv, then sweep.png (results before plots);
    without a plot (``plot=False``, or no matplotlib) an earlier sweep.png is
    removed, so what ``out`` holds is all this sweep's; returns the document written to sweep.json (what the command reports)."""
    doc = {
        "settings": settings,
        "reused": reused,
        "computed": computed,
        "seconds": seconds,
        "stores": {
            s.name: {
                "path": str(s.path),
                "fingerprint": s.fingerprint,
                "meta": s.meta,
                "layer_indices": selections[s.name],
                **merged[s.name].to_dict(),
                "best_layer_index": selections[s.name][merged[s.name].best_layer],
            }
            for s in stores
        },
    }
    doc = json.loads(json.dumps(doc, default=str))
    write_json_atomic(out / "sweep.json", doc)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(CSV_COLUMNS)
    for s in stores:
        res = merged[s.name]
        for row, (i, c) in enumerate(zip(selections[s.name], res.layers)):
            writer.writerow(
                [
                    s.name,
                    i,
                    repr(c.score),
                    repr(c.stderr),
                    repr(c.macro),
                    repr(c.macro_stderr),
                    c.total_pairs,
                    c.n_unreachable,
                    c.n_points,
                    c.estimator,
                    c.k,
                    c.seed,
                    c.backend,
                    int(row == res.best_layer),
                ]
            )
    write_text_atomic(out / "sweep.csv", table.getvalue())
    written = ["sweep.json", "sweep.csv"]
    if plot:
        try:
            from fastconvex.plot import plot_layer_scores

            names = [s.name for s in stores]
            fig = plot_layer_scores([merged[n] for n in names], labels=names if len(names) > 1 else None)
            sel = selections[names[0]]
            if any(selections[n] != list(range(len(sel))) for n in names) and all(selections[n] == sel for n in names):
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
    if "sweep.png" not in written and (out / "sweep.png").exists():
        # an earlier sweep's plot beside these results would show other numbers
        # (the lock is held: no other sweep's plot is removed)
        (out / "sweep.png").unlink()
        if verbose:
            print(
                f"sweep: removed {out / 'sweep.png'} of an earlier sweep (no plot written this time)",
                file=sys.stderr,
                flush=True,
            )
    if verbose:
        print(f"sweep: wrote {', '.join(str(out / w) for w in written)}", file=sys.stderr, flush=True)
    return doc


def format_table(merged: dict[str, LayerScores], layer_indices: dict[str, list[int]] | None = None) -> str:
    """A readable table: store, layer, convexity % ± s.e., best marked."""
    from fastconvex.core.table import Column, layer_table, percent

    # a row: (store name, layer index, its Convexity, is it the store's best layer)
    columns = [
        Column("store", "<24", lambda r: r[0][:24]),
        Column("layer", ">5", lambda r: r[1], gap=" "),
        Column("convexity %", ">11", percent(lambda r: r[2].score), ".2f"),
        Column("± s.e.", ">7", percent(lambda r: r[2].stderr), ".2f"),
        Column("macro %", ">8", percent(lambda r: r[2].macro), ".2f"),
    ]
    rows = []
    for name, res in merged.items():
        idx = layer_indices[name] if layer_indices else list(range(len(res)))
        rows += [(name, i, c, row == res.best_layer) for row, (i, c) in enumerate(zip(idx, res.layers))]
    return "\n".join(layer_table(columns, rows, best=lambda r: r[3]))
