"""Issue 24: the Ray that fastconvex starts is gone when it is interrupted,
also while Ray is still starting (one subprocess, two local Ray starts)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray")  # in the [test] extra; the rest of fastconvex never needs it

_DRIVER = textwrap.dedent("""
    import json, os, signal
    import psutil
    import ray._private.node as node
    from fastconvex._ray import ray_session

    real = node.Node.__init__
    started = []

    def interrupted(self, *args, **kwargs):
        # the head's processes run, but ray.init has not registered them yet:
        # Ctrl-C or SIGTERM now used to leave them (and the agents the raylet starts)
        real(self, *args, **kwargs)
        started.append(len(psutil.Process().children(recursive=True)))
        if how == "sigint":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)

    node.Node.__init__ = interrupted
    report = {}
    for how in ("sigint", "sigterm"):
        ending = None
        try:
            with ray_session(None, quiet=True):
                ending = "the block ran"
        except (KeyboardInterrupt, SystemExit) as exc:
            ending = type(exc).__name__
        left = []
        for p in psutil.Process().children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(p.cmdline())[:100])
            except psutil.Error:
                pass
        report[how] = {"ending": ending, "started": started[-1] if started else 0, "left": left}
    print(json.dumps(report))
""")


def test_ray_stopped_when_interrupted_while_starting():
    proc = subprocess.run([sys.executable, "-c", _DRIVER], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["sigint"]["ending"] == "KeyboardInterrupt"
    assert report["sigterm"]["ending"] == "SystemExit"
    for how in ("sigint", "sigterm"):
        assert report[how]["started"] > 0  # Ray's processes were running when it was interrupted
        assert report[how]["left"] == [], how  # and none is left once the session has unwound
