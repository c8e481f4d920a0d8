"""One test per torn or corrupt journal shape (after LevelDB's log_test).

A torn tail (a bad frame followed only by zeros or the end of the file) is cut
back on open, its bytes copied to quarantine/ and the repair reported.  Any
other damage raises CorruptJournalError with the path and offset, and no
record at or after it is served.
"""

from __future__ import annotations

import logging
import os
import struct

import pytest
from _helpers import event, event_index, frames, rewrite_segment_version, segments, write_records

from shipslog.journal import (
    FORMAT_VERSION,
    HEADER_SIZE,
    CorruptJournalError,
    Journal,
    JournalReader,
    UnsupportedFormatError,
)

N = 10


def _cut(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _last_frame(root: str) -> tuple[str, int, int]:
    path = segments(root)[-1]
    off, length = frames(path)[-1]
    return path, off, length


def _assert_torn_tail_repaired(root: str, path: str, offset: int, damaged: int) -> None:
    with Journal.open(root) as j:
        repair = j.report.tail_repair
        assert repair is not None
        assert (repair.path, repair.offset, repair.length) == (path, offset, damaged)
        with open(repair.quarantined_to, "rb") as f:
            assert len(f.read()) == damaged
        assert [event_index(r.event) for r in j.records()] == list(range(1, N))
        assert j.append(event(99)).seq == N
    with Journal.open(root) as j:
        assert j.report.tail_repair is None
        assert [r.seq for r in j.records()] == list(range(1, N + 1))
        assert event_index(next(iter(j.records(N))).event) == 99


@pytest.mark.parametrize("preallocate", [True, False])
def test_tail_cut_inside_the_length(root: str, preallocate: bool) -> None:
    write_records(root, N, preallocate=preallocate)
    path, off, _ = _last_frame(root)
    _cut(path, off + 2)
    _assert_torn_tail_repaired(root, path, off, 2)


@pytest.mark.parametrize("preallocate", [True, False])
def test_tail_cut_inside_the_crc(root: str, preallocate: bool) -> None:
    write_records(root, N, preallocate=preallocate)
    path, off, _ = _last_frame(root)
    _cut(path, off + 6)
    _assert_torn_tail_repaired(root, path, off, 6)


@pytest.mark.parametrize("preallocate", [True, False])
def test_tail_cut_inside_the_payload(root: str, preallocate: bool) -> None:
    write_records(root, N, preallocate=preallocate)
    path, off, length = _last_frame(root)
    _cut(path, off + 8 + length // 2)
    _assert_torn_tail_repaired(root, path, off, 8 + length // 2)


@pytest.mark.parametrize("preallocate", [True, False])
def test_tail_crc_mismatch(root: str, preallocate: bool) -> None:
    write_records(root, N, preallocate=preallocate)
    path, off, length = _last_frame(root)
    _flip(path, off + 8 + length - 1)
    _assert_torn_tail_repaired(root, path, off, 8 + length)


def test_tail_payload_partly_zeros_is_torn(root: str) -> None:
    """A write that reached disk only in part (the rest still zeros) is a torn tail."""
    write_records(root, N)
    path, off, length = _last_frame(root)
    with open(path, "r+b") as f:
        f.seek(off + 8 + length // 2)
        f.write(bytes(length - length // 2))
    _assert_torn_tail_repaired(root, path, off, 8 + length)


def test_zero_filled_tail_is_not_damage(root: str) -> None:
    """Zeros after the last frame (a file grown but never written) end the data cleanly."""
    write_records(root, N, preallocate=False)
    path = segments(root)[-1]
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    with Journal.open(root, preallocate=False) as j:
        assert j.report.tail_repair is None
        assert [r.seq for r in j.records()] == list(range(1, N + 1))
        j.append(event(N + 1))
    assert [f[0] for f in frames(path)][-1] == size
    with Journal.open(root) as j:
        assert [event_index(r.event) for r in j.records()] == list(range(1, N + 2))


def test_bit_flip_in_the_middle_raises_with_path_and_offset(root: str) -> None:
    write_records(root, N)
    path = segments(root)[-1]
    off, length = frames(path)[4]
    _flip(path, off + 8 + length // 2)
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root)
    assert info.value.path == path
    assert info.value.offset == off
    assert "crc mismatch" in str(info.value) and "followed by more data" in str(info.value)
    served = []
    with pytest.raises(CorruptJournalError):
        for record in JournalReader(os.path.join(root, "journal")).records():
            served.append(record.seq)
    assert served == [1, 2, 3, 4]
    assert os.path.getsize(path) > off + 8 + length, "nothing may be cut back on corruption"


def test_bit_flip_in_a_length_field_in_the_middle_raises(root: str) -> None:
    """A damaged length that runs past the end of the file swallows valid frames: corruption, not a torn tail."""
    write_records(root, N, preallocate=False)
    path = segments(root)[-1]
    off, _length = frames(path)[3]
    with open(path, "r+b") as f:
        f.seek(off + 1)
        f.write(b"\x7f")
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, preallocate=False)
    assert info.value.offset == off
    assert os.path.getsize(path) > off + 100, "nothing may be cut back on corruption"


def test_zero_frame_header_followed_by_data_raises(root: str) -> None:
    """Zeros where a frame belongs, with records after them, are corruption (records would be lost)."""
    write_records(root, N, preallocate=False)
    path = segments(root)[-1]
    off, length = frames(path)[2]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes(8 + length))
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, preallocate=False)
    assert info.value.offset == off


def _three_segments(root: str) -> list[str]:
    with Journal.open(root, segment_bytes=512) as j:
        i = 0
        while len(segments(root)) < 3:
            i += 1
            j.append(event(i))
        j.append(event(i + 1))
    return segments(root)


def test_missing_segment_between_two_others(root: str) -> None:
    _first, middle, last = _three_segments(root)
    os.unlink(middle)
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, segment_bytes=512)
    assert info.value.path == last
    assert "a segment is missing" in str(info.value)
    served = []
    with pytest.raises(CorruptJournalError):
        for record in JournalReader(os.path.join(root, "journal")).records():
            served.append(record.seq)
    assert served == list(range(1, len(served) + 1))
    assert served, "records of the first segment are served before the error"


def test_missing_first_segment(root: str) -> None:
    first, _middle, _last = _three_segments(root)
    os.unlink(first)
    with pytest.raises(CorruptJournalError, match="earlier segments are missing"):
        Journal.open(root, segment_bytes=512)


def test_segment_with_an_unknown_format_version(root: str) -> None:
    write_records(root, N)
    path = segments(root)[0]
    rewrite_segment_version(path, 99)
    with pytest.raises(UnsupportedFormatError) as info:
        Journal.open(root)
    assert (info.value.found, info.value.supported) == (99, FORMAT_VERSION)
    assert "99" in str(info.value) and f"version {FORMAT_VERSION}" in str(info.value)


def test_a_flipped_bit_in_the_version_field_is_damage_not_a_newer_format(root: str) -> None:
    write_records(root, N)
    path = segments(root)[0]
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", 1 ^ 0x100))
    with pytest.raises(CorruptJournalError, match="segment header crc mismatch") as info:
        Journal.open(root)
    assert not isinstance(info.value, UnsupportedFormatError) and info.value.offset == 0


def test_empty_segment_file(root: str) -> None:
    write_records(root, N)
    empty = os.path.join(root, "journal", f"{N + 1:020d}.log")
    open(empty, "wb").close()
    with pytest.raises(CorruptJournalError, match="empty") as info:
        Journal.open(root)
    assert info.value.path == empty
    assert os.path.exists(empty), "a file shipslog did not write is never deleted"


def test_garbage_segment_file(root: str) -> None:
    write_records(root, N)
    garbage = os.path.join(root, "journal", f"{N + 1:020d}.log")
    with open(garbage, "wb") as f:
        f.write(bytes(range(256)) * 4)
    with pytest.raises(CorruptJournalError, match="magic") as info:
        Journal.open(root)
    assert info.value.path == garbage


def test_segment_header_crc_mismatch(root: str) -> None:
    write_records(root, N)
    path = segments(root)[0]
    _flip(path, 20)
    with pytest.raises(CorruptJournalError, match="header crc mismatch"):
        Journal.open(root)


def test_segment_named_for_another_seq(root: str) -> None:
    write_records(root, N)
    path = segments(root)[0]
    os.rename(path, os.path.join(root, "journal", f"{2:020d}.log"))
    with pytest.raises(CorruptJournalError, match="earlier segments are missing"):
        Journal.open(root)


def test_frame_moved_from_another_position_fails_its_chained_crc(root: str) -> None:
    """Swapping two whole, valid frames breaks the crc chain: corruption, not silent reordering."""
    write_records(root, N, preallocate=False)
    path = segments(root)[-1]
    (a, la), (b, lb) = frames(path)[2], frames(path)[3]
    with open(path, "r+b") as f:
        f.seek(a)
        fa = f.read(8 + la)
        f.seek(b)
        fb = f.read(8 + lb)
        f.seek(a)
        f.write(fb + fa)
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, preallocate=False)
    assert info.value.offset == a


def test_reader_reports_a_torn_tail_without_repairing(root: str) -> None:
    write_records(root, N)
    path, off, length = _last_frame(root)
    _cut(path, off + 8 + length // 2)
    before = _read(path)
    reader = JournalReader(os.path.join(root, "journal"))
    assert [r.seq for r in reader.records()] == list(range(1, N))
    assert reader.tail is not None and reader.tail.offset == off
    assert _read(path) == before


def test_torn_tail_repair_is_logged(root: str, caplog: pytest.LogCaptureFixture) -> None:
    write_records(root, N)
    path, off, _ = _last_frame(root)
    _cut(path, off + 3)
    with caplog.at_level(logging.WARNING, logger="shipslog.journal"):
        Journal.open(root).close()
    assert any("torn journal tail" in m and str(off) in m for m in caplog.messages)


def test_truncated_segment_header_raises(root: str) -> None:
    write_records(root, N)
    _cut(segments(root)[0], HEADER_SIZE - 1)
    with pytest.raises(CorruptJournalError, match=f"shorter than its {HEADER_SIZE}-byte header"):
        Journal.open(root)


def test_length_damaged_upward_inside_a_preallocated_segment_is_corruption(root: str) -> None:
    """A length grown into the zeroed reserve swallows acknowledged frames: never a torn tail."""
    write_records(root, N, segment_bytes=1 << 20)
    path = segments(root)[-1]
    off, length = frames(path)[2]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack("<I", length + 5000))
    with pytest.raises(CorruptJournalError) as info:
        Journal.open(root, segment_bytes=1 << 20)
    assert info.value.offset == off
    assert not os.path.exists(os.path.join(root, "quarantine")), "nothing was cut back"
