"""Operation types as data: declaration checks, the registry, and a user's own operation type
journaled, replayed, settled, and refused when it is not registered."""

from __future__ import annotations

import enum
import os
from typing import Any

import pytest
from _engine_helpers import crash, journal_records, kind_of, kinds, open_engine

from shipslog.engine import (
    BUILTIN_OPERATIONS,
    CHECKPOINT,
    CutOffOperationsError,
    Event,
    InvalidTransitionError,
    OperationType,
    RawEvent,
    Recovery,
    RecoveryAction,
    Registry,
    UnknownOperationError,
    replay,
)
from shipslog.journal import JournalReader


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class JobQueued(Event, tag="job.queued"):
    name: str
    priority: int = 0


class JobRunning(Event, tag="job.running"):
    worker: str


class JobDone(Event, tag="job.done"):
    pass


class JobCancelled(Event, tag="job.cancelled"):
    pass


class StrayEvent(Event, tag="other.thing"):
    pass


class NeedsReason(Event, tag="job.stopped"):
    reason: str


_Q, _R, _D, _C = JobState.QUEUED, JobState.RUNNING, JobState.DONE, JobState.CANCELLED


def job_type(**overrides: Any) -> OperationType:
    """A well-formed user operation type; ``overrides`` break it one way at a time."""
    spec: dict[str, Any] = {
        "name": "job",
        "states": JobState,
        "events": (JobQueued, JobRunning, JobDone, JobCancelled),
        "begins": {"job.queued": _Q},
        "transitions": {
            (_Q, "job.running"): _R,
            (_Q, "job.cancelled"): _C,
            (_R, "job.done"): _D,
            (_R, "job.cancelled"): _C,
        },
        "terminal": frozenset({_D, _C}),
        "recovery": {
            _Q: Recovery(RecoveryAction.ROLL_BACK, "never started: cancel it", "job.cancelled"),
            _R: Recovery(RecoveryAction.ROLL_BACK, "its worker is gone: cancel it", "job.cancelled"),
        },
    }
    spec.update(overrides)
    return OperationType(**spec)


JOB = job_type()


# -- declaration checks ---------------------------------------------------------------------------


def test_a_well_formed_type_declares_and_describes_itself() -> None:
    assert JOB.kinds == frozenset({"job.queued", "job.running", "job.done", "job.cancelled"})
    d = JOB.describe()
    assert d["states"] == ["queued", "running", "done", "cancelled"]
    assert d["terminal"] == ["cancelled", "done"]
    assert ["queued", "job.running", "running"] in d["transitions"]
    assert d["recovery"]["running"]["close_with"] == "job.cancelled"
    assert JOB.state("running") is JobState.RUNNING


def test_every_builtin_type_is_well_formed_and_recovers_every_non_terminal_state() -> None:
    for t in BUILTIN_OPERATIONS:
        assert set(t.recovery) == set(t.states) - set(t.terminal), t.name
        assert all(kind.startswith(t.name + ".") for kind in t.kinds)


def test_a_non_terminal_state_without_a_recovery_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="non-terminal state 'running' has no recovery rule"):
        job_type(recovery={_Q: Recovery(RecoveryAction.ROLL_BACK, "x", "job.cancelled")})


class OrphanState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    ORPHAN = "orphan"


def test_an_unreachable_state_is_refused() -> None:
    q, r, d, c, o = OrphanState
    with pytest.raises(ValueError, match="state 'orphan' cannot be reached") as info:
        job_type(
            states=OrphanState,
            begins={"job.queued": q},
            transitions={(q, "job.running"): r, (r, "job.done"): d, (q, "job.cancelled"): c, (o, "job.done"): d},
            terminal=frozenset({d, c}),
            recovery={q: Recovery(RecoveryAction.ROLL_BACK, "x"), r: Recovery(RecoveryAction.ROLL_BACK, "x"),
                      o: Recovery(RecoveryAction.ROLL_BACK, "x")},
        )
    assert "no recovery rule" not in str(info.value)


def test_a_terminal_state_with_a_way_out_is_refused() -> None:
    transitions = dict(job_type().transitions)
    transitions[(_D, "job.running")] = _R
    with pytest.raises(ValueError, match=r"terminal state 'done' has a way out \('job\.running'\)"):
        job_type(transitions=transitions)


def test_an_event_tag_without_the_type_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match=r"event kind 'other\.thing' must start with 'job\.'"):
        job_type(events=(JobQueued, JobRunning, JobDone, JobCancelled, StrayEvent))


@pytest.mark.parametrize("name", ["", "my.job"])
def test_a_type_name_that_is_empty_or_dotted_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="name must be non-empty"):
        job_type(name=name)


def test_a_type_that_nothing_begins_is_refused() -> None:
    with pytest.raises(ValueError, match="no event kind begins it"):
        job_type(begins={})


def test_beginning_with_an_event_of_another_type_is_refused() -> None:
    with pytest.raises(ValueError, match=r"begins with 'job\.nope'"):
        job_type(begins={"job.queued": _Q, "job.nope": _Q})


