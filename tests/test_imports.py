"""Layering: importing shipslog and its non-gpu packages never imports torch; only the command line uses rich."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator

import pytest

import shipslog
import shipslog.journal


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ["shipslog", "shipslog.journal", "shipslog.engine", "shipslog.recovery", "shipslog.tools"])
def test_importing_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ["shipslog", "shipslog.journal", "shipslog.engine", "shipslog.recovery", "shipslog.tools"])
def test_importing_does_not_import_rich(module: str) -> None:
    """rich is the command line's, and even it imports rich only when it draws on a terminal."""
    code = f"import sys, {module}; sys.exit(1 if 'rich' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_DOTTED = re.compile(r"shipslog(?:\.[A-Za-z_]\w*)+(?::[\w.]+)?")
"""A string that names a shipslog module or an object in one: ``monkeypatch.setattr("shipslog.x.y.NAME", ...)``,
``importlib.import_module("shipslog.x")``, a worker target ``"shipslog.x:function"``."""


def _imports(packages: Iterable[str], *, strings: bool = False) -> Iterator[tuple[str, str, str]]:
    """Every absolute import of every module of ``packages``: (file relative to the repo, its package, the dotted name).

    ``from shipslog.X import Y`` yields ``shipslog.X`` and ``shipslog.X.Y`` (Y may be a private module or name);
    with ``strings``, every string constant that is a dotted ``shipslog.*`` name (:data:`_DOTTED`) counts too.
    """
    for package in packages:
        for dirpath, _dirs, files in os.walk(os.path.join(REPO, package)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                rel = os.path.relpath(path, REPO)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        top = node.module.split(".")[0]
                        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if top == "shipslog"]
                    elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.fullmatch(node.value):
                        names = [node.value.partition(":")[0]]
                    else:
                        continue
                    yield from ((rel, package, n) for n in names)


def test_no_library_package_imports_rich() -> None:
    offenders = [f"{path}: {n}" for path, _pkg, n in _imports(("journal", "engine", "recovery", "gpu", "shipslog")) if n.split(".")[0] == "rich"]
    assert offenders == []


def test_every_public_name_is_exported() -> None:
    for mod in (shipslog, shipslog.journal):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name} is listed in __all__ but missing"


def test_errors_share_one_root_and_their_builtins() -> None:
    j = shipslog.journal
    assert issubclass(j.CorruptJournalError, j.ShipslogError) and issubclass(j.CorruptJournalError, ValueError)
    assert issubclass(j.UnsupportedFormatError, ValueError)
    assert issubclass(j.InsufficientSpaceError, OSError)
    assert issubclass(j.JournalBrokenError, OSError)
    assert issubclass(j.JournalClosedError, ValueError)
    assert issubclass(j.JournalLockedError, BlockingIOError)
    err = j.InsufficientSpaceError("/x", 10, 3)
    assert "needed 10 bytes, 3 bytes free" in str(err) and "/x" in str(err)


_LAYER = {"journal": 0, "engine": 1, "gpu": 2, "recovery": 2, "shipslog": 3, "tools": 4}
"""Who may import whom: a package imports only packages of a lower layer (gpu and recovery are siblings)."""
_ALLOWED_UP = {("shipslog", "gpu")}
"""The one crossing beside the layers: the front door supplies the GPU core's merge, imported only when called."""
_ENTRY_POINT = os.path.join("shipslog", "__main__.py")
"""``python -m shipslog`` runs the command line: the program, not the library, so it may import tools."""


def _target(dotted: str) -> tuple[str, str | None]:
    """The package a ``shipslog.*`` name belongs to, and its private module when it names one."""
    parts = dotted.split(".")[1:]
    if not parts:
        return "shipslog", None
    if parts[0] in _LAYER and parts[0] != "shipslog":
        return parts[0], next((p for p in parts[1:2] if p.startswith("_")), None)
    return "shipslog", parts[0] if parts[0].startswith("_") else None


def test_packages_talk_through_their_public_init_only_and_never_upward() -> None:
    private, upward = [], []
    for path, package, dotted in _imports(_LAYER):
        if dotted.split(".")[0] != "shipslog":
            continue
        target, module = _target(dotted)
        if target == package or path == _ENTRY_POINT:
            continue
        if module is not None:
            private.append(f"{path}: {dotted}")
        if _LAYER[target] >= _LAYER[package] and (package, target) not in _ALLOWED_UP:
            upward.append(f"{path}: {dotted} ({package} may not import {target})")
    assert private == [], "imports of another package's private modules"
    assert upward == [], "imports against the layering journal <- engine <- gpu, recovery <- shipslog <- tools"


def _is_private(dotted: str) -> bool:
    """Whether a ``shipslog.*`` name reaches past a package's ``__init__``: a part after ``shipslog`` that starts
    with ``_`` (``shipslog.engine._core``, ``shipslog.engine._core.X``, ``shipslog._engine``), dunders aside."""
    parts = dotted.split(".")
    return parts[0] == "shipslog" and any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts[1:])


def test_tests_talk_to_the_packages_through_their_public_init_only() -> None:
    """The tests use each package as a user does: through its ``__init__`` (a name a test needs is exported there
    when a user could need it too).  Every .py file under tests/ counts, helpers and tests/gpu included; so do
    dotted strings, which monkeypatch and importlib resolve as imports."""
    private = sorted({f"{path}: {dotted}" for path, _pkg, dotted in _imports(("tests",), strings=True) if _is_private(dotted)})
    assert not private, "tests that import a private module (or name) of a shipslog package:\n" + "\n".join(private)
