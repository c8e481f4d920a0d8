"""The ranks of a process group agreeing on one checkpoint: the coordinator's offer, the ranks' files, one commit.

Only the coordinator (rank 0 of the group) opens the engine: it holds the
root's lock and the journal.  Everything here is collective: each function is
called on every rank of the group in the same order, and a failure on any
rank raises the same :class:`DistributedCheckpointError` on every rank (a
rank that died or hung shows up as a broken or timed-out collective, which is
described the same way).  Without an initialized process group each runs in
one process.

* :func:`shared_checkpoint`: one checkpoint whose files every rank writes
  into the coordinator's staging folder (the HF Trainer's per-rank RNG
  files, say); committed by the coordinator once every rank reported its
  files, or aborted when any rank failed.
* :func:`choose_verified`: the coordinator names candidate checkpoints,
  newest first; every rank verifies the files it will read against the
  MANIFEST the coordinator read; the first that verifies on every rank is
  the one all ranks load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch.distributed as dist

from shipslog.engine import (
    CheckpointWriter,
    EngineCore,
    FileEntry,
    IntegrityError,
    Manifest,
    checksum_file,
    read_manifest,
    verify_folder,
)
from shipslog.journal import OS_FS, FileSystem, ShipslogError, crash_point, register_crash_point

__all__ = [
    "CP_GATHERED",
    "CP_OFFERED",
    "CP_RANK_BEFORE",
    "CP_RANK_FILES",
    "DistributedCheckpoint",
    "DistributedCheckpointError",
    "Offered",
    "RankFile",
    "SharedCheckpoint",
    "abort_open",
    "agree",
    "choose_verified",
    "describe",
    "engine_problem",
    "failure",
    "from_coordinator",
    "gather",
    "group_view",
    "offer_everywhere",
    "shared_checkpoint",
]

_log = logging.getLogger("shipslog.gpu.distributed")

CP_OFFERED = register_crash_point(
    "distributed.after_offer", "checkpoint.begun is durable and every rank has the staging folder; no rank has written a file"
)
CP_RANK_BEFORE = register_crash_point(
    "distributed.before_rank_files", "this rank has the staging folder and its plan; it has written no file"
)
CP_RANK_FILES = register_crash_point(
    "distributed.after_rank_files", "this rank's files are written and fsynced in staging; its file list is not sent"
)
CP_GATHERED = register_crash_point(
    "distributed.after_gather", "the coordinator has every rank's file list; no MANIFEST (DCP: no .metadata either)"
)


class DistributedCheckpointError(ShipslogError, RuntimeError):
    """A distributed save or load failed; raised on every rank alike, naming the rank and the cause."""


@dataclasses.dataclass(frozen=True)
class DistributedCheckpoint:
    """A committed checkpoint, as every rank sees it after a save, a load or a choice."""

    name: str
    step: int | None
    path: str
    """Relative to the root: ``checkpoints/<name>``."""
    world_size: int
    """The number of ranks that saved it (0: not recorded)."""


@dataclasses.dataclass(frozen=True)
class RankFile:
    """One file a rank wrote into the operation's staging folder, as reported to the coordinator."""

    generation: str
    path: str
    size: int
    crc32: int


# -- the group ---------------------------------------------------------------------------------


def group_view(process_group: Any) -> tuple[bool, int, int]:
    """(distributed, rank in the group, world size)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False, 0, 1
    return True, dist.get_rank(process_group), dist.get_world_size(process_group)


def gather(distributed: bool, value: Any, process_group: Any) -> list[Any]:
    """Every rank's ``value``, by rank (``[value]`` in one process)."""
    if not distributed:
        return [value]
    values: list[Any] = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(values, value, group=process_group)
    return values


def agree(distributed: bool, rank: int, problem: str | None, process_group: Any) -> None:
    """Every rank's precondition problem gathered; the same error raised on every rank when any has one."""
    found = [f"rank {r}: {p}" for r, p in enumerate(gather(distributed, problem, process_group)) if p]
    if found:
        raise DistributedCheckpointError("; ".join(found))


def from_coordinator(distributed: bool, offer: dict[str, Any] | None, process_group: Any) -> dict[str, Any]:
    """The coordinator's ``offer`` on every rank (broadcast from group rank 0); its ``error`` raised on every rank."""
    box: list[Any] = [offer]
    if distributed:
        src = 0 if process_group is None else dist.get_global_rank(process_group, 0)
        dist.broadcast_object_list(box, src=src, group=process_group)
    result = box[0]
    if not isinstance(result, dict):
        raise DistributedCheckpointError(f"the coordinator sent {type(result).__name__}, not its offer")
    if result.get("error"):
        raise DistributedCheckpointError(f"on the coordinator (rank 0): {result['error']}")
    return result


