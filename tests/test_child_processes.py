"""Child processes import the installed shipslog, whatever folder the command was started from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

SHIPSLOG = os.path.join(os.path.dirname(sys.executable), "shipslog")


@pytest.mark.subprocess
@pytest.mark.parametrize("command", [["torture", "--quick", "--ops", "run"], ["torture", "--power-loss", "--quick", "--ops", "run"]])
def test_children_are_not_shadowed_by_a_folder_named_shipslog_where_the_command_runs(tmp_path: Any, command: list[str]) -> None:
    here = tmp_path / "project"
    (here / "shipslog").mkdir(parents=True)  # e.g. the repository's own folder, beside which a user runs the command
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [SHIPSLOG, *command, "--json", "--dir", str(work)], cwd=here, capture_output=True, text=True, timeout=110, check=False
    )
    assert proc.stdout.startswith("{"), proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["violations"] == [], result["violations"][:3]
    assert proc.returncode == 0
