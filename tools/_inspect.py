"""Read-only views of a host root for the command line: never takes the writer's lock, never changes a byte.

Everything here is derived from the journal (replayed with the reducer) and
the files it names; a torn frame at the end of the journal is reported as a
write in progress, not repaired.  A root that cannot be used is refused with
one error naming it: :class:`NotARootError` (missing, not a root),
:class:`UnreadableRootError` (an ``OSError`` while reading it),
:class:`~shipslog.journal.UnsupportedFormatError` (a segment, snapshot or
event schema newer than this build, naming the file and both versions).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import psutil
from shipslog.engine import EngineState, RawEvent, Reducer, Registry, Status, check_root_folders, status_of
from shipslog.journal import (
    JOURNAL_DIR,
    CorruptRecordError,
    JournalReader,
    ShipslogError,
    TornTail,
    UnsupportedFormatError,
    last_record_seq,
    list_segments,
    read_lock_holder,
)

__all__ = [
    "NotARootError",
    "RootView",
    "UnreadableRootError",
    "event_fields",
    "event_kind",
    "live_holder",
    "open_records",
    "open_view",
    "reading",
    "replay_root",
    "require_root",
]


class NotARootError(ShipslogError, FileNotFoundError):
    """The folder is not a shipslog root (no journal), or does not exist."""

    def __init__(self, root: str, reason: str) -> None:
        self.root = root
        super().__init__(f"{root} is not a shipslog root: {reason}; give the folder an Engine was opened on")

    def __str__(self) -> str:
        return str(self.args[0])


class UnreadableRootError(ShipslogError, OSError):
    """Reading a shipslog root failed with an ``OSError`` (permissions, an I/O error): one line naming the file."""

    def __init__(self, root: str, path: str, reason: str, err: int | None = None) -> None:
        self.root = root
        self.path = path
        super().__init__(
            err if err is not None else errno.EACCES,
            f"cannot read the shipslog root {root}: {path}: {reason}; "
            "check the permissions of the root and the health of its disk, then try again (nothing was changed)",
        )

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def reading(root: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while the block reads ``root`` into :class:`UnreadableRootError` (chained).

    Errors shipslog raises on purpose (some are ``OSError`` too) pass through
    unchanged, and so does everything that is not an ``OSError``.
    """
    try:
        yield
    except ShipslogError:
        raise
    except OSError as exc:
        name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
        reason = f"{exc.strerror or exc}{f' ({name})' if name else ''}"
        where = exc.filename if isinstance(exc.filename, str) and exc.filename else root
        raise UnreadableRootError(root, where, reason, exc.errno) from exc


def event_kind(event: Any) -> str:
    """The kind (tag) of a decoded event, registered or raw."""
    if isinstance(event, RawEvent):
        return event.kind
    return str(event.__struct_config__.tag)


def event_fields(event: Any) -> dict[str, Any]:
    """The fields of an event other than ``kind`` and ``op``, as plain data."""
    data = dict(event.data) if isinstance(event, RawEvent) else msgspec.to_builtins(event)
    data.pop("kind", None)
    data.pop("op", None)
    return data


_HOLDER = re.compile(r"pid (\d+) on (\S+)")


def live_holder(root: str) -> str | None:
    """The lock holder's description when that process is alive on this host, else None (no lock is taken)."""
    holder = read_lock_holder(root)
    if not holder:
        return None
    match = _HOLDER.search(holder)
    if match is None:
        return None
    pid, host = int(match.group(1)), match.group(2)
    if host != socket.gethostname() or not psutil.pid_exists(pid):
        return None
    return holder


def _segment_holding(journal_dir: str, seq: int) -> str:
    """The segment file that holds record ``seq`` (the last one whose first seq is at or before it)."""
    found = journal_dir
    for first, path in list_segments(journal_dir):
        if first > seq:
            break
        found = path
    return found


