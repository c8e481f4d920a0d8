"""One writer per root: an exclusive lock on ``ROOT/LOCK``, across processes and within one.

The lock is an ``flock`` taken through filelock, never waited for: a second
opener fails at once with :class:`JournalLockedError`.  The holder writes its
pid, host and start time into the file so the error can name it.  The lock is
released when the holder closes it or its process dies (the kernel drops the
flock with the file descriptor), so a crashed writer never leaves a stale lock.
"""

from __future__ import annotations

import datetime
import os
import socket

import filelock

from ._errors import JournalLockedError
from ._fs import open_regular

__all__ = ["LOCK_NAME", "RootLock", "read_lock_holder"]

LOCK_NAME = "LOCK"


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
    """The exclusive writer lock of one root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.path = os.path.join(root, LOCK_NAME)
        self._lock = filelock.FileLock(self.path, timeout=0, thread_local=False)

    def acquire(self) -> None:
        """Take the lock now or raise :class:`JournalLockedError` naming the holder."""
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise JournalLockedError(self.root, read_lock_holder(self.root)) from None
        since = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        info = f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, info, 0)
            finally:
                os.close(fd)
        except BaseException:
            self._lock.release(force=True)  # the caller sees the error and never releases it: do not keep the root locked
            raise

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return bool(self._lock.is_locked)

    def release(self) -> None:
        """Give the lock up; the file stays (removing it would break mutual exclusion)."""
        if self._lock.is_locked:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)
            self._lock.release(force=True)
