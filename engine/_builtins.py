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
    RecoveryBegun,
    RecoveryDone,
    RecoveryStep,
    RecoverySuperseded,
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
    "RECOVERY",
    "RETENTION",
    "RUN",
    "SESSION",
    "CheckpointState",
    "PointerState",
    "RecoveryState",
    "RetentionState",
    "RunState",
    "SessionState",
]

_replace = msgspec.structs.replace
_FORWARD = RecoveryAction.ROLL_FORWARD
_BACK = RecoveryAction.ROLL_BACK


# -- checkpoint (and model) -------------------------------------------------------------


class CheckpointState(str, enum.Enum):
    """States of a checkpoint (or model) operation."""

    BEGUN = "begun"
    DURABLE = "durable"
    COMMITTED = "committed"
    ABORTED = "aborted"


def _checkpoint_committed(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, ArtifactCommitted)
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
    if art.artifact == "adapter":
        b.adapters[art.name] = art
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
    projections={"checkpoint.committed": _checkpoint_committed},
)


# -- pointer ----------------------------------------------------------------------------


class PointerState(str, enum.Enum):
    """States of a pointer move."""

    INTENDED = "intended"
    SET = "set"
    ABORTED = "aborted"


def _pointer_set(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
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
    projections={"pointer.set": _pointer_set},
)


# -- retention --------------------------------------------------------------------------


class RetentionState(str, enum.Enum):
    """States of a retention (gc) pass."""

    INTENDED = "intended"
    DELETED = "deleted"


def _retention_intended(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, RetentionIntended)
    for path in ev.paths:
        b.retiring[path] = op.id


def _retention_deleted(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    paths = set(op.info.get("paths", ()))
    lost_latest = False
    for path in paths:
        b.retiring.pop(path, None)
        b.retired.pop(path, None)
        folder, _, name = path.partition("/")
        tables = {"checkpoints": b.checkpoints, "models": b.models, "adapters": b.adapters}
        table = tables.get(folder)
        if table is not None and name in table and table[name].path == path:
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
    projections={"retention.intended": _retention_intended, "retention.deleted": _retention_deleted},
)


# -- run --------------------------------------------------------------------------------


class RunState(str, enum.Enum):
    """States of a training run over one data file."""

    VALIDATED = "validated"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def _run_validated(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, RunValidated)
    b.runs[op.id] = RunInfo(op=op.id, data_file=ev.data_file, state="validated", session=op.session, first_seq=seq, last_seq=seq)


def _run_started(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, RunStarted)
    b.runs[op.id] = _replace(b.runs[op.id], state="started", start_step=ev.start_step, step=ev.start_step, last_seq=seq)


def _run_progress(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    runs = b.runs
    run = runs[op.id]
    step = ev.step  # type: ignore[attr-defined]
    if step < run.step:
        raise InvalidTransitionError(seq, op.id, "run", run.state, "run.progress", f"step {step} is below the run's step {run.step}")
    runs[op.id] = _replace(run, step=step, last_seq=seq)


def _run_ended(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    state = op.state
    error = ev.error if isinstance(ev, RunFailed) else (ev.reason or None) if isinstance(ev, RunInterrupted) else None
    b.runs[op.id] = _replace(b.runs[op.id], state=state, step=ev.step, error=error, last_seq=seq)  # type: ignore[attr-defined]
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
    projections={
        "run.validated": _run_validated,
        "run.started": _run_started,
        "run.progress": _run_progress,
        "run.finished": _run_ended,
        "run.failed": _run_ended,
        "run.interrupted": _run_ended,
    },
)


# -- session ----------------------------------------------------------------------------


class SessionState(str, enum.Enum):
    """States of a session (one opening of the root)."""

    OPENED = "opened"
    CLOSED = "closed"
    CRASHED = "crashed"


def _session_opened(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, SessionOpened)
    if ev.schema > EVENT_SCHEMA_VERSION:
        raise UnsupportedFormatError(f"journal record seq {seq}", "event schema", ev.schema, EVENT_SCHEMA_VERSION)
    if b.session is not None:
        b.previous_session = b.session
    b.session = SessionInfo(id=op.id, pid=ev.pid, host=ev.host, opened_seq=seq, state="opened")


def _session_ended(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    state = op.state
    if state == "crashed":
        b.unclean_sessions += 1
    for attr in ("session", "previous_session"):
        current: SessionInfo | None = getattr(b, attr)
        if current is not None and current.id == op.id:
            setattr(b, attr, _replace(current, state=state, ended_seq=seq))


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
    projections={"session.opened": _session_opened, "session.closed": _session_ended, "session.crashed": _session_ended},
)

# -- recovery ---------------------------------------------------------------------------


class RecoveryState(str, enum.Enum):
    """States of one start-up recovery."""

    RUNNING = "running"
    DONE = "done"
    SUPERSEDED = "superseded"


RECOVERY = OperationType(
    name="recovery",
    description="start-up recovery: each action journaled before its effect",
    states=RecoveryState,
    events=(RecoveryBegun, RecoveryStep, RecoveryDone, RecoverySuperseded),
    begins={"recovery.begun": RecoveryState.RUNNING},
    transitions={
        (RecoveryState.RUNNING, "recovery.step"): RecoveryState.RUNNING,
        (RecoveryState.RUNNING, "recovery.done"): RecoveryState.DONE,
        (RecoveryState.RUNNING, "recovery.superseded"): RecoveryState.SUPERSEDED,
    },
    terminal=frozenset({RecoveryState.DONE, RecoveryState.SUPERSEDED}),
    recovery={
        RecoveryState.RUNNING: Recovery(
            _FORWARD, "it was cut off: journal it superseded; the next recovery plans again from the journal", "recovery.superseded"
        )
    },
)

from ._consolidation import CONSOLIDATION  # noqa: E402
from ._workers import WORKER  # noqa: E402

BUILTIN_OPERATIONS: tuple[OperationType, ...] = (SESSION, CHECKPOINT, POINTER, RETENTION, RUN, RECOVERY, WORKER, CONSOLIDATION)
"""Every built-in operation type, always registered."""


def describe_all() -> list[dict[str, Any]]:
    """The built-in tables as plain data."""
    return [t.describe() for t in BUILTIN_OPERATIONS]
