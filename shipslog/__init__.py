"""shipslog: a crash-safe lifecycle engine for machine-learning training hosts.

Every lifecycle change of a host is appended to an fsynced journal before and
after the file effects it describes; on start-up the journal is replayed and
cut-off operations are finished or rolled back.  ``import shipslog`` never
imports torch.
"""

from shipslog.journal import (
    CorruptJournalError,
    CorruptSnapshotError,
    InsufficientSpaceError,
    Journal,
    JournalBrokenError,
    JournalClosedError,
    JournalError,
    JournalLockedError,
    JournalReader,
    JournalWriteError,
    Record,
    ShipslogError,
    UnsupportedFormatError,
)

__version__ = "0.1.0"

__all__ = [
    "CorruptJournalError",
    "CorruptSnapshotError",
    "InsufficientSpaceError",
    "Journal",
    "JournalBrokenError",
    "JournalClosedError",
    "JournalError",
    "JournalLockedError",
    "JournalReader",
    "JournalWriteError",
    "Record",
    "ShipslogError",
    "UnsupportedFormatError",
    "__version__",
]
