"""Reading a journal folder: segment listing, the verified walk, and the read-only reader.

The walk is shared by the writer's open (which repairs a torn tail) and by the
read-only reader (which reports one, because on a live host it may be a write
in progress).  Damage that is not a torn tail raises
:class:`CorruptJournalError` after every record before it has been served and
before any record after it is.
"""

from __future__ import annotations

import gc
import os
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any

import msgspec

from ._errors import CorruptJournalError
from ._format import (
    ALONE_BYTES,
    FRAME_HEADER_SIZE,
    MAX_FRAME_BYTES,
    MAX_RECORDS_PER_FRAME,
    Frame,
    Record,
    SegmentHeader,
    decode_header,
    mapped_segment,
    parse_segment_name,
    record_count,
    scan_frames,
    scan_payloads,
)

__all__ = [
    "JournalReader",
    "Position",
    "SegmentStart",
    "TornTail",
    "WalkEnd",
    "decode_payload",
    "last_record_seq",
    "list_segments",
    "segment_start_position",
    "walk",
]

_decode_batch = msgspec.msgpack.Decoder(list[Record]).decode
_decode_chunk = msgspec.msgpack.Decoder(list[list[Record]]).decode
_ARRAY32 = struct.Struct(">BI")
_seq_of = attrgetter("seq")


def check_record_count(path: str, offset: int, payload: bytes) -> None:
    """Refuse a frame that claims more records than a frame may hold, before anything of it is decoded.

    Only a payload longer than :data:`ALONE_BYTES` can claim that many; the
    check reads the msgpack array header alone, so a hostile frame cannot make
    the decoder build millions of objects.
    """
    if len(payload) <= ALONE_BYTES:
        return
    count = record_count(payload)
    if count is not None and count > MAX_RECORDS_PER_FRAME:
        raise CorruptJournalError(
            path, offset,
            f"frame claims {count} records; a frame holds at most {MAX_RECORDS_PER_FRAME} records "
            f"and {MAX_FRAME_BYTES} bytes, and the writer never writes more",
        )


def decode_payload(path: str, offset: int, payload: bytes) -> list[Record]:
    """Decode one frame's payload into its records, or raise :class:`CorruptJournalError`."""
    check_record_count(path, offset, payload)
    try:
        records = _decode_batch(payload)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise CorruptJournalError(path, offset, f"frame verified but its payload does not decode as records: {_decode_problem(exc)}") from exc
    if not records:
        raise CorruptJournalError(path, offset, "frame verified but holds no records")
    return records


def _decode_problem(exc: BaseException) -> str:
    """What a failed decode says, with the interpreter's nesting limit named for what it is."""
    if isinstance(exc, RecursionError):
        return "it is nested deeper than the decoder allows (hostile or damaged data)"
    return str(exc)


@dataclass(frozen=True)
class Position:
    """Where a frame starts in the journal, so a walk can begin there.

    ``segment`` is the first seq of the segment (its name), ``offset`` the byte
    offset of the frame, ``prev_crc`` the crc the frame chains from, and
    ``first_seq`` the seq of the first record in the frame.  ``segment_crc``
    is the CRC-32 of the segment's bytes before ``offset`` (None when not
    known, as in a version-1 snapshot): with it an opener verifies those bytes
    with one crc call instead of walking their frames.
    """

    segment: int
    offset: int
    prev_crc: int
    first_seq: int
    segment_crc: int | None = None


@dataclass(frozen=True)
class TornTail:
    """A frame at the end of the journal that was cut off by a crash.

    ``offset``..``stop`` are the damaged bytes in ``path``.  The writer cuts them
    back on open (after copying them to quarantine); a read-only reader reports
    them, since on a live host they may be a write in progress.
    """

    path: str
    offset: int
    stop: int
    reason: str


@dataclass(frozen=True)
class SegmentStart:
    """Yielded by :func:`walk` when it enters a segment (after its header checks)."""

    path: str
    header: SegmentHeader


@dataclass(frozen=True)
class WalkEnd:
    """Where verified data ends: the last segment, the offset after its last valid
    frame, that frame's crc, and the torn tail found after it, if any."""

    path: str
    segment: int
    offset: int
    crc: int
    torn: TornTail | None


def list_segments(journal_dir: str) -> list[tuple[int, str]]:
    """The segment files of a journal folder as ``(first_seq, path)``, in seq order.

    Ordered by the number in the name, never by the name as text.  Files that
    are not segments (temporary files, other names) are left out.
    """
    try:
        names = os.listdir(journal_dir)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        seq = parse_segment_name(name)
        if seq is not None:
            found.append((seq, os.path.join(journal_dir, name)))
    found.sort()
    return found


_CHUNK = 1024


