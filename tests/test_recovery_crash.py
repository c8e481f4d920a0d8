"""Crashes during recovery (real child processes killed at a crash point while recovering), and the crash harness."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from _engine_helpers import SimulatedCrash, commit_checkpoint, dies_at_point, kinds, open_engine
from _recovery_helpers import OPEN_CHILD, run_child

from shipslog.engine import replay
from shipslog.journal import CRASH_EXIT_CODE
from shipslog.recovery import check_invariants, list_root, plan
from shipslog.tools import (
    WORKLOAD_OPS,
    WORKLOAD_ROOT_ENV,
    kill_orphans,
    parse_ops,
    points_for_ops,
    workload_processes,
)


def _cut_off(e: Any, point: str, call: Any) -> None:
    with dies_at_point(point), pytest.raises(SimulatedCrash):
        call()


def build_root_with_every_kind_of_recovery_work(root: str) -> None:
    """c1..c4 committed, 'best' set to c3 and cut off moving to c4, a retention of c1 and c2 cut off
    before its deletes, c5 cut off durable in staging, c6 cut off begun, a stray folder in staging/;
    then the process "dies" (the journal is dropped without session.closed)."""
    e = open_engine(root)
    for i in range(1, 5):
        commit_checkpoint(e, f"c{i}", step=i, files={"model.bin": f"weights {i}".encode(), "sub/opt.bin": b"o" * i})
    e.set_pointer("best", "c3")
    _cut_off(e, "pointer.after_intended", lambda: e.set_pointer("best", "c4"))
    _cut_off(e, "retention.after_intended", lambda: e.retain(1))
    ck = e.checkpoint("c5", step=5)
    ck.write_bytes("model.bin", b"weights 5")
    _cut_off(e, "checkpoint.after_durable", ck.commit)
    e.checkpoint("c6", step=6).write_bytes("model.bin", b"half")
    e.journal.close()
    os.makedirs(os.path.join(root, "staging", "stray"))
    with open(os.path.join(root, "staging", "stray", "x.bin"), "wb") as f:
        f.write(b"nobody's")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = os.path.join(tmp_path_factory.mktemp("prepared"), "root")
    build_root_with_every_kind_of_recovery_work(root)
    return root


def assert_fully_recovered(root: str) -> None:
    with open_engine(root) as e:
        assert e.violations == []
        assert check_invariants(root, e.state, registry=e.registry, live_session=e.session, deep=True) == []
        assert sorted(e.state.checkpoints) == ["c3", "c4", "c5"]
        assert e.state.pointers["best"].target == "checkpoints/c4"
        assert e.state.ops_of("checkpoint") == [] and e.state.ops_of("retention") == []
        e.verify("c5")
    assert plan(replay(root), list_root(root)) == []
    assert not os.path.exists(os.path.join(root, "staging", "stray"))
    assert os.listdir(os.path.join(root, "staging")) == []
    assert any(name.endswith("staging-stray") for name in os.listdir(os.path.join(root, "quarantine")))


RECOVERY_CRASHES = [
    "session.after_opened",
    "recovery.after_begun",
    "recovery.after_step@1",
    "recovery.after_step@4",
    "recovery.after_effect@1",
    "recovery.after_effect@3",
    "recovery.after_effect@5",
    "recovery.after_action@2",
    "recovery.after_action@5",
    "retention.after_delete@1",
    "journal.before_write@3",
    "journal.after_fsync@5",
]


@pytest.mark.subprocess
@pytest.mark.parametrize("point", RECOVERY_CRASHES)
def test_a_crash_during_recovery_is_recovered_by_the_next_open(prepared: str, tmp_path: Any, point: str) -> None:
    root = os.path.join(tmp_path, "root")
    shutil.copytree(prepared, root, symlinks=True)
    mode = "exit" if point.endswith("@1") else "kill"
    child = run_child(OPEN_CHILD, root, crash_at=point, mode=mode)
    assert child.returncode == (CRASH_EXIT_CODE if mode == "exit" else -signal.SIGKILL), child.stderr
    if point.startswith("recovery."):
        assert "recovery.done" not in kinds(root)[-3:]
    assert_fully_recovered(root)
    if point.startswith("recovery."):
        assert "recovery.superseded" in kinds(root)


@pytest.mark.subprocess
def test_recovery_crashed_twice_in_a_row_still_recovers(prepared: str, tmp_path: Any) -> None:
    root = os.path.join(tmp_path, "root")
    shutil.copytree(prepared, root, symlinks=True)
    for point in ("recovery.after_effect@2", "recovery.after_step@3"):
        assert run_child(OPEN_CHILD, root, crash_at=point).returncode == -signal.SIGKILL
    assert_fully_recovered(root)
    assert kinds(root).count("recovery.superseded") == 2


def test_the_prepared_root_recovers_in_process(prepared: str, tmp_path: Any) -> None:
    root = os.path.join(tmp_path, "root")
    shutil.copytree(prepared, root, symlinks=True)
    assert_fully_recovered(root)


# -- the crash harness ----------------------------------------------------------------------------


def test_ops_are_parsed_and_restrict_the_points_that_count() -> None:
    assert parse_ops(None) == WORKLOAD_OPS
    assert parse_ops("pointer, run") == ("pointer", "run")
    with pytest.raises(ValueError, match="bogus"):
        parse_ops("pointer,bogus")
    points = ["journal.after_write", "recovery.after_step", "pointer.after_write", "checkpoint.after_files", "worker.after_x"]
    assert points_for_ops(points, ["pointer"]) == ["journal.after_write", "pointer.after_write", "recovery.after_step"]
    assert points_for_ops(points, ["workers"]) == ["journal.after_write", "recovery.after_step", "worker.after_x"]
    assert "workers" in WORKLOAD_OPS
    assert points_for_ops(points, None) == sorted(points), "with every operation, every registered point counts"


@pytest.mark.slow
@pytest.mark.subprocess
def test_torture_quick_finds_no_violation_and_covers_every_point(tmp_path: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shipslog", "torture", "--json", "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.stdout.startswith("{"), proc.stderr
    result = json.loads(proc.stdout)
    assert result["violations"] == []
    assert result["uncovered"] == []
    assert result["covered"] == result["crash_points"] and len(result["crash_points"]) >= 20
    assert {"recovery.after_begun", "recovery.after_step", "recovery.after_effect", "recovery.after_action"} <= set(result["covered"])
    assert result["runs"] == result["crashes"] + result["recovery_crashes"] and result["recovery_crashes"] > 0
    assert proc.returncode == 0
    assert os.listdir(tmp_path) == [], "the harness left its temporary roots behind"


WORKER_POINTS = {
    "worker.after_starting",
    "worker.after_spawn",
    "worker.after_started",
    "worker.after_death_detected",
    "worker.after_stop_signal",
    "worker.after_stopped",
}


def _marked_under(folder: str) -> list[int]:
    """Live processes whose workload-root marker lies under ``folder`` (a zombie is not live)."""
    found = []
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(WORKLOAD_ROOT_ENV, "")
            if marker.startswith(folder + os.sep) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


@pytest.mark.subprocess
def test_the_harness_finds_kills_and_describes_a_leftover_worker(tmp_path: Any) -> None:
    root = os.path.join(tmp_path, "r00001", "root")
    env = {**os.environ, WORKLOAD_ROOT_ENV: root}
    left = subprocess.Popen(["sleep", "1000"], env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    other = subprocess.Popen(["sleep", "1000"], env={**env, WORKLOAD_ROOT_ENV: root + "2"}, stdin=subprocess.DEVNULL)
    try:
        assert _wait_exec(left.pid) and _wait_exec(other.pid)
        assert [p.pid for p in workload_processes(root)] == [left.pid]
        found = kill_orphans(root)
        assert len(found) == 1 and found[0].startswith(f"pid {left.pid} 'sleep 1000'")
        assert left.wait(timeout=10) == -signal.SIGKILL
        assert workload_processes(root) == [] and kill_orphans(root) == []
        assert other.poll() is None, "a process of another root is left alone"
    finally:
        for p in (left, other):
            if p.poll() is None:
                p.kill()
            p.wait()


def _wait_exec(pid: int) -> bool:
    """True once ``pid`` runs ``sleep`` (its environment is readable from then on)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).name() == "sleep":
                return True
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.01)
    return False


@pytest.mark.slow
@pytest.mark.subprocess
def test_torture_quick_of_the_workers_covers_every_worker_point_and_leaves_no_process(tmp_path: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shipslog", "torture", "--json", "--quick", "--ops", "workers", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    left = _marked_under(str(tmp_path))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the harness left worker processes behind"
    assert proc.stdout.startswith("{"), proc.stderr
    result = json.loads(proc.stdout)
    assert result["violations"] == []
    assert result["uncovered"] == [] and result["covered"] == result["crash_points"]
    assert set(result["covered"]) >= WORKER_POINTS
    assert {"recovery.after_begun", "recovery.after_step", "recovery.after_effect", "recovery.after_action"} <= set(result["covered"])
    assert result["ops"] == ["workers"] and result["recovery_crashes"] > 0
    assert proc.returncode == 0
    assert os.listdir(tmp_path) == [], "the harness left its temporary roots behind"
