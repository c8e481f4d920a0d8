"""shipslog.engine: events, operation state machines, the pure reducer and the engine core.

Never imports shipslog.recovery, shipslog.gpu or torch.
"""

from ._errors import (
    ConflictError,
    CutOffOperationsError,
    DataFileError,
    EngineBrokenError,
    EngineClosedError,
    EngineError,
    EngineLockedError,
    IntegrityError,
    InvalidNameError,
    InvalidTransitionError,
    MissingDependencyError,
    NotFoundError,
    UnknownOperationError,
)
from ._manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    FileEntry,
    Manifest,
    checksum_file,
    crc32_file,
    new_manifest,
    read_manifest,
    scan_folder,
    verify_folder,
    write_manifest,
)
from ._names import check_name

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ConflictError",
    "CutOffOperationsError",
    "DataFileError",
    "EngineBrokenError",
    "EngineClosedError",
    "EngineError",
    "EngineLockedError",
    "FileEntry",
    "IntegrityError",
    "InvalidNameError",
    "InvalidTransitionError",
    "Manifest",
    "MissingDependencyError",
    "NotFoundError",
    "UnknownOperationError",
    "check_name",
    "checksum_file",
    "crc32_file",
    "new_manifest",
    "read_manifest",
    "scan_folder",
    "verify_folder",
    "write_manifest",
]