def engine_problem(engine: EngineCore | None, rank: int) -> str | None:
    """Why this rank's ``engine`` argument is wrong (only the coordinator has one), or None."""
    if rank == 0 and engine is None:
        return "the coordinator (rank 0 of the group) needs the engine; pass the open Engine there"
    if rank != 0 and engine is not None:
        return "only the coordinator (rank 0 of the group) opens the engine; pass None on the other ranks"
    return None


_LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
_TIMED_OUT = ("Timed out", "timed out", "Timeout")


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, with what a collective's failure means said first."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(exc, RuntimeError) and any(s in text for s in _LOST_PEER):
        return f"a rank left the job (its process died or its connection broke): {text}"
    if isinstance(exc, RuntimeError) and any(s in text for s in _TIMED_OUT):
        return f"a rank did not take part within the process group's timeout (hung or stopped): {text}"
    return f"{type(exc).__name__}: {text}"


def failure(exc: BaseException, what: str) -> DistributedCheckpointError:
    """One line for DCP's per-rank failures (``CheckpointException``), or for any other error."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        parts = []
        for rank, wrapped in sorted(failures.items()):
            inner = wrapped[0] if isinstance(wrapped, tuple) and wrapped else wrapped  # (exception, its stack summary)
            parts.append(f"rank {rank}: {describe(inner)}")
        return DistributedCheckpointError(f"{what} failed on {len(failures)} rank(s): {'; '.join(parts)}")
    return DistributedCheckpointError(f"{what} failed: {describe(exc)}")


def abort_open(writer: CheckpointWriter | None, reason: str) -> None:
    """On the coordinator: abort the operation if it is still open (staging removed, ``aborted`` journaled)."""
    if writer is None or writer.state != "open":
        return
    try:
        writer.abort(reason)
    except (ShipslogError, OSError) as exc:
        _log.error("could not abort %s after a failed save (%s): %s; the engine's recovery finishes it on the next open",
                   writer.op, reason, exc)


# -- one checkpoint written by every rank ------------------------------------------------------


class SharedCheckpoint:
    """A checkpoint in progress that every rank writes files into (see :func:`shared_checkpoint`).

    :attr:`path` is the operation's staging folder, the same on every rank;
    :attr:`final_path` the folder it is renamed to at commit.  Files a rank
    writes there are reported with :meth:`record` (fsynced and checksummed by
    the rank that wrote them); files the coordinator writes need no record
    (its commit checksums and fsyncs every file in the folder).
    """

    def __init__(self, *, name: str, step: int | None, path: str, final_path: str, op: str, generation: str,
                 rank: int, world: int, writer: CheckpointWriter | None, fs: FileSystem) -> None:
        self.name = name
        self.step = step
        self.path = path
        self.final_path = final_path
        self.op = op
        self.generation = generation
        self.rank = rank
        self.world = world
        self.writer = writer
        """The engine's writer, on the coordinator only (None on the other ranks)."""
        self.fs = fs
        self.files: list[RankFile] = []
        self.info: DistributedCheckpoint | None = None
        """Set on every rank once the checkpoint is committed."""

    def record(self, relpath: str) -> RankFile:
        """Report ``path/relpath``, which this rank wrote and closed: fsynced here and its CRC-32 computed here.

        Raises :class:`IntegrityError` for a path outside the folder or a file that is not there.
        """
        parts = relpath.split("/")
        if not relpath or relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise IntegrityError(os.path.join(self.path, relpath), "a relative path inside the staging folder", repr(relpath))
        full = os.path.join(self.path, *parts)
        if not os.path.isfile(full) or os.path.islink(full):
            raise IntegrityError(full, "a regular file this rank wrote", "no such file")
        fd = self.fs.open(full, os.O_RDONLY)
        try:
            self.fs.fsync(fd)
        finally:
            self.fs.close(fd)
        self.fs.fsync_dir(os.path.dirname(full))
        entry = checksum_file(self.path, relpath)
        found = RankFile(self.generation, relpath, entry.size, entry.crc32)
        self.files.append(found)
        return found


@dataclasses.dataclass(frozen=True)
class Offered:
    """A save every rank agreed on: what the coordinator sent, as this rank holds it."""

    distributed: bool
    rank: int
    world: int
    name: str
    staging: str
    final: str
    op: str
    generation: str
    writer: CheckpointWriter | None
    """The engine's writer, on the coordinator only."""
    fs: FileSystem
    """The file system this rank writes through."""


