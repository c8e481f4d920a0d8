"""The supervisor: starts, deaths, restarts with backoff, budgets, stop (terminate, kill, reap), process
groups, health, subscribers.  Every test leaves no child process behind (``no_stray_children``)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from _engine_helpers import journal_records, kind_of, open_engine
from _workers_helpers import (
    escape_with_setsid_and_run,
    exit_with,
    fork_child_and_die,
    fork_child_and_run,
    ignore_sigterm,
    kill_quietly,
    no_stray_children,  # noqa: F401 - a fixture
    read_pid,
    running,
    wait_for,
)

from shipslog import Engine
from shipslog.engine import (
    EventRecord,
    Health,
    Supervisor,
    SupervisorError,
    WorkerDied,
    WorkerExited,
    WorkerFailed,
    WorkerReleased,
    WorkerSpawnFailed,
    WorkerSpec,
    WorkerStarted,
    WorkerStarting,
    WorkerStatus,
    WorkerStopped,
    WorkerSupervised,
    replay,
    worker_incarnations,
)

pytestmark = [pytest.mark.subprocess, pytest.mark.usefixtures("no_stray_children")]

SLEEP = shutil.which("sleep") or "/bin/sleep"
FALSE = shutil.which("false") or "/bin/false"
TRUE = shutil.which("true") or "/bin/true"


@pytest.fixture
def engine(root: str) -> Iterator[Engine]:
    e = open_engine(root)
    yield e
    e.close()


def sleeper(name: str = "w", **kw: Any) -> WorkerSpec:
    kw.setdefault("output", "devnull")
    return WorkerSpec(name=name, argv=(SLEEP, "1000"), **kw)


def worker_events(root: str) -> list[Any]:
    """The worker events of the journal, in order."""
    return [r.event for r in journal_records(root) if kind_of(r.event).startswith("worker.")]


def of(events: list[Any], cls: type) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def test_start_journals_supervised_starting_started_and_stop_journals_stopped_released(engine: Engine, root: str) -> None:
    sv = Supervisor(engine, [sleeper()])
    assert sv.health is Health.STARTING  # never "unhealthy" before the first start finished
    with sv:
        status = sv.workers()["w"]
        assert sv.health is Health.HEALTHY and status.health is Health.HEALTHY
        assert status.pid is not None and running(status.pid) and status.attempt == 0
        assert os.getpgid(status.pid) == status.pid  # its own process group
        pid = status.pid
    assert sv.health is Health.STOPPED and not running(pid)
    events = worker_events(root)
    assert [kind_of(e) for e in events] == [
        "worker.supervised", "worker.starting", "worker.started", "worker.stopped", "worker.released",
    ]
    started = of(events, WorkerStarted)[0]
    assert started.pid == pid and started.pgid == pid and started.create_time > 0 and started.start_ticks is not None
    assert of(events, WorkerStopped)[0].how == "terminated" and of(events, WorkerStopped)[0].signal == signal.SIGTERM
    assert of(events, WorkerReleased)[0].reason == "the supervisor stopped"
    assert worker_incarnations(engine.state) == [] and not [o for o in engine.state.ops.values() if o.type == "worker"]


def test_a_killed_worker_is_journaled_died_and_restarted_with_attempt_and_delay(engine: Engine, root: str) -> None:
    with Supervisor(engine, [sleeper(backoff_initial=0.05, backoff_jitter=0.0)]) as sv:
        first = sv.workers()["w"].pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sv.workers()["w"].pid not in (None, first) and sv.health is Health.HEALTHY, what="the restart")
        second = sv.workers()["w"]
        assert second.attempt == 1 and second.restarts == 1 and second.last_exit == "was killed by SIGKILL"
        assert running(second.pid)  # type: ignore[arg-type]
    events = worker_events(root)
    died = of(events, WorkerDied)
    assert len(died) == 1 and died[0].signal == signal.SIGKILL
    restart = of(events, WorkerStarting)[1]
    assert restart.attempt == 1 and restart.delay == 0.05 and "killed by SIGKILL" in restart.reason
    assert [s.pid for s in of(events, WorkerStarted)] == [first, second.pid]
    # the death and the restart decision are one frame: nothing can come between them
    recs = [r for r in journal_records(root) if kind_of(r.event).startswith("worker.")]
    i = next(i for i, r in enumerate(recs) if isinstance(r.event, WorkerDied))
    assert isinstance(recs[i + 1].event, WorkerStarting) and recs[i + 1].seq == recs[i].seq + 1


def test_a_crash_loop_backs_off_exponentially_then_fails_without_a_hot_loop(engine: Engine, root: str) -> None:
    spec = WorkerSpec(name="crashy", argv=(FALSE,), max_restarts=4, backoff_initial=0.02, backoff_multiplier=2, backoff_max=0.1, backoff_jitter=0)
    with Supervisor(engine, [spec]) as sv:
        wait_for(lambda: sv.health is Health.FAILED, what="the budget to run out")
        status = sv.workers()["crashy"]
        assert status.health is Health.FAILED and status.restarts == 4 and status.pid is None
    events = worker_events(root)
    assert [e.delay for e in of(events, WorkerStarting)] == [0.0, 0.02, 0.04, 0.08, 0.1]  # exponential, capped
    assert [e.attempt for e in of(events, WorkerStarting)] == [0, 1, 2, 3, 4]
    assert [e.code for e in of(events, WorkerExited)] == [1] * 5
    failed = of(events, WorkerFailed)
    assert len(failed) == 1 and failed[0].restarts == 4 and "budget is 4" in failed[0].reason
    assert not of(events, WorkerReleased)  # failed is final: no release on stop
    assert sv.health is Health.STOPPED  # the supervisor itself stopped; the worker stays failed
    assert sv.workers()["crashy"].health is Health.FAILED


def test_jitter_is_seeded_and_stays_within_its_bounds(root: str, tmp_path: Any) -> None:
    def delays(path: str) -> list[float]:
        with open_engine(path) as e, Supervisor(e, [WorkerSpec(name="j", argv=(FALSE,), max_restarts=3, backoff_initial=0.01, backoff_jitter=0.5)], seed=7) as sv:
            wait_for(lambda: sv.health is Health.FAILED, what="the budget to run out")
        return [e.delay for e in of(worker_events(path), WorkerStarting)][1:]

    first, second = delays(str(tmp_path / "a")), delays(str(tmp_path / "b"))
    assert first == second
    for n, d in enumerate(first):
        assert 0.01 * 2**n * 0.5 <= d <= 0.01 * 2**n * 1.5


def test_policy_never_fails_on_a_bad_exit_and_on_failure_releases_a_clean_one(engine: Engine, root: str) -> None:
    specs = [
        WorkerSpec(name="never-bad", argv=(FALSE,), restart="never"),
        WorkerSpec(name="done", argv=(TRUE,), restart="on-failure"),
    ]
    with Supervisor(engine, specs) as sv:
        wait_for(lambda: all(w.pid is None for w in sv.workers().values()) and sv.health is Health.FAILED, what="both to end")
        assert sv.workers()["done"].health is Health.STOPPED
    events = worker_events(root)
    assert len(of(events, WorkerStarting)) == 2  # no restarts
    failed, released = of(events, WorkerFailed), of(events, WorkerReleased)
    assert len(failed) == 1 and "policy is 'never'" in failed[0].reason
    assert len(released) == 1 and "exited with code 0" in released[0].reason


def test_policy_always_restarts_a_clean_exit(engine: Engine, root: str) -> None:
    spec = WorkerSpec(name="again", argv=(TRUE,), restart="always", max_restarts=2, backoff_initial=0.01, backoff_jitter=0)
    with Supervisor(engine, [spec]) as sv:
        wait_for(lambda: sv.health is Health.FAILED, what="the budget to run out")
    events = worker_events(root)
    assert [e.code for e in of(events, WorkerExited)] == [0, 0, 0]
    assert len(of(events, WorkerStarting)) == 3 and len(of(events, WorkerFailed)) == 1


def test_a_worker_ignoring_sigterm_is_killed_after_stop_timeout(engine: Engine, root: str, tmp_path: Any) -> None:
    ready = str(tmp_path / "ready")
    spec = WorkerSpec.python("stubborn", ignore_sigterm, args=[ready], stop_timeout=0.3)
    sv = Supervisor(engine, [spec]).start()
    pid = sv.workers()["stubborn"].pid
    assert pid is not None
    wait_for(lambda: os.path.exists(ready), what="the worker to ignore SIGTERM")
    sv.stop()
    assert not running(pid)
    stopped = of(worker_events(root), WorkerStopped)
    assert len(stopped) == 1 and stopped[0].how == "killed" and stopped[0].signal == signal.SIGKILL
    assert sv.workers()["stubborn"].health is Health.STOPPED


def test_a_worker_that_forks_and_dies_takes_its_child_with_it(engine: Engine, root: str, tmp_path: Any) -> None:
    pid_file = str(tmp_path / "child.pid")
    spec = WorkerSpec.python("forker", fork_child_and_die, args=[pid_file], restart="never")
    with Supervisor(engine, [spec]) as sv:
        wait_for(lambda: sv.health is Health.FAILED, what="the worker to exit")
        child = read_pid(pid_file)
        wait_for(lambda: not running(child), what="the worker's child to be killed")
    events = worker_events(root)
    assert [e.code for e in of(events, WorkerExited)] == [3]


def test_stop_takes_the_workers_children_too_even_when_they_ignore_sigterm(engine: Engine, tmp_path: Any) -> None:
    pid_file = str(tmp_path / "child.pid")
    sv = Supervisor(engine, [WorkerSpec.python("parent", fork_child_and_run, args=[pid_file], stop_timeout=5)]).start()
    child = read_pid(pid_file)
    assert running(child) and os.getpgid(child) == sv.workers()["parent"].pid
    sv.stop()
    assert not running(child)


def test_stop_takes_a_child_that_left_the_group_with_setsid(engine: Engine, tmp_path: Any) -> None:
    pid_file = str(tmp_path / "escaped.pid")
    sv = Supervisor(engine, [WorkerSpec.python("escaper", escape_with_setsid_and_run, args=[pid_file], stop_timeout=5)]).start()
    escaped = read_pid(pid_file)
    try:
        assert running(escaped) and os.getpgid(escaped) != sv.workers()["escaper"].pid  # out of the worker's group
        sv.stop()
        wait_for(lambda: not running(escaped), what="the escaped child to be killed")
    finally:
        kill_quietly(escaped)


def test_a_python_target_runs_with_its_args(engine: Engine, root: str) -> None:
    with Supervisor(engine, [WorkerSpec.python("py", exit_with, args=["7"], restart="never")]) as sv:
        wait_for(lambda: sv.workers()["py"].pid is None, what="the worker to exit")
    assert [e.code for e in of(worker_events(root), WorkerExited)] == [7]


def test_a_worker_that_cannot_start_is_journaled_and_fails_by_budget(engine: Engine, root: str, tmp_path: Any) -> None:
    spec = WorkerSpec(name="ghost", argv=(str(tmp_path / "no-such-program"),), max_restarts=1, backoff_initial=0.01)
    with Supervisor(engine, [spec]) as sv:
        wait_for(lambda: sv.health is Health.FAILED, what="the budget to run out")
    events = worker_events(root)
    spawn_failed = of(events, WorkerSpawnFailed)
    assert len(spawn_failed) == 2 and "FileNotFoundError" in spawn_failed[0].error
    assert len(of(events, WorkerFailed)) == 1 and not of(events, WorkerStarted)


def test_subscribers_hear_worker_events_like_any_other(engine: Engine) -> None:
    heard: list[EventRecord] = []
    engine.subscribe(heard.append, ["worker.died", "worker.starting", "worker.started"])
    with Supervisor(engine, [sleeper(backoff_initial=0.0)]) as sv:
        pid = sv.workers()["w"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len([r for r in heard if isinstance(r.event, WorkerStarted)]) == 2, what="the restart")
    assert [kind_of(r.event) for r in heard] == ["worker.starting", "worker.started", "worker.died", "worker.starting", "worker.started"]
    assert [r.seq for r in heard] == sorted(r.seq for r in heard)


def test_the_restart_count_changes_with_the_rest_of_the_status(engine: Engine) -> None:
    """While a death and its restart are journaled but not yet applied, the status is the old one as a whole
    (not "restarted" while still healthy on the dead pid): a waiter for the restart must not see it early."""
    holder: list[Supervisor] = []
    seen: list[WorkerStatus] = []
    engine.subscribe(lambda r: seen.append(holder[0].workers()["w"]), "worker.died")  # in the monitor thread
    sv = Supervisor(engine, [sleeper(backoff_initial=0.0)])
    holder.append(sv)
    with sv:
        pid = sv.workers()["w"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: sv.workers()["w"].restarts == 1 and sv.workers()["w"].health is Health.HEALTHY, what="the restart")
        now = sv.workers()["w"]
        assert now.attempt == 1 and now.pid not in (None, pid)
    assert len(seen) == 1
    assert (seen[0].restarts, seen[0].attempt, seen[0].pid) == (0, 0, pid)


def test_a_subscriber_may_stop_the_supervisor_from_the_monitor_thread(engine: Engine, root: str) -> None:
    holder: list[Supervisor] = []
    engine.subscribe(lambda r: holder[0].stop(), "worker.died")
    sv = Supervisor(engine, [sleeper()])
    holder.append(sv)
    with sv:
        pid = sv.workers()["w"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: sv.health is Health.STOPPED, what="the stop asked by the subscriber")
    kinds = [kind_of(e) for e in worker_events(root)]
    assert kinds[-2:] == ["worker.stopped", "worker.released"] and of(worker_events(root), WorkerStopped)[0].how == "cancelled"


def test_many_workers_stop_together(engine: Engine, root: str) -> None:
    with Supervisor(engine, [sleeper(f"w{i}") for i in range(4)]) as sv:
        pids = [w.pid for w in sv.workers().values()]
        assert len(set(pids)) == 4
    assert not any(running(p) for p in pids if p is not None)
    assert len(of(worker_events(root), WorkerStopped)) == 4 and len(of(worker_events(root), WorkerReleased)) == 4


def test_a_closed_engine_makes_the_supervisor_kill_its_workers(root: str) -> None:
    engine = open_engine(root)
    sv = Supervisor(engine, [sleeper()]).start()
    pid = sv.workers()["w"].pid
    assert pid is not None
    engine.close()
    os.kill(pid, signal.SIGKILL)  # the death cannot be journaled: the supervisor must not run unjournaled workers
    wait_for(lambda: sv.health is Health.STOPPED, what="the supervisor to give up")
    sv.stop()
    assert sv.journal_failure is not None and not running(pid)


def test_start_twice_is_refused_and_stop_is_idempotent(engine: Engine) -> None:
    sv = Supervisor(engine, [sleeper()])
    sv.start()
    with pytest.raises(SupervisorError, match="started already"):
        sv.start()
    sv.stop()
    sv.stop()
    unstarted = Supervisor(engine, [sleeper("x")])
    unstarted.stop()
    assert unstarted.health is Health.STOPPED
    with pytest.raises(SupervisorError):
        unstarted.start()


def test_the_replayed_state_shows_running_workers(engine: Engine, root: str) -> None:
    with Supervisor(engine, [sleeper("a"), sleeper("b")]) as sv:
        live = {op.info["name"]: op for op in worker_incarnations(replay(root))}
        assert set(live) == {"a", "b"}
        for name, op in live.items():
            assert op.state == "started" and op.info["pid"] == sv.workers()[name].pid and op.info["attempt"] == 0
    assert worker_incarnations(replay(root)) == []
    assert [e.name for e in of(worker_events(root), WorkerSupervised)] == ["a", "b"]
