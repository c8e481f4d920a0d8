"""Layering: importing shipslog and its non-gpu packages never imports torch."""

from __future__ import annotations

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
