"""Multi-rank checkpoints: ``torch.distributed.checkpoint`` (DCP) plans and shards, shipslog commits and verifies.

Use, on every rank of the job (the coordinator, rank 0 of the group, alone
opens the engine: it holds the root's lock and the journal)::

    engine = shipslog.Engine.open(root) if dist.get_rank() == 0 else None
    save_distributed(engine, {"model": model.state_dict()}, step=step)        # committed on return, on every rank
    found = load_distributed(engine, state_dict)                              # None on a root with no DCP checkpoint

Guarantees (on top of DCP's planning, sharding and resharding):

* **one commit for all ranks**: the coordinator journals
  ``checkpoint.begun`` and creates the operation's staging folder, and sends
  its path to every rank with a generation token; every rank writes its
  files into that folder only (a folder that is gone is never re-created, so
  a rank of an earlier, recovered operation cannot write into a new one),
  computing each file's CRC-32 while writing and fsyncing it and the folder;
  DCP gathers every rank's write results, and only then does the
  coordinator write DCP's ``.metadata``, the MANIFEST listing every rank's
  files with sizes and checksums, journal ``durable``, rename the folder
  into ``checkpoints/<name>`` and journal ``committed``.  Results carrying
  another generation are refused.  A failure on any rank (an exception, a
  rank that died) fails the save on every rank with the same error, and the
  coordinator aborts the operation (staging removed, ``aborted`` journaled);
  a coordinator killed mid-save is recovered on its next open by the
  single-rank rule: rolled back before ``durable``, forward after.
* **verified loads**: the coordinator picks the checkpoint (by name, or the
  newest committed DCP checkpoint by step) and sends its MANIFEST to every
  rank; every rank checks the size and CRC-32 of each file it reads, the
  ``.metadata`` included, before DCP sees a byte of it, and the ``.metadata``
  pickle is decoded with an allowlist of DCP's metadata classes.  A mismatch
  on any rank fails the load on every rank, naming the file
  (:class:`DistributedCheckpointError`).  DCP reshards, so a checkpoint
  saved by N ranks loads into M.
* without an initialized process group the same calls run in one process.

For files a framework writes itself on several ranks (the HF Trainer's
per-rank RNG states), :func:`shared_checkpoint` is the same commit without
DCP: every rank writes into the coordinator's staging folder and records
its files, the coordinator commits once all ranks reported; and
:func:`choose_verified` picks, for a resume, the newest checkpoint that
verifies on every rank.  The integrations in :mod:`shipslog.gpu.hf` and
:mod:`shipslog.gpu.lightning` use them under DDP.

Non-tensor values in a state dict are stored by DCP as ``torch.save`` bytes
and loaded back with ``torch.load``; they are read only after their file's
checksum matched what was written at save time, which guards against damage,
not against someone who can write the root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import mmap
import os
import pickle
import threading
from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem as DcpFileSystem
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from shipslog.engine import (
    MANIFEST_NAME,
    CheckpointWriter,
    EngineCore,
    FileEntry,
    IntegrityError,
    NotFoundError,
    read_manifest,
)
from shipslog.journal import (
    OS_FS,
    FileSystem,
    crash_point,
    crc32,
    crc32_while,
    open_regular,
    parallel_crc32,
    read_limited,
    register_crash_point,
)

from ._collective import (
    CP_GATHERED,
    CP_OFFERED,
    CP_RANK_BEFORE,
    CP_RANK_FILES,
    DistributedCheckpoint,
    DistributedCheckpointError,
    RankFile,
    SharedCheckpoint,
    abort_open,
    agree,
    choose_verified,
    engine_problem,
    failure,
    from_coordinator,
    group_view,
    offer_everywhere,
    shared_checkpoint,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = [
    "DCP_FORMAT",
    "DistributedCheckpoint",
    "DistributedCheckpointError",
    "DistributedCheckpointer",
    "SharedCheckpoint",
    "ShipslogStorageReader",
    "ShipslogStorageWriter",
    "choose_verified",
    "decode_dcp_metadata",
    "load_distributed",
    "save_distributed",
    "shared_checkpoint",
]

_log = logging.getLogger("shipslog.gpu.distributed")

DCP_FORMAT = "dcp"
"""``meta["format"]`` of a checkpoint written by :func:`save_distributed`; :func:`load_distributed` picks only these."""
_METADATA = ".metadata"
MAX_METADATA_BYTES = 1 << 30
"""The largest ``.metadata`` decoded (a model of millions of tensors stays far below it)."""
_WRITE_BUFFER = 1 << 20
_FILES_KEY = "__shipslog_file__/"
"""The fqn prefix of the extra write results that carry each rank's files to the coordinator (never in ``.metadata``)."""


