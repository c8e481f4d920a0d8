"""The journal's normal behaviour: appends, reads from any seq, segment rolls,
group commit, snapshots and reopening."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from typing import Any

import msgspec
import pytest
from _helpers import (
    GatedSyncFs,
    event,
    event_index,
    frames,
    queue_behind_held_sync,
    segments,
    write_records,
)

from shipslog.journal import (
    HEADER_SIZE,
    CorruptJournalError,
    Journal,
    JournalReader,
    Record,
    RecordingFileSystem,
    list_snapshots,
)


def test_append_returns_consecutive_durable_records(root: str) -> None:
    with Journal.open(root) as j:
        records = [j.append(event(i)) for i in range(1, 6)]
        assert [r.seq for r in records] == [1, 2, 3, 4, 5]
        assert {r.session for r in records} == {j.session}
        assert j.last_seq == 5
    with Journal.open(root) as j:
        again = list(j.records())
        assert [event_index(r.event) for r in again] == [1, 2, 3, 4, 5]
        assert [r.time for r in again] == [r.time for r in records]
        assert j.session != records[0].session


def test_append_many_is_one_frame(root: str) -> None:
    with Journal.open(root) as j:
        out = j.append_many([event(1), event(2), event(3)])
        assert [r.seq for r in out] == [1, 2, 3]
    assert len(frames(segments(root)[0])) == 1


def test_an_empty_root_is_created_with_one_segment(root: str) -> None:
    with Journal.open(root) as j:
        assert j.report.created
        assert j.last_seq == 0
        assert list(j.records()) == []
    assert [os.path.basename(p) for p in segments(root)] == [f"{1:020d}.log"]


def test_records_from_any_seq_across_segments(root: str) -> None:
    write_records(root, 120, segment_bytes=1024)
    assert len(segments(root)) > 3
    with Journal.open(root, segment_bytes=1024) as j:
        for start in (1, 2, 37, 64, 119, 120):
            assert [r.seq for r in j.records(start)] == list(range(start, 121))
        assert [r.seq for r in j.records(10, 20)] == list(range(10, 21))
        assert list(j.records(121)) == []
    reader = JournalReader(os.path.join(root, "journal"))
    assert [r.seq for r in reader.records(50, 55)] == [50, 51, 52, 53, 54, 55]


def test_segments_roll_and_keep_their_reservation(root: str) -> None:
    """Sealed segments are never truncated (a reader may have them mapped); their data fills them."""
    write_records(root, 120, segment_bytes=1024)
    paths = segments(root)
    for path in paths:
        assert os.path.getsize(path) == 1024
    for sealed in paths[:-1]:
        used = frames(sealed)[-1][0] + 8 + frames(sealed)[-1][1]
        assert 1024 - 120 < used <= 1024, "a segment rolls only when the next frame does not fit"
    firsts = [int(os.path.basename(p)[:-4]) for p in paths]
    assert firsts[0] == 1 and firsts == sorted(firsts)


def test_segments_are_ordered_by_number_not_name(root: str) -> None:
    write_records(root, 30, segment_bytes=300)
    names = [os.path.basename(p) for p in segments(root)]
    assert [int(n[:-4]) for n in names] == sorted(int(n[:-4]) for n in names)
    with Journal.open(root, segment_bytes=300) as j:
        assert [r.seq for r in j.records()] == list(range(1, 31))


def test_roll_fsyncs_the_folder_after_creating_a_segment(root: str) -> None:
    fs = RecordingFileSystem()
    with Journal.open(root, fs=fs, segment_bytes=300) as j:
        while len(segments(root)) < 2:
            j.append(event(1))
    ops = fs.ops
    new = segments(root)[1]
    rename = next(i for i, o in enumerate(ops) if o.op == "replace" and o.target == new)
    assert any(o.op == "fsync" and o.path == os.path.dirname(new) for o in ops[rename:])
    tmp = ops[rename].path
    tmp_fsync = max(i for i, o in enumerate(ops[:rename]) if o.op == "fsync" and o.path == tmp)
    tmp_write = max(i for i, o in enumerate(ops[:rename]) if o.op == "write" and o.path == tmp)
    assert tmp_write < tmp_fsync < rename


def test_append_is_written_then_fsynced_before_it_returns(root: str) -> None:
    fs = RecordingFileSystem()
    with Journal.open(root, fs=fs) as j:
        n = len(fs.ops)
        j.append(event(1))
        assert fs.names()[n:] == ["write", "fdatasync"]


def test_group_commit_shares_one_write_and_one_fsync(root: str) -> None:
    fs = GatedSyncFs()
    j = Journal.open(root, fs=fs)
    results: dict[int, int] = {}

    def append(i: int) -> None:
        results[i] = j.append(event(i)).seq

    threads = queue_behind_held_sync(j, fs, append, 0, range(1, 8))
    before = fs.count("fdatasync")
    start = len(fs.ops)
    fs.release.set()
    for t in threads:
        t.join(30)
    assert sorted(results.values()) == list(range(1, 9))
    assert fs.count("fdatasync") - before == 2, "the leader's fsync, then one shared by all seven followers"
    # The followers' frame is written only after the leader's fdatasync returned: never two unsynced frames.
    assert fs.names()[start:] == ["fdatasync", "write", "fdatasync"]
    j.close()
    assert len(frames(segments(root)[0])) == 2


def test_many_threads_appending_lose_nothing(root: str) -> None:
    j = Journal.open(root, segment_bytes=4096)
    per_thread = 60
    got: dict[int, list[int]] = {}

    def worker(t: int) -> None:
        got[t] = [j.append(event(t * 1000 + k)).seq for k in range(per_thread)]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    j.close()
    for seqs in got.values():
        assert seqs == sorted(seqs)
    with Journal.open(root, segment_bytes=4096) as again:
        records = list(again.records())
    assert [r.seq for r in records] == list(range(1, 8 * per_thread + 1))
    by_seq = {r.seq: event_index(r.event) for r in records}
    for t, seqs in got.items():
        assert [by_seq[s] for s in seqs] == [t * 1000 + k for k in range(per_thread)]


def test_threads_that_appended_once_are_forgotten_and_their_records_kept(root: str) -> None:
    j = Journal.open(root, fsync=False)
    done = threading.Event()

    def append_once(i: int, go: threading.Event, went: threading.Event) -> None:
        go.wait(30)
        j.append(event(i))
        went.set()
        done.wait(30)  # alive to the end: no two of them share a thread id

    threads = []
    for i in range(100):  # one thread after another appends once: every append is uncontended
        go, went = threading.Event(), threading.Event()
        threads.append(threading.Thread(target=append_once, args=(i, go, went)))
        threads[-1].start()
        go.set()
        assert went.wait(30)
    j.append(event(100))
    assert len(j._seen) <= 17, "the appenders remembered stay bounded however many threads came and went"
    done.set()
    for t in threads:
        t.join(30)
    j.close()
    with Journal.open(root) as again:
        assert [event_index(r.event) for r in again.records()] == list(range(101))


def test_close_is_idempotent_and_releases_the_lock(root: str) -> None:
    j = Journal.open(root)
    j.close()
    j.close()
    Journal.open(root).close()


def test_snapshot_is_used_on_open_and_replay_starts_after_it(root: str) -> None:
    with Journal.open(root, segment_bytes=1024) as j:
        for i in range(1, 101):
            j.append(event(i))
            if i == 70:
                snap = j.save_snapshot(70, b"state-at-70")
        for i in range(101, 111):
            j.append(event(i))
    assert snap.position.first_seq == 70
    with Journal.open(root, segment_bytes=1024) as j:
        assert j.snapshot is not None
        assert (j.snapshot.seq, j.snapshot.payload) == (70, b"state-at-70")
        assert [r.seq for r in j.records(71)] == list(range(71, 111))
        assert [r.seq for r in j.records()] == list(range(1, 111))


def test_damage_in_a_sealed_segment_before_the_snapshot_is_found_at_open(root: str) -> None:
    with Journal.open(root, segment_bytes=512) as j:
        for i in range(1, 80):
            j.append(event(i))
        j.save_snapshot(79, b"s")
        j.append(event(80))
    first = segments(root)[0]
    assert len(segments(root)) > 2
    with open(first, "r+b") as f:  # damage history before the snapshot
        f.seek(HEADER_SIZE + 20)
        f.write(b"\xff\xff")
    with pytest.raises(CorruptJournalError) as caught:
        Journal.open(root, segment_bytes=512)
    assert caught.value.path == first
    assert caught.value.offset == HEADER_SIZE  # the bad frame is named, not only the seal


@pytest.mark.parametrize("damaged", [False, True])
def test_a_sealed_segment_large_enough_to_be_checksummed_on_several_threads_verifies_or_is_refused(root: str, damaged: bool) -> None:
    big = msgspec.msgpack.encode({"kind": "blob", "op": "x", "pad": b"\x07" * (1 << 20)})
    with Journal.open(root, fsync=False, segment_bytes=24 << 20) as j:
        while len(segments(root)) < 2:
            j.append(big)
        j.append(event(1))
        j.save_snapshot(j.last_seq, b"s")
    first = segments(root)[0]
    assert os.path.getsize(first) >= 20 << 20  # spans past the size checksummed on several threads
    if damaged:
        with open(first, "r+b") as f:  # one bit, deep in the sealed segment
            f.seek(17 << 20)
            byte = f.read(1)[0]
            f.seek(17 << 20)
            f.write(bytes([byte ^ 0x10]))
        with pytest.raises(CorruptJournalError) as caught:
            Journal.open(root, segment_bytes=24 << 20)
        assert caught.value.path == first
    else:
        with Journal.open(root, segment_bytes=24 << 20) as j:
            j.wait_verified()
            assert j.snapshot is not None and j.snapshot.payload == b"s"


def test_damage_before_the_snapshot_in_its_own_segment_is_found_at_open(root: str) -> None:
    with Journal.open(root) as j:
        for i in range(1, 40):
            j.append(event(i))
        j.save_snapshot(39, b"s")
        j.append(event(40))
    [only] = segments(root)
    with open(only, "r+b") as f:
        f.seek(100)
        f.write(bytes([f.read(1)[0] ^ 2]))
    with pytest.raises(CorruptJournalError) as caught:
        Journal.open(root)
    assert caught.value.path == only
    assert caught.value.offset is not None and caught.value.offset <= 100


def test_a_root_keeps_the_segment_size_it_was_created_with(root: str) -> None:
    with Journal.open(root, segment_bytes=4096) as j:
        j.append(event(1))
    with Journal.open(root) as j:  # no size given: the root's own
        for i in range(2, 200):
            j.append(event(i))
    sizes = [os.path.getsize(path) for path in segments(root)]
    assert len(sizes) > 2
    assert max(sizes) == 4096


def test_old_snapshots_are_pruned(root: str) -> None:
    with Journal.open(root, keep_snapshots=2) as j:
        for i in range(1, 6):
            j.append(event(i))
            j.save_snapshot(i, b"s%d" % i)
    assert [seq for seq, _ in list_snapshots(os.path.join(root, "snapshots"))] == [5, 4]


def test_snapshot_with_a_bad_checksum_falls_back_to_the_older_one(
    root: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Journal.open(root) as j:
        for i in range(1, 31):
            j.append(event(i))
            if i in (10, 20):
                j.save_snapshot(i, b"at-%d" % i)
    newest = list_snapshots(os.path.join(root, "snapshots"))[0][1]
    with open(newest, "r+b") as f:
        f.seek(-6, os.SEEK_END)
        f.write(b"\x00")
    with caplog.at_level(logging.WARNING, logger="shipslog.journal"), Journal.open(root) as j:
        assert j.snapshot is not None and j.snapshot.seq == 10
        assert j.snapshot.payload == b"at-10"
        assert [p for p, _ in j.report.skipped_snapshots] == [newest]
        assert "checksum mismatch" in j.report.skipped_snapshots[0][1]
        assert [r.seq for r in j.records()] == list(range(1, 31))
    assert any("ignoring snapshot" in m and newest in m for m in caplog.messages)
    assert os.path.exists(newest), "a damaged snapshot is reported, not deleted"


def test_snapshot_of_a_newer_format_is_ignored(root: str) -> None:
    with Journal.open(root) as j:
        j.append(event(1))
        j.save_snapshot(1, b"x")
    path = list_snapshots(os.path.join(root, "snapshots"))[0][1]
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"\x07\x00")
    with Journal.open(root) as j:
        assert j.snapshot is None
        assert "version 7" in j.report.skipped_snapshots[0][1]


def test_snapshot_beyond_the_end_of_the_journal_is_refused(root: str) -> None:
    with Journal.open(root) as j:
        j.append(event(1))
        with pytest.raises(ValueError, match="durable seq"):
            j.save_snapshot(2, b"x")


def test_a_leader_writes_the_capped_batches_queued_before_its_own(root: str) -> None:
    """Batches are capped in size; a leader queued behind large appends must still get its own records written."""
    fs = GatedSyncFs()
    j = Journal.open(root, fs=fs, preallocate=False)
    results: dict[str, list[int]] = {}
    big = event(0, size=3 * 1024 * 1024)

    def append(name: str, events: list[bytes]) -> None:
        results[name] = [r.seq for r in j.append_many(events)]

    fs.armed = True
    first = threading.Thread(target=append, args=("first", [event(1)]))
    first.start()
    assert fs.entered.wait(30)
    queued = [threading.Thread(target=append, args=(f"big{k}", [big])) for k in range(2)]
    queued.append(threading.Thread(target=append, args=("small", [event(2)])))
    for k, t in enumerate(queued):
        t.start()
        deadline = time.monotonic() + 30
        while len(j._queue) < k + 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    fs.release.set()
    for t in [first, *queued]:
        t.join(30)
    assert results == {"first": [1], "big0": [2], "big1": [3], "small": [4]}
    closer = threading.Thread(target=j.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close must not hang on a stranded append"


def test_reading_across_a_roll_while_the_writer_rolls(root: str) -> None:
    """A reader holding a segment mapped keeps working when the writer moves to the next one."""
    with Journal.open(root, segment_bytes=1 << 20) as j:
        for i in range(1, 1501):
            j.append(event(i))
        assert len(segments(root)) == 1
        it = j.records(1)
        assert next(it).seq == 1  # the first segment is mapped, its first chunk read
        start = len(segments(root))
        i = 1500
        while len(segments(root)) == start:
            i += 1
            j.append(event(i))
        assert [r.seq for r in it] == list(range(2, 1501))


def test_a_snapshot_saved_after_reopening_is_used_by_the_next_open(root: str) -> None:
    write_records(root, 10)
    with Journal.open(root) as j:
        j.save_snapshot(8, b"at-8")
    with Journal.open(root) as j:
        assert j.report.skipped_snapshots == []
        assert j.snapshot is not None and (j.snapshot.seq, j.snapshot.payload) == (8, b"at-8")
        assert [r.seq for r in j.records(9)] == [9, 10]


def test_unsynced_append_becomes_durable_before_the_next_frame_is_written(root: str) -> None:
    """At most one frame is ever unsynced, so a power cut can tear only the journal's last frame."""
    fs = RecordingFileSystem()
    with Journal.open(root, fs=fs) as j:
        j.append(event(1))
        before = fs.count("fdatasync")
        lazy = j.append_many([event(2)], sync=False)
        assert lazy[0].seq == 2
        assert fs.count("fdatasync") == before
        assert j.last_seq == 1
        assert [r.seq for r in j.records()] == [1]
        mark = len(fs.ops)
        j.append(event(3))
        assert [o.op for o in fs.ops[mark:]] == ["fdatasync", "write", "fdatasync"]  # frame 2 durable, then frame 3
        assert j.last_seq == 3
        assert [event_index(r.event) for r in j.records()] == [1, 2, 3]


