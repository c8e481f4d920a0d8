"""The suite's own disk use: every engine root reserves a journal segment on disk, so a run must hold one test's
folders at a time, not all of them (a run of the whole suite would otherwise need many gigabytes)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TESTS = '''
def test_that_passes(tmp_path):
    (tmp_path / "segment").write_bytes(bytes(1 << 20))


def test_that_fails(tmp_path):
    (tmp_path / "evidence").write_bytes(b"kept for the post-mortem")
    assert False
'''


@pytest.mark.subprocess
def test_a_passed_tests_folder_is_removed_and_a_failed_tests_is_kept(tmp_path: Any) -> None:
    (tmp_path / "test_inner.py").write_text(_TESTS, encoding="utf-8")
    basetemp = tmp_path / "basetemp"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.path.join(_REPO, "pyproject.toml"),
         "--rootdir", str(tmp_path), "--basetemp", str(basetemp), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=100, check=False,
    )
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    left = sorted(p.name for p in basetemp.iterdir() if p.is_dir() and not p.name.endswith("current"))
    assert left == ["test_that_fails0"], left
    assert (basetemp / "test_that_fails0" / "evidence").read_bytes() == b"kept for the post-mortem"
