"""``shipslog bench workers``: a short run gives every figure, and the command line prints them as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _workers_helpers import no_stray_children  # noqa: F401 - a fixture

from shipslog.tools import main

pytestmark = [pytest.mark.subprocess, pytest.mark.usefixtures("no_stray_children")]


def test_a_short_run_reports_every_figure(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "workers", "--json", "--dir", str(tmp_path), "--rounds", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("detect_death_ms", "restart_ms", "backoff_ms", "restart_overhead_ms"):
        assert result[key] >= 0
    assert result["restart_ms"] >= result["backoff_ms"] > 0
    assert set(result["targets"]) == {"detect_death_le_50ms", "restart_overhead_le_250ms"}
    assert list(tmp_path.iterdir()) == []  # its temporary folder is gone


def test_the_command_prints_json(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "workers", "--json", "--dir", str(tmp_path), "--rounds", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rounds"] == 1 and "detect_death_ms" in printed
