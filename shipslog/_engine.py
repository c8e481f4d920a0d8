"""``shipslog.Engine``: the composition root of journal, engine core (and recovery).

``Engine.open(root)`` takes the root's lock, opens and verifies the journal
(repairing a torn tail), loads the newest valid snapshot, replays the records
after it, settles what a crash left that needs no file work (the previous
session's unclean shutdown, its runs left "started"), and refuses a root with
operations cut off half-way through their file effects until they are
recovered.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

import msgspec

from shipslog.engine import (
    CutOffOperationsError,
    EngineLockedError,
    EngineState,
    Event,
    OperationType,
    Registry,
    RunInterrupted,
    SessionClosed,
    SessionCrashed,
    SessionOpened,
)
from shipslog.engine._core import CHECKPOINTS_DIR, MODELS_DIR, POINTERS_DIR, STAGING_DIR, EngineCore, WatchedFileSystem, decode_state
from shipslog.engine._reducer import Reducer
from shipslog.journal import DEFAULT_SEGMENT_BYTES, QUARANTINE_DIR, Journal, JournalLockedError, JournalReader

__all__ = ["DEFAULT_SNAPSHOT_EVERY", "Engine"]

_log = logging.getLogger("shipslog.engine")

DEFAULT_SNAPSHOT_EVERY = 10_000
"""Records between snapshots: opening replays at most about this many records."""


class Engine(EngineCore):
    """What a training host embeds: every lifecycle change journaled around its file effects.

    Open it with :meth:`open` (a context manager).  After :meth:`close` every
    call raises :class:`~shipslog.engine.EngineClosedError`; after an fsync
    failure every call raises :class:`~shipslog.engine.EngineBrokenError`
    until the root is opened again.
    """

    replayed: int
    """Records replayed at open (after the snapshot, if one was used)."""
    settled: list[Any]
    """Records journaled at open to settle what the previous session left (crashed session, interrupted runs)."""

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        operations: Iterable[OperationType] = (),
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        preallocate: bool = True,
    ) -> Engine:
        """Lock ``root`` (creating it when new), replay its journal, settle the previous session, and start a new one.

        ``operations`` registers the caller's own operation types beside the
        built-ins.  ``snapshot_every`` (records) bounds how much opening
        replays; 0 turns snapshots off.  ``fsync=False`` is for tests and
        benchmarks only.  Raises :class:`EngineLockedError` when another engine
        holds the root, :class:`UnknownOperationError` when the journal holds
        events of unregistered types, :class:`CutOffOperationsError` when
        operations were cut off in the middle of their file effects, and
        :class:`CorruptJournalError` for damage that is not a torn tail.
        """
        if not isinstance(snapshot_every, int) or snapshot_every < 0:
            raise ValueError(f"snapshot_every must be 0 (off) or a positive number of records, got {snapshot_every!r}")
        registry = Registry(operations)
        holder: list[EngineCore] = []

        def on_fsync_failure(exc: BaseException) -> None:
            if holder:
                holder[0].mark_broken(exc)

        fs = WatchedFileSystem(sync=fsync, on_failure=on_fsync_failure)
        try:
            journal = Journal.open(root, fs=fs, segment_bytes=segment_bytes, preallocate=preallocate)
        except JournalLockedError as exc:
            raise EngineLockedError(exc.root, exc.holder) from exc
        try:
            for path, why in journal.report.skipped_snapshots:
                _log.warning("snapshot %s was not used (%s); replaying more of the journal instead", path, why)
            state, replayed = _load_state(journal, registry)
            cut = [op for op in state.ops.values() if _close_kind(registry, op.type, op.state) is None]
            if cut:
                raise CutOffOperationsError(journal.root, [(op.id, op.type, op.state) for op in sorted(cut, key=lambda o: o.first_seq)])
            for folder in (STAGING_DIR, CHECKPOINTS_DIR, MODELS_DIR, POINTERS_DIR, QUARANTINE_DIR):
                fs.ensure_dir(os.path.join(journal.root, folder))
            engine = cls(journal, registry, state, fs=fs, snapshot_every=snapshot_every)
            holder.append(engine)
            engine.replayed = replayed
            engine.settled = engine.journal_events(*_settling_events(registry, state, journal.session), SessionOpened(
                op=f"session-{journal.session}", pid=os.getpid(), host=socket.gethostname(), version=_version()
            ))[:-1]
            for rec in engine.settled:
                _log.warning("%s: settled after an unclean shutdown: %s %s", journal.root, rec.event.__struct_config__.tag, rec.event.op)
            if snapshot_every and replayed >= snapshot_every:
                engine.save_snapshot()
        except BaseException:
            journal.close()
            raise
        return engine

    def close(self) -> None:
        """Journal a clean end of this session and release the root.  Idempotent.

        After close every call raises :class:`EngineClosedError`.
        """
        self.close_core([SessionClosed(op=f"session-{self.session}")])

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "broken" if self.broken else "open"
        return f"<shipslog.Engine {self.root} {state} seq={self.state.seq}>"


def _version() -> str:
    from shipslog import __version__

    return __version__


def _load_state(journal: Journal, registry: Registry) -> tuple[EngineState, int]:
    """The state at the journal's end: the newest usable snapshot, then every record after it."""
    start: EngineState | None = None
    snap = journal.snapshot
    if snap is not None:
        try:
            start = decode_state(snap.payload)
        except msgspec.DecodeError as exc:
            _log.warning("snapshot %s cannot be used by this shipslog (%s); replaying the whole journal", snap.path, exc)
            start = None
    reducer = Reducer(registry, start)
    last = journal.last_seq
    replayed = 0
    if reducer.seq < last:
        reader = JournalReader(journal.journal_dir)
        position = snap.position if start is not None and snap is not None else None
        for batch in reader.batches(reducer.seq + 1, last, start=position, decode=registry.decode_frame):
            reducer.apply_all(batch)
            replayed += len(batch)
    return reducer.state(), replayed


def _close_kind(registry: Registry, op_type: str, state: str) -> str | None:
    """The event kind that settles an op cut off in ``state`` without file work, if its type declares one."""
    declared = registry.op_type(op_type)
    if declared is None:
        return None
    rule = declared.recovery.get(declared.state(state))
    return rule.close_with if rule is not None else None


def _settling_events(registry: Registry, state: EngineState, session: str) -> list[Event]:
    """Events that settle every op whose recovery is journal-only, previous sessions first."""
    events: list[Event] = []
    ops = sorted(state.ops.values(), key=lambda o: (o.type != "session", o.first_seq))
    for op in ops:
        kind = _close_kind(registry, op.type, op.state)
        if kind == "session.crashed":
            events.append(SessionCrashed(op=op.id, found_by=session))
        elif kind == "run.interrupted":
            run = state.runs.get(op.id)
            events.append(RunInterrupted(op=op.id, step=run.step if run else 0, reason=f"its session ended without finishing it; found by session {session}"))
        elif kind is not None:
            events.append(registry.event_classes[kind](op=op.id))
    return events
