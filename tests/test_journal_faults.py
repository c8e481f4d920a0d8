"""Injected I/O faults: fsync failing with EIO, writes failing with ENOSPC part-way,
short writes, and failures while rolling to a new segment.

Faults are injected by patching the ``os`` functions the primitives call.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import GatedSyncFs, event, event_index, frames, queue_behind_held_sync, segments

from shipslog.journal import (
    InsufficientSpaceError,
    Journal,
    JournalBrokenError,
    JournalClosedError,
    JournalWriteError,
    RecordingFileSystem,
    ShipslogError,
)


def _failing(err: int, *, after: int = 0, real: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A stand-in that lets the first ``after`` calls through to ``real``, then raises OSError(err)."""
    calls = {"n": 0}

    def fake(*args: Any) -> Any:
        calls["n"] += 1
        if real is not None and calls["n"] <= after:
            return real(*args)
        raise OSError(err, os.strerror(err))

    return fake


def test_fsync_eio_breaks_the_journal(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal.open(root)
    acknowledged = [j.append(event(i)).seq for i in range(1, 6)]
    monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
    with pytest.raises(JournalBrokenError) as info:
        j.append(event(6))
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EIO
    assert j.broken is not None
    monkeypatch.undo()
    # never retried: every later call fails fast, even with a healthy disk
    with pytest.raises(JournalBrokenError, match="broken"):
        j.append(event(7))
    with pytest.raises(JournalBrokenError):
        list(j.records())
    j.close()
    with Journal.open(root) as again:
        seqs = [r.seq for r in again.records()]
        assert seqs[:5] == acknowledged
        assert [event_index(r.event) for r in again.records(1, 5)] == [1, 2, 3, 4, 5]
        assert again.append(event(8)).seq == len(seqs) + 1


def test_fsync_eio_fails_every_waiter_of_the_batch(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal.open(root) as j:
        monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
        with pytest.raises(JournalBrokenError):
            j.append_many([event(1), event(2)])
        assert j.last_seq == 0


def test_broken_and_closed_are_different_errors(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal.open(root)
    j.close()
    with pytest.raises(JournalClosedError) as closed:
        j.append(event(1))
    assert not isinstance(closed.value, JournalBrokenError)
    assert isinstance(closed.value, ValueError) and isinstance(closed.value, ShipslogError)
    j2 = Journal.open(root)
    monkeypatch.setattr(os, "fdatasync", _failing(errno.EIO))
    with pytest.raises(JournalBrokenError) as broken:
        j2.append(event(1))
    assert not isinstance(broken.value, JournalClosedError)
    assert isinstance(broken.value, OSError)
    j2.close()


def _partial_then_enospc(monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, int]:
    real = getattr(os, name)
    state = {"calls": 0, "written": 0}

    def fake(fd: int, data: Any, *rest: Any) -> int:
        state["calls"] += 1
        if state["calls"] == 1:
            half = memoryview(data)[: max(1, len(data) // 2)]
            n: int = real(fd, half, *rest)
            state["written"] = n
            return n
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, name, fake)
    return state


@pytest.mark.parametrize("preallocate", [True, False])
def test_write_enospc_part_way_through_a_frame_is_cut_back(
    root: str, monkeypatch: pytest.MonkeyPatch, preallocate: bool
) -> None:
    j = Journal.open(root, preallocate=preallocate)
    for i in range(1, 4):
        j.append(event(i))
    path = segments(root)[-1]
    end = sum(8 + n for _, n in frames(path)) + frames(path)[0][0]
    size_before = os.path.getsize(path)
    state = _partial_then_enospc(monkeypatch, "pwrite")
    with pytest.raises(InsufficientSpaceError) as info:
        j.append(event(4, size=400))
    monkeypatch.undo()
    assert state["written"] > 0, "the fault must hit part-way through the frame"
    assert info.value.errno == errno.ENOSPC and "cut back" in str(info.value)
    assert os.path.getsize(path) == size_before
    with open(path, "rb") as f:
        f.seek(end)
        assert not any(f.read(state["written"])), "the partial frame's bytes are gone"
    # the journal stays usable and the next append takes the same seq
    assert j.append(event(5)).seq == 4
    j.close()
    with Journal.open(root) as again:
        assert [event_index(r.event) for r in again.records()] == [1, 2, 3, 5]


def test_write_eio_raises_journal_write_error(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal.open(root) as j:
        j.append(event(1))
        monkeypatch.setattr(os, "pwrite", _failing(errno.EIO))
        with pytest.raises(JournalWriteError, match="cut back"):
            j.append(event(2))
        monkeypatch.undo()
        assert j.append(event(3)).seq == 2


def test_short_writes_are_looped(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    calls = {"n": 0}

    def three_bytes(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        return real(fd, memoryview(data)[:3], offset)

    with Journal.open(root) as j:
        monkeypatch.setattr(os, "pwrite", three_bytes)
        j.append(event(1, size=90))
        monkeypatch.undo()
    assert calls["n"] > 20
    with Journal.open(root) as j:
        assert [event_index(r.event) for r in j.records()] == [1]


def test_enospc_creating_the_next_segment_keeps_the_journal_usable(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal.open(root, segment_bytes=512)
    i = 0
    while len(segments(root)) < 2:
        i += 1
        j.append(event(i))
    last = i
    monkeypatch.setattr(os, "posix_fallocate", _failing(errno.ENOSPC))
    with pytest.raises(InsufficientSpaceError, match="next journal segment"):
        for k in range(100):
            j.append(event(last + 1 + k))
    monkeypatch.undo()
    accepted = j.last_seq
    assert not [n for n in os.listdir(os.path.join(root, "journal")) if n.startswith(".")], "no temporary file left"
    j.append(event(1000))
    j.close()
    with Journal.open(root, segment_bytes=512) as again:
        seqs = [r.seq for r in again.records()]
        assert seqs == list(range(1, accepted + 2))


def test_folder_fsync_eio_after_a_new_segment_is_in_place_breaks_the_journal(
    root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new segment exists, so the journal cannot keep writing the old one: broken, and reopening continues cleanly."""
    j = Journal.open(root, segment_bytes=512)
    j.append(event(1))
    # a roll fsyncs the new segment's temporary file, then the folder: fail the folder's fsync
    monkeypatch.setattr(os, "fsync", _failing(errno.EIO, after=1, real=os.fsync))
    with pytest.raises(JournalBrokenError, match="put in place"):
        for i in range(2, 100):
            j.append(event(i))
    monkeypatch.undo()
    acknowledged = j.last_seq
    assert len(segments(root)) == 2
    j.close()
    with Journal.open(root, segment_bytes=512) as again:
        assert [event_index(r.event) for r in again.records()] == list(range(1, acknowledged + 1))
        again.append(event(500))
    with Journal.open(root, segment_bytes=512) as again:
        assert [event_index(r.event) for r in again.records()] == [*range(1, acknowledged + 1), 500]


def test_fsync_eio_while_the_next_batch_waits_writes_nothing_more(root: str) -> None:
    fs = GatedSyncFs(fail=True)
    j = Journal.open(root, fs=fs)
    assert j.append(event(0)).seq == 1
    errors: dict[int, BaseException] = {}

    def append(i: int) -> None:
        try:
            j.append(event(i))
        except ShipslogError as exc:
            errors[i] = exc

    threads = queue_behind_held_sync(j, fs, append, 1, range(2, 5))  # the next leader and two more
    mark = len(fs.ops)
    fs.release.set()
    for t in threads:
        t.join(30)
    assert sorted(errors) == [1, 2, 3, 4]
    assert all(isinstance(e, JournalBrokenError) for e in errors.values())
    assert "write" not in fs.names()[mark:], "nothing is written after a failed fdatasync"
    j.close()
    with Journal.open(root) as again:
        indices = [event_index(r.event) for r in again.records()]
    assert indices[0] == 0 and not {2, 3, 4} & set(indices)


class _FailsAtSync(RecordingFileSystem):
    """Fails the ``at``-th fdatasync with EIO (appenders keep queuing around it)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.syncs = 0
        self.count_lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        with self.count_lock:
            self.syncs += 1
            failing = self.syncs == self.at
        if failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fdatasync(fd)


def test_fsync_eio_among_many_appending_threads_loses_no_acknowledged_record(root: str) -> None:
    j = Journal.open(root, fs=_FailsAtSync(at=12), segment_bytes=8192)
    acknowledged: dict[int, int] = {}
    refused: list[int] = []

    def worker(t: int) -> None:
        for k in range(40):
            try:
                acknowledged[j.append(event(t * 1000 + k)).seq] = t * 1000 + k
            except JournalBrokenError:
                refused.append(t)
                return

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(refused) == list(range(8)), "every thread sees the broken journal"
    assert acknowledged and j.broken is not None
    j.close()
    with Journal.open(root, segment_bytes=8192) as again:
        found = {r.seq: event_index(r.event) for r in again.records()}
    assert {seq: found.get(seq) for seq in acknowledged} == acknowledged
