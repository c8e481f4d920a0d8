"""``shipslog bench journal``: durable appends and replay, against their baselines.

One run measures, in one fresh temporary folder on the disk under test and with
the same ~60-byte msgpack events:

* the floor of the journal's own durable work: each record's frame (the
  same size as the journal's) written with ``pwrite`` at the next offset of a
  ``posix_fallocate``-d file, then ``fdatasync`` (``prealloc_fdatasync_per_s``;
  :func:`frame_bytes` gives the size; a test checks with the recording file
  system that it makes the same syncs and writes the same bytes as the
  journal);
* a plain ``os.write`` + ``os.fdatasync`` loop appending to one ``O_APPEND``
  file without preallocation (kept for comparison; it makes the file system
  journal every size change);
* SQLite in WAL mode with ``synchronous=FULL``, one ``INSERT`` + ``COMMIT`` per
  record (the usual alternative);
* :meth:`Journal.append <shipslog.journal.Journal.append>` from one thread, each
  record durable before the call returns; beside it, what one append costs the
  CPU with the fsync off (``append_cpu_us``, and the floor's ``pwrite`` alone,
  ``floor_cpu_us``), and with it on, from 1, 2, 8 and 32 threads
  (``cpu_us_per_append_by_threads``: the process's user and system time, every
  thread's, per durable append: what each waiting and waking appender costs);
* the same from 2, 8 and 32 threads at once (and ``threads``; group commit
  shares writes and fsyncs): 8 threads must reach 5 x one, 32 no less than 8.
  All of the above run side by side in each of ``rounds`` rounds, and the
  medians are reported (a ratio: the median of the rounds' ratios), so a disk
  whose fsync time drifts moves them together;
* replay: reading, crc-checking and decoding every record of a journal with one
  record per frame, through :class:`shipslog.journal.JournalReader` (the
  median of three passes over the whole journal);
* the damage scan: reading a journal whose last frame is bad and followed by
  crafted bytes (many offsets that look like frame starts claiming long
  frames), 128 KiB and 1 MiB of them; the work past damage is bounded, so the
  1 MiB read must take less than 10 times the 128 KiB one.

The folder is removed at the end.  Nothing here prints; progress is logged at
INFO on the ``shipslog.tools.bench`` logger.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import shutil
import sqlite3
import statistics
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from shipslog.journal import (
    HEADER_SIZE,
    JOURNAL_DIR,
    OS_FS,
    CorruptJournalError,
    FileSystem,
    Journal,
    JournalReader,
)

from ._bench_targets import Target, judge

__all__ = [
    "DAMAGE_SCAN_MAX_RATIO",
    "EVENT_BYTES",
    "REPLAY_TARGET_PER_S",
    "TARGETS",
    "bench_prealloc_fdatasync",
    "crafted_damage",
    "frame_bytes",
    "make_event",
    "run_journal_bench",
]

_log = logging.getLogger("shipslog.tools.bench")

EVENT_BYTES = 60
"""The size every benchmark event is padded to, in encoded bytes."""

_WARMUP_MAX = 200
_BARRIER_TIMEOUT_S = 120.0

REPLAY_TARGET_PER_S = 1_000_000
"""The replay target, in records per second."""
REPLAY_PASSES = 3
"""Replay is timed over the whole journal this many times; the median is reported."""

DAMAGE_SCAN_MAX_RATIO = 10.0
"""Reading past 1 MiB of crafted damage takes at most this many times 128 KiB of it (linear work, not quadratic)."""

TARGETS = (
    Target("journal_vs_prealloc_ge_0_9", "ratios.journal_vs_prealloc", ">=", 0.9, "journal append / its preallocated floor"),
    Target("journal_vs_sqlite_ge_1_3", "ratios.journal_vs_sqlite", ">=", 1.3, "journal append / SQLite WAL FULL"),
    Target("group_vs_single_ge_5", "ratios.group_vs_single", ">=", 5.0, "group commit / single appender"),
    Target("group_32_not_below_8", "ratios.group_32_vs_8", ">=", 1.0, "group commit 32 threads / 8 threads"),
    Target("replay_ge_1m", "replay_events_per_s", ">=", REPLAY_TARGET_PER_S, "journal replay, records per second"),
    Target("damage_1m_le_10x_128k", "ratios.damage_1m_vs_128k", "<=", DAMAGE_SCAN_MAX_RATIO, "damage scan 1 MiB / 128 KiB"),
)
"""What ``shipslog bench journal`` must show."""
_DAMAGE_SIZES = (128 << 10, 1 << 20)
GROUP_THREADS = (2, 8, 32)
"""The thread counts group commit is always measured at (and ``threads``): 32 must not do worse than 8."""
_FRAME_HEAD = struct.Struct("<II")

_encode = msgspec.msgpack.Encoder().encode


def make_event(i: int, size: int = EVENT_BYTES) -> bytes:
    """The msgpack bytes of benchmark event ``i``: a small progress dict padded to ``size`` bytes.

    Every event has the same encoded length whatever ``i`` (up to 2**32), unless
    the dict alone is already longer than ``size``.
    """
    event: dict[str, Any] = {
        "kind": "progress",
        "op": "run-000001",
        "step": i,
        "loss": 0.123,
        "pad": "",
    }
    data = _encode(event)
    if len(data) < size:
        event["pad"] = "x" * (size - len(data))
        data = _encode(event)
        while len(data) > size and event["pad"]:
            event["pad"] = event["pad"][:-1]
            data = _encode(event)
    return data


def _warmup_count(records: int) -> int:
    return max(1, min(_WARMUP_MAX, records // 10))


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def _bench_raw_fdatasync(folder: str, events: list[bytes], warmup: int) -> float:
    """Appends per second of a plain ``os.write`` + ``os.fdatasync`` loop on one O_APPEND file."""
    path = os.path.join(folder, "raw.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        write, fdatasync = os.write, os.fdatasync
        for event in events[:warmup]:
            write(fd, event)
            fdatasync(fd)
        start = time.perf_counter()
        for event in events:
            write(fd, event)
            fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return _rate(len(events), elapsed)


def frame_bytes(event: bytes) -> int:
    """How many bytes the journal writes for one append of ``event`` (its frame: header, record, checksums)."""
    folder = tempfile.mkdtemp(prefix=".shipslog-frame-")
    try:
        with Journal.open(folder, fsync=False) as journal:
            seg, before = journal.end_position
            journal.append(event)
            seg_after, after = journal.end_position
        if seg_after != seg:
            raise RuntimeError("the journal rolled to a new segment while sizing one frame")
        return after - before
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_prealloc_fdatasync(folder: str, frames: list[bytes], warmup: int, fs: FileSystem = OS_FS) -> float:
    """Appends per second of ``pwrite`` + ``fdatasync`` of each frame at the next offset of a preallocated file.

    The journal's own durable work per append, without the journal: the file
    is reserved with ``posix_fallocate`` (and that reservation synced) first,
    as a journal segment is when it is created.
    """
    path = os.path.join(folder, "prealloc.log")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fs.preallocate(fd, sum(len(f) for f in frames[:warmup]) + sum(len(f) for f in frames))
        fs.fdatasync(fd)
        write, fdatasync = fs.write_all, fs.fdatasync
        offset = 0
        for frame in frames[:warmup]:
            write(fd, frame, offset)
            fdatasync(fd)
            offset += len(frame)
        start = time.perf_counter()
        for frame in frames:
            write(fd, frame, offset)
            fdatasync(fd)
            offset += len(frame)
        elapsed = time.perf_counter() - start
    finally:
        fs.close(fd)
    return _rate(len(frames), elapsed)


CPU_APPENDS = 20_000
"""Appends timed, fsync off, for the CPU cost of one append (best of three passes)."""


def append_cpu_us(folder: str, event: bytes, frame: bytes, count: int = CPU_APPENDS) -> tuple[float, float]:
    """Microseconds of one append with the fsync off: the journal's, and the floor's ``pwrite`` alone (best of three each).

    What a journal append costs beyond the disk: with a ~100 us ``fdatasync``,
    each microsecond here is about one percent of ``journal_vs_prealloc``.
    """
    fs = FileSystem(sync=False)
    journal_best = floor_best = float("inf")
    with Journal.open(os.path.join(folder, "cpu"), fs=fs) as journal:
        append = journal.append
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(count):
                append(event)
            journal_best = min(journal_best, time.perf_counter() - start)
    path = os.path.join(folder, "cpu-floor.log")
    fd = fs.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fs.preallocate(fd, 3 * count * len(frame))
        write = fs.write_all
        offset = 0
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(count):
                write(fd, frame, offset)
                offset += len(frame)
            floor_best = min(floor_best, time.perf_counter() - start)
    finally:
        fs.close(fd)
    return round(journal_best / count * 1e6, 2), round(floor_best / count * 1e6, 2)


def _bench_sqlite(folder: str, events: list[bytes], warmup: int) -> float:
    """Inserts per second into SQLite (WAL, synchronous=FULL), one transaction per record."""
    path = os.path.join(folder, "sqlite.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL mode in {folder} (journal_mode is {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE events (event BLOB NOT NULL)")
        execute = conn.execute
        insert = "INSERT INTO events (event) VALUES (?)"
        for event in events[:warmup]:
            execute("BEGIN")
            execute(insert, (event,))
            execute("COMMIT")
        start = time.perf_counter()
        for event in events:
            execute("BEGIN")
            execute(insert, (event,))
            execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return _rate(len(events), elapsed)


def _bench_journal_append(root: str, events: list[bytes], warmup: int) -> tuple[float, float]:
    """Durable appends per second to a :class:`Journal` from one thread, and the process's CPU us per append."""
    with Journal.open(root) as journal:
        append = journal.append
        for event in events[:warmup]:
            append(event)
        start, cpu = time.perf_counter(), time.process_time()
        for event in events:
            append(event)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return _rate(len(events), elapsed), cpu / len(events) * 1e6


