"""The built-in operation types, declared as data (states, table, terminal states, recovery).

The tables follow the design's operations table; each projection states what a
committed event changes in the engine state.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from shipslog.journal import UnsupportedFormatError

from ._errors import InvalidTransitionError
from ._events import (
    EVENT_SCHEMA_VERSION,
    ArtifactAborted,
    ArtifactBegun,
    ArtifactCommitted,
    ArtifactDurable,
    Event,
    PointerAborted,
    PointerIntended,
    PointerSet,
    RetentionDeleted,
    RetentionIntended,
    RunFailed,
    RunFinished,
    RunInterrupted,
    RunProgress,
    RunStarted,
    RunValidated,
    SessionClosed,
    SessionCrashed,
    SessionOpened,
)
from ._optypes import OperationType, Recovery, RecoveryAction
from ._state import ArtifactInfo, OpRecord, PointerInfo, RunInfo, SessionInfo, StateBuilder

__all__ = [
    "BUILTIN_OPERATIONS",
    "CHECKPOINT",
    "POINTER",
    "RETENTION",
    "RUN",
    "SESSION",
    "CheckpointState",
    "PointerState",
    "RetentionState",
    "RunState",
    "SessionState",
]

_FORWARD = RecoveryAction.ROLL_FORWARD
_BACK = RecoveryAction.ROLL_BACK


# -- checkpoint (and model) -------------------------------------------------------------


class CheckpointState(str, enum.Enum):
    """States of a checkpoint (or model) operation."""

    BEGUN = "begun"
    DURABLE = "durable"
    COMMITTED = "committed"
    ABORTED = "aborted"


def _project_checkpoint(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    if not isinstance(ev, ArtifactCommitted):
        return
    info = op.info
    art = ArtifactInfo(
        name=info["name"],
        artifact=info.get("artifact", "checkpoint"),
        path=ev.path,
        step=info.get("step"),
        op=op.id,
        seq=seq,
        time=time,
        files=info.get("files", 0),
        bytes=info.get("bytes", 0),
        meta=info.get("meta", {}),
    )
    if art.artifact == "model":
        b.models[art.name] = art
        return
    b.checkpoints[art.name] = art
    current = b.checkpoints.get(b.latest) if b.latest is not None else None
    if current is None or (art.step or 0) >= (current.step or 0):
        b.latest = art.name
        b.global_step = art.step or 0


CHECKPOINT = OperationType(
    name="checkpoint",
    description="files written to staging, manifest last, fsynced, then renamed into checkpoints/ or models/",
    states=CheckpointState,
    events=(ArtifactBegun, ArtifactDurable, ArtifactCommitted, ArtifactAborted),
    begins={"checkpoint.begun": CheckpointState.BEGUN},
    transitions={
        (CheckpointState.BEGUN, "checkpoint.durable"): CheckpointState.DURABLE,
        (CheckpointState.BEGUN, "checkpoint.aborted"): CheckpointState.ABORTED,
        (CheckpointState.DURABLE, "checkpoint.committed"): CheckpointState.COMMITTED,
        (CheckpointState.DURABLE, "checkpoint.aborted"): CheckpointState.ABORTED,
    },
    terminal=frozenset({CheckpointState.COMMITTED, CheckpointState.ABORTED}),
    recovery={
        CheckpointState.BEGUN: Recovery(_BACK, "files were not all durable: remove staging and journal aborted"),
        CheckpointState.DURABLE: Recovery(
            _FORWARD,
            "files and manifest are durable: if the staged or final copy verifies, finish the rename and journal committed; "
            "otherwise quarantine it and journal aborted",
        ),
    },
    project=_project_checkpoint,
)


# -- pointer ----------------------------------------------------------------------------


class PointerState(str, enum.Enum):
    """States of a pointer move."""

    INTENDED = "intended"
    SET = "set"
    ABORTED = "aborted"


def _project_pointer(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    if isinstance(ev, PointerSet):
        name = op.info["name"]
        b.pointers[name] = PointerInfo(name=name, target=op.info["new"], op=op.id, seq=seq, time=time)


POINTER = OperationType(
    name="pointer",
    description="a small JSON file naming a committed folder, replaced atomically",
    states=PointerState,
    events=(PointerIntended, PointerSet, PointerAborted),
    begins={"pointer.intended": PointerState.INTENDED},
    transitions={
        (PointerState.INTENDED, "pointer.set"): PointerState.SET,
        (PointerState.INTENDED, "pointer.aborted"): PointerState.ABORTED,
    },
    terminal=frozenset({PointerState.SET, PointerState.ABORTED}),
    recovery={
        PointerState.INTENDED: Recovery(
            _FORWARD,
            "if the new target verifies, make the pointer file name it and journal set; otherwise keep the old one and journal aborted",
        ),
    },
    project=_project_pointer,
)


# -- retention --------------------------------------------------------------------------


class RetentionState(str, enum.Enum):
    """States of a retention (gc) pass."""

    INTENDED = "intended"
    DELETED = "deleted"


def _project_retention(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    if isinstance(ev, RetentionIntended):
        for path in ev.paths:
            b.retiring[path] = op.id
        return
    if isinstance(ev, RetentionDeleted):
        paths = set(op.info.get("paths", ()))
        for path in paths:
            b.retiring.pop(path, None)
        lost_latest = False
        for table in (b.checkpoints, b.models):
            for name in [n for n, a in table.items() if a.path in paths]:
                del table[name]
                lost_latest = lost_latest or (table is b.checkpoints and name == b.latest)
        if lost_latest:
            b.recompute_latest()


RETENTION = OperationType(
    name="retention",
    description="old checkpoints and models deleted, the intent journaled first",
    states=RetentionState,
    events=(RetentionIntended, RetentionDeleted),
    begins={"retention.intended": RetentionState.INTENDED},
    transitions={(RetentionState.INTENDED, "retention.deleted"): RetentionState.DELETED},
    terminal=frozenset({RetentionState.DELETED}),
    recovery={RetentionState.INTENDED: Recovery(_FORWARD, "redo the deletes (idempotent) and journal deleted")},
    project=_project_retention,
)


# -- run --------------------------------------------------------------------------------


class RunState(str, enum.Enum):
    """States of a training run over one data file."""

    VALIDATED = "validated"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def _project_run(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    runs = b.runs
    if isinstance(ev, RunProgress):
        run = runs[op.id]
        if ev.step < run.step:
            raise InvalidTransitionError(seq, op.id, "run", run.state, "run.progress", f"step {ev.step} is below the run's step {run.step}")
        runs[op.id] = msgspec.structs.replace(run, step=ev.step, last_seq=seq)
        return
    if isinstance(ev, RunValidated):
        runs[op.id] = RunInfo(op=op.id, data_file=ev.data_file, state="validated", session=op.session, first_seq=seq, last_seq=seq)
        return
    run = runs[op.id]
    if isinstance(ev, RunStarted):
        runs[op.id] = msgspec.structs.replace(run, state="started", start_step=ev.start_step, step=ev.start_step, last_seq=seq)
        return
    if isinstance(ev, RunFinished):
        runs[op.id] = msgspec.structs.replace(run, state="finished", step=ev.step, last_seq=seq)
    elif isinstance(ev, RunFailed):
        runs[op.id] = msgspec.structs.replace(run, state="failed", step=ev.step, error=ev.error, last_seq=seq)
    elif isinstance(ev, RunInterrupted):
        runs[op.id] = msgspec.structs.replace(run, state="interrupted", step=ev.step, error=ev.reason or None, last_seq=seq)
    b.trim_runs()


RUN = OperationType(
    name="run",
    description="a training run over one JSONL data file, validated whole before it starts",
    states=RunState,
    events=(RunValidated, RunStarted, RunProgress, RunFinished, RunFailed, RunInterrupted),
    begins={"run.validated": RunState.VALIDATED},
    transitions={
        (RunState.VALIDATED, "run.started"): RunState.STARTED,
        (RunState.VALIDATED, "run.failed"): RunState.FAILED,
        (RunState.VALIDATED, "run.interrupted"): RunState.INTERRUPTED,
        (RunState.STARTED, "run.progress"): RunState.STARTED,
        (RunState.STARTED, "run.finished"): RunState.FINISHED,
        (RunState.STARTED, "run.failed"): RunState.FAILED,
        (RunState.STARTED, "run.interrupted"): RunState.INTERRUPTED,
    },
    terminal=frozenset({RunState.FINISHED, RunState.FAILED, RunState.INTERRUPTED}),
    recovery={
        RunState.VALIDATED: Recovery(_BACK, "its session is gone before training started: journal interrupted", "run.interrupted"),
        RunState.STARTED: Recovery(
            _BACK, "its session is gone: journal interrupted; resume from the newest committed checkpoint", "run.interrupted"
        ),
    },
    project=_project_run,
)


# -- session ----------------------------------------------------------------------------


class SessionState(str, enum.Enum):
    """States of a session (one opening of the root)."""

    OPENED = "opened"
    CLOSED = "closed"
    CRASHED = "crashed"


def _project_session(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    if isinstance(ev, SessionOpened):
        if ev.schema > EVENT_SCHEMA_VERSION:
            raise UnsupportedFormatError(f"journal record seq {seq}", "event schema", ev.schema, EVENT_SCHEMA_VERSION)
        if b.session is not None:
            b.previous_session = b.session
        b.session = SessionInfo(id=op.id, pid=ev.pid, host=ev.host, opened_seq=seq, state="opened")
        return
    state = "closed" if isinstance(ev, SessionClosed) else "crashed"
    if state == "crashed":
        b.unclean_sessions += 1
    for attr in ("session", "previous_session"):
        current: SessionInfo | None = getattr(b, attr)
        if current is not None and current.id == op.id:
            setattr(b, attr, msgspec.structs.replace(current, state=state, ended_seq=seq))


SESSION = OperationType(
    name="session",
    description="one opening of the root by an engine",
    states=SessionState,
    events=(SessionOpened, SessionClosed, SessionCrashed),
    begins={"session.opened": SessionState.OPENED},
    transitions={
        (SessionState.OPENED, "session.closed"): SessionState.CLOSED,
        (SessionState.OPENED, "session.crashed"): SessionState.CRASHED,
    },
    terminal=frozenset({SessionState.CLOSED, SessionState.CRASHED}),
    recovery={SessionState.OPENED: Recovery(_FORWARD, "it ended without closing: journal the unclean shutdown", "session.crashed")},
    project=_project_session,
)

BUILTIN_OPERATIONS: tuple[OperationType, ...] = (SESSION, CHECKPOINT, POINTER, RETENTION, RUN)
"""Every built-in operation type, always registered."""


def describe_all() -> list[dict[str, Any]]:
    """The built-in tables as plain data."""
    return [t.describe() for t in BUILTIN_OPERATIONS]
