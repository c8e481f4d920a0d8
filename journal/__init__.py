"""shipslog.journal: bytes on disk.

Durable file primitives, the segmented and fsynced journal (framing, group
commit, torn-tail repair, mid-log corruption detection), snapshots, the
writer's root lock, the error hierarchy and the crash-point registry.  Nothing
here knows about the layers above; nothing here imports torch.
"""

from ._crashimage import CrashImage, CrashImageFileSystem
from ._crashpoints import (
    CRASH_AT_ENV,
    CRASH_EXIT_CODE,
    CRASH_MODE_ENV,
    CRASH_TRACE_ENV,
    crash_point,
    register_crash_point,
    registered_crash_points,
    set_crash_hook,
)
from ._crc import CRC32_IMPLEMENTATION, crc32, crc32_combine, crc32_while, parallel_crc32
from ._errors import (
    CorruptJournalError,
    CorruptRecordError,
    CorruptSnapshotError,
    InsufficientSpaceError,
    JournalBrokenError,
    JournalClosedError,
    JournalError,
    JournalLockedError,
    JournalWriteError,
    PathEscapeError,
    ShipslogError,
    UnsupportedFormatError,
    short_repr,
)
from ._format import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAX_FRAME_BYTES,
    MAX_RECORDS_PER_FRAME,
    Record,
    SegmentHeader,
    read_segment_header,
    segment_name,
)
from ._fs import (
    OS_FS,
    DelegatingFileSystem,
    FileSystem,
    PathLike,
    RootedFileSystem,
    is_temp_name,
    open_regular,
    read_limited,
)
from ._history import HistoryCheck, verify_history
from ._journal import (
    DEFAULT_SEGMENT_BYTES,
    JOURNAL_DIR,
    QUARANTINE_DIR,
    SNAPSHOT_DIR,
    Journal,
    OpenReport,
    TailRepair,
)
from ._lock import LOCK_NAME, RootLock, read_lock_holder
from ._reader import JournalReader, Position, TornTail, last_record_seq, list_segments
from ._recording import FsOp, RecordingFileSystem
from ._salvage import JournalCut, JournalPrefix, cut_journal, find_valid_prefix
from ._snapshot import (
    SNAPSHOT_VERSION,
    Snapshot,
    encode_snapshot,
    list_snapshots,
    newest_snapshot,
    read_snapshot,
)

__all__ = [
    "CRASH_AT_ENV",
    "CRASH_EXIT_CODE",
    "CRASH_MODE_ENV",
    "CRASH_TRACE_ENV",
    "CRC32_IMPLEMENTATION",
    "DEFAULT_SEGMENT_BYTES",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "JOURNAL_DIR",
    "LOCK_NAME",
    "MAX_FRAME_BYTES",
    "MAX_RECORDS_PER_FRAME",
    "OS_FS",
    "QUARANTINE_DIR",
    "SNAPSHOT_DIR",
    "SNAPSHOT_VERSION",
    "CorruptJournalError",
    "CorruptRecordError",
    "CorruptSnapshotError",
    "CrashImage",
    "CrashImageFileSystem",
    "DelegatingFileSystem",
    "FileSystem",
    "FsOp",
    "HistoryCheck",
    "InsufficientSpaceError",
    "Journal",
    "JournalBrokenError",
    "JournalClosedError",
    "JournalCut",
    "JournalError",
    "JournalLockedError",
    "JournalPrefix",
    "JournalReader",
    "JournalWriteError",
    "OpenReport",
    "PathEscapeError",
    "PathLike",
    "Position",
    "Record",
    "RecordingFileSystem",
    "RootLock",
    "RootedFileSystem",
    "SegmentHeader",
    "ShipslogError",
    "Snapshot",
    "TailRepair",
    "TornTail",
    "UnsupportedFormatError",
    "crash_point",
    "crc32",
    "crc32_combine",
    "crc32_while",
    "cut_journal",
    "encode_snapshot",
    "find_valid_prefix",
    "is_temp_name",
    "last_record_seq",
    "list_segments",
    "list_snapshots",
    "newest_snapshot",
    "open_regular",
    "parallel_crc32",
    "read_limited",
    "read_lock_holder",
    "read_segment_header",
    "read_snapshot",
    "register_crash_point",
    "registered_crash_points",
    "segment_name",
    "set_crash_hook",
    "short_repr",
    "verify_history",
]
