"""The pure reducer: every transition of every built-in table, every pair the tables do not allow,
seq continuity, purity, and the fold (:class:`Reducer`) agreeing with repeated :func:`apply`.

Records are built by hand as ``EventRecord(seq, time, session, event)``.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable

import msgspec
import pytest

from shipslog.engine import (
    BUILTIN_OPERATIONS,
    ArtifactAborted,
    ArtifactBegun,
    ArtifactCommitted,
    ArtifactDurable,
    ConsolidationAborted,
    ConsolidationAdapterRetired,
    ConsolidationBegun,
    ConsolidationCommitted,
    ConsolidationInstalled,
    ConsolidationMerged,
    ConsolidationPointerSet,
    EngineState,
    Event,
    EventRecord,
    InvalidTransitionError,
    OperationType,
    PointerAborted,
    PointerIntended,
    PointerSet,
    RawEvent,
    RecoveryBegun,
    RecoveryDone,
    RecoveryStep,
    RecoverySuperseded,
    Reducer,
    Registry,
    RetentionDeleted,
    RetentionIntended,
    RunFailed,
    RunFinished,
    RunInterrupted,
    RunProgress,
    RunStarted,
    RunValidated,
    SalvageAdopted,
    SalvageBegun,
    SalvageDone,
    SalvageLost,
    SalvagePointerLost,
    SalvagePointerSet,
    SequenceGapError,
    SessionClosed,
    SessionCrashed,
    SessionOpened,
    UnknownOperationError,
    WorkerAdopted,
    WorkerDied,
    WorkerExited,
    WorkerFailed,
    WorkerReleased,
    WorkerSpawnFailed,
    WorkerStarted,
    WorkerStarting,
    WorkerStopped,
    WorkerSupervised,
    apply,
)
from shipslog.journal import UnsupportedFormatError

SESSION = "s1"

FACTORIES: dict[str, Callable[[str], Event]] = {
    "checkpoint.begun": lambda op: ArtifactBegun(op=op, name=f"ck-{op}", step=10, staging=f"staging/{op}"),
    "checkpoint.durable": lambda op: ArtifactDurable(op=op, files=1, bytes=3, manifest_crc=7),
    "checkpoint.committed": lambda op: ArtifactCommitted(op=op, path=f"checkpoints/ck-{op}"),
    "checkpoint.aborted": lambda op: ArtifactAborted(op=op, reason="test"),
    "pointer.intended": lambda op: PointerIntended(op=op, name="best", old=None, new="checkpoints/a"),
    "pointer.set": lambda op: PointerSet(op=op),
    "pointer.aborted": lambda op: PointerAborted(op=op, reason="test"),
    "retention.intended": lambda op: RetentionIntended(op=op, paths=["checkpoints/old"]),
    "retention.deleted": lambda op: RetentionDeleted(op=op),
    "run.validated": lambda op: RunValidated(op=op, data_file="/data/train.jsonl", lines=2, size=20, crc32=5),
    "run.started": lambda op: RunStarted(op=op, start_step=0),
    "run.progress": lambda op: RunProgress(op=op, step=3),
    "run.finished": lambda op: RunFinished(op=op, step=4),
    "run.failed": lambda op: RunFailed(op=op, step=4, error="ValueError: boom"),
    "run.interrupted": lambda op: RunInterrupted(op=op, step=4, reason="gone"),
    "session.opened": lambda op: SessionOpened(op=op, pid=123, host="host-a"),
    "session.closed": lambda op: SessionClosed(op=op),
    "session.crashed": lambda op: SessionCrashed(op=op, found_by="s2"),
    "recovery.begun": lambda op: RecoveryBegun(op=op, actions=1, found=["close: x"]),
    "recovery.step": lambda op: RecoveryStep(op=op, index=0, target="x", action="close"),
    "recovery.done": lambda op: RecoveryDone(op=op, done=1),
    "recovery.superseded": lambda op: RecoverySuperseded(op=op),
    "consolidation.begun": lambda op: ConsolidationBegun(op=op, base="models/b", adapter="adapters/a", into=f"m-{op}", pointer="cur", staging=f"staging/{op}"),
    "consolidation.merged": lambda op: ConsolidationMerged(op=op, files=1, bytes=3, manifest_crc=7),
    "consolidation.installed": lambda op: ConsolidationInstalled(op=op, path=f"models/m-{op}"),
    "consolidation.pointer-set": lambda op: ConsolidationPointerSet(op=op),
    "consolidation.adapter-retired": lambda op: ConsolidationAdapterRetired(op=op, retired=f"retired/{op}-a"),
    "consolidation.committed": lambda op: ConsolidationCommitted(op=op),
    "consolidation.aborted": lambda op: ConsolidationAborted(op=op, reason="test"),
    "worker.supervised": lambda op: WorkerSupervised(op=op, name="loader", policy="on-failure", max_restarts=3, restart_window=60.0),
    "worker.failed": lambda op: WorkerFailed(op=op, reason="budget spent", restarts=3),
    "worker.released": lambda op: WorkerReleased(op=op),
    "worker.starting": lambda op: WorkerStarting(op=op, slot="worker-s-1", name="loader", attempt=1, delay=0.2),
    "worker.started": lambda op: WorkerStarted(op=op, pid=4242, create_time=1234.5, pgid=4242, start_ticks=99, boot_id="b"),
    "worker.adopted": lambda op: WorkerAdopted(op=op, slot="worker-s2-1", session="s2"),
    "worker.spawn-failed": lambda op: WorkerSpawnFailed(op=op, error="FileNotFoundError: x"),
    "worker.exited": lambda op: WorkerExited(op=op, code=1),
    "worker.died": lambda op: WorkerDied(op=op, signal=9),
    "worker.stopped": lambda op: WorkerStopped(op=op, how="terminated", signal=15),
    "salvage.begun": lambda op: SalvageBegun(op=op, kept_seq=10, damage="frame crc mismatch", dropped_bytes=100,
                                             quarantined="quarantine/11-journal-salvage"),
    "salvage.adopted": lambda op: SalvageAdopted(op=op, artifact="checkpoint", name=f"ck-{op}", path=f"checkpoints/ck-{op}", step=5),
    "salvage.lost": lambda op: SalvageLost(op=op, path="checkpoints/gone", reason="missing on disk"),
    "salvage.pointer-set": lambda op: SalvagePointerSet(op=op, name="best", target="checkpoints/a"),
    "salvage.pointer-lost": lambda op: SalvagePointerLost(op=op, name="best", reason="gone"),
    "salvage.done": lambda op: SalvageDone(op=op, adopted=1, lost=1),
}

TYPES = {t.name: t for t in BUILTIN_OPERATIONS}


def rec(seq: int, event: Event | RawEvent, session: str = SESSION) -> EventRecord:
    return EventRecord(seq, 1000.0 + seq, session, event)


def encoded(state: EngineState) -> bytes:
    return msgspec.msgpack.encode(state)


def path_to(op_type: OperationType, target: enum.Enum) -> list[str]:
    """The shortest list of event kinds that takes a new operation of ``op_type`` to ``target``."""
    queue: collections.deque[tuple[enum.Enum, list[str]]] = collections.deque(
        (state, [kind]) for kind, state in op_type.begins.items()
    )
    seen = set()
    while queue:
        state, kinds = queue.popleft()
        if state == target:
            return kinds
        if state in seen:
            continue
        seen.add(state)
        for (src, kind), nxt in op_type.transitions.items():
            if src == state:
                queue.append((nxt, [*kinds, kind]))
    raise AssertionError(f"{target} cannot be reached")


def build(kinds: list[str], op: str = "op-1", start: EngineState | None = None) -> EngineState:
    """The state after journaling ``kinds`` for operation ``op`` (by repeated pure ``apply``)."""
    state = start if start is not None else EngineState()
    for kind in kinds:
        state = apply(state, rec(state.seq + 1, FACTORIES[kind](op)))
    return state


def test_the_factories_cover_every_builtin_event_kind() -> None:
    every = {kind for t in BUILTIN_OPERATIONS for kind in t.kinds}
    assert set(FACTORIES) == every


# -- every transition in the tables ---------------------------------------------------------

VALID = [
    pytest.param(t.name, src.value, kind, dst.value, id=f"{t.name}:{src.value}--{kind}-->{dst.value}")
    for t in BUILTIN_OPERATIONS
    for (src, kind), dst in t.transitions.items()
]
BEGINS = [
    pytest.param(t.name, kind, state.value, id=f"{t.name}:--{kind}-->{state.value}")
    for t in BUILTIN_OPERATIONS
    for kind, state in t.begins.items()
]


@pytest.mark.parametrize(("type_name", "kind", "first"), BEGINS)
def test_a_begin_event_starts_an_operation(type_name: str, kind: str, first: str) -> None:
    before = EngineState()
    after = apply(before, rec(1, FACTORIES[kind]("op-1")))
    assert after.seq == 1
    assert after.ops["op-1"].state == first
    assert after.ops["op-1"].type == type_name
    assert after.ops["op-1"].first_seq == 1
    assert after.op_counts == {type_name: 1}
    assert before == EngineState() and before.ops == {}


@pytest.mark.parametrize(("type_name", "src", "kind", "dst"), VALID)
def test_every_transition_of_the_table_is_applied(type_name: str, src: str, kind: str, dst: str) -> None:
    op_type = TYPES[type_name]
    before = build(path_to(op_type, op_type.state(src)))
    assert before.ops["op-1"].state == src
    frozen = encoded(before)
    after = apply(before, rec(before.seq + 1, FACTORIES[kind]("op-1")))
    assert after.seq == before.seq + 1
    if op_type.state(dst) in op_type.terminal:
        assert "op-1" not in after.ops, "a terminal operation leaves the table of operations in progress"
    else:
        assert after.ops["op-1"].state == dst
    assert encoded(before) == frozen, "apply changed its input state"


# -- every pair the tables do not allow ----------------------------------------------------

INVALID = [
    pytest.param(t.name, state.value, kind, id=f"{t.name}:{state.value}--{kind}")
    for t in BUILTIN_OPERATIONS
    for state in t.states
    for kind in sorted(t.kinds)
    if (state, kind) not in t.transitions and state not in t.terminal
]


@pytest.mark.parametrize(("type_name", "state", "kind"), INVALID)
def test_every_pair_not_in_the_table_is_refused(type_name: str, state: str, kind: str) -> None:
    op_type = TYPES[type_name]
    before = build(path_to(op_type, op_type.state(state)))
    frozen = encoded(before)
    seq = before.seq + 1
    with pytest.raises(InvalidTransitionError) as info:
        apply(before, rec(seq, FACTORIES[kind]("op-1")))
    err = info.value
    assert (err.seq, err.op, err.op_type, err.state, err.kind) == (seq, "op-1", type_name, state, kind)
    assert f"seq {seq}" in str(err) and "'op-1'" in str(err) and repr(state) in str(err) and repr(kind) in str(err)
    assert encoded(before) == frozen


# The pairs out of terminal states: a terminal operation leaves ``ops`` (the state keeps only what is
# in progress, so it does not grow with history); an event on it is refused as "not in progress".


@pytest.mark.parametrize("type_name", sorted(TYPES))
def test_an_event_on_a_terminal_operation_is_refused(type_name: str) -> None:
    op_type = TYPES[type_name]
    for terminal in sorted(op_type.terminal, key=lambda s: s.value):
        before = build(path_to(op_type, terminal))
        for kind in sorted(op_type.kinds - set(op_type.begins)):
            with pytest.raises(InvalidTransitionError, match="already ended") as info:
                apply(before, rec(before.seq + 1, FACTORIES[kind]("op-1")))
            assert (info.value.op, info.value.state, info.value.kind) == ("op-1", None, kind), f"{terminal.value} --{kind}"


@pytest.mark.parametrize(
    "kind",
    sorted(k for t in BUILTIN_OPERATIONS for k in t.kinds if k not in t.begins),
)
def test_an_event_on_a_finished_operation_is_refused(kind: str) -> None:
    """What the reducer does today for a terminal op: refuses every non-begin event (without naming the state)."""
    op_type = TYPES[kind.split(".", maxsplit=1)[0]]
    terminal = next(iter(op_type.terminal))
    before = build(path_to(op_type, terminal))
    with pytest.raises(InvalidTransitionError) as info:
        apply(before, rec(before.seq + 1, FACTORIES[kind]("op-1")))
    assert (info.value.seq, info.value.op, info.value.kind) == (before.seq + 1, "op-1", kind)


@pytest.mark.parametrize(
    "kind",
    sorted(k for t in BUILTIN_OPERATIONS for k in t.kinds if k not in t.begins),
)
def test_an_event_of_an_operation_that_never_began_is_refused(kind: str) -> None:
    before = build(["session.opened"], op="other")
    with pytest.raises(InvalidTransitionError) as info:
        apply(before, rec(2, FACTORIES[kind]("ghost")))
    err = info.value
    assert (err.seq, err.op, err.state, err.kind) == (2, "ghost", None, kind)
    assert "has not begun" in str(err)


def test_a_refused_record_leaves_the_fold_unchanged() -> None:
    reducer = Reducer(Registry())
    reducer.apply_all([rec(1, FACTORIES["session.opened"]("s")), rec(2, FACTORIES["checkpoint.begun"]("c"))])
    before = reducer.state()
    with pytest.raises(InvalidTransitionError):
        reducer.apply(rec(3, FACTORIES["checkpoint.committed"]("c")))
    assert reducer.state() == before
    assert reducer.seq == 2


# -- seq continuity ------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 1, 2, 4, 7])
def test_a_seq_that_does_not_follow_raises_sequence_gap(seq: int) -> None:
    before = build(["session.opened"], op="s")  # seq 1
    before = apply(before, rec(2, FACTORIES["checkpoint.begun"]("c")))  # seq 2
    with pytest.raises(SequenceGapError) as info:
        apply(before, rec(seq, FACTORIES["checkpoint.durable"]("c")))
    assert info.value.seq == seq and info.value.expected == 3
    assert isinstance(info.value, InvalidTransitionError) and isinstance(info.value, ValueError)
    assert f"record seq {seq}" in str(info.value) and "expected seq 3" in str(info.value)


def test_the_first_record_must_have_seq_1() -> None:
    with pytest.raises(SequenceGapError) as info:
        apply(EngineState(), rec(2, FACTORIES["session.opened"]("s")))
    assert info.value.expected == 1


# -- other refusals --------------------------------------------------------------------------------


def test_a_raw_event_of_an_unregistered_kind_raises_unknown_operation() -> None:
    raw = RawEvent(kind="job.queued", op="job-1", data={"kind": "job.queued", "op": "job-1", "name": "a"})
    with pytest.raises(UnknownOperationError) as info:
        apply(EngineState(), rec(1, raw))
    assert info.value.kinds == ("job.queued",)
    assert "job.queued" in str(info.value) and "operations=" in str(info.value)


def test_a_session_of_a_newer_event_schema_is_refused() -> None:
    with pytest.raises(UnsupportedFormatError) as info:
        apply(EngineState(), rec(1, SessionOpened(op="s", pid=1, host="h", schema=99)))
    assert "99" in str(info.value)


def test_run_progress_below_the_runs_step_is_an_invalid_transition() -> None:
    state = build(["run.validated", "run.started"], op="r")
    state = apply(state, rec(3, RunProgress(op="r", step=50)))
    with pytest.raises(InvalidTransitionError) as info:
        apply(state, rec(4, RunProgress(op="r", step=49)))
    assert (info.value.seq, info.value.op, info.value.state, info.value.kind) == (4, "r", "started", "run.progress")
    assert "49" in str(info.value) and "50" in str(info.value)
    assert state.runs["r"].step == 50


# -- projections: what each event changes outside the table -------------------------------------


def test_checkpoint_commit_adds_it_and_moves_latest_by_step_not_by_order() -> None:
    s = EngineState()
    for op, name, step in (("c1", "step-1000", 1000), ("c2", "step-200", 200)):
        for ev in (
            ArtifactBegun(op=op, name=name, step=step, staging=f"staging/{op}"),
            ArtifactDurable(op=op, files=1, bytes=5, manifest_crc=1),
            ArtifactCommitted(op=op, path=f"checkpoints/{name}"),
        ):
            s = apply(s, rec(s.seq + 1, ev))
    assert set(s.checkpoints) == {"step-1000", "step-200"}
    assert s.latest == "step-1000" and s.global_step == 1000
    assert s.checkpoints["step-200"].path == "checkpoints/step-200"
    assert s.checkpoints["step-200"].step == 200 and s.checkpoints["step-200"].bytes == 5
    assert s.ops == {}


def test_a_later_checkpoint_of_the_same_step_becomes_latest() -> None:
    s = EngineState()
    for op, name in (("c1", "a"), ("c2", "b")):
        for ev in (ArtifactBegun(op=op, name=name, step=7, staging=f"staging/{op}"), ArtifactDurable(op=op, files=0, bytes=0, manifest_crc=0),
                   ArtifactCommitted(op=op, path=f"checkpoints/{name}")):
            s = apply(s, rec(s.seq + 1, ev))
    assert s.latest == "b"


def test_a_committed_model_is_not_a_checkpoint() -> None:
    s = EngineState()
    for ev in (ArtifactBegun(op="m", name="base", artifact="model", staging="staging/m"), ArtifactDurable(op="m", files=0, bytes=0, manifest_crc=0),
               ArtifactCommitted(op="m", path="models/base")):
        s = apply(s, rec(s.seq + 1, ev))
    assert set(s.models) == {"base"} and s.checkpoints == {} and s.latest is None


@pytest.mark.parametrize("path", [["checkpoint.begun", "checkpoint.aborted"], ["checkpoint.begun", "checkpoint.durable", "checkpoint.aborted"]])
def test_an_aborted_checkpoint_is_not_committed(path: list[str]) -> None:
    s = build(path)
    assert s.checkpoints == {} and s.ops == {} and s.latest is None


def test_pointer_set_records_the_target_and_aborted_does_not() -> None:
    s = build(["pointer.intended", "pointer.set"], op="p1")
    assert s.pointers["best"].target == "checkpoints/a" and s.pointers["best"].op == "p1"
    s2 = build(["pointer.intended", "pointer.aborted"], op="p1")
    assert s2.pointers == {}


def test_retention_marks_paths_then_removes_the_checkpoints_and_recomputes_latest() -> None:
    s = EngineState()
    for op, name, step in (("c1", "old", 1), ("c2", "new", 5)):
        for ev in (ArtifactBegun(op=op, name=name, step=step, staging=f"staging/{op}"), ArtifactDurable(op=op, files=0, bytes=0, manifest_crc=0),
                   ArtifactCommitted(op=op, path=f"checkpoints/{name}")):
            s = apply(s, rec(s.seq + 1, ev))
    s = apply(s, rec(s.seq + 1, RetentionIntended(op="g", paths=["checkpoints/new"])))
    assert s.retiring == {"checkpoints/new": "g"}
    assert "new" in s.checkpoints
    s = apply(s, rec(s.seq + 1, RetentionDeleted(op="g")))
    assert s.retiring == {} and set(s.checkpoints) == {"old"}
    assert s.latest == "old" and s.global_step == 1


def test_run_states_follow_its_events() -> None:
    s = build(["run.validated"], op="r")
    assert s.runs["r"].state == "validated" and s.runs["r"].data_file == "/data/train.jsonl"
    s = apply(s, rec(2, RunStarted(op="r", start_step=100)))
    assert (s.runs["r"].state, s.runs["r"].start_step, s.runs["r"].step) == ("started", 100, 100)
    s = apply(s, rec(3, RunProgress(op="r", step=150)))
    s = apply(s, rec(4, RunProgress(op="r", step=150)))
    assert s.runs["r"].step == 150 and s.ops["r"].state == "started"
    done = apply(s, rec(5, RunFinished(op="r", step=160)))
    assert (done.runs["r"].state, done.runs["r"].step) == ("finished", 160)
    failed = apply(s, rec(5, RunFailed(op="r", step=150, error="ValueError: x")))
    assert (failed.runs["r"].state, failed.runs["r"].error) == ("failed", "ValueError: x")
    cut = apply(s, rec(5, RunInterrupted(op="r", step=150, reason="gone")))
    assert (cut.runs["r"].state, cut.runs["r"].step) == ("interrupted", 150)


def test_sessions_track_the_previous_one_and_count_crashes() -> None:
    s = build(["session.opened"], op="session-a")
    assert s.session is not None and s.session.state == "opened" and s.previous_session is None
    s = apply(s, rec(2, SessionCrashed(op="session-a", found_by="b")))
    s = apply(s, rec(3, SessionOpened(op="session-b", pid=2, host="h")))
    assert s.previous_session is not None and s.previous_session.id == "session-a"
    assert s.previous_session.state == "crashed" and s.previous_session.ended_seq == 2
    assert s.unclean_sessions == 1
    s = apply(s, rec(4, SessionClosed(op="session-b")))
    assert s.session is not None and (s.session.state, s.session.ended_seq) == ("closed", 4)
    assert s.unclean_sessions == 1


# -- purity and the fold ------------------------------------------------------------------------------


def scenario() -> list[EventRecord]:
    events: list[Event] = [
        SessionOpened(op="session-a", pid=1, host="h"),
        ArtifactBegun(op="c1", name="step-100", step=100, meta={"lr": 0.1}, staging="staging/c1"),
        ArtifactDurable(op="c1", files=2, bytes=10, manifest_crc=3),
        ArtifactCommitted(op="c1", path="checkpoints/step-100"),
        PointerIntended(op="p1", name="best", old=None, new="checkpoints/step-100"),
        PointerSet(op="p1"),
        ArtifactBegun(op="c2", name="step-200", step=200, staging="staging/c2"),
        RunValidated(op="r1", data_file="/d", lines=1, size=3, crc32=4, required_fields=["text"]),
        RunStarted(op="r1", start_step=100, checkpoint="checkpoints/step-100"),
        ArtifactDurable(op="c2", files=1, bytes=1, manifest_crc=1),
        RunProgress(op="r1", step=150),
        ArtifactCommitted(op="c2", path="checkpoints/step-200"),
        RunFinished(op="r1", step=200),
        ArtifactBegun(op="c3", name="dead", step=1, staging="staging/c3"),
        ArtifactAborted(op="c3", reason="x"),
        RetentionIntended(op="g1", paths=["checkpoints/step-100"]),
        PointerIntended(op="p2", name="best", old="checkpoints/step-100", new="checkpoints/step-200"),
        PointerAborted(op="p2", reason="x"),
        RetentionDeleted(op="g1"),
        SessionCrashed(op="session-a", found_by="b"),
        SessionOpened(op="session-b", pid=2, host="h"),
        RunValidated(op="r2", data_file="/d", lines=1, size=3, crc32=4),
        RunInterrupted(op="r2", step=0),
    ]
    return [rec(i, ev, "a" if i < 21 else "b") for i, ev in enumerate(events, start=1)]


def test_reducer_fold_equals_repeated_apply() -> None:
    records = scenario()
    folded = Reducer(Registry())
    folded.apply_all(records)
    state = EngineState()
    for r in records:
        state = apply(state, r)
        partial = Reducer(Registry())
        partial.apply_all(records[: r.seq])
        assert partial.state() == state, f"fold and apply differ at seq {r.seq}"
    assert folded.state() == state
    assert folded.seq == len(records)
    assert state.latest == "step-200" and set(state.checkpoints) == {"step-200"}
    assert state.op_counts == {"session": 2, "checkpoint": 3, "pointer": 2, "run": 2, "retention": 1}


def test_reducer_continues_from_a_given_state() -> None:
    records = scenario()
    middle = Reducer(Registry())
    middle.apply_all(records[:10])
    rest = Reducer(Registry(), middle.state())
    rest.apply_all(records[10:])
    whole = Reducer(Registry())
    whole.apply_all(records)
    assert rest.state() == whole.state()


def test_apply_does_not_change_its_input_and_returns_a_new_value() -> None:
    records = scenario()
    state = EngineState()
    for r in records:
        frozen = encoded(state)
        new = apply(state, r)
        assert encoded(state) == frozen, f"apply changed its input at seq {r.seq}"
        assert new is not state
        for field in ("ops", "checkpoints", "pointers", "runs", "retiring", "op_counts"):
            assert getattr(new, field) is not getattr(state, field)
        state = new


def test_a_state_restored_from_a_snapshot_folds_like_the_original() -> None:
    from shipslog.engine import decode_state, encode_state

    records = [
        rec(1, RunValidated(op="r", data_file="/d", lines=1, size=1, crc32=1)),
        rec(2, RunStarted(op="r", start_step=0)),
        rec(3, RunProgress(op="r", step=1)),
        rec(4, RunProgress(op="r", step=2)),
    ]
    whole = Reducer(Registry())
    whole.apply_all(records)
    first = Reducer(Registry())
    first.apply_all(records[:2])
    restored = decode_state(encode_state(first.state()))
    assert restored == first.state()
    rest = Reducer(Registry(), restored)
    rest.apply_all(records[2:])
    assert rest.state() == whole.state()


def test_a_snapshot_round_trip_keeps_the_state() -> None:
    from shipslog.engine import decode_state, encode_state

    reducer = Reducer(Registry())
    reducer.apply_all(scenario())
    assert decode_state(encode_state(reducer.state())) == reducer.state()


def test_a_state_handed_out_by_the_reducer_does_not_change_when_it_goes_on() -> None:
    records = scenario()
    reducer = Reducer(Registry())
    reducer.apply_all(records[:6])
    early = reducer.state()
    frozen = encoded(early)
    reducer.apply_all(records[6:])
    assert encoded(early) == frozen


# -- the engine checks the tables before it journals ----------------------------------------------


def test_the_engine_refuses_an_event_the_table_does_not_allow_before_writing(root: str) -> None:
    from _engine_helpers import journal_records, open_engine

    with open_engine(root) as e:
        before = journal_records(root)
        with pytest.raises(InvalidTransitionError) as info:
            e.journal_events(PointerSet(op="nope"))
        assert (info.value.seq, info.value.op, info.value.state, info.value.kind) == (2, "nope", None, "pointer.set")
        with pytest.raises(InvalidTransitionError) as second:  # one frame, all or none
            e.journal_events(ArtifactBegun(op="c", name="a", step=1, staging="staging/c"), ArtifactCommitted(op="c", path="checkpoints/a"))
        assert (second.value.seq, second.value.state, second.value.kind) == (3, "begun", "checkpoint.committed")
        assert journal_records(root) == before
        assert e.state.seq == 1 and e.state.ops_of("checkpoint") == []
        assert e.broken is None
