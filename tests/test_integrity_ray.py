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
    from fastconvex.runners.session import ray_session

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


_TERM_DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    import psutil
    from fastconvex.runners.session import ray_session

    store, out, pids = sys.argv[1:4]

    def mine(signum, frame):
        pass

    # a program's own SIGTERM handler: in force while fastconvex's Ray runs
    # (ray.init installs its own) and restored afterwards
    signal.signal(signal.SIGTERM, mine)
    with ray_session(None, quiet=True):
        inside = signal.getsignal(signal.SIGTERM) is mine
    after = signal.getsignal(signal.SIGTERM) is mine
    print(json.dumps({"inside": inside, "after": after}), flush=True)

    # no handler of the program's own: SIGTERM while the sweep's tasks run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import fastconvex.sweeps.output as sweep_out

    def terminated(self, n):
        with open(pids, "w") as fh:
            json.dump([p.pid for p in psutil.Process().children(recursive=True)], fh)
        os.kill(os.getpid(), signal.SIGTERM)

    sweep_out.Reporter.running = terminated
    from fastconvex.cli import main

    sys.exit(main(["sweep", store, "--out-dir", out, "--engine", "ray", "--pairs", "30", "--no-plot", "--quiet"]))
""")


def test_sigterm_during_a_ray_sweep_exits_143_in_one_line_and_restores_handlers(tmp_path):
    import time

    import numpy as np
    import psutil

    import fastconvex as fc

    rng = np.random.default_rng(0)
    store = fc.save_store(tmp_path / "store", [rng.standard_normal((30, 4)).astype(np.float32)], rng.integers(0, 3, 30))
    pids = tmp_path / "pids.json"
    proc = subprocess.run(
        [sys.executable, "-c", _TERM_DRIVER, str(store.path), str(tmp_path / "out"), str(pids)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(proc.stdout.strip().splitlines()[0]) == {"inside": True, "after": True}
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr == "fastconvex: terminated (SIGTERM): stopping the Ray it started\n"
    started = json.loads(pids.read_text())
    assert started  # Ray's processes were running when SIGTERM came

    def alive():
        left = []
        for pid in started:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                pass
        return left

    for _ in range(100):  # Ray's processes exit as they notice (at most 10 s)
        if not alive():
            break
        time.sleep(0.1)
    assert alive() == []


@pytest.mark.parametrize(
    "env, backend, device, gpu_ids, expected",
    [
        ("numba", "auto", None, [0], None),  # FASTCONVEX_BACKEND=numba on a GPU: CPU scoring
        ("naive", "auto", None, [0], None),
        ("triton", "auto", None, [0], "cuda"),
        ("", "auto", None, [0], "cuda"),  # unset or empty: auto takes the GPU Ray assigned
        ("numba", "triton", None, [0], "cuda"),  # an explicit backend wins over the variable
        ("numba", "auto", "cpu", [0], "cpu"),  # as does a named device
        ("triton", "auto", None, [], None),  # no GPU given
    ],
)
def test_task_device_honours_fastconvex_backend(monkeypatch, env, backend, device, gpu_ids, expected):
    from fastconvex.sweeps.task import task_device

    monkeypatch.setenv("FASTCONVEX_BACKEND", env)
    assert task_device(backend, device, gpu_ids) == expected


def test_ran_as_on_a_gpu_cluster_honours_fastconvex_backend(monkeypatch):
    from fastconvex.sweeps.task import ran_as

    class FakeRay:
        def cluster_resources(self):
            return {"CPU": 8, "GPU": 1}

    monkeypatch.setenv("FASTCONVEX_BACKEND", "numba")
    assert ran_as("graph", "auto", None, FakeRay()) == {"backend": "numba"}
    assert ran_as("euclidean", "auto", None, FakeRay()) == {"device": "cpu"}  # the task's device: None


class _FakeRay:
    """ray.init delivers SIGTERM to whatever handler ray_session installed."""

    def __init__(self):
        self.shut = False

    def is_initialized(self):
        return False

    def init(self, address=None, **kwargs):
        import signal

        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)

    def shutdown(self):
        self.shut = True


@pytest.mark.parametrize(
    "address, env, line",
    [
        (None, "", "stopping the Ray it started"),
        ("ray://head:10001", "", "disconnecting from the Ray cluster at ray://head:10001"),
        (None, "auto", "disconnecting from the Ray cluster at auto"),  # RAY_ADDRESS: ray.init joins it
    ],
)
def test_the_sigterm_line_says_what_happens_to_ray(monkeypatch, capsys, address, env, line):
    import signal

    import fastconvex.runners.session as fr

    fake = _FakeRay()
    monkeypatch.setattr(fr, "require_ray", lambda: fake)
    monkeypatch.setenv("RAY_ADDRESS", env)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, fr.ray_session(address):
        pass
    assert info.value.code == 143 and fake.shut
    assert capsys.readouterr().err == f"fastconvex: terminated (SIGTERM): {line}\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_handler_installed_from_c_is_left_alone(monkeypatch):
    import signal

    import fastconvex.runners.session as fr

    class Quiet(_FakeRay):
        def init(self, address=None, **kwargs):
            pass

    installed = []
    monkeypatch.setattr(fr, "require_ray", lambda: Quiet())
    monkeypatch.setattr(signal, "getsignal", lambda signum: None)  # what Python reports for a C handler
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.append(handler))
    with fr.ray_session(None):
        pass
    assert installed == []  # before: SIG_DFL put in its place on exit
