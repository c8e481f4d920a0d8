"""One writer per root: an exclusive lock on ``ROOT/LOCK``, across processes and within one.

The lock is an ``flock`` taken through filelock, never waited for: a second
opener fails at once with :class:`JournalLockedError`.  The holder writes its
pid, host and start time into the file so the error can name it; that note is
best-effort (written through the root's :class:`FileSystem`, and on a full
disk or any other write failure the lock is held without it).  The lock is
released when the holder closes it or its process dies (the kernel drops the
flock with the file descriptor), so a crashed writer never leaves a stale lock.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket

import filelock

from ._errors import JournalLockedError
from ._fs import OS_FS, FileSystem, open_regular

__all__ = ["LOCK_NAME", "RootLock", "read_lock_holder"]

LOCK_NAME = "LOCK"

_log = logging.getLogger("shipslog.journal")


_HOLDER_BYTES = 4096
"""The most of the LOCK file read back: the holder writes one short line."""


def read_lock_holder(root: str) -> str | None:
    """What the current holder of ``root``'s lock wrote about itself, if anything (at most a few KiB, a regular file only)."""
    try:
        fd = open_regular(os.path.join(root, LOCK_NAME))
    except OSError:
        return None
    with open(fd, "rb", closefd=True) as f:
        text = f.read(_HOLDER_BYTES).decode("utf-8", errors="replace").strip()
    return text or None


class RootLock:
    """The exclusive writer lock of one root; ``fs`` writes the holder's note (the lock itself is filelock's)."""

    def __init__(self, root: str, *, fs: FileSystem = OS_FS) -> None:
        self.root = root
        self.path = os.path.join(root, LOCK_NAME)
        self._fs = fs
        self._lock = filelock.FileLock(self.path, timeout=0, thread_local=False)

    def _note(self, info: bytes) -> None:
        """Replace the holder's note with ``info`` (empty: none); best-effort, a failure is logged."""
        try:
            fd = self._fs.open(self.path, os.O_WRONLY)
            try:
                self._fs.truncate(fd, 0)
                if info:
                    self._fs.write_all(fd, info, 0)
            finally:
                self._fs.close(fd)
        except OSError as exc:
            _log.warning("could not write the holder's note into %s (%s); the lock is held without it", self.path, exc)

    def acquire(self) -> None:
        """Take the lock now or raise :class:`JournalLockedError` naming the holder."""
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise JournalLockedError(self.root, read_lock_holder(self.root)) from None
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        try:
            self._note(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
        except BaseException:
            self._lock.release(force=True)  # the caller sees the error and never releases it: do not keep the root locked
            raise

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return bool(self._lock.is_locked)

    def release(self) -> None:
        """Give the lock up; the file stays (removing it would break mutual exclusion).

        The holder's note is cleared first, so a reader does not take the root
        for held by a process that let it go; clearing is best-effort (a
        failure is logged) and the lock is released whatever happens.
        """
        if self._lock.is_locked:
            try:
                self._note(b"")
            finally:
                self._lock.release(force=True)
