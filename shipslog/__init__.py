"""shipslog: a crash-safe lifecycle engine for machine-learning training hosts.

Every lifecycle change of a host is appended to an fsynced journal before and
after the file effects it describes; on start-up the journal is replayed and
cut-off operations are finished or rolled back.  ``import shipslog`` never
imports torch.
"""

from shipslog._engine import DEFAULT_SNAPSHOT_EVERY, Engine
from shipslog.engine import (
    ArtifactInfo,
    CheckpointWriter,
    ConflictError,
    CutOffOperationsError,
    DataFileError,
    EngineBrokenError,
    EngineClosedError,
    EngineError,
    EngineLockedError,
    EngineState,
    Event,
    IntegrityError,
    InvalidNameError,
    InvalidTransitionError,
    MissingDependencyError,
    NotFoundError,
    OperationType,
    Recovery,
    RecoveryAction,
    Run,
    Status,
    UnknownOperationError,
    replay,
)
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
from shipslog.engine import Supervisor, WorkerSpec

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SNAPSHOT_EVERY",
    "ArtifactInfo",
    "CheckpointWriter",
    "ConflictError",
    "CorruptJournalError",
    "CorruptSnapshotError",
    "CutOffOperationsError",
    "DataFileError",
    "Engine",
    "EngineBrokenError",
    "EngineClosedError",
    "EngineError",
    "EngineLockedError",
    "EngineState",
    "Event",
    "InsufficientSpaceError",
    "IntegrityError",
    "InvalidNameError",
    "InvalidTransitionError",
    "Journal",
    "JournalBrokenError",
    "JournalClosedError",
    "JournalError",
    "JournalLockedError",
    "JournalReader",
    "JournalWriteError",
    "MissingDependencyError",
    "NotFoundError",
    "OperationType",
    "Record",
    "Recovery",
    "RecoveryAction",
    "Run",
    "ShipslogError",
    "Status",
    "UnknownOperationError",
    "UnsupportedFormatError",
    "replay",
    "__version__",
    "Supervisor",
    "WorkerSpec",
]
