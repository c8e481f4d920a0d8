"""``shipslog bench engine``: replay, open time and the cost of an empty checkpoint, beside their baselines.

One run, in one temporary folder on the disk under test:

* ``replay_events_per_s``: :func:`shipslog.engine.replay` (read, crc-check,
  decode and reduce every record, no snapshot) of a history of lifecycle
  records written one record per frame, as the engine writes them: runs with
  progress, checkpoints, pointer moves and retention (median of three passes);
* ``open_ms_10k`` / ``open_ms_1m``: ``Engine.open`` (lock, journal verify,
  newest snapshot, replay of the rest, the new session's fsynced record) of a
  root with 10,000 and with ``--records`` records of history, snapshots on,
  one of each in turn (``ratios.open_1m_vs_10k``: the median of the pairs' ratios);
* ``status_ms_1m``: the view behind ``shipslog status`` (read-only, no lock:
  the root checked, the newest snapshot, the records after it, the status)
  of the root with ``--records`` records of history, beside ``open_ms_1m``;
* ``checkpoint_empty_ms``: an empty checkpoint, begun to committed, fsync on,
  beside its floor: ``syncs_per_checkpoint`` (the file and folder syncs one
  empty checkpoint makes, counted with the recording file system) and
  ``syncs_ms``, that many 4 KiB appends + ``fdatasync`` to a file on the same
  disk, back to back; one checkpoint and one run of its syncs in turn, and
  ``ratios.checkpoint_vs_syncs`` is the median of those pairs' ratios
  (target: the checkpoint within 1.3 x its syncs);
  ``fsync_ms``: one 4 KiB append + fsync, as before.

Medians are reported.  Nothing here prints; progress is logged at INFO.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from shipslog import Engine
from shipslog.engine import (
    ArtifactBegun,
    ArtifactCommitted,
    ArtifactDurable,
    Event,
    PointerFile,
    PointerIntended,
    PointerSet,
    Registry,
    RetentionDeleted,
    RetentionIntended,
    RunFinished,
    RunProgress,
    RunStarted,
    RunValidated,
    SessionClosed,
    SessionOpened,
    new_manifest,
    replay,
    write_manifest,
)
from shipslog.journal import OS_FS, FileSystem, Journal, RecordingFileSystem

from ._bench_targets import Target, judge
from ._inspect import open_view

__all__ = ["MIXES", "history_mix", "lifecycle_history", "materialize_history", "run_engine_bench", "syncs_floor_ms", "syncs_per_checkpoint", "write_history"]

_log = logging.getLogger("shipslog.tools.bench")

TARGETS = (
    Target("replay_ge_1m", "replay_events_per_s", ">=", 1_000_000, "reducer replay (demo mix), records/s"),
    Target("open_ms_1m_le_50", "open_ms_1m", "<=", 50, "Engine.open, long history (ms)"),
    Target("open_1m_le_1_5x_10k", "ratios.open_1m_vs_10k", "<=", 1.5, "open long / open 10k records"),
    Target("checkpoint_le_1_3x_syncs", "ratios.checkpoint_vs_syncs", "<=", 1.3, "empty checkpoint / its syncs"),
)
"""What ``shipslog bench engine`` must show."""

REPLAY_PASSES = 3
"""The demo-mix replay is timed this many times over the whole history; the median is reported."""
PROGRESS_PER_RUN = 50
KEEP_CHECKPOINTS = 3


MIXES = {"demo": (1, 4), "progress": (PROGRESS_PER_RUN, 1)}
"""History mixes: (``run.progress`` records per checkpoint, checkpoints per run).  ``demo`` has the demo
host's shape: progress journaled once per checkpoint, four checkpoints per data file (a run), then a
pointer move and a retention pass; ``progress`` is the progress-heavy history of earlier benchmarks
(50 progress records per checkpoint, one checkpoint per run: 83% of all records are progress)."""


def lifecycle_history(records: int, session: str = "bench", mix: str = "demo") -> Iterator[Event]:
    """A valid history of about ``records`` lifecycle events in the proportions of ``mix`` (see :data:`MIXES`):
    each cycle is a run with progress, checkpoints each followed by a pointer move, the run's end, and
    a retention pass."""
    progress_per_ck, cks_per_run = MIXES[mix]
    yield SessionOpened(op=f"session-{session}", pid=1, host="bench")
    n = 1
    step = 0
    cycle = 0
    committed: list[str] = []
    while n < records - 1:
        cycle += 1
        run, gc = f"run-{session}-{cycle}", f"retention-{session}-{cycle}"
        events: list[Event] = [
            RunValidated(op=run, data_file="/data/train.jsonl", lines=1000, size=100_000, crc32=cycle),
            RunStarted(op=run, start_step=step, checkpoint=committed[-1] if committed else None),
        ]
        for k in range(cks_per_run):
            for _ in range(progress_per_ck):
                step += 1
                events.append(RunProgress(op=run, step=step))
            ck = f"checkpoint-{session}-{cycle}-{k}"
            path = f"checkpoints/step-{step}"
            events += [
                ArtifactBegun(op=ck, name=f"step-{step}", step=step, staging=f"staging/{ck}"),
                ArtifactDurable(op=ck, files=3, bytes=1 << 20, manifest_crc=cycle),
                ArtifactCommitted(op=ck, path=path),
            ]
            committed.append(path)
        ptr = f"pointer-{session}-{cycle}"
        old_target = committed[-cks_per_run - 1] if len(committed) > cks_per_run else None
        events += [PointerIntended(op=ptr, name="current", old=old_target, new=committed[-1]), PointerSet(op=ptr)]
        events.append(RunFinished(op=run, step=step))
        if len(committed) > KEEP_CHECKPOINTS:
            old, committed = committed[:-KEEP_CHECKPOINTS], committed[-KEEP_CHECKPOINTS:]
            events += [RetentionIntended(op=gc, paths=old), RetentionDeleted(op=gc)]
        for ev in events:
            yield ev
            n += 1
    yield SessionClosed(op=f"session-{session}")


def history_mix(records: int, mix: str) -> dict[str, float]:
    """The share of each record kind in ``mix``'s history of ``records`` records (what the benchmark states)."""
    registry = Registry()
    counts: dict[str, int] = {}
    total = 0
    for ev in lifecycle_history(records, mix=mix):
        kind = msgspec.msgpack.decode(registry.encode(ev), type=dict)["kind"]
        counts[kind] = counts.get(kind, 0) + 1
        total += 1
    return {kind: round(count / total, 3) for kind, count in sorted(counts.items(), key=lambda kv: -kv[1])}