def offer_everywhere(
    engine: EngineCore | None,
    name: str,
    *,
    step: int | None,
    meta: Mapping[str, Any],
    process_group: Any,
    fs: FileSystem | None,
) -> Offered:
    """Every rank's preconditions agreed, the operation begun on the coordinator (``checkpoint.begun``, with the
    world size in its meta) and its staging folder, final folder and a generation token sent to every rank."""
    distributed, rank, world = group_view(process_group)
    agree(distributed, rank, engine_problem(engine, rank), process_group)
    writer: CheckpointWriter | None = None
    offer: dict[str, Any] | None = None
    if rank == 0:
        assert engine is not None
        try:
            writer = engine.checkpoint(name, step=step, meta={**dict(meta), "world_size": world})
            offer = {"name": name, "staging": writer.path, "final": writer.final_path, "op": writer.op,
                     "generation": f"{writer.op}/{uuid.uuid4().hex}"}
        except Exception as exc:  # noqa: BLE001 - sent to every rank, then raised there as the same error
            offer = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        got = from_coordinator(distributed, offer, process_group)
    except BaseException as exc:
        abort_open(writer, f"the other ranks could not be told about the save: {type(exc).__name__}: {exc}")
        raise
    rank_fs = fs if fs is not None else engine.fs if engine is not None else OS_FS
    return Offered(distributed, rank, world, got["name"], got["staging"], got["final"], got["op"], got["generation"],
                   writer, rank_fs)


@contextlib.contextmanager
def shared_checkpoint(
    engine: EngineCore | None,
    name: str,
    *,
    step: int | None,
    meta: Mapping[str, Any] | None = None,
    process_group: Any = None,
    fs: FileSystem | None = None,
) -> Iterator[SharedCheckpoint]:
    """One checkpoint written by every rank of ``process_group``, committed once by the coordinator.

    Enter it on every rank (``engine`` on rank 0 of the group only; the
    coordinator's ``name`` is the one used, the other ranks' is ignored).
    The coordinator begins the operation (``checkpoint.begun``) and sends
    its staging folder and a generation token to every rank.  On leaving the
    block every rank sends the files it recorded (or the error its block
    raised); when all ranks succeeded the coordinator adds them to the
    operation (reports of another generation are refused) and commits:
    MANIFEST, ``durable``, rename into ``checkpoints/<name>``, ``committed``.
    When any rank failed, or a rank died or hung (the collective fails), the
    coordinator aborts the operation and every surviving rank raises the same
    :class:`DistributedCheckpointError`.  ``fs``: this rank's file system
    (default: the engine's on the coordinator, the operating system's elsewhere).
    """
    offered = offer_everywhere(engine, name, step=step, meta=meta or {}, process_group=process_group, fs=fs)
    distributed, rank, world, writer = offered.distributed, offered.rank, offered.world, offered.writer
    ck = SharedCheckpoint(name=offered.name, step=step, path=offered.staging, final_path=offered.final, op=offered.op,
                          generation=offered.generation, rank=rank, world=world, writer=writer, fs=offered.fs)
    what = f"save of checkpoint {ck.name!r} (op {ck.op})"
    if rank == 0:
        crash_point(CP_OFFERED)
    crash_point(CP_RANK_BEFORE)
    problem: str | None = None
    raised: BaseException | None = None
    try:
        yield ck
    except GeneratorExit:  # the generator closed without its block running: nothing to report
        abort_open(writer, "the save was abandoned")
        raise
    except BaseException as exc:  # noqa: BLE001 - sent to every rank (an interrupt too), then raised
        problem, raised = describe(exc), exc
    crash_point(CP_RANK_FILES)
    try:
        reports = gather(distributed, (problem, ck.files), process_group)
    except Exception as exc:  # a rank died or hung: the collective failed
        abort_open(writer, f"a rank failed during the save: {describe(exc)}")
        raise failure(exc, what) from exc
    problems = [f"rank {r}: {p}" for r, (p, _files) in enumerate(reports) if p]
    if problems:
        abort_open(writer, f"failed on {len(problems)} rank(s): {'; '.join(problems)}")
        if raised is not None and not isinstance(raised, Exception):
            raise raised  # this rank's interrupt stays an interrupt here; the other ranks get the error below
        raise DistributedCheckpointError(f"{what} failed on {len(problems)} rank(s): {'; '.join(problems)}") from raised
    outcome: dict[str, Any] | None = None
    if rank == 0:
        assert writer is not None
        crash_point(CP_GATHERED)
        try:
            reported: dict[str, int] = {}
            for r, (_p, files) in enumerate(reports):
                for f in files:
                    if not isinstance(f, RankFile) or f.generation != ck.generation:
                        raise DistributedCheckpointError(
                            f"rank {r} reported a file of another operation ({getattr(f, 'generation', f)!r}, "
                            f"not {ck.generation!r}): refused")
                    if f.path in reported:
                        raise DistributedCheckpointError(
                            f"ranks {reported[f.path]} and {r} both reported {f.path!r}: one file has one writer")
                    reported[f.path] = r
                    writer.add_file(FileEntry(f.path, f.size, f.crc32), synced=True)
            writer.commit()
            outcome = {"committed": True}
        except Exception as exc:  # noqa: BLE001 - sent to every rank, then raised there as the same error
            abort_open(writer, f"the commit failed: {type(exc).__name__}: {exc}")
            outcome = {"error": f"the commit failed: {type(exc).__name__}: {exc}"}
    try:
        from_coordinator(distributed, outcome, process_group)
    except DistributedCheckpointError:
        raise
    except Exception as exc:
        raise failure(exc, what) from exc
    ck.info = DistributedCheckpoint(ck.name, step, f"checkpoints/{ck.name}", world)


