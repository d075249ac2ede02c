"""``fastconvex bench`` end to end (tiny sizes; timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from fastconvex.cli import main


def test_bench_writes_json_with_agreeing_scores(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        ["bench", "--sizes", "60,81", "--dim", "8", "--classes", "3", "--k", "5", "--pairs", "40", "--out", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "numba"
    assert [r["n"] for r in report["rows"]] == [60, 81]
    for row in report["rows"]:
        assert row["agree"] is True
        assert row["score"] == row["naive_score"]
        assert row["numba_s"] > 0 and row["naive_s"] > 0
        assert row["speedup"] == row["naive_s"] / row["numba_s"]
    assert "numpy" in report["machine"] and "numba" in report["machine"]
    captured = capsys.readouterr()
    assert "N=      60" in captured.err and "agree True" in captured.err
    # stdout: one readable line per size (the JSON went to --out); --json prints the JSON instead
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("N=      60") and lines[1].startswith("N=      81")
    assert all(
        "agree True" in line and f"score {100 * r['score']:.2f}%" in line for line, r in zip(lines, report["rows"])
    )
    assert (
        main(
            ["bench", "--sizes", "60", "--dim", "8", "--classes", "3", "--k", "5", "--pairs", "40", "--json", "--quiet"]
        )
        == 0
    )
    again = json.loads(capsys.readouterr().out)
    assert again["rows"][0]["score"] == report["rows"][0]["score"]  # same data, same pairs


def test_every_command_takes_the_common_options():
    """SPEC: a table on stdout, JSON with --json, --seed/--device/--backend everywhere."""
    import argparse

    from fastconvex.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(sub.choices) == sorted(COMMANDS)
    for name, parser in sub.choices.items():
        missing = {"--json", "--out", "--seed", "--device", "--backend", "--quiet"} - set(parser._option_string_actions)
        assert not missing, (name, missing)


def test_bench_rejects_bad_sizes(capsys):
    assert main(["bench", "--sizes", "ten"]) == 2
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err
    assert main(["bench", "--sizes", "5", "--k", "10"]) == 2


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "fastconvex", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("fastconvex ")