def write_history(root: str, records: int, mix: str = "demo") -> int:
    """Write about ``records`` lifecycle records of ``mix`` into a new journal at ``root`` (one per frame, fsync off)."""
    registry = Registry()
    encode = registry.encode
    with Journal.open(root, fsync=False, session="bench") as journal:
        append = journal.append
        for ev in lifecycle_history(records, mix=mix):
            append(encode(ev))
        return journal.last_seq


def materialize_history(root: str) -> None:
    """Create the folders and pointer files the end of a written history names (empty, each with its MANIFEST),
    so that opening checks real ones, as on a host, rather than reporting them missing."""
    state = replay(root)
    fs = FileSystem(sync=False)
    for art in [*state.checkpoints.values(), *state.models.values()]:
        folder = os.path.join(root, *art.path.split("/"))
        fs.ensure_dir(folder)
        write_manifest(fs, folder, new_manifest(art.artifact, art.name, [], step=art.step))
    fs.ensure_dir(os.path.join(root, "pointers"))
    for ptr in state.pointers.values():
        data = msgspec.json.encode(PointerFile(version=1, pointer=ptr.name, target=ptr.target, op=ptr.op)) + b"\n"
        fs.write_file_atomic(os.path.join(root, "pointers", ptr.name), data)


def _replay_seconds(root: str, seq: int) -> float:
    """Seconds one full :func:`replay` of ``root`` takes (checked to reach ``seq``)."""
    t0 = time.perf_counter()
    state = replay(root)
    seconds = time.perf_counter() - t0
    if state.seq != seq:
        raise RuntimeError(f"replay of {root} reached seq {state.seq}, expected {seq}")
    return seconds


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _open_seconds(root: str) -> float:
    t0 = time.perf_counter()
    engine = Engine.open(root)
    seconds = time.perf_counter() - t0
    engine.close()
    return seconds


def _opens_side_by_side(big: str, small: str, repeats: int) -> tuple[float, float, float]:
    """Opens of ``big`` and ``small`` in turn: the median ms of each and the median of the pairs' ratios."""
    bigs: list[float] = []
    smalls: list[float] = []
    for _ in range(repeats):
        bigs.append(_open_seconds(big))
        smalls.append(_open_seconds(small))
    return _median_ms(bigs), _median_ms(smalls), round(statistics.median(b / s for b, s in zip(bigs, smalls)), 3)