# -- choosing what every rank loads -------------------------------------------------------------


def _candidate(engine: EngineCore, path: str) -> dict[str, Any]:
    """What the coordinator sends about the committed checkpoint at root-relative ``path``."""
    art = next((a for a in engine.state.checkpoints.values() if a.path == path), None)
    folder = engine.path(*path.split("/"))
    found: dict[str, Any] = {"path": path, "folder": folder, "name": os.path.basename(path),
                             "step": art.step if art is not None else None,
                             "world_size": int((art.meta or {}).get("world_size", 0)) if art is not None else 0}
    try:
        manifest = read_manifest(folder)
    except (IntegrityError, OSError) as exc:
        found["problem"] = f"{type(exc).__name__}: {exc}"
        return found
    found["files"] = [(f.path, f.size, f.crc32) for f in manifest.files]
    return found


def _verify_here(found: Mapping[str, Any], reads: Callable[[str], bool] | None) -> str | None:
    """This rank's check of the coordinator's candidate: every listed file present with its size and nothing
    else, and the CRC-32 of each file this rank reads (``reads``; default every file).  The problem, or None."""
    if found.get("problem"):
        return str(found["problem"])
    folder = str(found["folder"])
    entries = [FileEntry(p, s, c) for p, s, c in found["files"]]
    try:
        verify_folder(folder, Manifest(kind="checkpoint", name=str(found["name"]), files=entries), deep=False)
        for entry in entries:
            if reads is not None and not reads(entry.path):
                continue
            on_disk = checksum_file(folder, entry.path)
            if on_disk.crc32 != entry.crc32:
                raise IntegrityError(os.path.join(folder, entry.path), f"CRC-32 {entry.crc32:08x} (MANIFEST)",
                                     f"{on_disk.crc32:08x}")
    except Exception as exc:  # noqa: BLE001 - this rank's problem, sent to every rank (never a skipped collective)
        return f"{type(exc).__name__}: {exc}"
    return None


def choose_verified(
    engine: EngineCore | None,
    candidates: Sequence[str],
    *,
    reads: Callable[[str], bool] | None = None,
    process_group: Any = None,
) -> tuple[DistributedCheckpoint, str] | None:
    """The first of the coordinator's ``candidates`` (root-relative checkpoint paths, newest first) that verifies on
    every rank: ``(checkpoint, absolute folder)`` on every rank, or None on every rank when none does.

    Call on every rank; ``candidates`` and ``engine`` count on the coordinator
    only.  Each rank checks the folder against the MANIFEST the coordinator
    read (every listed file present, of its size, nothing unlisted) and the
    CRC-32 of every file ``reads`` accepts (default: all).  A candidate that
    fails on any rank is logged as an error on the coordinator with each
    rank's reason, and the next one is tried.
    """
    distributed, rank, _world = group_view(process_group)
    agree(distributed, rank, engine_problem(engine, rank), process_group)
    queue = list(candidates) if rank == 0 else []
    while True:
        offer: dict[str, Any] | None = None
        if rank == 0:
            assert engine is not None
            try:
                offer = {"found": _candidate(engine, queue.pop(0)) if queue else None}
            except Exception as exc:  # noqa: BLE001 - sent to every rank, then raised there as the same error
                offer = {"error": f"{type(exc).__name__}: {exc}"}
        found = from_coordinator(distributed, offer, process_group)["found"]
        if found is None:
            return None
        problems = [f"rank {r}: {p}" for r, p in enumerate(gather(distributed, _verify_here(found, reads), process_group)) if p]
        if not problems:
            chosen = DistributedCheckpoint(found["name"], found["step"], found["path"], found["world_size"])
            return chosen, str(found["folder"])
        if rank == 0:
            _log.error("checkpoint %s does not verify (%s); trying the one before it", found["path"], "; ".join(problems))
