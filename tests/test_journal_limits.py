"""The journal's decoders are bounded: records per frame checked before decoding, linear work past damage.

One small test per shape, built with well-formed crcs, so only the rule under
test can refuse them.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import zlib
from typing import Any

import msgspec
import pytest
from _helpers import crafted_damage, frames, segments

from shipslog.journal import MAX_RECORDS_PER_FRAME, CorruptJournalError, Journal, JournalReader

_FRAME = struct.Struct("<II")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _frame_crc(data: bytes, off: int) -> int:
    return int(_FRAME.unpack_from(data, off)[1])


def _append_raw_frame(root: str, payload: bytes) -> None:
    """Write one frame after the last one of the last segment, in the crc chain, as a writer without limits would."""
    path = segments(root)[-1]
    data = _read(path)
    off, length = frames(path)[-1]
    prev = _frame_crc(data, off)
    end = off + 8 + length
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<I", len(payload)), prev))
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(_FRAME.pack(len(payload), crc) + payload)


def _records(first_seq: int, count: int) -> bytes:
    """A payload of ``count`` minimal records from ``first_seq``: a msgpack array32 of [seq, time, session, event]."""
    body = b"".join(msgspec.msgpack.encode([first_seq + i, 0.0, "s", None]) for i in range(count))
    return b"\xdd" + count.to_bytes(4, "big") + body


def test_a_frame_claiming_more_records_than_the_limit_is_refused_before_decoding(root: str) -> None:
    with Journal.open(root, fsync=False, segment_bytes=1 << 22) as journal:
        journal.append(b"\xc0")
    _append_raw_frame(root, _records(2, MAX_RECORDS_PER_FRAME + 1))
    with pytest.raises(CorruptJournalError, match=f"claims {MAX_RECORDS_PER_FRAME + 1} records; a frame holds at most"):
        list(JournalReader(os.path.join(root, "journal")).records())
    with pytest.raises(CorruptJournalError, match="claims"):
        Journal.open(root, fsync=False, segment_bytes=1 << 22)


def test_a_frame_of_exactly_the_record_limit_is_read(root: str) -> None:
    with Journal.open(root, fsync=False, segment_bytes=1 << 22) as journal:
        journal.append(b"\xc0")
    _append_raw_frame(root, _records(2, MAX_RECORDS_PER_FRAME))
    seqs = [r.seq for r in JournalReader(os.path.join(root, "journal")).records()]
    assert seqs == list(range(1, MAX_RECORDS_PER_FRAME + 2))


def test_a_group_commit_never_writes_more_records_per_frame_than_the_limit(root: str) -> None:
    sizes = [MAX_RECORDS_PER_FRAME - 1, 1, MAX_RECORDS_PER_FRAME, 2, 3] * 2
    with Journal.open(root, fsync=False, segment_bytes=1 << 24) as journal:
        barrier = threading.Barrier(len(sizes))

        def append(n: int) -> None:
            barrier.wait()
            journal.append_many([b"\xc0"] * n)

        threads = [threading.Thread(target=append, args=(n,)) for n in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert journal.last_seq == sum(sizes)
    path = segments(root)[-1]
    data = _read(path)
    counts = [len(msgspec.msgpack.decode(data[off + 8: off + 8 + n])) for off, n in frames(path)]
    assert sum(counts) == sum(sizes) and max(counts) <= MAX_RECORDS_PER_FRAME


def test_crafted_bytes_after_a_bad_frame_are_corruption_never_cut_back(root: str) -> None:
    """Bytes crafted so that many offsets look like frame starts: the search gives up within its budget and
    the damage is reported, never treated as a torn tail (which would cut the bytes back)."""
    with Journal.open(root, fsync=False, segment_bytes=1 << 22) as journal:
        journal.append(b"\xc0")
    path = segments(root)[-1]
    off, length = frames(path)[-1]
    end = off + 8 + length
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(crafted_damage(256 << 10))  # a bad frame whose claimed end lies in the zeros after the crafted bytes
    before = _read(path)
    with pytest.raises(CorruptJournalError, match="crc mismatch"):
        Journal.open(root, fsync=False, segment_bytes=1 << 22)
    assert _read(path) == before


def test_a_damaged_length_whose_next_frame_ends_in_zero_bytes_is_found(root: str) -> None:
    """The valid frame after the damage is the last one and its payload ends with 0x00: it is data, not zeros,
    so the damage is corruption in the middle of the log and the acknowledged record is never cut back."""
    with Journal.open(root, fsync=False, segment_bytes=1 << 22) as journal:
        journal.append(msgspec.msgpack.encode({"i": 1}))
        journal.append(msgspec.msgpack.encode({"i": 2, "n": 0}))
    path = segments(root)[-1]
    (first, _len1), (_second, len2) = frames(path)
    data = _read(path)
    assert data[_second + 8 + len2 - 1] == 0  # the last byte of the last frame is a zero
    with open(path, "r+b") as f:
        f.seek(first)
        f.write(struct.pack("<I", 4096))  # the first frame now swallows the second and ends in the zeros
    before = _read(path)
    with pytest.raises(CorruptJournalError, match="followed by more data"):
        Journal.open(root, fsync=False, segment_bytes=1 << 22)
    assert _read(path) == before


@pytest.mark.parametrize(
    "make",
    [
        lambda rnd, i: msgspec.msgpack.encode({"kind": "x.m", "op": "o", "loss": rnd.random(), "lr": 1e-4 * rnd.random(), "step": i}),
        lambda rnd, i: msgspec.msgpack.encode({"kind": "x.m", "op": "o", "ids": [rnd.randrange(1 << 20) for _ in range(300)]}),
    ],
    ids=["floats", "ints"],
)
def test_a_big_frame_torn_in_half_in_a_preallocated_segment_is_a_torn_tail(root: str, make: Any) -> None:
    """The half that reached the disk is binary data full of offsets that look like frame starts; none of them
    may pose as a frame reaching into the zeros after it, or a real power cut would make the root unusable."""
    rnd = random.Random(7)
    with Journal.open(root, fsync=False, segment_bytes=8 << 20) as journal:
        journal.append(b"\xc0")
        journal.append_many([make(rnd, i) for i in range(2000)])
    path = segments(root)[-1]
    (_first, _), (last, length) = frames(path)
    with open(path, "r+b") as f:
        f.seek(last + 8 + length // 2)
        f.write(bytes(length - length // 2))  # the second half never reached the disk
    with Journal.open(root, fsync=False, segment_bytes=8 << 20) as journal:
        assert journal.report.tail_repair is not None and journal.report.tail_repair.offset == last
        assert journal.last_seq == 1