def walk(
    journal_dir: str, start: Position | None = None, *, expected_first: int = 1
) -> Generator[SegmentStart | list[Frame], None, WalkEnd]:
    """Walk every frame of the journal from ``start`` (default: the beginning).

    Checks each segment's header, that segments follow each other (the first
    seq in a header is the one its name says, the previous segment's last crc
    is the one the header names), and every frame's crc in the chain.  Yields
    a :class:`SegmentStart` per segment, then that segment's verified frames
    in lists of ``(offset, crc, payload)``; returns a :class:`WalkEnd`.  Seq continuity inside and
    between segments is for the caller to check, since only it decodes.
    A torn frame at the end of the last segment ends the walk; any other
    damage raises :class:`CorruptJournalError`.
    """
    return (yield from _walk(journal_dir, start, expected_first, False))


def _walk(
    journal_dir: str, start: Position | None, expected_first: int, payloads: bool, data_end: tuple[int, int] | None = None
) -> Generator[Any, None, WalkEnd]:
    """:func:`walk`; with ``payloads`` it yields each chunk as ``(offset of its first frame, [payload, ...])``.

    ``data_end`` is ``(segment, offset)`` where the caller knows the verified data ends (an open writer): that
    segment is read only up to it, so the unused space after it is not scanned again."""
    segments = list_segments(journal_dir)
    if not segments:
        raise CorruptJournalError(journal_dir, 0, "the journal folder holds no segment files",
                                  hint="open the root with shipslog.Engine (or Journal.open) to create its journal")
    index = 0
    if start is not None:
        for i, (seq, _) in enumerate(segments):
            if seq == start.segment:
                index = i
                break
        else:
            raise CorruptJournalError(journal_dir, 0, f"the segment starting at seq {start.segment} is missing")
    elif segments[0][0] != expected_first:
        raise CorruptJournalError(
            segments[0][1], 0,
            f"the first segment starts at seq {segments[0][0]}, expected {expected_first}: earlier segments are missing",
        )
    prev_crc: int | None = None
    for i in range(index, len(segments)):
        seq, path = segments[i]
        with mapped_segment(path, data_end[1] if data_end is not None and data_end[0] == seq else None) as data:
            header = decode_header(path, data)
            if header.first_seq != seq:
                raise CorruptJournalError(path, 0, f"the header says the segment starts at seq {header.first_seq}, its name says {seq}")
            if prev_crc is not None and header.prev_crc != prev_crc:
                raise CorruptJournalError(
                    path, 0,
                    f"the header chains from crc {header.prev_crc:#010x} but the previous segment ends with {prev_crc:#010x} "
                    "(a segment is missing, or comes from another journal)",
                )
            yield SegmentStart(path, header)
            if start is not None and i == index:
                offset, seed = start.offset, start.prev_crc
            else:
                offset, seed = header.size, header.header_crc
            if payloads:
                while True:
                    found, after, seed, end = scan_payloads(data, offset, seed, _CHUNK)
                    if found:
                        yield offset, found
                    offset = after
                    if end is not None:
                        break
            else:
                while True:
                    chunk, offset, seed, end = scan_frames(data, offset, seed, _CHUNK)
                    if chunk:
                        yield chunk
                    if end is not None:
                        break
        last = i == len(segments) - 1
        damage = end.damage
        if damage is not None:
            if damage.torn and last:
                return WalkEnd(path, seq, end.offset, end.crc, TornTail(path, damage.offset, damage.stop, damage.reason))
            if damage.torn:
                reason = f"{damage.reason}, in a segment followed by {os.path.basename(segments[i + 1][1])}"
            else:
                reason = f"{damage.reason}, followed by more data"
            raise CorruptJournalError(path, damage.offset, reason)
        if last:
            return WalkEnd(path, seq, end.offset, end.crc, None)
        prev_crc = end.crc
    raise AssertionError("unreachable: the loop returns at the last segment")


