"""``shipslog torture --ops distributed``, a seeded sample: a rank killed at a crash point of a 2-rank save, the root
recovered by the single-rank rule, and the newest committed checkpoint loaded back exactly (the command runs every
point on 2 and 4 ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from shipslog.tools import run_distributed_torture


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(900)
def test_ranks_killed_at_a_sample_of_crash_points_recover_and_load_the_newest_checkpoint(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_distributed_torture(quick=True, seed=1, workdir=str(tmp_path), log=lines.append)
    assert result["violations"] == []
    assert result["runs"] == 3 and len(result["covered"]) == 3
    assert {p.split(".")[0] for p in result["crash_points"]} == {"checkpoint", "distributed"}
    assert sum(line.endswith(": ok") for line in lines) == 3
