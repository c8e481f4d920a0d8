"""The journal's on-disk format: segment headers, frames and records.

A segment file is a fixed header followed by frames::

    header: magic "SHIPSLOG" | u16 version | u16 header_size | u64 first_seq
            | i64 created_ns | u32 prev_crc | u64 segment_bytes
            | u64 prev_end | u32 prev_body_crc | u32 header_crc  (56 bytes, little-endian)
    frame:  u32 length | u32 crc | payload (length bytes)

``header_crc`` is the CRC-32 of the header bytes before it; it is checked
before anything else in the header, so a flipped bit anywhere (the version
included) is damage, never mistaken for a newer format.  ``prev_crc`` is the
crc of the last frame of the previous segment (0 for the first segment), so a
segment cannot be swapped in from another journal unnoticed.

``prev_end`` and ``prev_body_crc`` seal the previous segment: its frames end
at ``prev_end`` and ``prev_body_crc`` is the CRC-32 of its bytes before that
(header included).  A segment is sealed when the next one is created, and is
never written again, so an opener verifies every byte of the history before
its snapshot with one crc call per segment instead of a walk over its frames.
``segment_bytes`` is the size the root's segments roll at, so a root keeps the
size it was created with.  (Version 1 headers, 36 bytes, have a zero where
``header_size`` is and end after ``prev_crc``; they are still read, and a
version-1 segment with no seal is verified by walking its frames.)

A frame's crc is ``crc32(payload, crc32(length_le32, prev))``, where ``prev``
is the crc of the frame before it, or ``header_crc`` for the first frame of a
segment: a frame cannot be moved, or replayed from an older file.

A payload is a msgpack array of records, each record the array
``[seq, time, session, event]`` with the event kept as raw msgpack bytes (the
layer above decodes it).  One append is one frame, so the records of one group
commit become durable, or are torn, together.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec

from ._errors import CorruptJournalError, UnsupportedFormatError
from ._fs import open_regular

__all__ = [
    "ALONE_BYTES",
    "FORMAT_VERSION",
    "FRAME_HEADER_SIZE",
    "HEADER_SIZE",
    "MAX_FRAME_BYTES",
    "MAX_RECORDS_PER_FRAME",
    "MAX_SEGMENT_BYTES",
    "V1_HEADER_SIZE",
    "Damage",
    "FrameEnd",
    "Record",
    "SegmentHeader",
    "decode_header",
    "encode_header",
    "frame_crc",
    "is_zero",
    "mapped_segment",
    "parse_segment_name",
    "read_segment_header",
    "record_count",
    "scan_frames",
    "scan_payloads",
    "segment_name",
]

MAGIC = b"SHIPSLOG"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<8sHH")
"""The part every version shares: the magic, the version, and (from version 2) the header's size."""
_HEADER_V1 = struct.Struct("<8sHHQqI")
_HEADER = struct.Struct("<8sHHQqIQQI")
HEADER_SIZE = _HEADER.size + 4
"""The size of the header this shipslog writes (frames start right after it)."""
V1_HEADER_SIZE = _HEADER_V1.size + 4
_MAX_HEADER_SIZE = 4096
"""The largest header size field believed: a larger one is damage, whatever the version says."""
MAX_SEGMENT_BYTES = 1 << 40
"""The largest segment size a header may record (the writer accepts no more)."""
_CRC = struct.Struct("<I")
_FRAME = struct.Struct("<II")
FRAME_HEADER_SIZE = _FRAME.size
MAX_FRAME_BYTES = 8 * 1024 * 1024
"""The largest payload a frame may carry; the writer never writes a longer one and a longer length field is damage."""
MAX_RECORDS_PER_FRAME = 65536
"""The most records one frame may carry; the writer never writes more, and a frame claiming more is refused before it is decoded.

A decoded record costs about a hundred bytes, so a frame's records stay within
a few MiB whatever its bytes say; group commits (at most 4 MiB of payload)
never came near it."""

_MIN_RECORD_BYTES = 5
"""The shortest msgpack encoding of a record ``[seq, time, session, event]``: one byte each, after the array marker."""
ALONE_BYTES = MAX_RECORDS_PER_FRAME * _MIN_RECORD_BYTES
"""Only a payload longer than this can claim too many records: such frames travel alone in a chunk, checked before decoding."""
_CHUNK_BYTES = 1024 * 1024
"""A chunk of payloads handed to one decode call holds at most this many bytes (plus one frame), bounding its memory."""
_SEARCH_BUDGET_FACTOR = 64
"""The bytes checksummed while looking for valid frames past damage: at most this many per byte searched (plus 64 MiB)."""
_SEARCH_BUDGET_BASE = 64 << 20
_TRAILING_ZEROS = 64
"""How far past the last non-zero byte a valid frame may end: a payload may end in zero bytes (a float 0.0 is eight)."""