class JournalReader:
    """Reads the records of a journal folder without taking its lock or changing a byte.

    Safe on a live host.  A torn frame at the very end is not repaired: the
    iteration stops before it and :attr:`tail` describes it (it may be a write
    in progress).  Damage anywhere else raises :class:`CorruptJournalError`
    once every record before it has been served.
    """

    def __init__(self, journal_dir: str | os.PathLike[str]) -> None:
        self.journal_dir = os.fspath(journal_dir)
        self.tail: TornTail | None = None
        self.end: WalkEnd | None = None

    def records(self, from_seq: int = 1, until: int | None = None, *, start: Position | None = None) -> Iterator[Record]:
        """Every record with ``from_seq <= seq <= until``, in seq order, each verified.

        ``start`` is a hint (a frame position at or before ``from_seq``, from a
        snapshot); without it the walk starts at the segment holding ``from_seq``.
        """
        for batch in self.batches(from_seq, until, start=start):
            yield from batch

    def batches(
        self,
        from_seq: int = 1,
        until: int | None = None,
        *,
        start: Position | None = None,
        decode: Callable[[bytes], list[Any]] | None = None,
        decode_chunk: Callable[[bytes], list[list[Any]]] | None = None,
        end: tuple[int, int] | None = None,
    ) -> Iterator[list[Any]]:
        """Like :meth:`records`, in lists of up to a chunk of frames' records: the fast path for replay.

        Every record in a list has been verified; damage found later raises
        only after the lists before it were served.  ``decode`` replaces the
        decoding of a frame's payload (a layer above can decode its events in
        the same call); it must return records with a ``seq`` attribute and
        raise ``msgspec.DecodeError`` for a payload it cannot decode, which is
        reported as corruption at that frame.  ``decode_chunk`` (optional, the
        fast path) decodes a msgpack array of many frames' payloads in one call;
        when it raises ``msgspec.DecodeError`` the frames of that chunk are
        decoded one by one with ``decode``, which finds the bad one.  ``end``
        (an open writer's :attr:`Journal.end_position`) bounds the read of the
        last segment to its verified data.
        """
        if start is None and from_seq > 1:
            start = segment_start_position(self.journal_dir, from_seq)
        expected = start.first_seq if start is not None else 1
        walker = _walk(self.journal_dir, start, 1, True, end)
        first_segment = True
        path = self.journal_dir
        if decode is None:
            decode = _decode_batch
            if decode_chunk is None:
                decode_chunk = _decode_chunk
        seq_of = _seq_of
        while True:
            try:
                item = next(walker)
            except StopIteration as stop:
                self.end = stop.value
                self.tail = self.end.torn if self.end is not None else None
                return
            if isinstance(item, SegmentStart):
                path = item.path
                mid_segment_start = first_segment and start is not None and item.header.first_seq <= expected
                first_segment = False
                if item.header.first_seq != expected and not mid_segment_start:
                    raise CorruptJournalError(
                        item.path, 0,
                        f"expected the segment to start at seq {expected}, it starts at {item.header.first_seq}: "
                        f"records {expected}..{item.header.first_seq - 1} are missing",
                    )
                continue
            offset, payloads = item
            decoded: list[list[Any]] | None = None
            if decode_chunk is not None and len(payloads) > 1:
                fast: list[Any] | None = None
                # A chunk decodes into one list per frame, freed together right below and holding no cycles:
                # the cyclic collector would only walk them (about a tenth of the replay), so it pauses here.
                collecting = gc.isenabled()
                gc.disable()
                try:
                    decoded = decode_chunk(_ARRAY32.pack(0xDD, len(payloads)) + b"".join(payloads))
                    # The fast path: no frame is empty and the records' seqs run on without a gap from
                    # ``expected``, so every frame's check below would pass; otherwise the loop finds the frame.
                    if expected >= from_seq and all(decoded):
                        out = list(chain.from_iterable(decoded))
                        last = expected + len(out) - 1
                        if (until is None or last < until) and list(map(seq_of, out)) == list(range(expected, last + 1)):
                            fast, decoded = out, None
                except (msgspec.DecodeError, RecursionError):
                    decoded = None  # one of them is bad or needs the slow path: decode them one by one
                finally:
                    if collecting:
                        gc.enable()
                if fast is not None:
                    expected += len(fast)
                    yield fast
                    continue
            out = []
            extend = out.extend
            for index, payload in enumerate(payloads):
                if index:
                    offset += FRAME_HEADER_SIZE + len(payloads[index - 1])
                try:
                    if decoded is not None:
                        batch = decoded[index]
                    else:
                        check_record_count(path, offset, payload)
                        batch = decode(payload)
                    first = batch[0].seq
                    last = batch[-1].seq
                except (msgspec.DecodeError, IndexError, RecursionError) as exc:
                    decode_payload(path, offset, payload)  # raises when the records themselves are damaged
                    raise CorruptJournalError(path, offset, f"frame verified but an event in it does not decode: {_decode_problem(exc)}") from exc
                if first != expected or last != first + len(batch) - 1:
                    if out:
                        yield out
                    raise CorruptJournalError(path, offset, f"expected records from seq {expected}, found seq {first}..{last}")
                expected = last + 1
                if last < from_seq:
                    continue
                if first < from_seq or (until is not None and last > until):
                    batch = [r for r in batch if r.seq >= from_seq and (until is None or r.seq <= until)]
                extend(batch)
                if until is not None and last >= until:
                    if out:
                        yield out
                    walker.close()
                    return
            if out:
                yield out


def segment_start_position(journal_dir: str, seq: int) -> Position | None:
    """The position of the first frame of the segment that holds ``seq`` (None if no segment starts at or before it)."""
    chosen: tuple[int, str] | None = None
    for first, path in list_segments(journal_dir):
        if first > seq:
            break
        chosen = (first, path)
    if chosen is None:
        return None
    with mapped_segment(chosen[1]) as data:
        header = decode_header(chosen[1], data)
        segment_crc = zlib.crc32(data[: header.size])
    return Position(chosen[0], header.size, header.header_crc, chosen[0], segment_crc)


def last_record_seq(journal_dir: str) -> int:
    """The seq of the last verified record of the journal (0 when it holds none), read-only.

    Reads only the last segment (from its first frame), so it costs a scan of
    one segment however long the history; records are not decoded beyond the
    envelope.  A torn frame at the end is not counted; damage before it raises
    :class:`CorruptJournalError`.
    """
    segments = list_segments(journal_dir)
    if not segments:
        return 0
    first = segments[-1][0]
    last = first - 1
    for batch in JournalReader(journal_dir).batches(first, start=segment_start_position(journal_dir, first)):
        last = batch[-1].seq
    return last
