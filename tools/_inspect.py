"""Read-only views of a host root for the command line: never takes the writer's lock, never changes a byte.

Everything here is derived from the journal (replayed with the reducer) and
the files it names; a torn frame at the end of the journal is reported as a
write in progress, not repaired.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import psutil

from shipslog.engine import EngineState, RawEvent, Registry, Status
from shipslog.engine._status import status_of
from shipslog.engine._reducer import Reducer
from shipslog.journal import JOURNAL_DIR, JournalReader, ShipslogError, list_segments, read_lock_holder

__all__ = [
    "NotARootError",
    "RootView",
    "event_fields",
    "event_kind",
    "live_holder",
    "open_view",
]


class NotARootError(ShipslogError, FileNotFoundError):
    """The folder is not a shipslog root (no journal), or does not exist."""

    def __init__(self, root: str, reason: str) -> None:
        self.root = root
        super().__init__(f"{root} is not a shipslog root: {reason}; give the folder an Engine was opened on")

    def __str__(self) -> str:
        return str(self.args[0])


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


class RootView:
    """A root's journal replayed read-only: the state, the records (on demand) and a torn tail if any."""

    def __init__(self, root: str, registry: Registry, until: int | None) -> None:
        self.root = root
        self.registry = registry
        self.journal_dir = os.path.join(root, JOURNAL_DIR)
        reducer = Reducer(registry)
        reader = reducer.replay_journal(self.journal_dir, until=until)
        if until is not None and reducer.seq < until:
            raise ValueError(f"--until {until} is past the end of the journal of {root} (last seq {reducer.seq})")
        self.state: EngineState = reducer.state()
        self.torn = reader.tail
        self.holder = live_holder(root)

    def records(self, since: int = 1, until: int | None = None) -> Iterator[Any]:
        """Every record from ``since`` to ``until`` with its event decoded (unknown kinds raw)."""
        reader = JournalReader(self.journal_dir)
        for batch in reader.batches(since, until, decode=self.registry.decode_frame, decode_chunk=self.registry.decode_frames):
            yield from batch

    def status(self) -> Status:
        """The :class:`Status` of the replayed state."""
        return status_of(self.state)

    def free_bytes(self) -> int:
        """Free bytes on the root's file system."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize


def open_view(root: str, *, until: int | None = None) -> RootView:
    """Replay ``root`` read-only; :class:`NotARootError` when it has no journal."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise NotARootError(root, "it does not exist or is not a folder")
    journal_dir = os.path.join(root, JOURNAL_DIR)
    if not os.path.isdir(journal_dir) or not list_segments(journal_dir):
        raise NotARootError(root, "it has no journal/ folder with segments")
    if not os.access(journal_dir, os.R_OK | os.X_OK):
        raise NotARootError(root, "its journal is not readable by this user")
    return RootView(root, Registry(), until)


def format_time(t: float) -> str:
    """A record time as local ISO-8601 with milliseconds."""
    return datetime.datetime.fromtimestamp(t).isoformat(timespec="milliseconds")