_SEGMENT_SUFFIX = ".log"
_SEQ_DIGITS = 20


class Record(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """One journal record: ``seq`` (1, 2, 3, ... with no gaps), ``time`` (seconds
    since the epoch, when its frame was written), ``session`` (the id of the
    journal opening that wrote it) and ``event`` (msgpack bytes, decoded by the
    layer above)."""

    seq: int
    time: float
    session: str
    event: msgspec.Raw


@dataclass(frozen=True)
class SegmentHeader:
    """The parsed header of one segment file.

    ``size`` is where its first frame starts.  ``segment_bytes``, ``prev_end``
    and ``prev_body_crc`` are 0 in a version-1 header (which does not record
    them); ``prev_end`` is 0 in the first segment too.
    """

    first_seq: int
    created_ns: int
    prev_crc: int
    header_crc: int
    version: int = FORMAT_VERSION
    size: int = HEADER_SIZE
    segment_bytes: int = 0
    prev_end: int = 0
    prev_body_crc: int = 0

    @property
    def seals_previous(self) -> bool:
        """Whether this header records the end and the checksum of the segment before it."""
        return self.prev_end > 0


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first record is ``first_seq``."""
    return f"{first_seq:0{_SEQ_DIGITS}d}{_SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first seq a segment file name stands for, or None if it is not one."""
    if not name.endswith(_SEGMENT_SUFFIX):
        return None
    stem = name[: -len(_SEGMENT_SUFFIX)]
    if not stem.isdigit() or not stem.isascii():
        return None
    return int(stem)


def encode_header(
    first_seq: int, created_ns: int, prev_crc: int, *, segment_bytes: int, prev_end: int = 0, prev_body_crc: int = 0
) -> bytes:
    """The header bytes of a new segment (``prev_end``/``prev_body_crc`` seal the segment before it)."""
    body = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, first_seq, created_ns, prev_crc, segment_bytes, prev_end, prev_body_crc)
    return body + _CRC.pack(zlib.crc32(body))


def decode_header(path: str, data: bytes | mmap.mmap) -> SegmentHeader:
    """Parse and check a segment header, or raise a clear error.

    A header whose checksum fails is :class:`CorruptJournalError` at offset 0
    (checked before the version, so a flipped bit there is damage); a valid
    header of an unknown version raises :class:`UnsupportedFormatError`
    naming both versions.  Version 1 and 2 headers are read.
    """
    if len(data) == 0:
        raise CorruptJournalError(
            path, 0, f"the segment file is empty (expected a {HEADER_SIZE}-byte header)",
            hint="segments are created whole, so an empty one was not written by shipslog; "
            "move it out of the journal folder if it holds nothing you need",
        )
    if len(data) < _PREFIX.size:
        raise CorruptJournalError(path, 0, f"the segment file is {len(data)} bytes, shorter than a segment header")
    magic, version, size_field = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptJournalError(
            path, 0, f"expected the segment magic {MAGIC!r}, found {bytes(magic)!r}",
            hint="this file is not a shipslog journal segment; move it out of the journal folder",
        )
    size = V1_HEADER_SIZE if version == 1 and size_field == 0 else size_field
    if not _PREFIX.size + 4 <= size <= _MAX_HEADER_SIZE:
        raise CorruptJournalError(path, 0, f"the segment header claims a size of {size} bytes (version field {version}): the header is damaged")
    if len(data) < size:
        raise CorruptJournalError(path, 0, f"the segment file is {len(data)} bytes, shorter than its {size}-byte header")
    (stored,) = _CRC.unpack_from(data, size - 4)
    actual = zlib.crc32(data[: size - 4])
    if stored != actual:  # checked first: a damaged version field is damage, not a newer format
        raise CorruptJournalError(path, 0, f"segment header crc mismatch (stored {stored:#010x}, computed {actual:#010x})")
    if version == 1 and size == V1_HEADER_SIZE:
        _m, _v, _f, first_seq, created_ns, prev_crc = _HEADER_V1.unpack_from(data, 0)
        return SegmentHeader(first_seq, created_ns, prev_crc, stored, 1, size)
    if version != FORMAT_VERSION:
        raise UnsupportedFormatError(path, "journal segment", version, FORMAT_VERSION)
    if size != HEADER_SIZE:
        raise CorruptJournalError(path, 0, f"a version {version} segment header is {HEADER_SIZE} bytes, this one claims {size}")
    _m, _v, _s, first_seq, created_ns, prev_crc, segment_bytes, prev_end, prev_body_crc = _HEADER.unpack_from(data, 0)
    if not HEADER_SIZE + 64 <= segment_bytes <= MAX_SEGMENT_BYTES:
        raise CorruptJournalError(path, 0, f"the header records a segment size of {segment_bytes} bytes, "
                                  f"outside {HEADER_SIZE + 64}..{MAX_SEGMENT_BYTES}")
    if prev_end and not V1_HEADER_SIZE <= prev_end <= MAX_SEGMENT_BYTES:
        raise CorruptJournalError(path, 0, f"the header says the previous segment ends at byte {prev_end}, which no segment can")
    return SegmentHeader(first_seq, created_ns, prev_crc, stored, version, size, segment_bytes, prev_end, prev_body_crc)


