"""``fastconvex bench`` end to end (tiny sizes; timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from fastconvex.cli import main


def test_bench_writes_json_with_agreeing_scores(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--sizes", "60,81", "--dim", "8", "--classes", "3", "--k", "5",
                 "--pairs", "40", "--out", str(out)])
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
    err = capsys.readouterr().err
    assert "N=      60" in err and "agree True" in err


def test_bench_rejects_bad_sizes(capsys):
    assert main(["bench", "--sizes", "ten"]) == 2
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err
    assert main(["bench", "--sizes", "5", "--k", "10"]) == 2


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "fastconvex", "--version"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.startswith("fastconvex ")