def _bench_group_commit(root: str, events: list[bytes], warmup: int, threads: int) -> tuple[float, float]:
    """Durable appends per second to one :class:`Journal` from ``threads`` threads started together, and the
    process's CPU us per append (every thread's, user and system).

    Each thread appends ``len(events) // threads`` records; the clocks run from
    the barrier's release to the last thread done.
    """
    per_thread = len(events) // threads
    chunks = [events[t * per_thread : (t + 1) * per_thread] for t in range(threads)]
    barrier = threading.Barrier(threads + 1, timeout=_BARRIER_TIMEOUT_S)

    with Journal.open(root) as journal:
        append = journal.append
        for event in events[:warmup]:
            append(event)

        def worker(chunk: list[bytes]) -> None:
            barrier.wait()
            for event in chunk:
                append(event)

        with concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="shipslog-bench"
        ) as pool:
            futures = [pool.submit(worker, chunk) for chunk in chunks]
            barrier.wait()
            start, cpu = time.perf_counter(), time.process_time()
            concurrent.futures.wait(futures)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        for future in futures:
            future.result()
    return _rate(per_thread * threads, elapsed), cpu / (per_thread * threads) * 1e6


def _bench_replay(root: str, replay_events: int, passes: int = REPLAY_PASSES) -> float:
    """Records per second read back, crc-checked and decoded from a journal of one record per frame (median of ``passes``)."""
    _log.info("writing a journal of %d records for replay (not timed)", replay_events)
    with Journal.open(root, fsync=False) as journal:
        append = journal.append
        for i in range(replay_events):
            append(make_event(i))
    journal_dir = os.path.join(root, JOURNAL_DIR)
    collections.deque(
        JournalReader(journal_dir).records(until=min(replay_events, _WARMUP_MAX)), maxlen=0
    )
    rates = []
    for p in range(passes):
        _log.info("replaying %d records (pass %d of %d)", replay_events, p + 1, passes)
        count = 0
        start = time.perf_counter()
        for batch in JournalReader(journal_dir).batches():
            count += len(batch)
        elapsed = time.perf_counter() - start
        if count != replay_events:
            raise RuntimeError(
                f"replay read {count} records from {journal_dir}, expected {replay_events}"
            )
        rates.append(_rate(count, elapsed))
    return statistics.median(rates)


