"""Salvaging a damaged journal: find the longest prefix that verifies, and cut the journal back to it.

:func:`find_valid_prefix` walks the journal from its first frame and stops
at the first thing that does not verify (a bad frame, a damaged or missing
segment, a gap in the seqs, or a frame the caller refuses); it changes
nothing.  :func:`cut_journal` then keeps exactly that prefix: every byte
after it is first copied into a quarantine folder (durably), then the later
segments are removed and the rest of the cut segment is zeroed (no
truncation, so a reader that has it mapped never faults).  Each step leaves
the prefix intact, so a cut that is interrupted is finished by running it
again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ._errors import CorruptJournalError
from ._format import is_zero
from ._fs import FileSystem
from ._reader import decode_payload, list_segments, walk
from ._snapshot import list_snapshots

__all__ = ["JournalCut", "JournalPrefix", "cut_journal", "find_valid_prefix"]

_log = logging.getLogger("shipslog.journal")

_COPY_CHUNK = 8 << 20


@dataclass(frozen=True)
class JournalPrefix:
    """The longest prefix of a journal that verifies, and what ends it.

    ``last_seq`` is the last record kept (0: none).  The prefix ends in
    ``path`` at byte ``offset`` (None when no segment header verifies: the
    whole journal is dropped).  ``damage`` says what ended it (None when the
    journal verifies to its end, a torn tail aside).  ``dropped`` lists the
    segment files after ``path``.
    """

    last_seq: int
    path: str | None
    offset: int
    damage: str | None
    damage_at: tuple[str, int | None] | None = None
    dropped: list[str] = field(default_factory=list)

    @property
    def whole(self) -> bool:
        """True when nothing is dropped: the journal verifies to its end."""
        return self.damage is None and not self.dropped


@dataclass(frozen=True)
class JournalCut:
    """What :func:`cut_journal` did: the bytes it copied to quarantine (paths) and how many it dropped."""

    quarantined: list[str]
    dropped_bytes: int


def find_valid_prefix(journal_dir: str, accept: Callable[[bytes], bool] | None = None) -> JournalPrefix:
    """The longest prefix of ``journal_dir`` whose frames verify, chain, continue the seqs, and are accepted.

    ``accept`` sees each frame's payload in order (after its records decoded
    and their seqs followed on); returning False ends the prefix before that
    frame (the layer above refuses its events).  Reads only; a torn tail ends
    the prefix like any damage.
    """
    segments = list_segments(journal_dir)
    if not segments:
        raise CorruptJournalError(journal_dir, 0, "the journal folder holds no segment files")
    walker = walk(journal_dir)
    path: str | None = None
    path_seq = 0
    offset = 0
    last_seq = 0
    damage: str | None = None
    damage_at: tuple[str, int | None] | None = None
    try:
        while True:
            try:
                item = next(walker)
            except StopIteration as stop:
                end = stop.value
                if end.torn is not None:
                    damage = f"torn frame at the end: {end.torn.reason}"
                    damage_at = (end.torn.path, end.torn.offset)
                break
            if not isinstance(item, list):
                if item.header.first_seq != last_seq + 1:
                    damage = f"the segment starts at seq {item.header.first_seq}, expected {last_seq + 1}: records are missing"
                    damage_at = (item.path, 0)
                    break
                path, path_seq, offset = item.path, item.header.first_seq, item.header.size
                continue
            assert path is not None
            stop_here = False
            for frame_offset, _crc, payload in item:
                records = decode_payload(path, frame_offset, payload)
                if records[0].seq != last_seq + 1 or records[-1].seq != last_seq + len(records):
                    damage = f"the frame holds seq {records[0].seq}..{records[-1].seq}, expected it to start at {last_seq + 1}"
                    damage_at = (path, frame_offset)
                    stop_here = True
                    break
                if accept is not None and not accept(payload):
                    damage = f"records {records[0].seq}..{records[-1].seq} are refused by the engine"
                    damage_at = (path, frame_offset)
                    stop_here = True
                    break
                last_seq = records[-1].seq
                offset = frame_offset + 8 + len(payload)
            if stop_here:
                break
    except CorruptJournalError as exc:
        damage = exc.reason
        damage_at = (exc.path, exc.offset)
    finally:
        walker.close()
    dropped = [p for seq, p in segments if path is None or seq > path_seq]
    return JournalPrefix(last_seq, path, offset, damage, damage_at, dropped)


def cut_journal(fs: FileSystem, prefix: JournalPrefix, quarantine: str, snapshot_dir: str) -> JournalCut:
    """Keep exactly ``prefix`` in its journal: copy every later byte into folder ``quarantine`` first (durably),
    then remove the later segments (newest first) and zero the rest of the cut segment.  Snapshots taken after
    the prefix's last record (in ``snapshot_dir``) are moved into ``quarantine`` too.

    Idempotent: running it again after an interruption finishes the cut.
    The caller holds the root's lock.
    """
    fs.ensure_dir(quarantine)
    copied: list[str] = []
    dropped_bytes = 0
    if prefix.path is not None:
        tail_bytes = _tail_of(prefix.path, prefix.offset)
        if tail_bytes:
            target = os.path.join(quarantine, f"{os.path.basename(prefix.path)}@{prefix.offset}")
            fs.write_file_atomic(target, tail_bytes)
            copied.append(target)
            dropped_bytes += len(tail_bytes)
    for path in prefix.dropped:
        target = os.path.join(quarantine, os.path.basename(path))
        dropped_bytes += _copy_file(fs, path, target)
        copied.append(target)
    for seq, path in list_snapshots(snapshot_dir):
        if seq > prefix.last_seq:
            target = os.path.join(quarantine, os.path.basename(path))
            _copy_file(fs, path, target)
            fs.unlink(path)
            copied.append(target)
    fs.fsync_dir(snapshot_dir)
    for path in reversed(prefix.dropped):
        fs.unlink(path)
    if prefix.dropped:
        fs.fsync_dir(os.path.dirname(prefix.dropped[0]))
    if prefix.path is not None:
        size = os.path.getsize(prefix.path)
        if prefix.offset < size:
            fd = fs.open(prefix.path, os.O_RDWR)
            try:
                for start in range(prefix.offset, size, _COPY_CHUNK):
                    fs.write_all(fd, bytes(min(_COPY_CHUNK, size - start)), start)
                fs.fdatasync(fd)
            finally:
                fs.close(fd)
    _log.warning("journal cut back to seq %d: %d bytes after it copied to %s", prefix.last_seq, dropped_bytes, quarantine)
    return JournalCut(copied, dropped_bytes)


def _tail_of(path: str, offset: int) -> bytes:
    """The bytes of ``path`` from ``offset`` to its last non-zero byte (b"" when they are all zeros)."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    if is_zero(data, 0, len(data)):
        return b""
    return data.rstrip(b"\0")


def _copy_file(fs: FileSystem, source: str, target: str) -> int:
    """Copy ``source`` to ``target`` durably; return the bytes copied."""
    with open(source, "rb") as f:
        data = f.read()
    fs.write_file_atomic(target, data)
    return len(data)
