"""Verifying the history before a walk's start: every byte of it, with one crc call per segment.

An opener that starts from a snapshot walks only the frames after the
snapshot's position.  :func:`verify_history` checks every byte before that
position, so damage anywhere in the journal is found at open, at the cost of
one CRC-32 pass over the history (a few GB/s) instead of a walk over its
frames:

* every segment before the last is sealed by the header of the segment after
  it (its frames' end and the CRC-32 of its bytes before that); the bytes
  after the end must be zeros (the unused reservation);
* in the segment the walk starts in, the bytes before the position must match
  the position's ``segment_crc`` (recorded by the writer in the snapshot).

Version-1 segments carry no seal and version-1 snapshots no ``segment_crc``:
those bytes are verified by walking their frames instead.  When a checksum
fails, the frames are walked to name the first bad one.  Read-only: nothing
is written, so it is safe beside a live writer (sealed segments and the bytes
before a durable position never change).
"""

from __future__ import annotations

import mmap
import os
import threading

from ._crc import crc32, crc32_combine, parallel_crc32
from ._errors import CorruptJournalError
from ._format import SegmentHeader, decode_header, is_zero, mapped_segment, scan_payloads
from ._reader import Position, list_segments

__all__ = ["HistoryCheck", "crc_of", "verify_history"]

_FRAMES_PER_SCAN = 4096


_PARALLEL_BYTES = 16 << 20
"""From this many bytes a span is checksummed on several threads (mapping its pages dominates; it spreads over the cores)."""


def crc_of(data: bytes | mmap.mmap, start: int, stop: int, seed: int = 0) -> int:
    """The CRC-32 of ``data[start:stop]`` continued from ``seed``, without copying the bytes."""
    with memoryview(data) as view, view[start:stop] as part:
        if len(part) >= _PARALLEL_BYTES:
            return crc32_combine(seed, parallel_crc32(part), len(part))
        return crc32(part, seed)


def verify_history(journal_dir: str, start: Position, segments: list[tuple[int, str]] | None = None) -> None:
    """Raise :class:`CorruptJournalError` unless every byte of the journal before ``start`` is the writer's.

    Checks that the segments begin at seq 1, that the segment ``start`` names
    exists, every segment header up to it, the seal of every segment up to
    and including it that has a successor, and the bytes before ``start`` in
    its segment.  ``segments`` is the folder's listing when the caller has one.
    """
    if segments is None:
        segments = list_segments(journal_dir)
    if not segments:
        raise CorruptJournalError(journal_dir, 0, "the journal folder holds no segment files")
    if segments[0][0] != 1:
        raise CorruptJournalError(
            segments[0][1], 0, f"the first segment starts at seq {segments[0][0]}, expected 1: earlier segments are missing",
        )
    index = next((i for i, (seq, _path) in enumerate(segments) if seq == start.segment), None)
    if index is None:
        raise CorruptJournalError(journal_dir, 0, f"the segment starting at seq {start.segment} is missing")
    for i in range(index + 1):
        seq, path = segments[i]
        sealer: tuple[str, SegmentHeader] | None = None
        if i + 1 < len(segments):
            next_path = segments[i + 1][1]
            with mapped_segment(next_path) as next_data:
                sealer = (next_path, decode_header(next_path, next_data))
        with mapped_segment(path) as data:
            header = decode_header(path, data)
            if header.first_seq != seq:
                raise CorruptJournalError(path, 0, f"the header says the segment starts at seq {header.first_seq}, its name says {seq}")
            if sealer is not None:
                _check_sealed(path, data, header, *sealer)
            else:
                _check_prefix(path, data, header, start)


