"""Snapshot files: the state of the layer above up to a seq, checksummed.

A snapshot lets an opener skip the history before it.  The file is::

    magic "SHIPSNAP" | u16 version | u16 flags | u64 seq
    | position: u64 segment | u64 offset | u32 prev_crc | u64 first_seq | u32 segment_crc
    | u64 payload_len | payload | u32 crc (over everything before it)

``segment_crc`` (present when bit 0 of ``flags`` is set) is the CRC-32 of the
position's segment before ``offset``: with it an opener verifies those bytes
in one crc call (:func:`~shipslog.journal.verify_history`).  Version-1 files
(no ``segment_crc``) are still read.

The position is where a frame at or before the one holding record ``seq``
starts (usually that very frame), so an opener reads only the frames from
there on and skips the records up to ``seq``.  Snapshots are written atomically; one
that fails its checksum, or has an unknown version, is skipped with a warning
and the next older one is used.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from ._errors import CorruptJournalError, CorruptSnapshotError, UnsupportedFormatError
from ._format import decode_header, mapped_segment, scan_frames, segment_name
from ._fs import FileSystem, read_limited
from ._reader import Position, decode_payload, list_segments

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_VERSION",
    "Snapshot",
    "check_snapshot_position",
    "encode_snapshot",
    "list_snapshots",
    "newest_snapshot",
    "read_snapshot",
    "snapshot_name",
]

_MAGIC = b"SHIPSNAP"
SNAPSHOT_VERSION = 2
_HEAD_V1 = struct.Struct("<8sHHQQQIQQ")
_HEAD = struct.Struct("<8sHHQQQIQIQ")
_HAS_SEGMENT_CRC = 1
_CRC = struct.Struct("<I")
_SUFFIX = ".snap"
MAX_SNAPSHOT_BYTES = 1 << 30
"""The largest snapshot file read; a longer one is not a snapshot this shipslog wrote for a host it can hold in memory."""


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot: the layer above's ``payload`` as of record ``seq``.

    ``position`` is where to start reading the journal to get the records after it.
    """

    seq: int
    payload: bytes
    position: Position
    path: str


def snapshot_name(seq: int) -> str:
    """The file name of the snapshot taken at ``seq``."""
    return f"{seq:020d}{_SUFFIX}"