def read_segment_header(path: str) -> SegmentHeader:
    """The verified header of the segment file at ``path`` (read-only)."""
    with mapped_segment(path) as data:
        return decode_header(path, data)


def frame_crc(payload: bytes, prev: int) -> int:
    """The chained crc of a frame carrying ``payload`` after a frame whose crc is ``prev``."""
    return zlib.crc32(payload, zlib.crc32(_CRC.pack(len(payload)), prev))


def encode_frame(payload: bytes, prev: int) -> tuple[bytes, int]:
    """The bytes of one frame, and its crc."""
    size = len(payload)
    crc = zlib.crc32(payload, zlib.crc32(_CRC.pack(size), prev))  # frame_crc, inline: once per append
    return _FRAME.pack(size, crc) + payload, crc


def is_zero(data: bytes | mmap.mmap, start: int, stop: int) -> bool:
    """True when every byte of ``data[start:stop]`` is zero."""
    if stop <= start:
        return True
    import numpy as np

    return not bool(np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start).any())


@dataclass(frozen=True)
class Damage:
    """A frame that did not verify.

    ``offset`` is where the bad frame starts, ``stop`` where its damaged bytes
    end (for a torn write: every non-zero byte of it).  ``torn`` is True when
    the bytes from ``offset`` can only be the last write, cut off by a crash
    (safe to cut back: see :func:`_torn`); False when valid data follows
    (corruption in the middle of the log).
    """

    offset: int
    stop: int
    reason: str
    torn: bool


@dataclass(frozen=True)
class FrameEnd:
    """Where a walk over frames stopped: after the last valid frame.

    ``offset`` is the end of the last valid frame, ``crc`` its crc (the seed for
    the next frame), ``damage`` the bad frame found there, if any.
    """

    offset: int
    crc: int
    damage: Damage | None


Frame = tuple[int, int, bytes]
"""One verified frame: ``(offset, crc, payload)``."""


def scan_frames(
    data: bytes | mmap.mmap, start: int, seed: int, limit: int
) -> tuple[list[Frame], int, int, FrameEnd | None]:
    """Verify up to ``limit`` frames of ``data`` from ``start``, in the crc chain from ``seed``.

    Returns ``(frames, offset, crc, end)``: the verified frames as
    ``(offset, crc, payload)``, the offset and crc to continue from, and a
    :class:`FrameEnd` once valid data has ended (None while there may be
    more).  The end of data is the end of the file, or a zero frame header
    followed only by zeros (the unused part of a preallocated segment).  A bad
    frame ends the data too, and :class:`FrameEnd` says whether it is a torn
    tail or damage with data after it.

    Frames are returned in chunks, not one by one, because the per-frame cost
    of resuming generators dominates replay time.
    """
    payloads, end_offset, crc, end = scan_payloads(data, start, seed, limit)
    frames: list[Frame] = []
    off = start
    for payload in payloads:
        frames.append((off, _CRC.unpack_from(data, off + 4)[0], payload))
        off += FRAME_HEADER_SIZE + len(payload)
    return frames, end_offset, crc, end