def crafted_damage(size: int) -> bytes:
    """A bad frame followed by ``size`` crafted bytes, to write after the last frame of a segment.

    The bad frame claims a length that reaches past the crafted bytes into the
    zeros of a preallocated segment, so the reader must decide whether a valid
    frame hides inside them; every 16th offset looks like a frame start (a
    length that fits, a payload that begins like a msgpack array of records)
    claiming a frame as long as the rest.  A search that checksums every
    candidate in full is quadratic in ``size``.
    """
    crafted = bytearray()
    while len(crafted) < size:
        crafted += _FRAME_HEAD.pack(max(1, size - len(crafted) - 16), 0x12345678) + b"\x91\x94" + b"\x01" * 6
    return _FRAME_HEAD.pack(size + 64, 0xDEADBEEF) + bytes(crafted[:size])


def _bench_damage_scan(root: str, size: int, repeats: int = 3) -> float:
    """Median seconds to read a journal whose last frame is followed by :func:`crafted_damage` of ``size`` bytes."""
    with Journal.open(root, fsync=False, segment_bytes=max(4 << 20, 2 * size)) as journal:
        journal.append(make_event(0))
        segment = os.path.join(root, JOURNAL_DIR, max(os.listdir(os.path.join(root, JOURNAL_DIR))))
    with open(segment, "r+b") as f:
        data = f.read()
        off = HEADER_SIZE
        while True:
            length, _crc = _FRAME_HEAD.unpack_from(data, off)
            if length == 0:
                break
            off += 8 + length
        f.seek(off)
        f.write(crafted_damage(size))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        reported = False
        try:
            collections.deque(JournalReader(os.path.join(root, JOURNAL_DIR)).batches(), maxlen=0)
        except CorruptJournalError:
            reported = True  # the expected verdict: damage followed by bytes that could not be ruled out as data
        samples.append(time.perf_counter() - start)
        if not reported:
            raise RuntimeError(f"the crafted damage in {segment} was read as a clean or torn end, not reported")
    return sorted(samples)[len(samples) // 2]


def _bench_round(
    here: str, frames: list[bytes], events: list[bytes], group_events: list[bytes], warmup: int, counts: list[int]
) -> dict[str, float]:
    """One round in ``here``: the preallocated floor, the single appender, the ``O_APPEND`` loop, SQLite and group
    commit at each of ``counts`` threads (keys ``floor``, ``single``, ``raw``, ``sqlite``, ``group-<n>``), per second;
    and the CPU us per append of the single appender (``cpu-1``) and of each group commit (``cpu-<n>``)."""
    rates = {"floor": _timed("prealloc pwrite+fdatasync", lambda: bench_prealloc_fdatasync(here, frames, warmup))}
    rates["single"], rates["cpu-1"] = _timed_with_cpu(
        "journal append", lambda: _bench_journal_append(os.path.join(here, "append"), events, warmup)
    )
    rates["raw"] = _timed("raw write+fdatasync", lambda: _bench_raw_fdatasync(here, events, warmup))
    rates["sqlite"] = _timed("sqlite WAL synchronous=FULL", lambda: _bench_sqlite(here, events, warmup))
    for c in counts:
        rates[f"group-{c}"], rates[f"cpu-{c}"] = _timed_with_cpu(
            f"group commit ({c} threads)",
            lambda c=c: _bench_group_commit(os.path.join(here, f"group-{c}"), group_events, warmup, c),  # type: ignore[misc]
        )
    return rates


def _timed_with_cpu(label: str, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    rate, cpu_us = fn()
    _log.info("%s: %.0f/s, %.1f us of CPU an append", label, rate, cpu_us)
    return rate, cpu_us


def _timed(label: str, fn: Callable[[], float]) -> float:
    _log.info("measuring %s", label)
    rate = fn()
    _log.info("%s: %.0f/s", label, rate)
    return rate


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / max(denominator, 1e-9), 3)


def run_journal_bench(
    directory: str,
    records: int = 2000,
    replay_events: int = 1_000_000,
    threads: int = 8,
    rounds: int = 5,
) -> dict[str, Any]:
    """Measure durable appends and replay in a fresh temporary folder under ``directory``.

    ``records`` events are appended by each append measurement (a few hundred
    more as warm-up, not timed), ``threads`` threads share them for the group
    commit measurement, and ``replay_events`` records are written (not timed)
    and then replayed.  The folder is removed at the end, also on failure.

    Returns a dict with the rates (``prealloc_fdatasync_per_s``, ``raw_fdatasync_per_s``,
    ``sqlite_wal_full_per_s``, ``journal_append_per_s``, ``group_commit_per_s``
    (at ``threads``), ``group_commit_per_s_by_threads`` (``"2"``, ``"8"``, ``"32"``),
    ``replay_events_per_s``, rounded to integers), the damage scan's median
    seconds (``damage_scan_s_128k``, ``damage_scan_s_1m``), ``group_commit_threads``, ``rounds``,
    ``replay_events``, ``ratios`` (3 decimals), ``targets`` (booleans),
    ``records`` and ``dir`` (the absolute ``directory``).  Raises ``ValueError``
    for a count below 1 or fewer records than threads, and ``RuntimeError`` when
    replay does not read back every record written.
    """
    if records < 1:
        raise ValueError(f"records must be at least 1, got {records}")
    if replay_events < 1:
        raise ValueError(f"replay_events must be at least 1, got {replay_events}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if records < threads:
        raise ValueError(
            f"records ({records}) must be at least threads ({threads}): each thread appends records/threads"
        )
    directory = os.path.abspath(directory)
    events = [make_event(i) for i in range(records)]
    warmup = _warmup_count(records)
    folder = tempfile.mkdtemp(prefix=".shipslog-bench-", dir=directory)
    _log.info(
        "benchmarking in %s: %d records of %d bytes, %d warm-up",
        folder,
        records,
        len(events[0]),
        warmup,
    )
    counts = sorted({*GROUP_THREADS, threads})
    group_events = events if records >= counts[-1] else [make_event(i) for i in range(counts[-1])]  # one record a thread at least
    try:
        frames = [bytes(frame_bytes(events[0]))] * (records + warmup)
        # The journal and what it is compared with run side by side, round after round, so that a
        # disk that drifts (its fdatasync time varies by tens of percent within minutes) moves both.
        samples: dict[str, list[float]] = collections.defaultdict(list)
        for r in range(rounds):
            here = tempfile.mkdtemp(prefix=f"round-{r}-", dir=folder)
            for key, rate in _bench_round(here, frames[warmup:], events, group_events, warmup, counts).items():
                samples[key].append(rate)
            shutil.rmtree(here)
        _log.info("measuring the CPU of one append, fsync off")
        cpu_us, floor_cpu_us = append_cpu_us(folder, events[0], frames[0], min(CPU_APPENDS, 10 * records))
        replay = _timed(
            "replay", lambda: _bench_replay(os.path.join(folder, "replay"), replay_events)
        )
        _log.info("measuring the damage scan")
        damage = [_bench_damage_scan(os.path.join(folder, f"damage-{n}"), n) for n in _DAMAGE_SIZES]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.exists(folder):
            _log.warning("could not remove the benchmark folder %s", folder)

    medians = {key: statistics.median(rates) for key, rates in samples.items()}
    prealloc, single, raw, sqlite = medians["floor"], medians["single"], medians["raw"], medians["sqlite"]
    group_rates = {c: medians[f"group-{c}"] for c in counts}

    def paired(numerator: str, denominator: str) -> float:
        """The median of the rounds' ratios of two measurements."""
        return round(statistics.median(n / max(d, 1e-9) for n, d in zip(samples[numerator], samples[denominator])), 3)

    ratios = {
        "journal_vs_prealloc": paired("single", "floor"),
        "journal_vs_raw": paired("single", "raw"),
        "journal_vs_sqlite": paired("single", "sqlite"),
        "group_vs_single": paired(f"group-{threads}", "single"),
        "damage_1m_vs_128k": _ratio(damage[1], damage[0]),
        "group_32_vs_8": paired("group-32", "group-8"),
    }
    return judge(TARGETS, {
        "prealloc_fdatasync_per_s": round(prealloc),
        "frame_bytes": len(frames[0]),
        "raw_fdatasync_per_s": round(raw),
        "sqlite_wal_full_per_s": round(sqlite),
        "journal_append_per_s": round(single),
        "append_cpu_us": cpu_us,
        "cpu_us_per_append_by_threads": {str(c): round(medians[f"cpu-{c}"], 1) for c in (1, *counts)},
        "floor_cpu_us": floor_cpu_us,
        "group_commit_per_s": round(group_rates[threads]),
        "group_commit_threads": threads,
        "group_commit_per_s_by_threads": {str(c): round(rate) for c, rate in group_rates.items()},
        "rounds": rounds,
        "rounds_per_s": {key: [round(rate, 1) for rate in rates] for key, rates in samples.items() if not key.startswith("cpu-")},
        "statistic": f"median of {rounds} rounds, each measuring the floor, the journal, the O_APPEND loop, SQLite and group commit side by side",
        "replay_events": replay_events,
        "replay_events_per_s": round(replay),
        "damage_scan_s_128k": round(damage[0], 4),
        "damage_scan_s_1m": round(damage[1], 4),
        "ratios": ratios,
        "records": records,
        "dir": directory,
    })