def test_close_makes_an_unsynced_append_durable(root: str) -> None:
    fs = RecordingFileSystem()
    with Journal.open(root, fs=fs) as j:
        j.append_many([event(1)], sync=False)
        before = fs.count("fdatasync")
    assert fs.count("fdatasync") == before + 1
    assert [event_index(r.event) for r in JournalReader(os.path.join(root, "journal")).records()] == [1]


def test_roll_makes_unsynced_frames_of_the_old_segment_durable(root: str) -> None:
    fs = RecordingFileSystem()
    with Journal.open(root, fs=fs, segment_bytes=HEADER_SIZE + 200, preallocate=False) as j:
        j.append_many([event(1)], sync=False)
        j.append_many([event(2)], sync=False)
        j.append_many([event(3)], sync=False)
        assert len(segments(root)) > 1
        assert j.last_seq >= 1
    assert [event_index(r.event) for r in JournalReader(os.path.join(root, "journal")).records()] == [1, 2, 3]


def test_sync_makes_unsynced_records_durable_and_then_does_nothing(root: str) -> None:
    fs = RecordingFileSystem()
    with Journal.open(root, fs=fs) as j:
        j.append_many([event(1)], sync=False)
        assert j.last_seq == 0
        before = fs.count("fdatasync")
        j.sync()
        assert (j.last_seq, fs.count("fdatasync")) == (1, before + 1)
        j.sync()
        assert fs.count("fdatasync") == before + 1
        assert [event_index(r.event) for r in j.records()] == [1]


