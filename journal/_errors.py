"""The error hierarchy shared by every layer of shipslog.

Every error raised on purpose by shipslog derives from :class:`ShipslogError`
and also from the builtin exception it most resembles, so callers can catch
either.  Messages state what was expected, what was found, where (path,
offset, seq) and what to do next.

Closed and broken are kept apart: :class:`JournalClosedError` means the caller
closed the journal and kept using it (a bug in the caller);
:class:`JournalBrokenError` means the journal hit an I/O failure it cannot
safely retry, and only re-opening it from disk clears that.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "CorruptJournalError",
    "CorruptRecordError",
    "CorruptSnapshotError",
    "InsufficientSpaceError",
    "JournalBrokenError",
    "JournalClosedError",
    "JournalError",
    "JournalLockedError",
    "JournalWriteError",
    "PathEscapeError",
    "ShipslogError",
    "UnsupportedFormatError",
    "short_repr",
]


def short_repr(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters (then ``...``), so no message repeats a huge value read from disk."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


class ShipslogError(Exception):
    """The root of every error shipslog raises on purpose.

    Every subclass pickles and unpickles to an equal error (same message,
    same attributes) whatever its constructor takes, so an error crosses a
    process boundary intact (a rank's failure gathered by the coordinator,
    a worker's reported to its supervisor).
    """

    def __reduce__(self) -> tuple[object, ...]:
        slots = {name: getattr(self, name) for name in _OS_ERROR_SLOTS} if isinstance(self, OSError) else {}
        slots = {name: value for name, value in slots.items() if value is not None}  # None would read as "set"
        return (_restore_error, (type(self), self.args, dict(self.__dict__), slots))


_OS_ERROR_SLOTS = ("errno", "strerror", "filename", "filename2")
"""What an ``OSError`` keeps outside ``args`` and ``__dict__``."""


def _restore_error(
    cls: type[ShipslogError], args: tuple[object, ...], state: dict[str, object], slots: dict[str, object]
) -> ShipslogError:
    """The error :meth:`ShipslogError.__reduce__` describes, rebuilt without calling its constructor."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    for name, value in slots.items():
        setattr(exc, name, value)
    exc.__dict__.update(state)
    return exc


class JournalError(ShipslogError):
    """Something is wrong with a journal: its files, its state or its use."""


class CorruptJournalError(JournalError, ValueError):
    """A journal holds bytes that are not a valid record where one must be.

    Raised for damage that is *not* a torn tail: a bad frame followed by more
    data, a segment missing between two others, a segment without a valid
    header.  Nothing at or after ``offset`` is ever served.
    """

    def __init__(self, path: str | os.PathLike[str], offset: int | None, reason: str, *, hint: str = "") -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        advice = hint or (
            "the journal is damaged before its end, so records after this point cannot be trusted; "
            "keep a copy of the root, inspect it with 'shipslog verify', then restore the segment "
            "from a backup, or keep what verifies with 'shipslog recover --salvage ROOT'"
        )
        super().__init__(f"corrupt journal at {self.where}: {reason}; {advice}")

    @property
    def where(self) -> str:
        """The path, and the byte offset when one is known."""
        return self.path if self.offset is None else f"{self.path} offset {self.offset}"


class CorruptRecordError(CorruptJournalError):
    """A record whose frame verified says something its operation cannot: a field out of bounds.

    A name that is not a plain name, a path that is not the one its operation
    owns (outside the root, or another operation's folder), a value nested too
    deep.  Raised when the record is replayed, before anything acts on it, with
    the record's ``seq``, its event ``kind``, the ``field``, the ``value``
    found and what was ``expected``.  Nothing is changed.
    """

    def __init__(self, path: str | os.PathLike[str], seq: int, kind: str, field: str, value: object, expected: str) -> None:
        self.seq = seq
        self.kind = kind
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(
            path, None,
            f"record seq {seq} ({kind}): field {field!r} is {short_repr(value)}, expected {expected}",
            hint="shipslog wrote no such record, so the journal was changed by something else; nothing was acted on. "
            f"Keep a copy of the root and inspect the record with 'shipslog log ROOT --since {seq} --limit 1'",
        )


class PathEscapeError(ShipslogError, PermissionError):
    """A file effect was refused because its path leads outside the root (``..``, or a symbolic link on the way).

    Raised before anything is touched.  shipslog builds every path from
    checked names, so this means a folder inside the root was replaced by a
    link, or a bug; nothing outside the root is ever changed.
    """

    def __init__(self, root: str, path: str, what: str, reason: str) -> None:
        self.root = root
        self.path = path
        super().__init__(
            errno.EACCES,
            f"refused to {what} {path}: {reason}, and shipslog changes nothing outside the root {root}; "
            "replace any symbolic link inside the root with a real folder and try again",
        )

    def __str__(self) -> str:
        return str(self.strerror)


class UnsupportedFormatError(ShipslogError, ValueError):
    """A file was written in a format version this shipslog does not read.

    It never guesses: the message names the version found and the versions this
    build supports.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, found: int, supported: int) -> None:
        self.path = os.fspath(path)
        self.found = found
        self.supported = supported
        super().__init__(
            f"{self.path}: {what} format version {found} is not supported by this shipslog "
            f"(it reads version {supported}); use a shipslog release that writes version {found}"
        )


class CorruptSnapshotError(JournalError, ValueError):
    """A snapshot file failed its checksum or does not parse."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"snapshot {self.path} is not usable: {reason}")


class JournalClosedError(JournalError, ValueError):
    """The journal (or engine) was closed by its owner and then used again.

    Like an operation on a closed file, this is a mistake in the calling code;
    nothing on disk is wrong.
    """


class JournalBrokenError(JournalError, OSError):
    """An I/O failure left the journal in a state it cannot safely continue from.

    A failed fsync is never retried (the kernel may have dropped the dirty pages
    and a retry would report success for data that is gone).  Every later call
    raises this error; re-open the root from disk to continue.  The original
    failure is chained as ``__cause__``.
    """


class JournalWriteError(JournalError, OSError):
    """A write to the journal failed before it became durable.

    The partial frame was cut back, every record acknowledged earlier is intact,
    and the records of the failed append were not acknowledged.
    """


class InsufficientSpaceError(ShipslogError, OSError):
    """The disk does not have the space an operation needs.

    Raised up front by preflight checks (``needed`` vs ``free``) and when a
    write fails with ``ENOSPC``.  Nothing partial is left behind.
    """

    def __init__(self, path: str | os.PathLike[str], needed: int | None, free: int | None, detail: str = "") -> None:
        self.path = os.fspath(path)
        self.needed = needed
        self.free = free
        parts = [f"not enough free space at {self.path}"]
        if needed is not None and free is not None:
            parts.append(f"needed {needed} bytes, {free} bytes free")
        if detail:
            parts.append(detail)
        parts.append("free some space (for example with 'shipslog gc') and try again")
        super().__init__(errno.ENOSPC, "; ".join(parts))

    def __str__(self) -> str:
        return str(self.strerror)


class JournalLockedError(JournalError, BlockingIOError):
    """The root is held by another journal (another process, or another open here).

    One writer per root: the message names the holder's pid when it can be read.
    """

    def __init__(self, root: str | os.PathLike[str], holder: str | None) -> None:
        self.root = os.fspath(root)
        self.holder = holder
        who = f"held by {holder}" if holder else "held by another opener"
        super().__init__(
            errno.EAGAIN,
            f"{self.root} is {who}; only one writer may open a root at a time. "
            "Close the other engine (or wait for that process to exit); read-only commands "
            "such as 'shipslog status' work while it runs",
        )

    def __str__(self) -> str:
        return str(self.strerror)
