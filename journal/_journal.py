"""The journal writer: an append-only, fsynced, segmented log under ``ROOT/journal``.

Guarantees:

* :meth:`Journal.append` returns only after the fsync that covers its record;
  a record that was acknowledged is served by every later open.
* Appenders on many threads share writes and fsyncs (group commit): one
  appender at a time leads, writing every queued record in one frame and
  fsyncing once, while the others wait for it.  Each call's records land in
  one frame, so they become durable (or are torn) together.
* A failed write is cut back (the partial frame is zeroed or truncated away)
  and raises; the journal stays usable and earlier records are intact.
* A failed fsync is never retried: the journal becomes broken, the failed call
  and every later one raise :class:`JournalBrokenError`, and only re-opening it
  from disk clears that.
* Opening repairs a torn tail (a frame cut off by a crash, followed only by
  zeros or the end of the file): the damaged bytes are copied to
  ``ROOT/quarantine/`` and cut back, and the repair is reported.  Any other
  damage raises :class:`CorruptJournalError` and nothing is served.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from threading import get_ident
from typing import TYPE_CHECKING

import msgspec
from msgspec import Raw

from ._crashpoints import crash_point, register_crash_point
from ._errors import (
    CorruptJournalError,
    InsufficientSpaceError,
    JournalBrokenError,
    JournalClosedError,
    JournalWriteError,
)
from ._format import (
    HEADER_SIZE,
    MAX_FRAME_BYTES,
    MAX_RECORDS_PER_FRAME,
    MAX_SEGMENT_BYTES,
    Record,
    SegmentHeader,
    decode_header,
    encode_frame,
    encode_header,
    mapped_segment,
    segment_name,
)
from ._fs import OS_FS, FileSystem
from ._history import HistoryCheck, crc_of
from ._lock import RootLock
from ._reader import (
    JournalReader,
    Position,
    SegmentStart,
    TornTail,
    WalkEnd,
    decode_payload,
    list_segments,
    segment_start_position,
    walk,
)
from ._snapshot import Snapshot, list_snapshots, newest_snapshot, write_snapshot

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = ["DEFAULT_SEGMENT_BYTES", "Journal", "OpenReport", "TailRepair"]

_log = logging.getLogger("shipslog.journal")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_GROUP_BYTES = 4 * 1024 * 1024
_RECORD_OVERHEAD = 64
"""More than the bytes a record adds around its event (array marker, seq, time, session)."""
_POSITIONS_KEPT = 4096
_SEEN_KEPT = 16
"""Beyond this many threads remembered as appenders, those not seen in the last batches are forgotten (:meth:`Journal._recent_appenders`)."""

JOURNAL_DIR = "journal"
SNAPSHOT_DIR = "snapshots"
QUARANTINE_DIR = "quarantine"

CP_BEFORE_WRITE = register_crash_point("journal.before_write", "records queued, nothing of their frame written")
CP_AFTER_WRITE = register_crash_point("journal.after_write", "frame written to the page cache, not yet fsynced")
CP_AFTER_FSYNC = register_crash_point("journal.after_fsync", "frame durable, appenders not yet told")
CP_ROLL_CREATED = register_crash_point("journal.roll.after_create", "new segment durable, previous one not yet sealed")
CP_SNAPSHOT_WRITTEN = register_crash_point("journal.snapshot.after_write", "snapshot file durable, older ones not yet pruned")


@dataclass(frozen=True)
class TailRepair:
    """A torn tail cut back on open: where it was, why, and where its bytes went."""

    path: str
    offset: int
    length: int
    reason: str
    quarantined_to: str


@dataclass
class OpenReport:
    """What opening found: the snapshot used, snapshots skipped (with why), and any tail repair."""

    snapshot: Snapshot | None = None
    skipped_snapshots: list[tuple[str, str]] = field(default_factory=list)
    tail_repair: TailRepair | None = None
    created: bool = False


class _Pending:
    """One append call; ``cost`` is what it adds to a frame (its events' bytes plus a bound on each record's envelope).

    A call that joins the group-commit queue is given a ``gate`` (:meth:`queue_gate`),
    held until a leader releases it; an uncontended call, written at once by its
    own thread, never needs one.
    """

    __slots__ = ("cost", "done", "error", "events", "gate", "records", "sync")
    gate: threading.Lock

    def __init__(self, events: list[Raw], cost: int, sync: bool = True) -> None:
        self.events = events
        self.cost = cost
        self.sync = sync
        self.records: list[Record] = []
        self.done = False
        self.error: BaseException | None = None

    def queue_gate(self) -> threading.Lock:
        """Give this call its gate, held: a leader releases it when the call is written, or to make it the leader."""
        gate = self.gate = threading.Lock()
        gate.acquire()
        return gate


class Journal:
    """An open, locked, writable journal under ``ROOT``.  Create it with :meth:`open`."""

    def __init__(self, *, _token: object) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("use Journal.open(root) to open a journal")
        self.root = ""
        self.session = ""
        self.report = OpenReport()
        self._fs: FileSystem = OS_FS
        self._lock: RootLock | None = None
        self._segment_bytes = DEFAULT_SEGMENT_BYTES
        self._segment_bytes_given = False
        self._preallocate = True
        self._keep_snapshots = 2
        self._fd = -1
        self._seg_seq = 0
        self._seg_path = ""
        self._offset = 0
        self._file_size = 0
        self._crc = 0
        self._body_crc = 0
        self._next_seq = 1
        self._durable_seq = 0
        self._mutex = threading.Lock()
        self._idle = threading.Condition(self._mutex)
        self._queue: list[_Pending] = []
        self._leading = False
        self._syncing = False
        self._synced = threading.Condition(self._mutex)
        self._waiting = 0  # threads waiting on _idle or _synced: notified only when there are some
        self._gather_gate = threading.Lock()
        self._gather_want = 0
        self._gathering = False
        self._seen: dict[int, int] = {}
        self._batches = 0
        self._sync_seconds = 0.0
        self._closed = False
        self._broken: BaseException | None = None
        # (first seq, last seq, segment, offset, prev crc, segment body crc) of recent frames: a Position each, built on demand.
        self._positions: collections.deque[tuple[int, int, int, int, int, int]] = collections.deque(maxlen=_POSITIONS_KEPT)
        self._history: HistoryCheck | None = None
        self._history_error: BaseException | None = None
        self._encode = msgspec.msgpack.Encoder().encode

    # -- opening --------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        fs: FileSystem | None = None,
        fsync: bool = True,
        segment_bytes: int | None = None,
        preallocate: bool = True,
        keep_snapshots: int = 2,
        session: str | None = None,
        defer_history: bool = False,
        lock: RootLock | None = None,
    ) -> Journal:
        """Lock ``root``, verify its journal (every byte: the history before the newest valid snapshot by its
        segments' seals, the frames after it one by one), repair a torn tail, and open it for appends.

        Creates the root and an empty journal when there is none.  ``fsync=False``
        (for tests and benchmarks only) skips every fsync.  ``segment_bytes`` is
        where segments roll (default: the size the root was created with,
        recorded in its segment headers, or 64 MiB for a new root); with
        ``preallocate`` each segment reserves that much space when created
        (best-effort), so appends rarely change the file size.
        Raises :class:`JournalLockedError` when another opener holds the root
        and :class:`CorruptJournalError` for damage that is not a torn tail.

        The history before the snapshot is verified on a thread beside the
        walk.  With ``defer_history`` opening returns without waiting for it,
        so the caller can replay meanwhile; the first write (an append, a
        snapshot, a tail repair) and :meth:`wait_verified` wait for it and
        raise what it found, so nothing is ever written to, or acknowledged
        by, a journal with damage anywhere.  ``lock`` is the root's lock when
        the caller holds it already (the journal releases it when it closes).
        """
        if segment_bytes is not None and not HEADER_SIZE + 64 <= segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be {HEADER_SIZE + 64}..{MAX_SEGMENT_BYTES}, got {segment_bytes}")
        if keep_snapshots < 1:
            raise ValueError(f"keep_snapshots must be 1 or more, got {keep_snapshots}")
        self = cls(_token=_OPEN_TOKEN)
        self.root = os.path.abspath(os.fspath(root))
        self._fs = fs if fs is not None else (OS_FS if fsync else FileSystem(sync=False))
        self._segment_bytes = segment_bytes or DEFAULT_SEGMENT_BYTES
        self._segment_bytes_given = segment_bytes is not None
        self._preallocate = preallocate
        self._keep_snapshots = keep_snapshots
        self.session = session or secrets.token_hex(6)
        self._fs.ensure_dir(self.root)
        if lock is None:
            lock = RootLock(self.root, fs=self._fs)
            lock.acquire()
        self._lock = lock
        try:
            self._fs.ensure_dir(self.journal_dir)
            self._fs.ensure_dir(self.snapshot_dir)
            self._recover_tail()
            if not defer_history:
                self.wait_verified()
        except BaseException:
            self._join_history()
            if self._fd >= 0:
                self._fs.close(self._fd)
                self._fd = -1
            self._lock.release()
            raise
        return self

    @property
    def journal_dir(self) -> str:
        """``ROOT/journal``: the segment files."""
        return os.path.join(self.root, JOURNAL_DIR)

    @property
    def snapshot_dir(self) -> str:
        """``ROOT/snapshots``: the snapshot files."""
        return os.path.join(self.root, SNAPSHOT_DIR)

    @property
    def snapshot(self) -> Snapshot | None:
        """The newest valid snapshot found at open (or written since), if any."""
        return self.report.snapshot

    def _recover_tail(self) -> None:
        segments = list_segments(self.journal_dir)
        if not segments:
            self._create_segment(1, 0)
            self.report.created = True
            self._durable_seq = 0
            self._next_seq = 1
            return
        start = self._choose_snapshot()
        if start is not None:
            self._history = HistoryCheck(self.journal_dir, start.position, segments)
        end, last_seq, last_header = self._walk_from(start)
        if last_header is not None and last_header.segment_bytes and not self._segment_bytes_given:
            self._segment_bytes = last_header.segment_bytes  # the root keeps the size it was created with
        body_crc = self._segment_prefix_crc(end.path, end.offset, start.position if start else None)
        if end.torn is not None:
            self.report.tail_repair = self._repair_tail(end.torn, last_seq + 1)
        self._durable_seq = last_seq
        self._next_seq = last_seq + 1
        self._open_segment(end.segment, end.path, end.offset, end.crc, body_crc)

    def _walk_from(self, start: Snapshot | None) -> tuple[WalkEnd, int, SegmentHeader | None]:
        """Walk the frames from ``start`` (or the first) to the end: where they end, the last seq, the last header."""
        walker = walk(self.journal_dir, start.position if start else None)
        last_payload: tuple[str, int, bytes] | None = None
        last_header: SegmentHeader | None = None
        seg_first = 0
        seg_path = ""
        while True:
            try:
                item = next(walker)
            except StopIteration as stop:
                end = stop.value
                break
            if isinstance(item, SegmentStart):
                if seg_first:
                    prev_last = _last_seq(last_payload, seg_first)
                    if item.header.first_seq != prev_last + 1:
                        raise CorruptJournalError(
                            item.path, 0,
                            f"expected the segment to start at seq {prev_last + 1}, it starts at {item.header.first_seq}: "
                            f"records {prev_last + 1}..{item.header.first_seq - 1} are missing",
                        )
                seg_first = item.header.first_seq
                seg_path = item.path
                last_header = item.header
                last_payload = None
                continue
            offset, _crc, payload = item[-1]
            last_payload = (seg_path, offset, payload)
        last_seq = _last_seq(last_payload, seg_first)
        if start is not None and start.seq > last_seq:
            raise CorruptJournalError(
                end.path, end.offset,
                f"snapshot {start.path} is at seq {start.seq} but the journal ends at seq {last_seq}: acknowledged records are missing",
            )
        return end, last_seq, last_header

    def _segment_prefix_crc(self, path: str, offset: int, start: Position | None) -> int:
        """The CRC-32 of the open segment's bytes before ``offset`` (continued from ``start`` when the verified walk
        began in this segment at a position that records it), so the writer can seal the segment when it rolls."""
        with mapped_segment(path) as data:
            if start is not None and start.segment_crc is not None and os.path.basename(path) == segment_name(start.segment):
                return crc_of(data, start.offset, offset, start.segment_crc)
            return crc_of(data, 0, offset)

    def _choose_snapshot(self) -> Snapshot | None:
        snap, skipped = newest_snapshot(self.journal_dir, self.snapshot_dir)
        for path, why in skipped:
            _log.warning("ignoring snapshot %s: %s", path, why)
        self.report.skipped_snapshots.extend(skipped)
        self.report.snapshot = snap
        return snap

    def wait_verified(self) -> None:
        """Wait for the verification of the history before the snapshot (started at open); raise
        :class:`CorruptJournalError` if it found damage (again at every later call and write)."""
        if self._history_error is not None:
            raise self._history_error
        history, self._history = self._history, None
        if history is None:
            return
        try:
            history.wait()
        except BaseException as exc:
            self._history_error = exc
            raise

    def _join_history(self) -> None:
        """Wait for the history check to stop, keeping what it found (for a journal that is being closed)."""
        try:
            self.wait_verified()
        except Exception as exc:  # noqa: BLE001  (kept in _history_error and raised by every later write)
            _log.debug("history check ended with %s while the journal closed", exc)

    def _repair_tail(self, torn: TornTail, next_seq: int) -> TailRepair:
        self.wait_verified()  # the first write: never to a journal with damage before the snapshot
        with open(torn.path, "rb") as f:
            f.seek(torn.offset)
            damaged = f.read(torn.stop - torn.offset)
        folder = os.path.join(self.root, QUARANTINE_DIR, f"{next_seq}-journal-tail")
        self._fs.ensure_dir(folder)
        target = os.path.join(folder, f"{os.path.basename(torn.path)}@{torn.offset}")
        self._fs.write_file_atomic(target, damaged)
        # Zeros, not truncation: a read-only reader may have the segment mapped.
        fd = self._fs.open(torn.path, os.O_RDWR)
        try:
            self._fs.write_all(fd, bytes(len(damaged)), torn.offset)
            self._fs.fdatasync(fd)
        finally:
            self._fs.close(fd)
        repair = TailRepair(torn.path, torn.offset, len(damaged), torn.reason, target)
        _log.warning(
            "repaired a torn journal tail: %d bytes at %s offset %d (%s) cut back; copied to %s",
            len(damaged), torn.path, torn.offset, torn.reason, target,
        )
        return repair

    def _create_segment(self, first_seq: int, prev_crc: int) -> None:
        path = os.path.join(self.journal_dir, segment_name(first_seq))
        header = encode_header(first_seq, time.time_ns(), prev_crc, segment_bytes=self._segment_bytes)
        self._fs.write_file_atomic(path, header)  # its reservation is made (best-effort) and synced as it is opened
        self._open_segment(first_seq, path, HEADER_SIZE, decode_header(path, header).header_crc, zlib.crc32(header))

    def _open_segment(self, seg_seq: int, path: str, offset: int, crc: int, body_crc: int) -> None:
        fd = self._fs.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if self._preallocate and size < self._segment_bytes and self._reserve(fd, path):
                self._fs.fsync(fd)
                size = os.fstat(fd).st_size
        except BaseException:
            self._fs.close(fd)
            raise
        self._fd = fd
        self._seg_seq = seg_seq
        self._seg_path = path
        self._offset = offset
        self._file_size = size
        self._crc = crc
        self._body_crc = body_crc

    def _reserve(self, fd: int, path: str) -> bool:
        """Reserve the segment's size for an open segment, best-effort: on a full disk the segment is used without
        a reservation (a warning says so), so a full disk never stops a root from opening (and ``gc`` from freeing it)."""
        try:
            return self._fs.preallocate(fd, self._segment_bytes)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _log.warning("no space to reserve %d bytes for %s; appending without a reservation", self._segment_bytes, path)
            return False

    # -- appending ------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the newest durable record (0 for an empty journal)."""
        return self._durable_seq

    @property
    def end_position(self) -> tuple[int, int]:
        """``(segment, offset)``: the segment written to now and where its written frames end (readers of this
        open journal need not scan past it)."""
        return self._seg_seq, self._offset

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def broken(self) -> BaseException | None:
        """The I/O failure that broke the journal, or None while it is healthy."""
        return self._broken

    def _check_usable(self) -> None:
        if self._closed:
            raise JournalClosedError(f"the journal at {self.root} is closed; open it again to append or read")
        self._check_not_broken()

    def _check_not_broken(self) -> None:
        if self._broken is not None:
            raise JournalBrokenError(
                errno.EIO,
                f"the journal at {self.root} is broken by an earlier failure ({self._broken}); "
                "nothing more can be appended safely: close it and open the root again",
            ) from self._broken

    def append(self, event: bytes) -> Record:
        """Append one event (msgpack bytes); return its record once it is durable."""
        raws = [Raw(event)]
        cost = len(raws[0]) + _RECORD_OVERHEAD
        if cost > MAX_FRAME_BYTES:
            _frame_cost(raws)  # raises, saying why
        return self._append(_Pending(raws, cost))[0]

    def append_many(self, events: Sequence[bytes], *, sync: bool = True) -> list[Record]:
        """Append events as consecutive records in one frame; return them once durable.

        They become durable together or not at all.  With ``sync=False`` the
        frame is written but not fdatasynced: it becomes durable before the
        next frame is written (or at close), and until then :attr:`last_seq`
        does not count it; so at most one frame is ever unsynced, and a power
        cut can tear only the last frame of the journal.  A process crash keeps it (the page cache survives); a power
        cut may drop it, together with everything written after it.  Raises
        :class:`JournalWriteError` / :class:`InsufficientSpaceError` when the
        write failed (nothing of it is kept, the journal stays usable) and
        :class:`JournalBrokenError` when the fsync failed.
        """
        if not events:
            return []
        raws = [Raw(e) for e in events]  # a bad event fails its own call here, never a batch
        return self._append(_Pending(raws, _frame_cost(raws), sync))

    def _append(self, pending: _Pending) -> list[Record]:
        """Write ``pending`` alone, or through the group-commit queue; return its records once written (and synced when asked)."""
        me = get_ident()
        with self._mutex:
            if self._closed or self._broken is not None:
                self._check_usable()
            seen = self._seen
            if not self._leading and not self._syncing and ((len(seen) == 1 and me in seen) or self._alone(me)):
                self._leading = alone = True
            else:
                alone = False
                queue = self._queue
                queue.append(pending)
                self._seen[me] = self._batches
                gate = pending.queue_gate()
                if self._gathering and len(queue) >= self._gather_want:
                    self._gathering = False
                    self._gather_gate.release()
                lead = not self._leading
                if lead:
                    self._leading = True
        if alone:
            # Written at once, by this thread, holding leadership through the fdatasync so every other write
            # comes after it (at most one frame is ever unsynced); calls that arrive meanwhile queue, and the
            # first of them leads their batch once this one is durable.
            try:
                self._write([pending], pending.sync, False)
            finally:
                with self._mutex:
                    self._seen[me] = self._batches
                    self._batches += 1
                    pending.done = True
                    self._hand_on()
        else:
            if not lead:
                gate.acquire()  # released by a leader: when written, or to make this call the leader
            while not pending.done:
                self._lead_one_batch(pending)
        if pending.error is not None:
            raise pending.error
        return pending.records

    def _alone(self, me: int) -> bool:
        """Whether no thread but ``me`` appended in the last few batches (called holding the mutex, with no leader).

        Then an append is written at once by its own thread, without the
        group-commit queue: waiting to gather others would only delay it.
        """
        horizon = self._batches - 4
        return not any(b >= horizon for t, b in self._recent_appenders(horizon).items() if t != me)

    def _recent_appenders(self, horizon: int) -> dict[int, int]:
        """The appending threads remembered (called holding the mutex); past :data:`_SEEN_KEPT` of them, those
        that have not appended since batch ``horizon`` are forgotten first, so the map stays small."""
        if len(self._seen) > _SEEN_KEPT:
            self._seen = {t: b for t, b in self._seen.items() if b >= horizon}
        return self._seen

    def _lead_one_batch(self, own: _Pending) -> None:
        """As the leader, write one batch from the front of the queue and wake its appenders.

        A batch is capped in size, so a leader may write the batches queued
        before its own first.  Once its own records are written (before their
        fdatasync) it hands leadership to the call at the front of the queue,
        if any: that leader takes every call queued by the time this sync
        returns, and only then writes, so at most one frame is ever unsynced.
        """
        batch: list[_Pending] = []
        handed = False
        try:
            with self._mutex:
                if self._syncing:
                    # Everything queued while the batch before syncs goes into this one: take it when that sync returns.
                    self._waiting += 1
                    try:
                        while self._syncing:
                            self._synced.wait()
                    finally:
                        self._waiting -= 1
                else:
                    self._gather_more()
                batch, sync = self._take_batch()
            handed = self._write(batch, sync, own in batch)
        finally:
            with self._mutex:
                self._batches += 1
                for p in batch:
                    p.done = True
                    if p is not own:
                        p.gate.release()
                if not handed and (own.done or not batch):
                    self._hand_on()

    def _hand_on(self) -> None:
        """Make the call at the front of the queue the leader, or end leadership (called holding the mutex)."""
        if self._queue:
            self._queue[0].gate.release()
        else:
            self._leading = False
            if self._waiting:
                self._idle.notify_all()

    def _gather_more(self) -> None:
        """Wait briefly, before taking a batch, for appenders that are about to queue (called holding the mutex).

        Appenders that were just acknowledged come back within microseconds,
        but a new leader would otherwise take the queue at once, and batches
        would settle at half the appending threads.  The leader waits until as
        many calls are queued as there were distinct appending threads in the
        last few batches, for at most the recent fsync time (never more
        than 2 ms); with one appending thread it never waits.  Only the
        appender that completes the count wakes the leader.
        """
        seen = self._seen
        if len(self._queue) >= len(seen):
            return  # every thread that ever appended is queued (one appending thread: always)
        horizon = self._batches - 4
        expected = sum(1 for b in self._recent_appenders(horizon).values() if b >= horizon)
        if len(self._queue) >= expected:
            return
        wait = min(self._sync_seconds, 0.002)
        if wait <= 0:
            return
        gate = self._gather_gate = threading.Lock()
        gate.acquire()
        self._gather_want = expected
        self._gathering = True
        self._mutex.release()
        try:
            gate.acquire(timeout=wait)
        finally:
            self._mutex.acquire()
            self._gathering = False

    def _take_batch(self) -> tuple[list[_Pending], bool]:
        """The calls at the front of the queue that fit in one frame, and whether any of them asks for a sync."""
        queue = self._queue
        size = 0
        count = 0
        taken = 0
        sync = False
        for p in queue:
            if taken and (size + p.cost > _GROUP_BYTES or count + len(p.events) > MAX_RECORDS_PER_FRAME):
                break
            size += p.cost
            count += len(p.events)
            sync = sync or p.sync
            taken += 1
        batch = queue[:taken]
        del queue[:taken]
        return batch, sync

    def _write(self, batch: list[_Pending], need_sync: bool, hand_on: bool) -> bool:
        """Write ``batch`` as one frame and, when any call in it asks, fdatasync it.

        Called only once the frame before is durable or was written without a
        sync (which is then synced first), so at most one frame is ever
        unsynced.  With ``hand_on`` leadership passes on between the write and
        the fdatasync, and True is returned; the batch's errors are in its
        calls.
        """
        handed = False
        syncing = False
        try:
            if self._broken is not None:
                self._check_not_broken()
            if self._history is not None or self._history_error is not None:
                self.wait_verified()
            first = seq = self._next_seq
            now = time.time()
            session = self.session
            if len(batch) == 1 and len(batch[0].events) == 1:  # one record: the single appender's frame
                records = batch[0].records = [Record(seq, now, session, batch[0].events[0])]
                seq += 1
            else:
                records = []
                for p in batch:
                    p.records = [Record(seq + i, now, session, e) for i, e in enumerate(p.events)]
                    seq += len(p.events)
                    records += p.records
            payload = self._encode(records)
            if len(payload) > MAX_FRAME_BYTES:
                raise ValueError(
                    f"one append of {len(payload)} bytes exceeds the frame limits ({MAX_FRAME_BYTES} bytes, "
                    f"{MAX_RECORDS_PER_FRAME} records); append fewer or smaller events"
                )
            start = self._offset
            if start > HEADER_SIZE and start + len(payload) + 8 > self._segment_bytes:
                self._roll()
                start = self._offset
            elif self._durable_seq < first - 1:
                # At most one frame is ever unsynced: a frame written with sync=False becomes durable before the
                # next one is written, so a power cut tears only the last frame and a reader can tell it from damage.
                self._sync_segment(self._fd)
                self._durable_seq = first - 1
            prev_crc = self._crc
            frame, crc = encode_frame(payload, prev_crc)
            crash_point(CP_BEFORE_WRITE)
            try:
                self._fs.write_all(self._fd, frame, start)
            except OSError as exc:
                self._cut_back(start, len(frame))
                raise self._write_error(exc, len(frame)) from exc
            crash_point(CP_AFTER_WRITE)
            body_crc = self._body_crc
            self._positions.append((first, seq - 1, self._seg_seq, start, prev_crc, body_crc))
            self._offset = end = start + len(frame)
            self._file_size = max(self._file_size, end)
            self._crc = crc
            self._body_crc = zlib.crc32(frame, body_crc)
            self._next_seq = seq
            if need_sync:
                if hand_on:  # a new leader may start once this sync returns: it waits on _syncing
                    with self._mutex:
                        self._syncing = syncing = True
                        self._hand_on()
                        handed = True
                synced = time.monotonic()
                self._sync_segment(self._fd)
                crash_point(CP_AFTER_FSYNC)
                self._sync_seconds = 0.8 * self._sync_seconds + 0.2 * (time.monotonic() - synced)
                self._durable_seq = seq - 1
        except BaseException as exc:  # noqa: BLE001  (not swallowed: each appender in the batch re-raises it)
            for p in batch:
                p.error = exc
                p.records = []
        finally:
            if syncing:
                with self._mutex:
                    self._syncing = False
                    if self._waiting:
                        self._synced.notify_all()
                        self._idle.notify_all()
        return handed

    def sync(self) -> None:
        """Make every record written so far durable (those appended with ``sync=False``); a no-op when they are."""
        self._check_usable()
        with self._mutex:
            self._waiting += 1
            try:
                while self._leading or self._syncing:
                    self._idle.wait()
            finally:
                self._waiting -= 1
            if self._durable_seq < self._next_seq - 1:
                self._sync_segment(self._fd)
                self._durable_seq = self._next_seq - 1

    def _sync_segment(self, fd: int) -> None:
        """fdatasync the segment; a failure breaks the journal (never retried)."""
        try:
            self._fs.fdatasync(fd)
        except OSError as exc:
            self._broken = exc
            raise JournalBrokenError(
                exc.errno or errno.EIO,
                f"fsync of {self._seg_path} failed ({exc}); the journal is now broken and will not retry. "
                "Records appended before this call are safe; close the engine and open the root again",
            ) from exc

    def _write_error(self, exc: OSError, size: int) -> OSError:
        if exc.errno == errno.ENOSPC:
            free = self._fs.free_bytes(self.journal_dir)
            return InsufficientSpaceError(self._seg_path, size, free, "the journal append was cut back and not acknowledged")
        return JournalWriteError(
            exc.errno or errno.EIO,
            f"writing {size} bytes to {self._seg_path} failed ({exc}); the partial frame was cut back, "
            "records acknowledged before are intact, this append was not acknowledged",
        )

    def _cut_back(self, start: int, length: int) -> None:
        """Remove every byte of a failed write: overwrite it with zeros (no truncation, so a
        reader that mapped the segment never faults), or, if even that fails, truncate
        the file back to ``start`` (which needs no free space) and reserve it again."""
        within = min(start + length, self._file_size) - start
        try:
            if within > 0:
                self._fs.write_all(self._fd, bytes(within), start)
            if start + length <= self._file_size:
                return
        except OSError as exc:
            _log.warning("zeroing a failed write in %s failed too (%s); truncating it instead", self._seg_path, exc)
        try:
            self._fs.truncate(self._fd, start)
        except OSError as exc:
            self._broken = exc
            _log.error("could not cut back a failed write in %s: %s; the journal is broken", self._seg_path, exc)
            return
        self._file_size = start
        if self._preallocate:
            try:
                if self._fs.preallocate(self._fd, self._segment_bytes):
                    self._file_size = max(start, self._segment_bytes)
            except OSError as exc:
                _log.warning("could not reserve space in %s again after a failed write (%s); appends go on without it",
                             self._seg_path, exc)

    def _roll(self) -> None:
        """Start the next segment and move to it.

        The new segment is created durably first, so a failure to create it
        (``ENOSPC`` while reserving its space) changes nothing and the journal
        stays usable.  Once the new file is in place the journal must move to
        it: any failure from there on breaks the journal, and reopening
        continues in the new segment (the old one then ends in zeros, which
        reads as a clean end).
        """
        old_fd = self._fd
        if self._durable_seq < self._next_seq - 1:
            self._sync_segment(old_fd)  # frames written with sync=False become durable before the roll
            self._durable_seq = self._next_seq - 1
        path = os.path.join(self.journal_dir, segment_name(self._next_seq))
        # The new header seals the old segment: where its frames end, and the checksum of every byte before that.
        header = encode_header(
            self._next_seq, time.time_ns(), self._crc,
            segment_bytes=self._segment_bytes, prev_end=self._offset, prev_body_crc=self._body_crc,
        )
        try:
            self._fs.write_file_atomic(path, header, preallocate=self._segment_bytes if self._preallocate else 0)
        except OSError as exc:
            if os.path.lexists(path):
                self._broken = exc
                raise JournalBrokenError(
                    exc.errno or errno.EIO,
                    f"creating the next journal segment {path} failed after it was put in place ({exc}); "
                    "the journal is broken: close the engine and open the root again",
                ) from exc
            if exc.errno == errno.ENOSPC:
                raise InsufficientSpaceError(self.journal_dir, self._segment_bytes, self._fs.free_bytes(self.journal_dir),
                                             "could not create the next journal segment") from exc
            raise JournalWriteError(
                exc.errno or errno.EIO,
                f"could not create the next journal segment in {self.journal_dir} ({exc}); "
                "nothing was appended and the journal stays usable",
            ) from exc
        try:
            self._open_segment(self._next_seq, path, HEADER_SIZE, decode_header(path, header).header_crc, zlib.crc32(header))
        except OSError as exc:
            self._broken = exc
            raise JournalBrokenError(exc.errno or errno.EIO, f"opening the new segment {path} failed ({exc}); the journal is broken") from exc
        crash_point(CP_ROLL_CREATED)
        # Every frame of the old segment is fdatasynced now; its unused reservation
        # (less than one frame) stays, since truncating a file a reader may have
        # mapped would make that reader fault.  Zeros read as a clean end.
        self._fs.close(old_fd)

    # -- reading --------------------------------------------------------------------

    def records(self, from_seq: int = 1, until: int | None = None) -> Iterator[Record]:
        """The durable records with ``from_seq <= seq <= until``, read back from disk and verified."""
        self._check_usable()
        last = self._durable_seq
        until = last if until is None else min(until, last)
        if from_seq > until:
            return iter(())
        return JournalReader(self.journal_dir).records(from_seq, until, start=self._position_for(from_seq))

    def _position_for(self, seq: int) -> Position | None:
        best: Position | None = None
        snap = self.report.snapshot
        if snap is not None and snap.position.first_seq <= seq:
            best = snap.position
        for first, last, segment, offset, prev_crc, body_crc in reversed(self._positions):
            if first <= seq <= last:
                return Position(segment, offset, prev_crc, first, body_crc)
            if last < seq:
                break
        return best

    # -- snapshots ------------------------------------------------------------------

    def save_snapshot(self, seq: int, payload: bytes) -> Snapshot:
        """Durably store ``payload`` as the state as of record ``seq``; prune older snapshots.

        ``seq`` must be a durable record of this journal.
        """
        self._check_usable()
        self.wait_verified()
        if not 1 <= seq <= self._durable_seq:
            raise ValueError(f"a snapshot must be at a durable seq (1..{self._durable_seq}), got {seq}")
        position = self._position_for(seq) or self._segment_position(seq)
        if position.first_seq > seq:
            position = self._segment_position(seq)
        path = write_snapshot(self._fs, self.snapshot_dir, seq, position, payload)
        crash_point(CP_SNAPSHOT_WRITTEN)
        snap = Snapshot(seq, bytes(payload), position, path)
        self.report.snapshot = snap
        self._prune_snapshots()
        return snap

    def _segment_position(self, seq: int) -> Position:
        position = segment_start_position(self.journal_dir, seq)
        if position is None:
            raise CorruptJournalError(self.journal_dir, 0, f"no segment holds seq {seq}")
        return position

    def _prune_snapshots(self) -> None:
        old = list_snapshots(self.snapshot_dir)[self._keep_snapshots:]
        for _seq, path in old:
            self._fs.unlink(path)
        if old:
            self._fs.fsync_dir(self.snapshot_dir)

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Stop appending, make frames written with ``sync=False`` durable, release the file and the lock.

        Idempotent; waits for an append in flight.  A failing fdatasync here
        raises :class:`JournalBrokenError` (the file and lock are released anyway).
        """
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._waiting += 1
            try:
                while self._leading or self._queue or self._syncing:
                    self._idle.wait()
            finally:
                self._waiting -= 1
        self._join_history()
        try:
            if self._fd >= 0 and self._broken is None and self._durable_seq < self._next_seq - 1:
                self._sync_segment(self._fd)
                self._durable_seq = self._next_seq - 1
        finally:
            if self._fd >= 0:
                self._fs.close(self._fd)
                self._fd = -1
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"<Journal {self.root} {state} last_seq={self._durable_seq}>"


_OPEN_TOKEN = object()


def _frame_cost(events: Sequence[Raw]) -> int:
    """What ``events`` add to a frame, in bytes (with a bound on each record's envelope).

    Refuses, before anything is queued, an append that cannot fit in one frame (it would be all or none).
    """
    if len(events) == 1:
        size = len(events[0]) + _RECORD_OVERHEAD
    else:
        size = sum(map(len, events)) + _RECORD_OVERHEAD * len(events)
    if size > MAX_FRAME_BYTES or len(events) > MAX_RECORDS_PER_FRAME:
        raise ValueError(
            f"one append of {len(events)} records (about {size} bytes) exceeds the frame limits "
            f"({MAX_RECORDS_PER_FRAME} records, {MAX_FRAME_BYTES} bytes); append fewer or smaller events"
        )
    return size


def _last_seq(last_payload: tuple[str, int, bytes] | None, segment_first_seq: int) -> int:
    """The seq of the last record in a segment: from its last frame, or one before its first seq when it has none."""
    if last_payload is None:
        return segment_first_seq - 1
    path, offset, payload = last_payload
    return decode_payload(path, offset, payload)[-1].seq