def test_a_reader_given_the_writers_end_reads_no_byte_past_it(root: str) -> None:
    with Journal.open(root) as j:
        for i in range(1, 6):
            j.append(event(i))
        end = j.end_position
    [path] = segments(root)
    with open(path, "r+b") as f:  # bytes past the end the writer knows: a reader that scans them calls them damage
        f.seek(end[1] + 4096)
        f.write(b"\xff" * 16)
    bounded = JournalReader(os.path.join(root, "journal"))
    assert [r.seq for batch in bounded.batches(end=end) for r in batch] == [1, 2, 3, 4, 5]
    assert bounded.tail is None  # it never looked past the end
    unbounded = JournalReader(os.path.join(root, "journal"))
    assert [r.seq for batch in unbounded.batches() for r in batch] == [1, 2, 3, 4, 5]
    assert unbounded.tail is not None  # the bytes past the end, seen as a torn write


def test_reading_leaves_the_cyclic_collector_as_it_found_it(root: str) -> None:
    """Decoding a chunk pauses the collector; it is back on afterwards, also when the chunk fails to decode."""
    write_records(root, 50)
    journal_dir = os.path.join(root, "journal")
    assert gc.isenabled()
    assert [r.seq for r in JournalReader(journal_dir).records()] == list(range(1, 51))
    assert gc.isenabled()

    def failing_chunk(data: bytes) -> list[list[Any]]:
        assert not gc.isenabled()
        raise msgspec.DecodeError("a chunk that does not decode: the frames are decoded one by one")

    decode_one = msgspec.msgpack.Decoder(list[Record]).decode
    batches = JournalReader(journal_dir).batches(decode=decode_one, decode_chunk=failing_chunk)
    assert [r.seq for batch in batches for r in batch] == list(range(1, 51))
    assert gc.isenabled()
    gc.disable()
    try:
        assert len(list(JournalReader(journal_dir).records())) == 50
        assert not gc.isenabled(), "a collector the caller turned off stays off"
    finally:
        gc.enable()