class HistoryCheck:
    """:func:`verify_history` on a thread of its own, so an opener reads the records after its snapshot meanwhile.

    The crc calls release the interpreter lock, so on a machine with a spare
    core the history costs (almost) nothing beside the replay.  :meth:`wait`
    returns when the check is done and raises what it found; an opener calls
    it before it changes any byte or serves any state.
    """

    def __init__(self, journal_dir: str, start: Position, segments: list[tuple[int, str]] | None = None) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(journal_dir, start, segments), name="shipslog-verify-history", daemon=True
        )
        self._thread.start()

    def _run(self, journal_dir: str, start: Position, segments: list[tuple[int, str]] | None) -> None:
        try:
            verify_history(journal_dir, start, segments)
        except BaseException as exc:  # noqa: BLE001  (not swallowed: wait() raises it in the opener's thread)
            self._error = exc

    def wait(self) -> None:
        """Wait for the check; raise :class:`CorruptJournalError` (or the read error) it found."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _check_sealed(path: str, data: bytes | mmap.mmap, header: SegmentHeader, next_path: str, sealer: SegmentHeader) -> None:
    """Verify a segment that has a successor: by the successor's seal, or (version 1) by walking its frames."""
    following = os.path.basename(next_path)
    if not sealer.seals_previous:
        end, crc = _walk_clean(path, data, header, len(data), following)
        if not is_zero(data, end, len(data)):
            raise CorruptJournalError(path, end, f"non-zero bytes after the last frame of a segment followed by {following}")
        if crc != sealer.prev_crc:
            raise CorruptJournalError(
                next_path, 0,
                f"the header chains from crc {sealer.prev_crc:#010x} but the previous segment ends with {crc:#010x} "
                "(a segment is missing, or comes from another journal)",
            )
        return
    end = sealer.prev_end
    if not header.size <= end <= len(data):
        raise CorruptJournalError(
            path, min(end, len(data)),
            f"{following} says this segment's frames end at byte {end}, but its header is {header.size} bytes "
            f"and the file {len(data)}: the segment was cut short or replaced",
        )
    actual = crc_of(data, 0, end)  # one call: the interpreter lock is released for all of it
    if actual != sealer.prev_body_crc:
        _walk_clean(path, data, header, end, following)  # names the first bad frame, if one is bad
        raise CorruptJournalError(
            path, 0,
            f"the segment's bytes 0..{end} do not match the checksum {following} seals it with "
            f"(stored {sealer.prev_body_crc:#010x}, computed {actual:#010x})",
        )
    if not is_zero(data, end, len(data)):
        raise CorruptJournalError(path, end, f"non-zero bytes after the last frame of a segment sealed by {following}")


def _check_prefix(path: str, data: bytes | mmap.mmap, header: SegmentHeader, start: Position) -> None:
    """Verify the bytes of the walk's first segment before ``start``: by its ``segment_crc``, or by walking them."""
    if not header.size <= start.offset <= len(data):
        raise CorruptJournalError(path, 0, f"the start position {start.offset} is outside the segment's frames (header {header.size}, file {len(data)} bytes)")
    if start.segment_crc is not None:
        actual = crc_of(data, 0, start.offset)
        if actual == start.segment_crc:
            return
        _walk_to(path, data, header, start)  # names the first bad frame, if one is bad
        raise CorruptJournalError(
            path, 0,
            f"the segment's bytes 0..{start.offset} do not match the checksum recorded with the start position "
            f"(stored {start.segment_crc:#010x}, computed {actual:#010x})",
        )
    _walk_to(path, data, header, start)


def _walk_to(path: str, data: bytes | mmap.mmap, header: SegmentHeader, start: Position) -> None:
    """Walk the frames before ``start``: they must all verify and end exactly there, chaining into it."""
    end, crc = _walk_clean(path, data[: start.offset], header, start.offset, "the start position")
    if end != start.offset or crc != start.prev_crc:
        raise CorruptJournalError(
            path, end,
            f"the frames before the start position end at byte {end} with crc {crc:#010x}, "
            f"expected byte {start.offset} and crc {start.prev_crc:#010x}",
        )


def _walk_clean(path: str, data: bytes | mmap.mmap, header: SegmentHeader, stop: int, following: str) -> tuple[int, int]:
    """Walk every frame of ``data`` from the header on; any damage (valid data follows it) raises.  Returns the
    offset after the last frame and its crc.  ``stop`` bounds the walk (frames past it are not read)."""
    view = data if stop >= len(data) else data[:stop]
    offset, seed = header.size, header.header_crc
    while True:
        _payloads, offset, seed, end = scan_payloads(view, offset, seed, _FRAMES_PER_SCAN)
        if end is not None:
            break
    if end.damage is not None:
        raise CorruptJournalError(path, end.damage.offset, f"{end.damage.reason}, followed by more data ({following})")
    return offset, seed
