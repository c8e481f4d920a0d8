"""Recovery of workers whose supervisor is gone: probing by pid *and* create time, stopping process groups
that are not our children, cut-off starts found by their op id, pid reuse, adoption, and a supervisor
killed with SIGKILL while its workers run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from _engine_helpers import journal_records, kind_of, open_engine
from _workers_helpers import kill_quietly, no_stray_children, read_pid, running, wait_for  # noqa: F401

from shipslog import Engine
from shipslog.engine import (
    WORKER_OP_ENV,
    Health,
    OpRecord,
    Supervisor,
    WorkerAdopted,
    WorkerDied,
    WorkerSpec,
    WorkerStarted,
    WorkerStarting,
    WorkerStopped,
    WorkerSupervised,
    probe_worker,
    process_identity,
    recover_worker,
    replay,
    settle_cut_off_worker,
    stop_worker,
    worker_incarnations,
)

pytestmark = [pytest.mark.subprocess, pytest.mark.usefixtures("no_stray_children")]

SLEEP = shutil.which("sleep") or "/bin/sleep"
TESTS = os.path.dirname(os.path.abspath(__file__))
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(1000)"


@pytest.fixture
def engine(root: str) -> Iterator[Engine]:
    e = open_engine(root)
    yield e
    e.close()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts by itself; killed and reaped at the end whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        kill_quietly(p.pid)
        p.wait()
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()


def spawn(procs: list[subprocess.Popen[bytes]], argv: list[str], *, env: dict[str, str] | None = None, ready: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session; with ``ready`` wait for its first line of output."""
    p = subprocess.Popen(
        argv, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    procs.append(p)
    if ready:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p


def fake_started(engine: Engine, pid: int, name: str = "w", *, slot: str = "worker-dead-1", op: str = "worker-dead-2", **identity: Any) -> OpRecord:
    """Journal an incarnation of a (dead) supervisor for process ``pid``; its record in the state."""
    found = process_identity(pid)
    assert found is not None
    fields = {"create_time": found.create_time, "start_ticks": found.start_ticks, "boot_id": found.boot_id, **identity}
    engine.journal_events(
        WorkerStarting(op=op, slot=slot, name=name, attempt=0, delay=0.0, stop_timeout=0.5),
        WorkerStarted(op=op, pid=pid, pgid=pid, **fields),
    )
    return engine.state.ops[op]


# -- probing ---------------------------------------------------------------------------------------


def test_probe_matches_pid_and_create_time(procs: list[Any]) -> None:
    p = spawn(procs, [SLEEP, "1000"])
    me = process_identity(p.pid)
    assert me is not None and me.start_ticks is not None
    assert probe_worker(p.pid, me.create_time, start_ticks=me.start_ticks, boot_id=me.boot_id)
    assert probe_worker(p.pid, me.create_time)  # create time alone, within its tolerance
    assert not probe_worker(p.pid, me.create_time - 100)  # same pid, another process: a reused pid
    assert not probe_worker(p.pid, me.create_time, start_ticks=me.start_ticks + 1)
    assert not probe_worker(p.pid, me.create_time, start_ticks=me.start_ticks, boot_id="another-boot")
    p.kill()
    wait_for(lambda: not running(p.pid), what="the kill")
    assert not probe_worker(p.pid, me.create_time, start_ticks=me.start_ticks)  # a zombie is not alive


def test_stop_worker_terminates_kills_and_reports_gone(procs: list[Any]) -> None:
    polite = spawn(procs, [SLEEP, "1000"])
    stubborn = spawn(procs, [sys.executable, "-c", IGNORE_TERM], ready=True)
    for p, timeout, expected in ((polite, 5.0, "terminated"), (stubborn, 0.2, "killed")):
        me = process_identity(p.pid)
        assert me is not None
        assert stop_worker(p.pid, me.create_time, timeout, start_ticks=me.start_ticks) == expected
        assert not running(p.pid)
        assert stop_worker(p.pid, me.create_time, timeout) == "gone"
    with pytest.raises(ValueError, match="timeout"):
        stop_worker(polite.pid, 0.0, -1)


# -- pid reuse ------------------------------------------------------------------------------------


def test_a_pid_reused_by_an_unrelated_process_is_journaled_died_and_left_alone(engine: Engine, root: str, procs: list[Any]) -> None:
    unrelated = spawn(procs, [SLEEP, "1000"])
    me = process_identity(unrelated.pid)
    assert me is not None
    # the journal says a worker had this pid, but it started long before this process did
    op = fake_started(engine, unrelated.pid, create_time=me.create_time - 3600, start_ticks=max(0, (me.start_ticks or 0) - 360_000))
    event = recover_worker(op)
    assert isinstance(event, WorkerDied) and "gone at recovery" in event.reason
    assert running(unrelated.pid)  # never signalled
    assert settle_cut_off_worker(engine, op.id).startswith("worker w (pid ")
    assert op.id not in engine.state.ops and running(unrelated.pid)
    assert settle_cut_off_worker(engine, op.id) == f"worker {op.id} is settled already"


def test_a_live_process_with_the_journaled_identity_but_without_the_op_id_mark_is_left_alone(
    engine: Engine, root: str, procs: list[Any]
) -> None:
    # the journal is untrusted: a record naming any process by pid and create time must not get it killed
    bystander = spawn(procs, [SLEEP, "1000"])
    op = fake_started(engine, bystander.pid)
    assert settle_cut_off_worker(engine, op.id).startswith("worker w (pid ")
    assert running(bystander.pid)
    last = journal_records(root)[-1].event
    assert isinstance(last, WorkerDied) and "gone at recovery" in last.reason
    assert recover_worker(op, adopt=True) is not None  # never adopted either


def test_a_supervisor_does_not_adopt_a_process_without_the_op_id_mark(engine: Engine, root: str, procs: list[Any]) -> None:
    bystander = spawn(procs, [SLEEP, "1000"])
    op = fake_started(engine, bystander.pid, "w")
    with Supervisor(engine, [WorkerSpec(name="w", argv=(SLEEP, "1000"), output="devnull")], adopt=True) as sv:
        assert sv.workers()["w"].pid not in (None, bystander.pid) and not sv.workers()["w"].adopted
    died = [r.event for r in journal_records(root) if isinstance(r.event, WorkerDied)]
    assert [d.op for d in died] == [op.id] and "gone at recovery" in died[0].reason
    assert running(bystander.pid)


# -- a start cut off before its pid was journaled -----------------------------------------------------


def test_a_cut_off_start_is_found_by_its_op_id_and_stopped(engine: Engine, root: str, procs: list[Any]) -> None:
    engine.journal_events(WorkerStarting(op="worker-dead-2", slot="worker-dead-1", name="w", attempt=3, delay=1.5))
    orphan = spawn(procs, [SLEEP, "1000"], env={WORKER_OP_ENV: "worker-dead-2"})
    wait_for(lambda: os.path.basename(psutil.Process(orphan.pid).exe()) == "sleep", what="the exec")
    op = engine.state.ops["worker-dead-2"]
    assert op.state == "starting"
    assert settle_cut_off_worker(engine, op.id) == "worker w was alive: terminated"
    assert not running(orphan.pid)
    last = journal_records(root)[-1].event
    assert isinstance(last, WorkerStopped) and last.op == "worker-dead-2"


def test_a_cut_off_start_with_no_process_is_journaled_died(engine: Engine) -> None:
    engine.journal_events(WorkerStarting(op="worker-dead-2", slot="worker-dead-1", name="w", attempt=0, delay=0.0))
    event = recover_worker(engine.state.ops["worker-dead-2"])
    assert isinstance(event, WorkerDied) and "start was cut off" in event.reason


# -- adoption ----------------------------------------------------------------------------------------


def test_a_supervisor_adopts_a_live_worker_of_a_dead_supervisor(engine: Engine, root: str, procs: list[Any]) -> None:
    orphan = spawn(procs, [SLEEP, "1000"], env={WORKER_OP_ENV: "worker-dead-2"})
    fake_started(engine, orphan.pid, "w")
    spec = WorkerSpec(name="w", argv=(SLEEP, "1000"), backoff_initial=0.0, output="devnull")
    with Supervisor(engine, [spec], adopt=True) as sv:
        status = sv.workers()["w"]
        assert status.pid == orphan.pid and status.adopted and status.health is Health.HEALTHY and status.op == "worker-dead-2"
        orphan.kill()  # the adopted worker dies: detected through its pidfd, restarted by policy
        wait_for(lambda: sv.workers()["w"].pid not in (None, orphan.pid), what="the replacement")
        assert not sv.workers()["w"].adopted
    events = [r.event for r in journal_records(root) if kind_of(r.event).startswith("worker.")]
    adopted = [e for e in events if isinstance(e, WorkerAdopted)]
    assert len(adopted) == 1 and adopted[0].op == "worker-dead-2" and adopted[0].session == engine.session
    died = [e for e in events if isinstance(e, WorkerDied)]
    assert len(died) == 1 and died[0].op == "worker-dead-2" and "adopted" in died[0].reason
    assert worker_incarnations(engine.state) == []


def test_adoption_of_a_gone_worker_journals_it_died_and_starts_afresh(engine: Engine, root: str, procs: list[Any]) -> None:
    gone = spawn(procs, [SLEEP, "1000"])
    op = fake_started(engine, gone.pid, "w")
    gone.kill()
    gone.wait()
    with Supervisor(engine, [WorkerSpec(name="w", argv=(SLEEP, "1000"), output="devnull")], adopt=True) as sv:
        assert sv.workers()["w"].pid not in (None, gone.pid) and not sv.workers()["w"].adopted
    died = [r.event for r in journal_records(root) if isinstance(r.event, WorkerDied)]
    assert [d.op for d in died] == [op.id] and "gone at recovery" in died[0].reason


# -- a supervisor killed with SIGKILL while its workers run --------------------------------------------

KILLED_HOST = r"""
import os, signal, sys, time
from shipslog import Engine, Supervisor, WorkerSpec
root, pid_file = sys.argv[1], sys.argv[2]
engine = Engine.open(root, fsync=False)
spec = WorkerSpec.python("trainer", "_workers_helpers:fork_child_and_run", args=[pid_file], stop_timeout=0.5, output="devnull")
Supervisor(engine, [spec]).start()
while not os.path.exists(pid_file):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workers_of_a_supervisor_killed_with_sigkill_are_found_and_stopped(root: str, tmp_path: Any) -> None:
    pid_file = str(tmp_path / "grandchild.pid")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, *sys.path])}
    host = subprocess.Popen([sys.executable, "-c", KILLED_HOST, root, pid_file], env=env, stdin=subprocess.DEVNULL)
    assert host.wait(timeout=60) == -signal.SIGKILL
    grandchild = read_pid(pid_file)
    worker = None
    try:
        state = replay(root)
        ops = worker_incarnations(state)
        assert [op.state for op in ops] == ["started"]
        op = ops[0]
        worker = int(op.info["pid"])
        assert running(worker) and running(grandchild)  # orphans: their supervisor is gone
        assert psutil.Process(worker).ppid() != os.getpid()
        assert probe_worker(worker, op.info["create_time"], start_ticks=op.info["start_ticks"], boot_id=op.info["boot_id"])
        event = recover_worker(op)
        assert isinstance(event, WorkerStopped) and event.how == "terminated" and event.op == op.id
        assert not running(worker)
        assert not running(grandchild)  # it ignored SIGTERM: killed with its group
        assert recover_worker(op) == WorkerDied(op=op.id, reason=f"gone at recovery: no live process {worker} with its create time")
        supervised = [o for o in state.ops.values() if o.state == "supervised"]
        assert [o.info["name"] for o in supervised] == ["trainer"]
    finally:
        for pid in (worker, grandchild):
            if pid is not None:
                kill_quietly(pid)


def test_the_worker_table_is_in_every_replay_of_a_supervised_root(engine: Engine, root: str) -> None:
    with Supervisor(engine, [WorkerSpec(name="w", argv=(SLEEP, "1000"), output="devnull")]):
        pass
    kinds = [kind_of(r.event) for r in journal_records(root)]
    assert "worker.supervised" in kinds and "worker.released" in kinds
    assert isinstance(journal_records(root)[1].event, WorkerSupervised)


def test_engine_open_recovers_the_workers_of_a_supervisor_killed_with_sigkill(root: str, tmp_path: Any) -> None:
    pid_file = str(tmp_path / "grandchild.pid")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, *sys.path])}
    host = subprocess.Popen([sys.executable, "-c", KILLED_HOST, root, pid_file], env=env, stdin=subprocess.DEVNULL)
    assert host.wait(timeout=60) == -signal.SIGKILL
    grandchild = read_pid(pid_file)
    worker = int(worker_incarnations(replay(root))[0].info["pid"])
    try:
        with open_engine(root) as again:
            done = {r.action.kind: r.outcome for r in again.recovery.results}
            assert "worker.settle" in done
            assert again.violations == []
            assert [op for op in again.state.ops.values() if op.type == "worker"] == []
        assert not running(worker) and not running(grandchild)
        kinds = [kind_of(r.event) for r in journal_records(root)]
        assert "worker.stopped" in kinds and "worker.released" in kinds
        with open_engine(root) as third:
            assert third.recovery.found == []
    finally:
        kill_quietly(worker)
        kill_quietly(grandchild)


def test_recovery_stops_a_child_that_left_the_workers_group_with_setsid(engine: Engine, procs: list[Any], tmp_path: Any) -> None:
    """A double-forked child that called setsid carries the incarnation's mark: recovery ends it with its worker."""
    pid_file = str(tmp_path / "escaped.pid")
    script = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(1000)\n"
    )
    worker = spawn(procs, [sys.executable, "-c", script, pid_file], env={WORKER_OP_ENV: "worker-dead-2"})
    escaped = read_pid(pid_file)
    try:
        assert os.getpgid(escaped) != os.getpgid(worker.pid)
        op = fake_started(engine, worker.pid, "w")
        assert settle_cut_off_worker(engine, op.id).startswith("worker w (pid ")
        assert not running(worker.pid)
        wait_for(lambda: not running(escaped), what="the escaped child to be stopped")
    finally:
        kill_quietly(escaped)