def scan_payloads(
    data: bytes | mmap.mmap, start: int, seed: int, limit: int
) -> tuple[list[bytes], int, int, FrameEnd | None]:
    """:func:`scan_frames` returning only the payloads (replay's fast path; scan_frames is built on it).

    Every frame is verified in the chain; frame ``i`` starts at
    ``start + 8 * i + sum(len(p) for p in payloads[:i])``.  A chunk holds at
    most about a mebibyte of payloads, and a frame longer than :data:`ALONE_BYTES` comes
    alone in its chunk, so the decoder above can check its record count
    (:func:`record_count`) before it decodes it: decoding memory stays bounded.
    """
    size = len(data)
    last = size - FRAME_HEADER_SIZE
    unpack = _FRAME.unpack_from
    crc32 = zlib.crc32
    lengths = _LENGTH_BYTES
    off = start
    prev = seed
    out: list[bytes] = []
    append = out.append
    room = _CHUNK_BYTES
    # The fast loop takes only frames that verify; anything else (the end, a
    # zero or oversized length, a short or bad frame) goes to _scan_careful.
    for _ in range(limit):
        if off > last:
            break
        length, crc = unpack(data, off)
        body = off + FRAME_HEADER_SIZE
        stop = body + length
        if stop > size or not 0 < length <= MAX_FRAME_BYTES:
            break
        if out and (length > room or length > ALONE_BYTES):
            return out, off, prev, None  # the next chunk starts with this frame
        payload = data[body:stop]
        head = lengths.get(length)
        if head is None:
            head = _length_bytes(length)
        if crc32(payload, crc32(head, prev)) != crc:
            break
        append(payload)
        prev = crc
        off = stop
        room -= length
        if length > ALONE_BYTES:
            return out, off, prev, None
    else:
        return out, off, prev, None
    frames, off, prev, end = _scan_careful(data, off, prev, limit - len(out))
    out += [payload for _off, _crc, payload in frames]
    return out, off, prev, end