CP_METADATA = register_crash_point(
    "distributed.after_metadata", ".metadata is written and fsynced in staging; no MANIFEST, checkpoint.durable not journaled"
)


# -- the rank side: files checksummed as written ----------------------------------------------


class _ChecksummedFile(io.RawIOBase):
    """A new file written through shipslog's :class:`FileSystem`, its CRC-32 computed as written, fsynced on close."""

    def __init__(self, fs: FileSystem, path: str, on_close: Any) -> None:
        super().__init__()
        self._fs = fs
        self._path = path
        self._fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._pos = 0
        self._crc = 0
        self._on_close = on_close

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._crc = crc32_while(view, self._crc, lambda: self._fs.write_all(self._fd, view))
        self._pos += len(view)
        return len(view)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._fs.fsync(self._fd)
        finally:
            self._fs.close(self._fd)
            super().close()
        self._on_close(self._path, self._pos, self._crc)


class _RankFiles(DcpFileSystem):
    """DCP's file system for one rank's writes into an existing staging folder (see the module)."""

    def __init__(self, fs: FileSystem, staging: str) -> None:
        super().__init__()
        self._fs = fs
        self._staging = staging
        self._lock = threading.Lock()
        self.written: dict[str, FileEntry] = {}

    def _record(self, path: str, size: int, crc: int) -> None:
        rel = os.path.relpath(path, self._staging).replace(os.sep, "/")
        with self._lock:
            self.written[rel] = FileEntry(rel, size, crc)

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        if mode != "wb":
            raise ValueError(f"a rank's writer only creates new files, asked for mode {mode!r}")
        full = os.path.abspath(os.fspath(path))
        if os.path.dirname(full) != self._staging:
            raise IntegrityError(full, f"a file directly in the operation's staging folder {self._staging}", "a path elsewhere")
        # buffered like DCP's own streams: torch's zip writer makes many writes of a few bytes
        stream = io.BufferedWriter(_ChecksummedFile(self._fs, full, self._record), buffer_size=_WRITE_BUFFER)
        try:
            yield stream
        finally:
            stream.close()

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        """Never creates: the coordinator made the staging folder; a folder that is gone belongs to a finished operation."""
        full = os.path.abspath(os.fspath(path))
        if full != self._staging or not os.path.isdir(full):
            raise DistributedCheckpointError(
                f"the staging folder {full} does not exist (its operation was aborted or recovered, or this rank "
                "belongs to an earlier incarnation of the job); nothing was written"
            )

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        """Inside staging only (DCP's ``.metadata.tmp`` -> ``.metadata``); the recorded entry follows."""
        src, dst = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(new_path))
        for p in (src, dst):
            if os.path.dirname(p) != self._staging:
                raise IntegrityError(p, f"a file directly in {self._staging}", "a path elsewhere")
        self._fs.replace(src, dst)
        rel_src, rel_dst = os.path.basename(src), os.path.basename(dst)
        with self._lock:
            entry = self.written.pop(rel_src)
            self.written[rel_dst] = FileEntry(rel_dst, entry.size, entry.crc32)

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        raise IntegrityError(os.fspath(path), "no file removed from a staging folder by DCP", "a remove")


