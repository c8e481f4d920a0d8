"""Errors of the engine layer.  All derive from :class:`ShipslogError` and the builtin they resemble.

Each message says what was expected, what was found, where (path, seq,
operation) and what to do next.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from shipslog.journal import (
    JournalBrokenError,
    JournalClosedError,
    JournalLockedError,
    ShipslogError,
    short_repr,
)

__all__ = [
    "ConflictError",
    "CutOffOperationsError",
    "DataFileError",
    "EngineBrokenError",
    "EngineClosedError",
    "EngineError",
    "EngineLockedError",
    "ForeignFolderError",
    "IntegrityError",
    "InvalidFieldError",
    "InvalidNameError",
    "InvalidTransitionError",
    "MissingDependencyError",
    "NotFoundError",
    "RootLayoutError",
    "SalvageInterruptedError",
    "UnknownOperationError",
]


class EngineError(ShipslogError):
    """Something is wrong with the engine's state, its files or their use."""


class EngineClosedError(JournalClosedError, EngineError):
    """The engine was closed and then used again (a mistake in the calling code); also an :class:`EngineError`."""


class EngineBrokenError(JournalBrokenError, EngineError):
    """An fsync (or another effect that cannot be retried) failed; re-open the root to continue.  Also an :class:`EngineError`."""


class EngineLockedError(JournalLockedError, EngineError):
    """Another engine (in this or another process) holds the root; also an :class:`EngineError`."""


class RootLayoutError(EngineError, NotADirectoryError):
    """One of the root's own folders is a symbolic link or not a folder; the root is refused before anything is touched.

    Every file of a root stays inside it, so ``checkpoints/``, ``journal/`` and
    the other folders the engine owns must be real folders.  To keep a root on
    another disk, link (or mount) the whole root and open its real path.
    """

    def __init__(self, root: str, folder: str, found: str, *, folder_kind: str = "folder") -> None:
        self.root = root
        self.folder = folder
        what = f"{folder}/ to be a real folder" if folder_kind == "folder" else f"{folder} to be a regular file"
        super().__init__(
            f"{root}: expected {what}, found {found}; shipslog keeps every file of a root inside it "
            f"and never follows a link out of it. Replace it with a real {folder_kind} {os.path.join(root, folder)} "
            "(to keep a root on another disk, link or mount the whole root and open it there); nothing was changed"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class ForeignFolderError(EngineError, FileExistsError):
    """``Engine.open`` was given a folder that is not a shipslog root but already holds files in folders the engine owns.

    Opening it would treat those files as unaccounted for and move them to
    ``quarantine/``; the folder is refused instead, and nothing is changed.
    """

    def __init__(self, root: str, entries: Sequence[str]) -> None:
        self.root = root
        self.entries = tuple(entries)
        shown = ", ".join(self.entries[:5]) + (f" and {len(self.entries) - 5} more" if len(self.entries) > 5 else "")
        super().__init__(
            f"{root} is not a shipslog root (its journal/ holds no segment) but already holds {shown}; "
            "shipslog would have to quarantine them. Open an empty folder (or a new one) instead, and bring existing "
            "checkpoints, models and adapters in with engine.adopt_checkpoint(path), adopt_model or adopt_adapter; nothing was changed"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidNameError(EngineError, ValueError):
    """A user-given name (checkpoint, model, adapter, pointer) is not a plain file name.

    Raised before anything on disk is touched.
    """

    def __init__(self, what: str, name: object, reason: str) -> None:
        self.what = what
        self.name = name
        self.reason = reason
        super().__init__(f"invalid {what} name {name!r}: {reason}; choose another name")


class InvalidFieldError(EngineError, ValueError):
    """An event field holds a value its operation does not allow (checked before it is journaled, and at replay).

    ``field`` names it, ``value`` is what was found, ``expected`` says what is
    allowed.  At replay the reducer turns it into
    :class:`~shipslog.journal.CorruptRecordError` with the record's seq.
    """

    def __init__(self, field: str, value: object, expected: str) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"field {field!r} is {short_repr(value)}, expected {expected}")


class InvalidTransitionError(EngineError, ValueError):
    """A journal record moves an operation in a way its transition table does not allow.

    Names the record's seq, the operation, the state it was in and the event.
    """

    def __init__(self, seq: int, op: str, op_type: str, state: str | None, kind: str, detail: str = "") -> None:
        self.seq = seq
        self.op = op
        self.op_type = op_type
        self.state = state
        self.kind = kind
        where = f"in state {state!r}" if state is not None else "which has not begun"
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"record seq {seq}: event {kind!r} is not allowed for {op_type} operation {op!r} {where}{extra}; "
            "the journal was written by a different operation table or is damaged; run 'shipslog verify'"
        )


