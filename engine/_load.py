"""Loading the engine state at the journal's end: the newest usable snapshot, then the records after it.

One function, :func:`load_state`, serves both callers that need a state:
``Engine.open`` (with the :class:`~shipslog.journal.Journal` it holds open,
whose opening already chose and position-checked the snapshot and repaired a
torn tail) and the read-only views of the command line (with a root's path:
no lock is taken and no byte is changed, so it is safe beside a live writer).

Guarantees, the same for both:

* a snapshot is only an optimization, the journal decides: a snapshot with any
  flaw (it does not decode, is of another state version, is taken at another
  seq than its file says, or holds a state that replay could never have
  produced, :func:`~shipslog.engine.check_state`) is ignored with a warning
  and the journal is replayed from its first record;
* the records after the snapshot are read from the snapshot's frame position
  on, each verified and applied by the reducer, so the cost is that of the
  records after the snapshot, not of the whole history; the bytes before it
  are verified too, by the segments' seals (one crc pass, no decoding), so
  damage anywhere in the journal is found;
* a record the reducer refuses, or damage in the frames read, raises (or, for
  read-only views that ask for it, ends the replay there and is reported).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from shipslog.journal import (
    JOURNAL_DIR,
    SNAPSHOT_DIR,
    CorruptJournalError,
    CorruptRecordError,
    HistoryCheck,
    Journal,
    JournalReader,
    Snapshot,
    TornTail,
    UnsupportedFormatError,
    last_record_seq,
    list_segments,
    newest_snapshot,
)

from ._core import decode_state
from ._errors import InvalidFieldError
from ._reducer import Reducer
from ._registry import Registry
from ._state import EngineState
from ._state_check import check_state

__all__ = ["LoadedState", "load_state"]

_log = logging.getLogger("shipslog.engine")


@dataclass(frozen=True)
class LoadedState:
    """What :func:`load_state` found: the state and how it was reached."""

    state: EngineState
    """The state as of the last record replayed (the journal's end, or ``until``)."""
    replayed: int
    """Records read and applied after the snapshot (after nothing, when no snapshot was used)."""
    snapshot: Snapshot | None = None
    """The snapshot the replay started from; None when the journal was replayed from its first record."""
    skipped: dict[str, int] = field(default_factory=dict)
    """With ``skip_unknown``: records of event kinds no registered type declares, by kind (left out of the state)."""
    torn: TornTail | None = None
    """Read-only: a torn frame at the end of the journal (perhaps a write in progress), not replayed."""
    refused: CorruptRecordError | None = None
    """With ``stop_at_refused``: the record the reducer refused; the state is the one before it."""


def load_state(
    source: Journal | str | os.PathLike[str],
    registry: Registry,
    *,
    until: int | None = None,
    skip_unknown: bool = False,
    stop_at_refused: bool = False,
    snapshots: bool = True,
) -> LoadedState:
    """The state of a journal as of its end (or record ``until``): the newest usable snapshot, then the records after it.

    ``source`` is an open :class:`~shipslog.journal.Journal` (its snapshot,
    chosen when it was opened, is used; the journal is verified and repaired
    already) or a root folder, read without its lock and without changing a
    byte: the newest snapshot that verifies is chosen here (older ones that
    do not are passed over with a warning), a torn frame at the end is
    reported in :attr:`LoadedState.torn` and not replayed, and a snapshot
    taken at a seq the journal does not reach raises
    :class:`~shipslog.journal.CorruptJournalError` (acknowledged records are
    missing), as opening the root would.

    A snapshot whose state cannot be used is ignored with a warning and the
    journal replayed from its first record.  With ``skip_unknown`` (read-only
    views), events of unregistered kinds are counted in
    :attr:`LoadedState.skipped` instead of raising
    :class:`~shipslog.engine.UnknownOperationError`, and a snapshot that
    counts operations of unregistered types is not used (the journal is
    replayed whole, so that their events are counted).  With
    ``stop_at_refused``, a :class:`~shipslog.journal.CorruptRecordError` ends
    the replay and is returned instead of raised.  ``snapshots=False``
    replays from the first record.  A newer event schema raises
    :class:`~shipslog.journal.UnsupportedFormatError` naming the segment
    that holds the record and its seq.  ``until`` past the end is not an
    error here: the state then ends at the journal's end (the caller compares
    ``state.seq``).
    """
    if isinstance(source, Journal):
        journal_dir = source.journal_dir
        end: int | None = source.last_seq if until is None else min(until, source.last_seq)
        snap = source.snapshot if snapshots else None
        if snap is not None and end is not None and snap.seq > end:
            snap = None
        read_only = False
        data_end: tuple[int, int] | None = source.end_position  # verified by its open: no need to scan past it
    else:
        root = os.path.abspath(os.fspath(source))
        journal_dir = os.path.join(root, JOURNAL_DIR)
        end = until
        snap = None
        data_end = None
        if snapshots:
            snap, passed_over = newest_snapshot(journal_dir, os.path.join(root, SNAPSHOT_DIR), until=until)
            for path, why in passed_over:
                _log.warning("snapshot %s was not used (%s); replaying more of the journal instead", path, why)
        read_only = True
    start = _usable_start(snap, registry, skip_unknown=skip_unknown)
    used = snap if start is not None else None
    # The bytes before the snapshot are verified as opening verifies them, on a thread beside the replay.
    history = HistoryCheck(journal_dir, used.position) if read_only and used is not None else None
    try:
        reducer = Reducer(registry, start, skip_unknown=skip_unknown)
        return _replay_after(
            journal_dir, reducer, used, end, read_only=read_only, stop_at_refused=stop_at_refused, data_end=data_end
        )
    finally:
        if history is not None:
            history.wait()


def _replay_after(
    journal_dir: str,
    reducer: Reducer,
    used: Snapshot | None,
    end: int | None,
    *,
    read_only: bool,
    stop_at_refused: bool,
    data_end: tuple[int, int] | None = None,
) -> LoadedState:
    """Replay the records after ``used`` (all of them when None) into ``reducer``; see :func:`load_state`."""
    first = reducer.seq
    torn: TornTail | None = None
    refused: CorruptRecordError | None = None
    position = used.position if used is not None else None
    if read_only or (end is not None and first < end):
        try:
            reader = reducer.replay_journal(journal_dir, until=end, start=position, end=data_end)
            torn = reader.tail
        except CorruptRecordError as exc:
            if not stop_at_refused:
                raise
            refused = exc
        except UnsupportedFormatError as exc:
            if os.path.isfile(exc.path):
                raise  # a segment header: it names its file already
            seq = reducer.seq + 1  # the reducer stops just before the record it refused
            raise UnsupportedFormatError(_segment_holding(journal_dir, seq), f"record seq {seq}: event schema", exc.found, exc.supported) from exc
        if read_only and used is not None and refused is None and reducer.seq == used.seq:
            _check_journal_reaches(journal_dir, used)
    return LoadedState(reducer.state(), reducer.seq - first, used, dict(reducer.skipped), torn, refused)


def _usable_start(snap: Snapshot | None, registry: Registry, *, skip_unknown: bool) -> EngineState | None:
    """The state in ``snap`` when it can be replayed on from; None (logged) when it cannot."""
    if snap is None:
        return None
    try:
        start = decode_state(snap.payload)
        if start.seq != snap.seq:
            raise InvalidFieldError("seq", start.seq, f"{snap.seq}, the seq the snapshot file is taken at")
        check_state(start, registry)
    except Exception as exc:  # noqa: BLE001 - any flaw in a snapshot: it is an optimization, the journal decides
        why = "it nests too deeply" if isinstance(exc, RecursionError) else f"{type(exc).__name__}: {exc}"
        _log.warning("snapshot %s cannot be used by this shipslog (%s); replaying the whole journal", snap.path, why)
        return None
    if skip_unknown:
        unknown = sorted(name for name in start.op_counts if name not in registry.types)
        if unknown:
            _log.info(
                "snapshot %s counts operations of types that are not registered here (%s); "
                "replaying the whole journal to count their events",
                snap.path,
                ", ".join(unknown),
            )
            return None
    return start


def _check_journal_reaches(journal_dir: str, snap: Snapshot) -> None:
    """Raise :class:`CorruptJournalError` unless the journal holds record ``snap.seq`` (reads from its position)."""
    reader = JournalReader(journal_dir)
    for batch in reader.batches(snap.seq, snap.seq, start=snap.position):
        if batch:
            return
    last = last_record_seq(journal_dir)
    where = reader.end.path if reader.end is not None else journal_dir
    offset = reader.end.offset if reader.end is not None else None
    raise CorruptJournalError(
        where, offset,
        f"snapshot {snap.path} is at seq {snap.seq} but the journal ends at seq {last}: acknowledged records are missing",
    )


def _segment_holding(journal_dir: str, seq: int) -> str:
    """The segment file that holds record ``seq`` (the last one whose first seq is at or before it)."""
    found = journal_dir
    for first, path in list_segments(journal_dir):
        if first > seq:
            break
        found = path
    return found