def test_a_transition_on_an_undeclared_event_is_refused() -> None:
    transitions = dict(job_type().transitions)
    transitions[(_Q, "job.teleported")] = _D
    with pytest.raises(ValueError, match=r"transition on 'job\.teleported'"):
        job_type(transitions=transitions)


def test_a_recovery_rule_on_a_terminal_state_is_refused() -> None:
    recovery = dict(job_type().recovery)
    recovery[_D] = Recovery(RecoveryAction.ROLL_FORWARD, "x")
    with pytest.raises(ValueError, match="terminal state 'done' has a recovery rule"):
        job_type(recovery=recovery)


def test_a_close_with_that_the_table_does_not_allow_is_refused() -> None:
    with pytest.raises(ValueError, match=r"closes with 'job\.done', which the table does not allow there"):
        job_type(recovery={_Q: Recovery(RecoveryAction.ROLL_BACK, "x", "job.done"), _R: Recovery(RecoveryAction.ROLL_BACK, "x")})
    with pytest.raises(ValueError, match=r"closes with 'job\.gone', not one of its events"):
        job_type(recovery={_Q: Recovery(RecoveryAction.ROLL_BACK, "x", "job.gone"), _R: Recovery(RecoveryAction.ROLL_BACK, "x")})


def test_a_close_with_event_that_needs_more_than_op_is_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match=r"job\.stopped"):
        job_type(
            events=(JobQueued, JobRunning, JobDone, NeedsReason),
            transitions={(_Q, "job.running"): _R, (_R, "job.done"): _D, (_Q, "job.stopped"): _C, (_R, "job.stopped"): _C},
            recovery={_Q: Recovery(RecoveryAction.ROLL_BACK, "x", "job.stopped"), _R: Recovery(RecoveryAction.ROLL_BACK, "x", "job.stopped")},
        )


# -- the registry ------------------------------------------------------------------------------


def test_a_type_named_like_a_builtin_is_refused_by_the_registry(root: str) -> None:
    copy = OperationType(
        name=CHECKPOINT.name, states=CHECKPOINT.states, events=CHECKPOINT.events, begins=CHECKPOINT.begins,
        transitions=CHECKPOINT.transitions, terminal=CHECKPOINT.terminal, recovery=CHECKPOINT.recovery,
    )
    with pytest.raises(ValueError, match="'checkpoint' is registered twice"):
        Registry([copy])
    with pytest.raises(ValueError, match="registered twice"):
        open_engine(root, operations=[copy])
    assert not os.path.exists(os.path.join(root, "journal"))


def test_two_types_declaring_one_event_kind_are_refused() -> None:
    class Job2State(str, enum.Enum):
        A = "a"
        B = "b"

    class Job2Begun(Event, tag="job2.begun"):
        pass

    job2 = OperationType(
        name="job2", states=Job2State, events=(Job2Begun,), begins={"job2.begun": Job2State.A},
        transitions={(Job2State.A, "job2.begun"): Job2State.B}, terminal=frozenset({Job2State.B}),
        recovery={Job2State.A: Recovery(RecoveryAction.ROLL_BACK, "x")},
    )
    Registry([JOB, job2])  # distinct kinds: fine
    object.__setattr__(job2, "events", (Job2Begun, JobDone))
    with pytest.raises(ValueError, match=r"'job\.done' is declared by two operation types"):
        Registry([JOB, job2])


def test_registering_the_same_type_object_twice_is_fine() -> None:
    reg = Registry([JOB, JOB])
    assert reg.op_type("job") is JOB
    assert reg.unknown_kinds(["job.done", "job.nope", "run.started"]) == ["job.nope"]


# -- a user's own operation type through the engine -------------------------------------------------


def journal_a_job(engine: Any, op: str = "job-1", finish: bool = True) -> None:
    engine.journal_events(JobQueued(op=op, name="nightly-eval", priority=3))
    engine.journal_events(JobRunning(op=op, worker="w1"))
    if finish:
        engine.journal_events(JobDone(op=op))


def test_a_user_type_journals_and_replays(root: str) -> None:
    e = open_engine(root, operations=[JOB])
    journal_a_job(e)
    assert e.state.op_counts["job"] == 1 and e.state.ops_of("job") == []
    e.close()
    closed = e.state
    assert kinds(root, [JOB]) == ["session.opened", "job.queued", "job.running", "job.done", "session.closed"]
    assert replay(root, operations=[JOB]) == closed
    with open_engine(root, operations=[JOB]) as again:
        assert replay(root, operations=[JOB], until=closed.seq) == closed
        assert again.state.op_counts == closed.op_counts | {"session": 2}


