"""Layering: importing shipslog and its non-gpu packages never imports torch; only the command line uses rich."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

import shipslog
import shipslog.journal


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ["shipslog", "shipslog.journal", "shipslog.engine", "shipslog.recovery", "shipslog.tools"])
def test_importing_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.subprocess
@pytest.mark.parametrize("module", ["shipslog", "shipslog.journal", "shipslog.engine", "shipslog.recovery", "shipslog.tools"])
def test_importing_does_not_import_rich(module: str) -> None:
    """rich is the command line's, and even it imports rich only when it draws on a terminal."""
    code = f"import sys, {module}; sys.exit(1 if 'rich' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


def test_no_library_package_imports_rich() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for package in ("journal", "engine", "recovery", "gpu", "shipslog"):
        for dirpath, _dirs, files in os.walk(os.path.join(repo, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        names = [node.module]
                    offenders += [f"{os.path.relpath(path, repo)}: {n}" for n in names if n.split(".")[0] == "rich"]
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
