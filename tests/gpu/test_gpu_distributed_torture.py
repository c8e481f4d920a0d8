"""``shipslog torture --ops distributed``, a seeded sample: a rank killed at a crash point of a 2-rank save (through
DCP and through a shared checkpoint), the root recovered by the single-rank rule, and the newest committed checkpoint
loaded back exactly (the command runs every point on 2 and 4 ranks)."""

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
    assert result["scenarios"] == ["save", "shared"]
    assert result["runs"] == 6 and len(result["covered"]) >= 3  # three points of each way of saving
    assert {p.split(".")[0] for p in result["crash_points"]} == {"checkpoint", "distributed"}
    kills = [line for line in lines if "killed at" in line]
    assert len(kills) == 6 and all(line.endswith(": ok") for line in kills)
    assert sum(", shared, rank " in line for line in kills) == 3