class UnknownOperationError(EngineError, LookupError):
    """The journal holds events of an operation type that is not registered."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = tuple(sorted(set(kinds)))
        super().__init__(
            f"the journal holds events of kinds that are not registered: {', '.join(self.kinds)}; "
            "pass their operation types to Engine.open(root, operations=[...])"
        )


class CutOffOperationsError(EngineError, RuntimeError):
    """Operations were cut off by a crash (or entries are unaccounted for) and the engine will not settle them itself.

    Raised by ``Engine.open`` for operation types that declare no automatic
    recovery for their state, and for any recovery work when opened with
    ``recover=False``.  Nothing was changed.
    """

    def __init__(self, root: str, ops: Sequence[tuple[str, str, str]], paths: Sequence[str] = ()) -> None:
        self.root = root
        self.ops = tuple(ops)
        self.paths = tuple(paths)
        parts = [f"{op_type} {op!r} in state {state!r}" for op, op_type, state in self.ops]
        parts += [f"unaccounted {path}" for path in self.paths]
        super().__init__(
            f"{root} has {len(parts)} thing(s) left by a crash that need recovery: {'; '.join(parts)}; "
            f"run 'shipslog recover {root}' to see the plan and carry it out (operations of your own types "
            "need their recovery declared with close_with or an executor, or settling by hand)"
        )


class SalvageInterruptedError(EngineError, RuntimeError):
    """A salvage of the root (``shipslog recover --salvage``) was interrupted: its journal may be cut back and not
    yet reconciled with the folders on disk, so the root is not opened (normal recovery could quarantine folders
    the salvage keeps).  Nothing was changed."""

    def __init__(self, root: str, marker: str) -> None:
        self.root = root
        self.marker = marker
        super().__init__(
            f"a salvage of {root} was interrupted ({marker} is present): run 'shipslog recover --salvage {root}' "
            "again to finish it before opening the root"
        )


class ConflictError(EngineError, RuntimeError):
    """An operation was refused up front because another one holds what it needs."""

    def __init__(self, what: str, holder: str) -> None:
        self.what = what
        self.holder = holder
        super().__init__(f"{what} is refused: {holder} holds it; wait for it to finish or choose another name")


class NotFoundError(EngineError, LookupError):
    """A named checkpoint, model, pointer or operation does not exist (or is not committed)."""

    def __init__(self, what: str, name: str, detail: str = "") -> None:
        self.what = what
        self.name = name
        extra = f"; {detail}" if detail else ""
        super().__init__(f"no committed {what} named {name!r}{extra}")

    def __str__(self) -> str:
        return str(self.args[0])


class IntegrityError(EngineError, ValueError):
    """A file does not match what its manifest says (missing, wrong size, wrong checksum, unlisted).

    Never a silent success: nothing from a folder that raised this is loaded.
    """

    def __init__(self, path: str | os.PathLike[str], expected: str, found: str, hint: str = "") -> None:
        self.path = os.fspath(path)
        self.expected = expected
        self.found = found
        advice = hint or "do not load it; restore it from a good copy or remove it with 'shipslog gc'"
        super().__init__(f"integrity check failed for {self.path}: expected {expected}, found {found}; {advice}")


class DataFileError(EngineError, ValueError):
    """A training data file is missing, empty, or has a bad line (named by number)."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"data file {where}: {reason}; fix the file and start the run again (nothing was trained)")


class MissingDependencyError(ShipslogError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(f"{module} is required for this; install it with: pip install 'shipslog[{extra}]'")