class ShipslogStorageWriter(FileSystemWriter):
    """DCP's file-system writer into one operation's staging folder (see the module).

    ``staging`` is the folder the coordinator created; ``generation`` the
    token it sent.  ``commit`` is the coordinator's :class:`CheckpointWriter`
    (None on the other ranks): its :meth:`finish` writes ``.metadata`` and
    commits.  DCP's own fsync is off (``sync_files=False``): every file is
    fsynced by this writer as it is closed, and the folder after a rank's
    writes.
    """

    def __init__(
        self,
        staging: str,
        *,
        generation: str,
        commit: CheckpointWriter | None = None,
        fs: FileSystem = OS_FS,
        thread_count: int = 1,
    ) -> None:
        super().__init__(staging, single_file_per_rank=True, sync_files=False, thread_count=thread_count, overwrite=True)
        self.staging = os.path.abspath(staging)
        self.generation = generation
        self._commit = commit
        self._os_fs = fs
        self.fs = self._files = _RankFiles(fs, self.staging)
        self.committed: CheckpointWriter | None = None

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """DCP's writes, then the folder fsynced, then one extra result per file written (path, size, CRC-32)."""
        before = set(self._files.written)
        crash_point(CP_RANK_BEFORE)
        results = super().write_data(plan, planner).value()
        if self._commit is None:  # the coordinator's own entries are made durable with the MANIFEST's folder fsync
            self._os_fs.fsync_dir(self.staging)
        crash_point(CP_RANK_FILES)
        files = [entry for rel, entry in self._files.written.items() if rel not in before]
        results = list(results) + [
            WriteResult(
                index=MetadataIndex(f"{_FILES_KEY}{entry.path}"),
                size_in_bytes=entry.size,
                storage_data=RankFile(self.generation, entry.path, entry.size, entry.crc32),
            )
            for entry in files
        ]
        done: Future[list[WriteResult]] = Future()
        done.set_result(results)
        return done

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """On the coordinator, after every rank's results arrived: ``.metadata``, then the engine's commit."""
        if self._commit is None:
            raise DistributedCheckpointError("finish runs on the coordinator, which holds the engine; this rank has none")
        files: list[RankFile] = []
        kept: list[list[WriteResult]] = []
        for rank_results in results:
            kept.append([])
            for result in rank_results:
                if isinstance(result.storage_data, RankFile):
                    files.append(result.storage_data)
                else:
                    kept[-1].append(result)
        crash_point(CP_GATHERED)
        strangers = sorted({f.generation for f in files} - {self.generation})
        if strangers:
            raise DistributedCheckpointError(
                f"write results of another generation ({', '.join(strangers)}) reached the save of generation "
                f"{self.generation}: a rank of an earlier incarnation took part; the save is refused"
            )
        super().finish(metadata, kept)  # DCP's .metadata, written as .metadata.tmp and renamed, through _RankFiles
        crash_point(CP_METADATA)
        for f in files:  # every rank fsynced its files (and the folder) before reporting them
            self._commit.add_file(FileEntry(f.path, f.size, f.crc32), synced=True)
        for entry in self._files.written.values():
            if entry.path == _METADATA:
                self._commit.add_file(entry, synced=True)
        self._commit.commit()
        self.committed = self._commit


# -- the load side: every file verified before DCP reads it -----------------------------------


_ALLOWED_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Decodes DCP's ``.metadata``: only its metadata classes, ``torch.Size``, dtypes and layouts may be named."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a class DCP's metadata holds")