def replay_root(
    root: str, registry: Registry, *, until: int | None = None, skip_unknown: bool = False, stop_at_refused: bool = False
) -> tuple[EngineState, TornTail | None, dict[str, int], CorruptRecordError | None]:
    """The state of ``root`` as of ``until`` (default: the end), the torn tail if any, the unregistered kinds skipped,
    and the record refused, read-only.

    With ``skip_unknown``, events of kinds no registered type declares are
    left out of the state and counted by kind (the third value); without it
    they raise :class:`~shipslog.engine.UnknownOperationError`.  With
    ``stop_at_refused``, a :class:`~shipslog.journal.CorruptRecordError` ends
    the replay there and is returned (the fourth value, the state as of the
    record before it) instead of raised.

    Refuses a root whose journal segment or event schema is newer than this
    build with :class:`UnsupportedFormatError` naming the file and both
    versions (for the event schema: the segment holding the record, and its
    seq).  Snapshots are not read (the journal is replayed whole), so a
    snapshot in a newer format is no obstacle, as for ``Engine.open``, which
    skips it with a warning.  ``until`` past the end raises ``ValueError``.
    """
    journal_dir = os.path.join(root, JOURNAL_DIR)
    reducer = Reducer(registry, skip_unknown=skip_unknown)
    try:
        reader = reducer.replay_journal(journal_dir, until=until)
    except CorruptRecordError as exc:
        if not stop_at_refused:
            raise
        return reducer.state(), None, dict(reducer.skipped), exc
    except UnsupportedFormatError as exc:
        if os.path.isfile(exc.path):
            raise  # a segment header: it names its file already
        seq = reducer.seq + 1  # the reducer stops just before the record it refused
        raise UnsupportedFormatError(_segment_holding(journal_dir, seq), f"record seq {seq}: event schema", exc.found, exc.supported) from exc
    if until is not None and reducer.seq < until:
        raise ValueError(f"--until {until} is past the end of the journal of {root} (last seq {reducer.seq})")
    return reducer.state(), reader.tail, dict(reducer.skipped), None


class RootView:
    """A root's journal replayed read-only: the state, the records (on demand) and a torn tail if any.

    Events of kinds that are not registered (a host's own operation types)
    stay readable: :meth:`records` shows them raw, the state leaves them out,
    and :attr:`unregistered` counts them by kind.  With ``records_only``
    (``log``, ``tail``, ``export``), a record the engine refuses to replay (a
    :class:`~shipslog.journal.CorruptRecordError`: a field its operation does
    not allow) does not stop the view: :attr:`refused` holds the error, the
    state stops before that record, and :meth:`records` shows every record as
    it is.  Damage to the frames, or a journal newer than this build, still
    refuses the root.
    """

    def __init__(self, root: str, registry: Registry, until: int | None, *, records_only: bool = False) -> None:
        self.root = root
        self.registry = registry
        self.journal_dir = os.path.join(root, JOURNAL_DIR)
        self.refused: CorruptRecordError | None = None
        with reading(root):
            self.state, self.torn, self.unregistered, self.refused = replay_root(
                root, registry, until=until, skip_unknown=True, stop_at_refused=records_only
            )
            self.holder = live_holder(root)
            self.last_seq = self.state.seq if self.refused is None else last_record_seq(self.journal_dir)

    def records(self, since: int = 1, until: int | None = None) -> Iterator[Any]:
        """Every record from ``since`` to ``until`` with its event decoded (unknown kinds raw)."""
        reader = JournalReader(self.journal_dir)
        with reading(self.root):
            for batch in reader.batches(since, until, decode=self.registry.decode_frame, decode_chunk=self.registry.decode_frames):
                yield from batch

    def status(self) -> Status:
        """The :class:`Status` of the replayed state."""
        return status_of(self.state)

    def free_bytes(self) -> int:
        """Free bytes on the root's file system."""
        with reading(self.root):
            st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize


def require_root(root: str) -> str:
    """``root`` as an absolute path, once it is a readable shipslog root; creates and changes nothing.

    Raises :class:`NotARootError` when it is missing, not a folder, or has no
    journal with segments, :class:`~shipslog.engine.RootLayoutError` when
    one of its folders is a link (as ``Engine.open`` does), and
    :class:`UnreadableRootError` when its journal cannot be listed by this user.
    """
    root = os.path.abspath(root)
    unchanged = "nothing was created or changed there"
    if not os.path.exists(root):
        raise NotARootError(root, f"it does not exist; {unchanged}")
    if not os.path.isdir(root):
        raise NotARootError(root, f"it is not a folder; {unchanged}")
    journal_dir = os.path.join(root, JOURNAL_DIR)
    if not os.path.isdir(journal_dir):
        raise NotARootError(root, f"it has no {JOURNAL_DIR}/ folder; {unchanged}")
    if not os.access(journal_dir, os.R_OK | os.X_OK):
        raise UnreadableRootError(root, journal_dir, "this user may not list it (it needs read and search permission)")
    with reading(root):
        if not list_segments(journal_dir):
            raise NotARootError(root, f"its {JOURNAL_DIR}/ folder holds no segment files; {unchanged}")
        check_root_folders(root)
    return root


def open_view(root: str, *, until: int | None = None) -> RootView:
    """Replay ``root`` read-only (see :func:`require_root` and :func:`replay_root` for what it refuses)."""
    return RootView(require_root(root), Registry(), until)


def open_records(root: str) -> RootView:
    """``root``'s records read-only; a record the engine refuses to replay is shown, not refused (see :class:`RootView`)."""
    return RootView(require_root(root), Registry(), None, records_only=True)


def format_time(t: float) -> str:
    """A record time as local ISO-8601 with milliseconds."""
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="milliseconds")