def list_snapshots(folder: str) -> list[tuple[int, str]]:
    """The snapshot files in ``folder`` as ``(seq, path)``, newest first (by seq, never by name or mtime)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        stem = name[: -len(_SUFFIX)]
        if name.endswith(_SUFFIX) and stem.isdigit() and stem.isascii():
            found.append((int(stem), os.path.join(folder, name)))
    found.sort(reverse=True)
    return found


def encode_snapshot(seq: int, position: Position, payload: bytes) -> bytes:
    """The bytes of a snapshot file."""
    flags = 0 if position.segment_crc is None else _HAS_SEGMENT_CRC
    head = _HEAD.pack(
        _MAGIC, SNAPSHOT_VERSION, flags, seq,
        position.segment, position.offset, position.prev_crc, position.first_seq, position.segment_crc or 0, len(payload),
    )
    body = head + payload
    return body + _CRC.pack(zlib.crc32(body))


def read_snapshot(path: str) -> Snapshot:
    """Read and verify one snapshot file.

    Raises :class:`UnsupportedFormatError` for an unknown version and
    :class:`CorruptSnapshotError` for anything else that is wrong.
    """
    data = read_limited(path, MAX_SNAPSHOT_BYTES)
    if data is None:
        raise CorruptSnapshotError(path, f"it is larger than the {MAX_SNAPSHOT_BYTES}-byte limit on snapshots")
    if len(data) < _HEAD_V1.size + _CRC.size:
        raise CorruptSnapshotError(path, f"{len(data)} bytes is shorter than a snapshot header")
    magic, version, flags = struct.unpack_from("<8sHH", data, 0)
    if magic != _MAGIC:
        raise CorruptSnapshotError(path, f"expected magic {_MAGIC!r}, found {bytes(magic)!r}")
    segment_crc: int | None = None
    if version == 1:
        head = _HEAD_V1
        _m, _v, _f, seq, segment, offset, prev_crc, first_seq, length = head.unpack_from(data, 0)
    elif version == SNAPSHOT_VERSION and len(data) >= _HEAD.size + _CRC.size:
        head = _HEAD
        _m, _v, _f, seq, segment, offset, prev_crc, first_seq, crc_field, length = head.unpack_from(data, 0)
        if flags & _HAS_SEGMENT_CRC:
            segment_crc = crc_field
    elif version == SNAPSHOT_VERSION:
        raise CorruptSnapshotError(path, f"{len(data)} bytes is shorter than a version {version} snapshot header")
    else:
        raise UnsupportedFormatError(path, "snapshot", version, SNAPSHOT_VERSION)
    if len(data) != head.size + length + _CRC.size:
        raise CorruptSnapshotError(path, f"header says {length} payload bytes, the file holds {len(data) - head.size - _CRC.size}")
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    actual = zlib.crc32(memoryview(data)[: len(data) - _CRC.size])
    if stored != actual:
        raise CorruptSnapshotError(path, f"checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")
    expected_name = snapshot_name(seq)
    if os.path.basename(path) != expected_name:
        raise CorruptSnapshotError(path, f"it holds seq {seq}, so it should be named {expected_name}")
    payload = data[head.size: head.size + length]
    return Snapshot(seq, payload, Position(segment, offset, prev_crc, first_seq, segment_crc), path)


def check_snapshot_position(journal_dir: str, snap: Snapshot, segments: Collection[int]) -> None:
    """Raise :class:`CorruptJournalError` unless ``snap``'s position is a valid frame of ``journal_dir`` at or before its seq.

    ``segments`` are the first seqs of the journal's segments.  Reads one frame
    and changes nothing.
    """
    pos = snap.position
    if pos.segment not in segments:
        raise CorruptJournalError(snap.path, 0, f"its journal position names segment {pos.segment}, which does not exist")
    path = os.path.join(journal_dir, segment_name(pos.segment))
    with mapped_segment(path) as data:
        decode_header(path, data)
        frames = scan_frames(data, pos.offset, pos.prev_crc, 1)[0]
    if not frames:
        raise CorruptJournalError(path, pos.offset, "no valid frame at the snapshot's journal position")
    records = decode_payload(path, pos.offset, frames[0][2])
    if records[0].seq != pos.first_seq or records[0].seq > snap.seq:
        raise CorruptJournalError(
            path, pos.offset,
            f"the frame at the snapshot's position holds seq {records[0].seq}..{records[-1].seq}, "
            f"expected a frame starting at seq {pos.first_seq}, at or before {snap.seq}",
        )


def newest_snapshot(
    journal_dir: str, snapshot_dir: str, *, until: int | None = None
) -> tuple[Snapshot | None, list[tuple[str, str]]]:
    """The newest snapshot in ``snapshot_dir`` that verifies and points at a valid frame of ``journal_dir``,
    and the newer ones passed over as ``(path, why)``, newest first.

    Read-only: takes no lock and changes no byte, so it is safe beside a live
    writer (a snapshot pruned while it is read is passed over like a damaged
    one).  A snapshot with an unknown version, a bad checksum, a position
    that names no valid frame, or that cannot be read is passed over, never
    raised.  With ``until``, snapshots taken after record ``until`` are left
    out without being reported.  Whether the journal still holds the
    snapshot's seq is for the caller to check as it reads on from the position.
    """
    segments = {seq for seq, _ in list_segments(journal_dir)}
    skipped: list[tuple[str, str]] = []
    for seq, path in list_snapshots(snapshot_dir):
        if until is not None and seq > until:
            continue
        try:
            snap = read_snapshot(path)
            check_snapshot_position(journal_dir, snap, segments)
        except (CorruptSnapshotError, UnsupportedFormatError, CorruptJournalError, OSError) as exc:
            skipped.append((path, str(exc)))
            continue
        return snap, skipped
    return None, skipped


def write_snapshot(fs: FileSystem, folder: str, seq: int, position: Position, payload: bytes) -> str:
    """Write a snapshot atomically and durably; returns its path."""
    path = os.path.join(folder, snapshot_name(seq))
    fs.write_file_atomic(path, encode_snapshot(seq, position, payload))
    return path