def record_count(payload: bytes) -> int | None:
    """How many records a frame's payload claims, read from its msgpack array header (None: not an array).

    Read before decoding, so a frame claiming more than
    :data:`MAX_RECORDS_PER_FRAME` records is refused without building them.
    """
    if not payload:
        return None
    first = payload[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first == 0xDC and len(payload) >= 3:
        return int.from_bytes(payload[1:3], "big")
    if first == 0xDD and len(payload) >= 5:
        return int.from_bytes(payload[1:5], "big")
    return None


_LENGTH_BYTES: dict[int, bytes] = {}
"""The little-endian length field of each frame length seen (at most 64 Ki entries), for the crc."""


def _length_bytes(length: int) -> bytes:
    head = _CRC.pack(length)
    if len(_LENGTH_BYTES) < 65536:
        _LENGTH_BYTES[length] = head
    return head


def _scan_careful(
    data: bytes | mmap.mmap, start: int, seed: int, limit: int
) -> tuple[list[Frame], int, int, FrameEnd | None]:
    """:func:`scan_frames` one frame at a time, telling every kind of end and damage apart."""
    size = len(data)
    unpack = _FRAME.unpack_from
    crc32 = zlib.crc32
    off = start
    prev = seed
    out: list[Frame] = []
    append = out.append
    while len(out) < limit:
        body = off + FRAME_HEADER_SIZE
        if body > size:
            if off == size or is_zero(data, off, size):
                return out, off, prev, FrameEnd(off, prev, None)
            damage = Damage(off, size, f"frame header cut short: {size - off} of {FRAME_HEADER_SIZE} bytes", True)
            return out, off, prev, FrameEnd(off, prev, damage)
        length, crc = unpack(data, off)
        if length == 0:
            if crc == 0 and is_zero(data, body, size):
                return out, off, prev, FrameEnd(off, prev, None)
            why = "a frame of length 0 (zeros or garbage where a frame header belongs) with data after it"
            torn = _torn(data, off, None)
            return out, off, prev, FrameEnd(off, prev, Damage(off, _nonzero_end(data, off, size) if torn else body, why, torn))
        stop = body + length
        if length > MAX_FRAME_BYTES:
            why = f"frame length {length} exceeds the {MAX_FRAME_BYTES}-byte limit"
            return out, off, prev, FrameEnd(off, prev, Damage(off, size, why, is_zero(data, body, size) or _torn(data, off, None)))
        if stop > size:
            why = f"frame of {length} bytes cut short: only {size - body} bytes left in the file"
            return out, off, prev, FrameEnd(off, prev, Damage(off, size, why, _no_frame_after(data, body, crc)))
        payload = data[body:stop]
        actual = crc32(payload, crc32(data[off:body - 4], prev))
        if actual != crc:
            why = f"frame crc mismatch (stored {crc:#010x}, computed {actual:#010x})"
            if is_zero(data, stop, size) and _no_frame_after(data, body, crc):
                return out, off, prev, FrameEnd(off, prev, Damage(off, stop, why, True))
            torn = _torn(data, off, crc)  # the whole torn write is cut back: every byte of it, wherever it ends
            return out, off, prev, FrameEnd(off, prev, Damage(off, max(stop, _nonzero_end(data, off, size)) if torn else stop, why, torn))
        append((off, crc, payload))
        prev = crc
        off = stop
    return out, off, prev, None


_FIXARRAYS = bytes(range(0x91, 0xA0))
"""The first byte of a payload of 1 to 15 records (a msgpack fixarray); 0xdc and 0xdd start longer ones."""
_RECORD_MARKER = 0x94
"""The first byte of every record: a msgpack array of 4 (seq, time, session, event)."""


def _candidates(data: bytes | mmap.mmap, start: int, first_stop: int, last_end: int) -> Iterator[tuple[int, int, int]]:
    """``(offset, length, crc)`` of every place in ``data[start:first_stop]`` that could start a frame written by
    the writer: a length it can produce, ending by ``last_end``, a payload that starts like one (a msgpack array
    of records).  Found with one vectorised pass per mebibyte."""
    import numpy as np

    look = FRAME_HEADER_SIZE + 2  # a candidate's header, its array marker and its first record's marker
    first_stop = min(first_stop, len(data) - look)
    unpack = _FRAME.unpack_from
    fixarrays = np.frombuffer(_FIXARRAYS, dtype=np.uint8)
    step = 1 << 20
    for chunk in range(start, first_stop, step):
        n = min(step, first_stop - chunk)
        view = np.frombuffer(data, dtype=np.uint8, count=n + look, offset=chunk)
        b = view.astype(np.int64)
        lengths = b[0:n] | (b[1:n + 1] << 8) | (b[2:n + 2] << 16) | (b[3:n + 3] << 24)
        ends = np.arange(chunk + FRAME_HEADER_SIZE, chunk + FRAME_HEADER_SIZE + n, dtype=np.int64) + lengths
        marker = view[FRAME_HEADER_SIZE:FRAME_HEADER_SIZE + n]
        # a fixarray payload's first record follows at once; 0xdc/0xdd carry a count first (rare: kept as candidates)
        starts_like_records = (np.isin(marker, fixarrays) & (view[FRAME_HEADER_SIZE + 1:FRAME_HEADER_SIZE + 1 + n] == _RECORD_MARKER)) | (
            (marker == 0xDC) | (marker == 0xDD)
        )
        plausible = (lengths > 0) & (lengths <= MAX_FRAME_BYTES) & (ends <= last_end) & starts_like_records
        for off in (np.flatnonzero(plausible) + chunk).tolist():
            length, crc = unpack(data, off)
            yield off, length, crc


def _no_frame_after(data: bytes | mmap.mmap, start: int, seed: int) -> bool:
    """True when it is proven that no valid frame, chained from ``seed``, starts in ``data[start:]``.

    A bad frame is a torn write only if the bytes after its header hold no
    valid frame of their own: a damaged length field in the middle of the log
    makes a frame swallow the valid frames after it.  Candidates start before
    the last non-zero byte (a frame header is never all zeros), claim a
    length the writer can produce that fits in the file, and carry a payload
    that starts like one (a msgpack array); they are found with one
    vectorised pass, and only they are checksummed.  The work is linear in
    the bytes searched: the checksummed bytes are capped at
    ``_SEARCH_BUDGET_FACTOR`` per byte searched (plus 64 MiB), far more than
    any frame the writer produces needs.  When the cap is reached the
    answer is False ("cannot rule out valid data"), so damage that looks
    crafted is reported as corruption, never cut back.

    A valid frame ends before the zeros that end the data (give or take the
    zero bytes a payload may end with), so a candidate claiming a frame that
    reaches into them is not one: this keeps a torn frame's own half-written
    payload from posing as many long candidates.
    """
    size = len(data)
    nonzero_end = _nonzero_end(data, start, size)
    last_end = min(size, nonzero_end + _TRAILING_ZEROS)
    if min(nonzero_end, size - FRAME_HEADER_SIZE - 2) <= start:
        return True
    budget = _SEARCH_BUDGET_FACTOR * (nonzero_end - start) + _SEARCH_BUDGET_BASE
    for off, length, crc in _candidates(data, start, nonzero_end, last_end):
        budget -= length
        if budget < 0:
            return False
        body = off + FRAME_HEADER_SIZE
        if frame_crc(data[body:body + length], seed) == crc:
            return False
    return True


def _no_chained_pair_after(data: bytes | mmap.mmap, start: int) -> bool:
    """True when it is proven that no two consecutive frames, the second chained from the first, start in
    ``data[start:]``; False when such a pair exists (or the search budget ran out).

    Used where the seed of the next frame is lost (the header of the bad frame
    is zeros or garbage): a single frame cannot be checked without its seed,
    but a frame whose successor verifies chained from its crc is one the
    writer wrote (the chance of garbage passing is 2**-32).
    """
    size = len(data)
    nonzero_end = _nonzero_end(data, start, size)
    last_end = min(size, nonzero_end + _TRAILING_ZEROS)
    if min(nonzero_end, size - FRAME_HEADER_SIZE - 2) <= start:
        return True
    budget = _SEARCH_BUDGET_FACTOR * (nonzero_end - start) + _SEARCH_BUDGET_BASE
    unpack = _FRAME.unpack_from
    for off, length, crc in _candidates(data, start, nonzero_end, last_end):
        nxt = off + FRAME_HEADER_SIZE + length
        if nxt + FRAME_HEADER_SIZE > last_end:
            continue
        length2, crc2 = unpack(data, nxt)
        if not 0 < length2 <= MAX_FRAME_BYTES or nxt + FRAME_HEADER_SIZE + length2 > last_end:
            continue
        budget -= length2
        if budget < 0:
            return False
        body = nxt + FRAME_HEADER_SIZE
        if frame_crc(data[body:body + length2], crc) == crc2:
            return False
    return True


_ONE_FRAME = FRAME_HEADER_SIZE + MAX_FRAME_BYTES + _TRAILING_ZEROS
"""The most bytes the one frame a crash can tear may span."""


def _torn(data: bytes | mmap.mmap, off: int, seed: int | None) -> bool:
    """Whether a bad frame at ``off`` can be the torn last write of a crash, rather than damage to durable data.

    The writer never writes a frame before the one before it is durable
    (:meth:`Journal.append_many`), so a power cut can leave at most one frame
    torn: its header lost or garbage, some of its sectors written and others
    not.  Such a tear is what the bytes from ``off`` hold when all of their
    non-zero bytes fit in one frame, no valid frame chained from ``seed`` (the
    bad frame's stored crc, when its header is whole) starts after its
    header, and no two chained frames start anywhere after ``off``.  Durable
    frames after real damage are found either way (by the chain, or as a
    chained pair), so damage in the middle of the log is never cut back.
    """
    size = len(data)
    if _nonzero_end(data, off, size) - off > _ONE_FRAME:
        return False
    if seed is not None and not _no_frame_after(data, off + FRAME_HEADER_SIZE, seed):
        return False
    return _no_chained_pair_after(data, off + 1)


def _nonzero_end(data: bytes | mmap.mmap, start: int, stop: int) -> int:
    """One past the last non-zero byte of ``data[start:stop]`` (``start`` if all are zero)."""
    chunk = 1 << 20
    end = stop
    while end > start:
        begin = max(start, end - chunk)
        if not is_zero(data, begin, end):
            import numpy as np

            view = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=begin)
            return begin + int(np.flatnonzero(view)[-1]) + 1
        end = begin
    return start


@contextlib.contextmanager
def mapped_segment(path: str, limit: int | None = None) -> Iterator[bytes | mmap.mmap]:
    """Map a segment file read-only for the ``with`` block (an empty file reads as ``b""``); with ``limit``, only its
    first ``limit`` bytes (where the caller knows its verified data ends).

    A segment that is a symbolic link or not a regular file (a FIFO would
    block the reader) is :class:`CorruptJournalError`, without reading it.
    """
    try:
        fd = open_regular(path)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EINVAL):
            raise
        raise CorruptJournalError(
            path, 0, "expected a segment file, found a symbolic link or a special file",
            hint="segments are regular files written by shipslog; move this entry out of the journal folder",
        ) from None
    with open(fd, "rb", closefd=True) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None:
            size = min(size, limit)
        data: bytes | mmap.mmap = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
    try:
        yield data
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
