"""The demo: a real training host killed at a crash point resumes from its newest committed checkpoint."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")

from shipslog.engine import replay  # noqa: E402
from shipslog.tools._demo import run_demo  # noqa: E402


def _loss_rows(folder: str) -> list[tuple[int, int]]:
    with open(os.path.join(folder, "loss.tsv"), encoding="utf-8") as f:
        return [(int(step), int(pid)) for step, _loss, pid in (line.split("\t") for line in f)]


@pytest.mark.slow
@pytest.mark.subprocess
def test_demo_host_killed_mid_checkpoint_resumes_from_the_committed_step_and_loses_nothing(tmp_path: str) -> None:
    folder = os.path.join(tmp_path, "demo")
    lines, summary = run_demo(folder, crash_at="checkpoint.after_manifest@3", files=2)
    assert summary["crashed"] is True
    assert summary["trained_step_at_crash"] == 150
    assert summary["committed_step_at_crash"] == 100
    assert summary["resumed_from_step"] == 100  # the third checkpoint was not durable: rolled back
    assert summary["global_step"] == 400 and summary["unclean_sessions"] == 1
    rows = _loss_rows(folder)
    first_pid, second_pid = rows[0][1], rows[-1][1]
    assert [s for s, p in rows if p == first_pid] == list(range(1, 151))
    assert [s for s, p in rows if p == second_pid] == list(range(101, 401))
    state = replay(os.path.join(folder, "host"))
    assert state.latest == "step-400" and state.pointers["current"].target == "checkpoints/step-400"
    assert sorted(state.checkpoints) == ["step-300", "step-350", "step-400"]
    assert any("checkpoint.roll-back" in line for line in lines)


@pytest.mark.slow
@pytest.mark.subprocess
def test_demo_refuses_an_unknown_crash_point_and_lists_the_known_ones(tmp_path: str) -> None:
    with pytest.raises(ValueError, match="known points: .*checkpoint.after_durable"):
        run_demo(os.path.join(tmp_path, "demo"), crash_at="no.such.point")
    assert not os.path.exists(os.path.join(tmp_path, "demo"))