def _status_ms(root: str, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        open_view(root).status()
        samples.append(time.perf_counter() - t0)
    return _median_ms(samples)


_SYNC_OPS = ("fsync", "fdatasync")
"""The recorded primitives that are syncs (a folder's fsync is recorded as ``fsync``)."""


def syncs_per_checkpoint(root: str) -> int:
    """The file and folder syncs of one empty checkpoint, begun to committed (after a first one), counted."""
    fs = RecordingFileSystem()
    with Engine.open(root, fs=fs) as engine:
        engine.checkpoint("count-warm", step=0).commit()  # an empty checkpoint, begun and committed
        before = sum(fs.count(op) for op in _SYNC_OPS)
        engine.checkpoint("count", step=1).commit()
        return sum(fs.count(op) for op in _SYNC_OPS) - before


def syncs_floor_ms(folder: str, syncs: int, repeats: int, fs: FileSystem = OS_FS, *, full: bool = False) -> float:
    """Median ms of ``syncs`` back-to-back 4 KiB appends + ``fdatasync`` (``full``: ``fsync``) to one file, through ``fs``."""
    path = os.path.join(folder, "fsync-probe" if full else "syncs-probe")
    block = os.urandom(4096)
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sync = fs.fsync if full else fs.fdatasync
    samples = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(syncs):
                fs.write_all(fd, block)
                sync(fd)
            samples.append(time.perf_counter() - t0)
    finally:
        fs.close(fd)
    return _median_ms(samples)


def _checkpoint_beside_syncs(root: str, folder: str, syncs: int, repeats: int) -> tuple[float, float, float]:
    """Empty checkpoints (begun to committed, fsync on) and their syncs floor, one of each in turn.

    Returns the median ms of each and the median of the pairs' ratios: a
    disk whose sync time drifts moves both sides of every pair together.
    """
    checkpoints: list[float] = []
    floors: list[float] = []
    with Engine.open(root) as engine:
        for i in range(repeats):
            t0 = time.perf_counter()
            with engine.checkpoint(f"empty-{i}", step=i):
                pass
            checkpoints.append(time.perf_counter() - t0)
            floors.append(syncs_floor_ms(folder, syncs, 1) / 1000)
    ratio = statistics.median(c / f for c, f in zip(checkpoints, floors))
    return _median_ms(checkpoints), _median_ms(floors), round(ratio, 3)


def run_engine_bench(folder: str, *, records: int = 1_000_000, repeats: int = 20) -> dict[str, Any]:
    """Run every measurement in a temporary folder under ``folder``; return the result object."""
    work = tempfile.mkdtemp(prefix="shipslog-bench-engine-", dir=folder)
    try:
        big = os.path.join(work, "big")
        small = os.path.join(work, "small")
        _log.info("writing %d records of history", records)
        big_seq = write_history(big, records)
        write_history(small, 10_000)
        _log.info("replaying %d records (the demo host's mix), %d times", big_seq, REPLAY_PASSES)
        replay_s = statistics.median(_replay_seconds(big, big_seq) for _ in range(REPLAY_PASSES))
        heavy = os.path.join(work, "progress-heavy")
        heavy_seq = write_history(heavy, records, mix="progress")
        _log.info("replaying %d records (progress-heavy)", heavy_seq)
        t0 = time.perf_counter()
        replay(heavy)
        heavy_rate = int(heavy_seq / (time.perf_counter() - t0))
        shutil.rmtree(heavy)
        for root in (big, small):
            materialize_history(root)
        for root in (big, small):  # the first open replays everything and leaves a snapshot
            Engine.open(root).close()
        _log.info("timing opens")
        open_1m, open_10k, open_ratio = _opens_side_by_side(big, small, 5)
        _log.info("timing status (read-only)")
        status_1m = _status_ms(big, 5)
        _log.info("timing empty checkpoints beside their syncs, and fsync")
        syncs = syncs_per_checkpoint(os.path.join(work, "count"))
        ck_ms, syncs_ms, ck_vs_syncs = _checkpoint_beside_syncs(os.path.join(work, "ck"), work, syncs, repeats)
        fsync_ms = syncs_floor_ms(work, 1, repeats, full=True)
        replay_rate = int(big_seq / replay_s)
        return judge(TARGETS, {
            "replay_events": big_seq,
            "replay_events_per_s": replay_rate,
            "replay_mix": history_mix(min(records, 20_000), "demo"),
            "replay_progress_heavy_per_s": heavy_rate,
            "open_ms_10k": open_10k,
            "open_ms_1m": open_1m,
            "status_ms_1m": status_1m,
            "checkpoint_empty_ms": ck_ms,
            "syncs_per_checkpoint": syncs,
            "syncs_ms": syncs_ms,
            "fsync_ms": fsync_ms,
            "ratios": {
                "open_1m_vs_10k": open_ratio,
                "status_1m_vs_open_1m": round(status_1m / open_1m, 3),
                "checkpoint_vs_fsync": round(ck_ms / fsync_ms, 3),
                "checkpoint_vs_syncs": ck_vs_syncs,
            },
            "dir": os.path.abspath(folder),
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
