"""What a power cut leaves at the end of the journal, one test per shape.

The writer never writes a frame before the one before it is durable, so a
power cut can tear only the last frame: its header sector lost or garbage,
some payload sectors written and others not.  Such a tail is cut back; the
same damage with durable frames after it (found by the chain, or as two
chained frames) is corruption and is never cut back.
"""

from __future__ import annotations

import os
import random

import pytest
from _helpers import event, event_index, frames, segments, write_records

from shipslog.journal import MAX_FRAME_BYTES, CorruptJournalError, Journal, JournalReader

N = 6


def _last_frame(root: str) -> tuple[str, int, int]:
    path = segments(root)[-1]
    off, length = frames(path)[-1]
    return path, off, length


def _overwrite(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _served(root: str) -> list[int]:
    return [event_index(r.event) for r in JournalReader(os.path.join(root, "journal")).records()]


def test_a_last_frame_whose_header_sector_was_lost_is_a_torn_tail(root: str) -> None:
    write_records(root, N, preallocate=False)
    path, off, _length = _last_frame(root)
    _overwrite(path, off, bytes(8))  # the header's sector never reached the disk; the payload's did
    assert _served(root) == list(range(1, N))
    with Journal.open(root, preallocate=False) as j:
        assert j.report.tail_repair is not None and j.report.tail_repair.offset == off
        j.append(event(N + 1))
    assert _served(root) == [*range(1, N), N + 1]


def test_a_last_frame_whose_header_was_torn_to_garbage_is_a_torn_tail(root: str) -> None:
    write_records(root, N, preallocate=False)
    path, off, _length = _last_frame(root)
    _overwrite(path, off, b"\xff\xee\xdd\xcc\x11\x22\x33\x44")  # a length far above the limit
    with Journal.open(root, preallocate=False) as j:
        assert j.report.tail_repair is not None
    assert _served(root) == list(range(1, N))


def test_a_last_frame_with_a_torn_payload_sector_and_garbage_after_it_is_cut_back_whole(root: str) -> None:
    write_records(root, N, segment_bytes=1 << 16)
    path, off, length = _last_frame(root)
    _overwrite(path, off + 8 + length // 2, random.Random(1).randbytes(length // 2 + 700))  # torn, and past its end
    with Journal.open(root, segment_bytes=1 << 16) as j:
        repair = j.report.tail_repair
        assert repair is not None and repair.offset == off and repair.length >= length + 700
    with open(path, "rb") as f:
        f.seek(off)
        assert f.read(8 + length + 700) == bytes(8 + length + 700), "every byte of the torn write is zeroed"


def test_a_repaired_tail_stays_repaired_after_the_segment_rolls(root: str) -> None:
    write_records(root, N, segment_bytes=1024)
    path, off, _length = _last_frame(root)
    _overwrite(path, off + 8, random.Random(2).randbytes(1024 - off - 8))  # torn to the end of the segment
    with Journal.open(root, segment_bytes=1024) as j:
        for i in range(N, N + 60):  # past the end of this segment, into new ones
            j.append(event(i))
    assert len(segments(root)) > 1
    assert _served(root) == [*range(1, N), *range(N, N + 60)]


def test_a_lost_header_followed_by_two_chained_frames_is_corruption(root: str) -> None:
    write_records(root, N, preallocate=False)
    path = segments(root)[-1]
    off, _length = frames(path)[-3]  # two durable frames follow it
    _overwrite(path, off, bytes(8))
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, preallocate=False)
    assert info.value.offset == off


def test_a_garbage_header_followed_by_two_chained_frames_is_corruption(root: str) -> None:
    write_records(root, N, preallocate=False)
    path = segments(root)[-1]
    off, _length = frames(path)[-3]
    _overwrite(path, off, b"\xff\xee\xdd\xcc\x11\x22\x33\x44")
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, preallocate=False)
    assert info.value.offset == off


def test_damage_with_data_further_than_one_frame_after_it_is_corruption(root: str) -> None:
    segment = 2 * MAX_FRAME_BYTES + (1 << 20)
    write_records(root, N, segment_bytes=segment)
    path, off, _length = _last_frame(root)
    _overwrite(path, off, bytes(8))
    _overwrite(path, off + 8 + MAX_FRAME_BYTES + 1000, b"\x01")  # no single torn write reaches that far
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, segment_bytes=segment)
    assert info.value.offset == off
