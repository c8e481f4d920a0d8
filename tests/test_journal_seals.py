"""Every byte of the history before a snapshot is verified at open: segments sealed by their successors' headers,
the snapshot's own segment by the crc recorded with its position; version-1 journals and snapshots by walking."""

from __future__ import annotations

import itertools
import os
import zlib

import pytest
from _engine_helpers import flip_bit
from _helpers import (
    downgrade_to_version_1,
    event,
    event_index,
    frames,
    segments,
    write_version_1_snapshot,
)

from shipslog.journal import (
    HEADER_SIZE,
    CorruptJournalError,
    Journal,
    list_snapshots,
    read_segment_header,
    read_snapshot,
)

SMALL = 512
V1_HEADER_SIZE = 36


def _history(root: str, n: int, *, snapshot_at: int | None = None, **kw: object) -> None:
    with Journal.open(root, segment_bytes=SMALL, **kw) as j:  # type: ignore[arg-type]
        for i in range(1, n + 1):
            j.append(event(i))
            if i == snapshot_at:
                j.save_snapshot(i, b"state")


def test_each_segment_is_sealed_by_the_header_of_the_next(root: str) -> None:
    _history(root, 60)
    paths = segments(root)
    assert len(paths) > 3
    assert read_segment_header(paths[0]).prev_end == 0
    for older, newer in itertools.pairwise(paths):
        header = read_segment_header(newer)
        with open(older, "rb") as f:
            data = f.read()
        last_off, last_len = frames(older)[-1]
        assert header.prev_end == last_off + 8 + last_len
        assert header.prev_body_crc == zlib.crc32(data[: header.prev_end])
        assert header.segment_bytes == SMALL
        assert not any(data[header.prev_end:])


def test_a_flipped_bit_in_a_sealed_segment_names_its_frame(root: str) -> None:
    _history(root, 60, snapshot_at=55)
    first = segments(root)[0]
    flip_bit(first, HEADER_SIZE + 30)
    with pytest.raises(CorruptJournalError, match="frame crc mismatch") as caught:
        Journal.open(root)
    assert (caught.value.path, caught.value.offset) == (first, HEADER_SIZE)


def test_a_flipped_bit_in_the_zeros_after_a_sealed_segment(root: str) -> None:
    _history(root, 60, snapshot_at=55)
    first, second = segments(root)[:2]
    end = read_segment_header(second).prev_end
    assert os.path.getsize(first) > end
    flip_bit(first, os.path.getsize(first) - 1)
    with pytest.raises(CorruptJournalError, match="non-zero bytes after the last frame") as caught:
        Journal.open(root)
    assert (caught.value.path, caught.value.offset) == (first, end)


def test_a_sealed_segment_cut_short(root: str) -> None:
    _history(root, 60, snapshot_at=55)
    first, second = segments(root)[:2]
    end = read_segment_header(second).prev_end
    with open(first, "r+b") as f:
        f.truncate(end - 3)
    with pytest.raises(CorruptJournalError, match="cut short or replaced") as caught:
        Journal.open(root)
    assert caught.value.path == first


def test_a_sealed_segment_replaced_by_another_with_valid_frames(root: str, tmp_path: object) -> None:
    other = os.path.join(str(tmp_path), "other")
    _history(other, 60)
    _history(root, 60, snapshot_at=55)
    first = segments(root)[0]
    with open(segments(other)[0], "rb") as f:  # the same records, written by another journal (another session)
        replacement = f.read()
    with open(first, "wb") as f:
        f.write(replacement)
    with pytest.raises(CorruptJournalError) as caught:
        Journal.open(root)
    assert caught.value.path == first


def test_a_flipped_bit_before_the_snapshot_in_its_own_segment(root: str) -> None:
    with Journal.open(root) as j:
        for i in range(1, 30):
            j.append(event(i))
        snap = j.save_snapshot(29, b"state")
        j.append(event(30))
    assert snap.position.segment_crc is not None
    [only] = segments(root)
    flip_bit(only, snap.position.offset - 5)  # inside the last frame before the snapshot's position
    with pytest.raises(CorruptJournalError, match="frame crc mismatch") as caught:
        Journal.open(root)
    assert caught.value.path == only and caught.value.offset is not None and caught.value.offset < snap.position.offset


def test_a_clean_history_opens_from_the_snapshot(root: str) -> None:
    _history(root, 60, snapshot_at=55)
    with Journal.open(root) as j:
        assert j.snapshot is not None and j.snapshot.seq == 55
        assert [event_index(r.event) for r in j.records(50)] == list(range(50, 61))


def test_a_version_1_journal_is_read_and_sealed_by_the_next_version_2_segment(root: str) -> None:
    _history(root, 40)
    downgrade_to_version_1(root)
    old = segments(root)
    assert {read_segment_header(p).version for p in old} == {1}
    with Journal.open(root, segment_bytes=SMALL) as j:
        assert [event_index(r.event) for r in j.records()] == list(range(1, 41))
        for i in range(41, 61):
            j.append(event(i))
        j.save_snapshot(60, b"state")
    new = [p for p in segments(root) if p not in old]
    assert new and read_segment_header(new[0]).version == 2
    assert read_segment_header(new[0]).prev_body_crc != 0  # the last version-1 segment is sealed
    with Journal.open(root) as j:
        assert j.snapshot is not None and j.snapshot.seq == 60
        assert [event_index(r.event) for r in j.records(1)] == list(range(1, 61))
    second_frame = frames(old[0], V1_HEADER_SIZE)[1][0]
    flip_bit(old[0], second_frame + 12)  # a version-1 segment sealed by none: found by walking its frames
    with pytest.raises(CorruptJournalError, match="frame crc mismatch") as caught:
        Journal.open(root)
    assert (caught.value.path, caught.value.offset) == (old[0], second_frame)


def test_a_version_1_snapshot_is_used_and_the_bytes_before_it_walked(root: str) -> None:
    with Journal.open(root) as j:
        for i in range(1, 30):
            j.append(event(i))
        snap = j.save_snapshot(25, b"state")
        j.append(event(30))
    folder = os.path.join(root, "snapshots")
    for _seq, path in list_snapshots(folder):
        os.unlink(path)
    pos = snap.position
    write_version_1_snapshot(os.path.join(folder, os.path.basename(snap.path)), 25, (pos.segment, pos.offset, pos.prev_crc, pos.first_seq), b"state")
    assert read_snapshot(os.path.join(folder, os.path.basename(snap.path))).position.segment_crc is None
    with Journal.open(root) as j:
        assert j.snapshot is not None and j.snapshot.seq == 25
    [only] = segments(root)
    flip_bit(only, HEADER_SIZE + 9)
    with pytest.raises(CorruptJournalError, match="frame crc mismatch") as caught:
        Journal.open(root)
    assert (caught.value.path, caught.value.offset) == (only, HEADER_SIZE)
