"""The package's import graph: no circle anywhere, and the library never
imports its command line (CONTRIBUTING.md, "Where code goes").

Every ``import`` statement counts -- at module level, inside functions and
under ``TYPE_CHECKING`` -- because each is a dependency a change can break.
The graph is built from the source with ``ast`` (nothing is imported), so a
circle is found whether or not the import order happens to work today."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastconvex"
# the command line: nothing else in the package may import it
COMMAND_LINE = ("fastconvex.commands", "fastconvex.cli", "fastconvex.__main__")


def module_files(package: Path) -> dict[str, tuple[Path, bool]]:
    """``{module name: (file, is a package)}`` of every module under ``package``."""
    root = package.parent
    modules = {}
    for file in sorted(package.rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (file, is_package)
    return modules


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, is_package: bool, source: str, known: set[str]) -> set[str]:
    """The package's modules that ``source`` imports: ``from a.b import c``
    names module ``a.b.c`` when there is one, else ``a.b``; a name outside the
    package is left out. (Importing ``a.b`` also runs ``a/__init__``; that
    implicit step is not an edge, as in every import checker.)"""
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:  # fastconvex.x.name -> the module fastconvex.x
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    modules = module_files(package)
    known = set(modules)
    return {
        name: imported_modules(name, is_pkg, file.read_text(encoding="utf-8"), known)
        for name, (file, is_pkg) in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or None: depth-first search."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def _in_command_line(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in COMMAND_LINE)


def command_line_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) where a module outside the command line imports it."""
    return sorted(
        (m, t) for m, targets in graph.items() if not _in_command_line(m) for t in targets if _in_command_line(t)
    )


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_library_never_imports_its_command_line():
    assert command_line_imports(import_graph(PACKAGE)) == []


def test_the_graph_sees_every_module_and_real_edges():
    graph = import_graph(PACKAGE)
    assert {"fastconvex", "fastconvex.cli", "fastconvex.naive", "fastconvex.store", "fastconvex.hf"} <= set(graph)
    # a module-level import, an import inside a function, and one under TYPE_CHECKING
    assert "fastconvex.graph.api" in graph["fastconvex.naive"]
    assert "fastconvex.backends.naive" in graph["fastconvex.backends.select"]  # inside get_engine
    assert "fastconvex.sweeps.api" in graph["fastconvex"]  # TYPE_CHECKING


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "fastconvex"


@pytest.mark.parametrize("where", ["top", "function", "type_checking", "relative"])
def test_a_deliberately_added_circle_is_found(tmp_path, where):
    back = {
        "top": "from fastconvex.core.pairs import plan\n",
        "function": "def f():\n    from fastconvex.core import pairs\n",
        "type_checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fastconvex.core.pairs import X\n",
        "relative": "from .pairs import plan\n",
    }[where]
    package = _write(
        tmp_path,
        {
            "fastconvex/__init__.py": "",
            "fastconvex/core/__init__.py": "",
            "fastconvex/core/pairs.py": "from fastconvex.core.results import Convexity\n",
            "fastconvex/core/results.py": back,
            "fastconvex/plot.py": "import numpy\n",
        },
    )
    cycle = find_cycle(import_graph(package))
    assert cycle is not None and set(cycle) == {"fastconvex.core.pairs", "fastconvex.core.results"}


def test_a_package_without_a_circle_passes(tmp_path):
    package = _write(
        tmp_path,
        {
            "fastconvex/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fastconvex.api import f\n",
            "fastconvex/api.py": "from fastconvex.core import pairs\nfrom fastconvex.core.pairs import plan\n",
            "fastconvex/core/__init__.py": "",
            "fastconvex/core/pairs.py": "import os\nfrom numpy import zeros\n",
        },
    )
    graph = import_graph(package)
    assert graph["fastconvex.api"] == {"fastconvex.core.pairs"}
    assert find_cycle(graph) is None


def test_an_import_of_the_command_line_from_the_library_is_found(tmp_path):
    package = _write(
        tmp_path,
        {
            "fastconvex/__init__.py": "",
            "fastconvex/cli.py": "from fastconvex.commands import score\n",
            "fastconvex/commands/__init__.py": "",
            "fastconvex/commands/score.py": "from fastconvex import sweeps\n",
            "fastconvex/sweeps.py": "def f():\n    from fastconvex.commands.score import load_labels\n",
        },
    )
    assert command_line_imports(import_graph(package)) == [("fastconvex.sweeps", "fastconvex.commands.score")]