def test_a_user_event_the_table_does_not_allow_is_refused_before_writing(root: str) -> None:
    with open_engine(root, operations=[JOB]) as e:
        e.journal_events(JobQueued(op="job-1", name="x"))
        seq = e.state.seq
        with pytest.raises(InvalidTransitionError) as info:
            e.journal_events(JobDone(op="job-1"))
        assert (info.value.state, info.value.kind, info.value.seq) == ("queued", "job.done", seq + 1)
        assert e.state.seq == seq
        assert len(journal_records(root, [JOB])) == seq
        e.journal_events(JobCancelled(op="job-1"))


def test_an_unregistered_event_class_is_refused_before_writing(root: str) -> None:
    with open_engine(root) as e:
        with pytest.raises(ValueError, match="JobQueued belongs to no registered operation type"):
            e.journal_events(JobQueued(op="job-1", name="x"))
        assert kinds(root) == ["session.opened"]


def test_reopening_without_the_type_names_the_missing_kind(root: str) -> None:
    e = open_engine(root, operations=[JOB])
    journal_a_job(e)
    e.close()
    before = journal_records(root, [JOB])
    with pytest.raises(UnknownOperationError) as info:
        open_engine(root)
    assert "job.queued" in info.value.kinds
    assert "job.queued" in str(info.value) and "operations=" in str(info.value)
    assert journal_records(root, [JOB]) == before, "a refused open wrote to the journal"
    with open_engine(root, operations=[JOB]) as again:  # the refused open released the lock
        assert again.state.op_counts["job"] == 1


def test_replay_without_the_type_raises_unknown_operation(root: str) -> None:
    e = open_engine(root, operations=[JOB])
    journal_a_job(e)
    e.close()
    with pytest.raises(UnknownOperationError) as info:
        replay(root)
    assert "job.queued" in info.value.kinds


def test_unknown_events_stay_readable_as_raw_data(root: str) -> None:
    e = open_engine(root, operations=[JOB])
    journal_a_job(e)
    e.close()
    reg = Registry()
    raw = [reg.decode_event(bytes(r.event)) for r in JournalReader(os.path.join(root, "journal")).records()]
    jobs = [ev for ev in raw if isinstance(ev, RawEvent)]
    assert [ev.kind for ev in jobs] == ["job.queued", "job.running", "job.done"]
    assert jobs[0].op == "job-1"
    assert jobs[0].data["name"] == "nightly-eval" and jobs[0].data["priority"] == 3
    assert jobs[1].data["worker"] == "w1"
    # the whole-frame decoder falls back to the two-step decoding, record by record
    frames = [rec for batch in JournalReader(os.path.join(root, "journal")).batches(decode=reg.decode_frame) for rec in batch]
    assert [kind_of(r.event) for r in frames] == ["session.opened", "job.queued", "job.running", "job.done", "session.closed"]
    assert [r.seq for r in frames] == [1, 2, 3, 4, 5]


def test_a_user_op_cut_off_is_settled_with_its_close_with_event(root: str) -> None:
    e = open_engine(root, operations=[JOB])
    journal_a_job(e, finish=False)
    crash(e)
    with open_engine(root, operations=[JOB]) as again:
        assert [kind_of(r.event) for r in again.settled] == ["session.crashed", "job.cancelled"]
        assert again.state.ops_of("job") == []
    assert kinds(root, [JOB])[-3:] == ["job.cancelled", "session.opened", "session.closed"]


def test_a_user_op_without_a_journal_only_recovery_is_reported_cut_off(root: str) -> None:
    manual = job_type(
        recovery={_Q: Recovery(RecoveryAction.ROLL_BACK, "x"), _R: Recovery(RecoveryAction.ROLL_FORWARD, "finish it by hand")}
    )
    e = open_engine(root, operations=[manual])
    journal_a_job(e, finish=False)
    crash(e)
    with pytest.raises(CutOffOperationsError) as info:
        open_engine(root, operations=[manual])
    assert info.value.ops == (("job-1", "job", "running"),)
    assert "job 'job-1' in state 'running'" in str(info.value)


def test_a_host_may_name_its_operations_freely_but_never_as_a_path(root: str) -> None:
    from shipslog.engine import InvalidFieldError

    job = job_type()
    e = open_engine(root, operations=[job])
    for op in ("job:2024-01-01", "nightly eval", "_job1", "Ünïcode-job"):
        e.journal_events(JobQueued(op=op, name="q"))
    for op in ("../x", "a/b", ".hidden", "x\x00", ""):
        with pytest.raises(InvalidFieldError, match="'op'"):
            e.journal_events(JobQueued(op=op, name="q"))
    e.close()
    e = open_engine(root, operations=[job])  # replayed: the ids above pass the same rule again, and are settled
    assert {"job:2024-01-01", "nightly eval", "_job1", "Ünïcode-job"} <= {r.action.target for r in e.recovery.results}
    e.close()


def test_an_operation_type_whose_name_cannot_be_part_of_a_folder_name_is_refused() -> None:
    for bad in ("my/op", "\x1bop", ".op"):
        with pytest.raises(ValueError, match="not well formed"):
            job_type(name=bad, events=(), begins={}, transitions={}, recovery={})
