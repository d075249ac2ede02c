"""The checkout's top-level ``kernels/`` folder never shadows Hugging Face's ``kernels``.

transformers (5.x) imports Hugging Face's ``kernels`` distribution when it builds a
model. A regular package named ``kernels`` in the checkout root used to win over it
whenever Python started there (``python -m pytest``, any script), and every model
build failed with ``ImportError: cannot import name 'CUDAProperties'``. These tests
start fresh interpreters in the checkout root, as a user does, and check the wheel's
layout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_FOLDERS = ("numba", "triton")


def _run_in(cwd: Path, code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter started in ``cwd``; its stdout, or fail with stderr."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=None if not env else {**__import__("os").environ, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_top_level_kernels_folder_is_not_a_regular_package():
    assert (ROOT / "kernels").is_dir()
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the checkout's folder a regular package that "
        "shadows Hugging Face's `kernels` from the checkout root"
    )
    for folder in KERNEL_FOLDERS:
        assert (ROOT / "kernels" / folder / "__init__.py").is_file()


def test_import_kernels_from_checkout_root_gives_hugging_faces_package():
    dist = metadata.distribution("kernels")  # Hugging Face's, from the test extra
    expected = Path(dist.locate_file("kernels/__init__.py")).resolve()
    out = _run_in(
        ROOT,
        """
        import kernels, fastconvex.kernels.numba.knn as k
        print(kernels.__file__); print(hasattr(kernels, "get_kernel")); print(k.__file__)
        """,
    )
    hf_file, has_api, ours = out.split()
    assert Path(hf_file).resolve() == expected
    assert has_api == "True"
    # and our kernels still resolve, from the checkout's folder
    assert Path(ours).resolve() == (ROOT / "kernels" / "numba" / "knn.py").resolve()


@pytest.mark.hf
def test_tiny_model_builds_and_prunes_from_checkout_root():
    pytest.importorskip("transformers")
    out = _run_in(
        ROOT,
        """
        import torch, numpy as np
        from fastconvex import hf
        from fastconvex.hf.testing import tiny_model
        model, fe = tiny_model("wav2vec2", layers=3)
        model.eval()
        x = torch.as_tensor(np.random.default_rng(0).standard_normal((1, 1600)), dtype=torch.float32)
        with torch.no_grad():
            full = model(x, output_hidden_states=True).hidden_states
        hf.prune(model, 2)
        with torch.no_grad():
            cut = model(x, output_hidden_states=True).hidden_states
        print(hf.num_blocks(model), len(cut), float((cut[-1] - full[2]).abs().max()))
        """,
    )
    blocks, n_states, err = out.split()
    assert (int(blocks), int(n_states)) == (2, 3)
    assert float(err) < 1e-5


def _build_isolation_flags() -> list[str]:
    """Build with this environment's setuptools when it reads the PEP 639
    ``license`` field (>= 77), offline; otherwise let pip fetch the build
    requirements pyproject.toml names."""
    try:
        major = int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 0
    return ["--no-build-isolation", "--no-index"] if major >= 77 else []


def test_wheel_ships_kernels_only_as_fastconvex_kernels(tmp_path):
    wheel_dir = tmp_path / "wheel"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *_build_isolation_flags(),
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = wheel_dir.glob("fastconvex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"fastconvex", wheel.name.split("-py")[0] + ".dist-info"}
    assert "fastconvex/kernels/__init__.py" in names
    for folder in KERNEL_FOLDERS:
        sources = {p.name for p in (ROOT / "kernels" / folder).glob("*.py")}
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"fastconvex/kernels/{folder}/")}
        assert sources and shipped == sources

    # installed from the wheel, the kernels import from it, not from the checkout
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = _run_in(
        tmp_path,
        "import fastconvex.kernels.numba.knn as k, fastconvex.kernels.triton.knn as t;"
        " print(k.__file__); print(t.__file__)",
        PYTHONPATH=str(site),
    )
    for line in out.split():
        assert Path(line).resolve().is_relative_to(site.resolve())
