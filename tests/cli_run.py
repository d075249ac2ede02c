"""Running the command line in-process, as the CLI tests do: one place for
calling ``fastconvex.cli.main`` and for the rule that an error is one line."""

from __future__ import annotations

from fastconvex.cli import main


def run_cli(capsys, argv) -> tuple[int, str, str]:
    """``fastconvex ARGV`` in this process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """stderr holds exactly one line, the error, and no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]
