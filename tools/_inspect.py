"""Read-only views of a host root for the command line: never takes the writer's lock, never changes a byte.

Everything here is derived from the journal and the files it names.  The
state comes from :func:`shipslog.engine.load_state`, as for ``Engine.open``:
the newest usable snapshot, then only the records after it (a snapshot with
any flaw is ignored with a warning and the journal replayed whole; ``verify``
replays it whole on purpose).  A torn frame at the end of the journal is
reported as a write in progress, not repaired.  A root that cannot be used is
refused with one error naming it: :class:`NotARootError` (missing, not a
root), :class:`UnreadableRootError` (an ``OSError`` while reading it),
:class:`~shipslog.journal.UnsupportedFormatError` (a segment or event schema
newer than this build, naming the file and both versions; a snapshot in a
newer format is skipped, as ``Engine.open`` does).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import psutil

from shipslog.engine import (
    EngineState,
    LoadedState,
    RawEvent,
    Registry,
    Status,
    check_root_folders,
    load_state,
    status_of,
)
from shipslog.journal import (
    JOURNAL_DIR,
    CorruptJournalError,
    CorruptRecordError,
    JournalReader,
    ShipslogError,
    TornTail,
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


_LIVE_RETRIES = 5
"""How many times a read-only view reads a live root's journal again before it reports damage."""
_LIVE_RETRY_S = 0.05


def replay_root(
    root: str,
    registry: Registry,
    *,
    until: int | None = None,
    skip_unknown: bool = False,
    stop_at_refused: bool = False,
    snapshots: bool = True,
) -> LoadedState:
    """The state of ``root`` as of ``until`` (default: the end), read-only: the newest usable snapshot, then the records after it.

    See :func:`shipslog.engine.load_state` for what it returns and refuses:
    with ``skip_unknown``, events of kinds no registered type declares are
    left out of the state and counted by kind; with ``stop_at_refused``, a
    :class:`~shipslog.journal.CorruptRecordError` ends the replay there and
    is returned; a journal segment or event schema newer than this build is
    refused with :class:`~shipslog.journal.UnsupportedFormatError` naming the
    file and both versions (a snapshot in a newer format is skipped with a
    warning, as ``Engine.open`` does).  ``snapshots=False`` replays from the
    first record.  ``until`` past the end raises ``ValueError``.
    """
    for attempt in range(_LIVE_RETRIES + 1):
        try:
            loaded = load_state(root, registry, until=until, skip_unknown=skip_unknown, stop_at_refused=stop_at_refused, snapshots=snapshots)
            break
        except CorruptJournalError:
            # Damage seen while a live writer holds the root may be a frame it is writing at that moment (the
            # reader takes no lock): read again before judging; damage that stays is reported.
            if attempt == _LIVE_RETRIES or live_holder(root) is None:
                raise
            time.sleep(_LIVE_RETRY_S)
    if until is not None and loaded.refused is None and loaded.state.seq < until:
        raise ValueError(f"--until {until} is past the end of the journal of {root} (last seq {loaded.state.seq})")
    return loaded


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
    refuses the root.  The state starts from the newest usable snapshot
    (:attr:`snapshot_seq`) and replays only the :attr:`replayed` records
    after it; ``snapshots=False`` replays from the first record.
    """

    def __init__(
        self, root: str, registry: Registry, until: int | None, *, records_only: bool = False, snapshots: bool = True
    ) -> None:
        self.root = root
        self.registry = registry
        self.journal_dir = os.path.join(root, JOURNAL_DIR)
        with reading(root):
            loaded = replay_root(
                root, registry, until=until, skip_unknown=True, stop_at_refused=records_only, snapshots=snapshots
            )
            self.state: EngineState = loaded.state
            self.torn: TornTail | None = loaded.torn
            self.unregistered: dict[str, int] = loaded.skipped
            self.refused: CorruptRecordError | None = loaded.refused
            self.replayed: int = loaded.replayed
            """Records read and applied to build :attr:`state` (those after the snapshot, when one was used)."""
            self.snapshot_seq: int | None = loaded.snapshot.seq if loaded.snapshot is not None else None
            """The seq of the snapshot the state started from; None when the journal was replayed from its first record."""
            self.holder = live_holder(root)
            self.last_seq = self.state.seq if self.refused is None else last_record_seq(self.journal_dir)

    def records(self, since: int = 1, until: int | None = None) -> Iterator[Any]:
        """Every record from ``since`` to ``until`` with its event decoded (unknown kinds raw).

        On a root a live writer holds, damage met after the records the view
        replayed may be a frame being written: the records are read again
        (from the first one not yet served) before the damage is reported.
        """
        served = since - 1
        for attempt in range(_LIVE_RETRIES + 1):
            reader = JournalReader(self.journal_dir)
            try:
                with reading(self.root):
                    for batch in reader.batches(served + 1, until, decode=self.registry.decode_frame, decode_chunk=self.registry.decode_frames):
                        for rec in batch:
                            served = rec.seq
                            yield rec
                return
            except CorruptJournalError:
                if attempt == _LIVE_RETRIES or live_holder(self.root) is None or (until is not None and served >= until):
                    raise
                time.sleep(_LIVE_RETRY_S)

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
    if not os.access(root, os.R_OK | os.X_OK):  # else a root this user may not enter would look like one without a journal
        raise UnreadableRootError(root, root, "this user may not list or enter it (it needs read and search permission)")
    if not os.path.isdir(journal_dir):
        raise NotARootError(root, f"it has no {JOURNAL_DIR}/ folder; {unchanged}")
    if not os.access(journal_dir, os.R_OK | os.X_OK):
        raise UnreadableRootError(root, journal_dir, "this user may not list it (it needs read and search permission)")
    with reading(root):
        if not list_segments(journal_dir):
            raise NotARootError(root, f"its {JOURNAL_DIR}/ folder holds no segment files; {unchanged}")
        check_root_folders(root)
    return root


def open_view(root: str, *, until: int | None = None, registry: Registry | None = None, snapshots: bool = True) -> RootView:
    """Replay ``root`` read-only (see :func:`require_root` and :func:`replay_root` for what it refuses).

    ``registry`` (default: the built-in operation types) decides which events
    are typed; ``snapshots=False`` replays from the first record.
    """
    return RootView(require_root(root), registry if registry is not None else Registry(), until, snapshots=snapshots)


def open_records(root: str, *, registry: Registry | None = None) -> RootView:
    """``root``'s records read-only; a record the engine refuses to replay is shown, not refused (see :class:`RootView`)."""
    return RootView(require_root(root), registry if registry is not None else Registry(), None, records_only=True)


def format_time(t: float) -> str:
    """A record time as local ISO-8601 with milliseconds."""
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="milliseconds")  # noqa: DTZ006 - local wall-clock time for a reader, shown without an offset