def decode_dcp_metadata(data: bytes, path: str) -> Metadata:
    """DCP's ``.metadata`` bytes as a :class:`Metadata`, decoded with the allowlist; :class:`IntegrityError` otherwise.

    Hostile bytes never run code: only the classes DCP's metadata holds can
    be named, and any decoding failure is the one error.
    """
    if len(data) > MAX_METADATA_BYTES:
        raise IntegrityError(path, f"DCP metadata of at most {MAX_METADATA_BYTES} bytes", f"{len(data)} bytes")
    try:
        found = _MetadataUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # noqa: BLE001 - hostile bytes: every way the decoder can fail is this one error
        raise IntegrityError(path, "DCP metadata (a pickle of its metadata classes only)", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(found, Metadata):
        raise IntegrityError(path, "DCP metadata", f"a pickled {type(found).__name__}")
    return found


class _MappedReader(io.RawIOBase):
    """A read-only, seekable file object over a memory map (or bytes): what DCP reads a verified file through."""

    def __init__(self, data: Any, closing: Any = None) -> None:
        super().__init__()
        self.view = memoryview(data).cast("B")
        self._closing = closing
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: len(self.view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        chunk = self.view[self._pos : self._pos + len(out)]
        out[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self.view.release()
            if self._closing is not None:
                self._closing.close()
        super().close()


class _VerifiedFiles(DcpFileSystem):
    """DCP's file system for reads: each file mapped, its size and CRC-32 checked against the MANIFEST first."""

    def __init__(self, folder: str, entries: Mapping[str, FileEntry], crc_threads: int | None = None) -> None:
        super().__init__()
        self._folder = folder
        self._entries = dict(entries)
        self._crc_threads = crc_threads

    def _entry(self, path: str | os.PathLike[str]) -> tuple[str, FileEntry]:
        full = os.path.abspath(os.fspath(path))
        rel = os.path.relpath(full, self._folder).replace(os.sep, "/")
        entry = self._entries.get(rel)
        if entry is None or rel == MANIFEST_NAME:
            raise IntegrityError(full, "a file the checkpoint's MANIFEST lists", "a file it does not list")
        return full, entry

    def read_verified(self, path: str | os.PathLike[str]) -> bytes:
        """The whole file, read into memory, after its size and CRC-32 matched (small files: ``.metadata``)."""
        full, entry = self._entry(path)
        try:
            data = read_limited(full, entry.size)
        except FileNotFoundError:
            raise IntegrityError(full, f"a file of {entry.size} bytes", "no file") from None
        if data is None or len(data) != entry.size:
            found = "more bytes" if data is None else f"{len(data)} bytes"
            raise IntegrityError(full, f"{entry.size} bytes", found)
        crc = crc32(data)
        if crc != entry.crc32:
            raise IntegrityError(full, f"CRC-32 {entry.crc32:#010x}", f"{crc:#010x}")
        return data

    def map_verified(self, path: str | os.PathLike[str]) -> _MappedReader:
        """A reader over the file's pages (no copy), after its size and CRC-32 (on several threads) matched."""
        full, entry = self._entry(path)
        try:
            fd = open_regular(full)
        except FileNotFoundError:
            raise IntegrityError(full, f"a file of {entry.size} bytes", "no file") from None
        try:
            size = os.fstat(fd).st_size
            if size != entry.size:
                raise IntegrityError(full, f"{entry.size} bytes", f"{size} bytes")
            # MAP_POPULATE: the pages are mapped in one go rather than one fault at a time
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ) if size else None
        finally:
            os.close(fd)
        reader = _MappedReader(mapped if mapped is not None else b"", mapped)
        crc = parallel_crc32(reader.view, threads=self._crc_threads)
        if crc != entry.crc32:
            reader.close()
            raise IntegrityError(full, f"CRC-32 {entry.crc32:#010x}", f"{crc:#010x}")
        return reader

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Generator[io.IOBase, None, None]:
        if mode != "rb":
            raise ValueError(f"a verified reader only reads, asked for mode {mode!r}")
        reader = self.map_verified(path)
        try:
            yield reader
        finally:
            reader.close()


class ShipslogStorageReader(FileSystemReader):
    """DCP's file-system reader of a committed checkpoint whose every file is verified as read (see the module).

    ``entries`` are the MANIFEST's files (every rank gets them from the
    coordinator, so a rank never trusts a MANIFEST it did not see verified).
    """

    def __init__(self, folder: str, entries: Iterable[FileEntry], *, crc_threads: int | None = None) -> None:
        super().__init__(folder)
        self.folder = os.path.abspath(folder)
        self.fs = self._files = _VerifiedFiles(self.folder, {e.path: e for e in entries}, crc_threads)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise IntegrityError(os.path.join(self.folder, f"__{kwargs['rank']}{_METADATA}"), "one global .metadata", "a request for a rank's own")
        path = os.path.join(self.folder, _METADATA)
        metadata = decode_dcp_metadata(self._files.read_verified(path), path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        cast("StorageMeta", metadata.storage_meta).load_id = self.load_id
        return metadata


# -- one call each way ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Begun:
    """A save every rank agreed on: the coordinator's writer (None elsewhere) and this rank's storage writer."""

    name: str
    step: int
    world: int
    op: str
    writer: CheckpointWriter | None
    storage: ShipslogStorageWriter

    def failed(self, exc: BaseException) -> DistributedCheckpointError:
        """Abort the operation (on the coordinator) and describe the failure, the same way on every rank."""
        abort_open(self.writer, f"the distributed save failed: {type(exc).__name__}: {exc}")
        return failure(exc, f"save of checkpoint {self.name!r} (op {self.op})")

    def result(self) -> DistributedCheckpoint:
        return DistributedCheckpoint(self.name, self.step, f"checkpoints/{self.name}", self.world)


def _begin(
    engine: EngineCore | None,
    *,
    step: int,
    name: str | None,
    meta: Mapping[str, Any] | None,
    process_group: Any,
    thread_count: int,
    fs: FileSystem | None,
) -> tuple[bool, _Begun]:
    """Every rank's preconditions agreed, the operation begun on the coordinator and its staging folder sent to all."""
    name = name if name is not None else f"step-{step}"
    offered = offer_everywhere(engine, name, step=step, meta={**dict(meta or {}), "format": DCP_FORMAT},
                               process_group=process_group, fs=fs)
    storage = ShipslogStorageWriter(offered.staging, generation=offered.generation, commit=offered.writer, fs=offered.fs,
                                    thread_count=thread_count)
    if offered.rank == 0:
        crash_point(CP_OFFERED)
    return offered.distributed, _Begun(name, step, offered.world, offered.op, offered.writer, storage)


def save_distributed(
    engine: EngineCore | None,
    state_dict: dict[str, Any],
    *,
    step: int,
    name: str | None = None,
    meta: Mapping[str, Any] | None = None,
    process_group: Any = None,
    thread_count: int = 1,
    fs: FileSystem | None = None,
) -> DistributedCheckpoint:
    """Save ``state_dict`` (tensors, DTensors, sharded or replicated) from every rank as one committed checkpoint.

    Call on every rank of ``process_group`` (default: the world) with the
    same ``step`` and ``name`` (default ``step-<step>``); ``engine`` on rank
    0 of the group only.  Returns once committed, on every rank; raises
    :class:`DistributedCheckpointError` on every rank when any rank failed
    (the operation is aborted).  ``fs`` is the file system this rank
    writes its files through (default: the engine's on the coordinator,
    the operating system's elsewhere).  See the module for the protocol.
    """
    distributed, begun = _begin(engine, step=step, name=name, meta=meta, process_group=process_group, thread_count=thread_count, fs=fs)
    try:
        dcp_save(state_dict, storage_writer=begun.storage, process_group=process_group, no_dist=not distributed)
    except (Exception, CheckpointException) as exc:  # DCP's per-rank failures derive from BaseException
        raise begun.failed(exc) from exc
    return begun.result()


class DistributedCheckpointer:
    """Asynchronous distributed saves through DCP's ``async_save``, one in flight, committed through the engine.

    ``save`` returns once every rank agreed on the operation and DCP staged
    the state (copied it to host memory); the files are written and the
    checkpoint committed on a background thread, by the same protocol as
    :func:`save_distributed`.  The next ``save``, :meth:`wait` or
    :meth:`close` waits for it first, and a failure of it raises there, on
    every rank alike (:class:`DistributedCheckpointError`; the operation is
    aborted on the coordinator).  Use it on every rank, ``engine`` on rank 0
    of ``process_group`` only.  The background thread runs collectives on
    ``process_group``: give it a group of its own (``dist.new_group(backend="gloo")``)
    when the training runs collectives meanwhile.
    """

    def __init__(self, engine: EngineCore | None, *, process_group: Any = None, fs: FileSystem | None = None) -> None:
        self.engine = engine
        self.process_group = process_group
        self.fs = fs
        self._pending: tuple[Any, _Begun] | None = None
        self._closed = False

    def save(self, state_dict: dict[str, Any], *, step: int, name: str | None = None, meta: Mapping[str, Any] | None = None) -> None:
        """Wait for the save in flight (raising its failure), then start saving ``state_dict`` as ``name`` (``step-<step>``)."""
        if self._closed:
            raise DistributedCheckpointError("this DistributedCheckpointer is closed; make a new one")
        self.wait()
        distributed, begun = _begin(
            self.engine, step=step, name=name, meta=meta, process_group=self.process_group, thread_count=1, fs=self.fs
        )
        try:
            future = dcp_async_save(state_dict, storage_writer=begun.storage, process_group=self.process_group, no_dist=not distributed)
        except (Exception, CheckpointException) as exc:  # staging failed: nothing runs in the background
            raise begun.failed(exc) from exc
        self._pending = (future, begun)

    def wait(self) -> DistributedCheckpoint | None:
        """Wait for the save in flight; its checkpoint (None when none was in flight), or its failure raised."""
        if self._pending is None:
            return None
        future, begun = self._pending
        self._pending = None
        try:
            future.result()
        except (Exception, CheckpointException) as exc:
            raise begun.failed(exc) from exc
        return begun.result()

    def close(self) -> DistributedCheckpoint | None:
        """Wait for the save in flight (see :meth:`wait`); no save may start afterwards."""
        self._closed = True
        return self.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        self._closed = True
        try:
            self.wait()
        except DistributedCheckpointError as failed:  # the block's own error propagates; this one is logged
            _log.error("the save in flight failed too: %s", failed)


def _choose(engine: EngineCore, name: str | None) -> dict[str, Any] | None:
    """The coordinator's pick: ``name``, or the newest committed DCP checkpoint by step; None when there is none."""
    state = engine.state
    if name is not None:
        art = state.checkpoints.get(name)
        if art is None:
            raise NotFoundError("checkpoint", name)
    else:
        ours = [a for a in state.checkpoints.values() if (a.meta or {}).get("format") == DCP_FORMAT]
        if not ours:
            return None
        art = max(ours, key=lambda a: (a.step or 0, a.seq))
    folder = engine.path(*art.path.split("/"))
    manifest = read_manifest(folder)
    return {
        "folder": folder,
        "name": art.name,
        "step": art.step,
        "path": art.path,
        "world_size": int((art.meta or {}).get("world_size", 0)),
        "files": [(f.path, f.size, f.crc32) for f in manifest.files],
    }


def load_distributed(
    engine: EngineCore | None,
    state_dict: dict[str, Any],
    *,
    name: str | None = None,
    process_group: Any = None,
) -> DistributedCheckpoint | None:
    """Load checkpoint ``name`` (default: the newest committed DCP checkpoint) into ``state_dict`` on every rank, in place.

    ``engine`` on rank 0 of the group only.  DCP reshards: the world size
    may differ from the one that saved.  Every rank verifies each file it
    reads; any mismatch raises :class:`DistributedCheckpointError` on every
    rank, naming the file.  Returns None (nothing loaded) on every rank when
    the root has no DCP checkpoint and no ``name`` was given.
    """
    distributed, rank, _world = group_view(process_group)
    agree(distributed, rank, engine_problem(engine, rank), process_group)
    offer: dict[str, Any] | None = None
    if rank == 0:
        assert engine is not None
        try:
            offer = {"found": _choose(engine, name)}
        except Exception as exc:  # noqa: BLE001 - sent to every rank, then raised there as the same error
            offer = {"error": f"{type(exc).__name__}: {exc}"}
    found = from_coordinator(distributed, offer, process_group)["found"]
    if found is None:
        return None
    entries = [FileEntry(p, s, c) for p, s, c in found["files"]]
    # this host's CPUs shared by its ranks (torchrun's LOCAL_WORLD_SIZE; else every rank counted as local)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", _world))
    reader = ShipslogStorageReader(found["folder"], entries, crc_threads=max(1, (os.cpu_count() or 1) // max(1, local_ranks)))
    try:
        dcp_load(state_dict, storage_reader=reader, process_group=process_group, no_dist=not distributed)
    except (Exception, CheckpointException) as exc:  # DCP's per-rank failures derive from BaseException
        raise failure(exc, f"load of {found['path']}") from exc
    return DistributedCheckpoint(found["name"], found["step"], found["path"], found["world_size"])
