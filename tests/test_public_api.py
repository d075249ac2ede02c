"""The public API of ``import fastconvex`` (SPEC §3) is kept in three places in
fastconvex/__init__.py -- the lazy-import table ``_EXPORTS``, the imports type
checkers read, and ``__all__`` -- which these tests hold together."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import fastconvex as fc

INIT = Path(fc.__file__)


def _type_checking_imports() -> dict[str, str]:
    """name -> absolute module of every import inside ``if TYPE_CHECKING:`` in __init__.py."""
    names: dict[str, str] = {}
    for node in ast.walk(ast.parse(INIT.read_text(encoding="utf-8"))):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                # absolute (``from fastconvex.x import y``) or relative (``from .x import y``)
                assert isinstance(stmt, ast.ImportFrom) and stmt.level in (0, 1), ast.dump(stmt)
                module = (
                    (stmt.module or "")
                    if stmt.level == 0
                    else "fastconvex" + (f".{stmt.module}" if stmt.module else "")
                )
                assert module == "fastconvex" or module.startswith("fastconvex."), ast.dump(stmt)
                for alias in stmt.names:
                    assert alias.asname is None
                    names[alias.name] = module
    return names


def test_all_is_the_lazy_table_plus_the_naive_module_and_the_version():
    assert len(fc.__all__) == len(set(fc.__all__))
    assert set(fc._EXPORTS) | {"naive", "__version__"} == set(fc.__all__)


def test_every_public_name_resolves_to_what_its_module_defines():
    for name in fc.__all__:
        value = getattr(fc, name)
        if name in fc._EXPORTS:
            assert value is getattr(importlib.import_module(fc._EXPORTS[name], "fastconvex"), name)
    assert fc.naive is importlib.import_module("fastconvex.naive")


def test_the_imports_type_checkers_read_name_the_same_objects():
    imports = _type_checking_imports()
    assert set(imports) == set(fc.__all__) - {"__version__"}
    for name, module in imports.items():
        if module == "fastconvex":  # ``from . import naive``: a submodule
            assert getattr(fc, name) is importlib.import_module(f"fastconvex.{name}")
        else:
            assert module == "fastconvex" + fc._EXPORTS[name], name
            assert getattr(fc, name) is getattr(importlib.import_module(module), name)


def test_dir_lists_the_public_names_and_no_helper_of_the_lazy_import():
    listed = dir(fc)
    assert listed == sorted(listed)
    assert set(fc.__all__) <= set(listed)
    strays = [n for n in listed if n not in fc.__all__ and not (n.startswith("__") and n.endswith("__"))]
    assert strays == []


def test_lazy_getattr_is_hidden_from_type_checkers():
    """A module-level __getattr__ visible to a type checker types every typo as ``object``:
    it must be defined only under ``if not TYPE_CHECKING:``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    top = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not top & {"__getattr__", "__dir__"}
    guarded = [
        n
        for n in tree.body
        if isinstance(n, ast.If)
        and isinstance(n.test, ast.UnaryOp)
        and isinstance(n.test.op, ast.Not)
        and getattr(n.test.operand, "id", None) == "TYPE_CHECKING"
    ]
    assert {f.name for g in guarded for f in g.body if isinstance(f, ast.FunctionDef)} == {"__getattr__", "__dir__"}


def test_an_unknown_name_is_an_attribute_error():
    try:
        fc.graph_convexty  # noqa: B018
    except AttributeError as exc:
        assert "graph_convexty" in str(exc)
    else:
        raise AssertionError("fc.graph_convexty resolved")


def test_import_fastconvex_loads_no_numerical_library():
    code = (
        "import sys, fastconvex; heavy = sorted(m for m in ('numpy', 'scipy', 'numba', 'torch', 'transformers') "
        "if m in sys.modules); print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
