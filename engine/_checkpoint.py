"""The checkpoint operation (also models and adapters): its events, table, projection, forward path and recovery.

The order of effects, each journaled around its file work:

1. ``checkpoint.begun`` (name, step, staging folder) is written to the journal
   before the staging folder exists, so recovery can account for it; it is
   made durable by the fdatasync of ``checkpoint.durable`` (one fsync less per
   checkpoint).  After a power cut a staging folder may exist without its
   begun record; recovery quarantines it, and nothing acknowledged is lost;
2. files are written into ``staging/<op>/`` and fsynced;
3. ``MANIFEST`` (names, sizes, CRC-32s) is written last, atomically, and the
   staging folder fsynced; then ``checkpoint.durable``;
4. the folder is renamed to ``checkpoints/<name>`` (or ``models/<name>``) and
   both parents fsynced; then ``checkpoint.committed``.

A failure before the commit removes staging and journals ``checkpoint.aborted``.
Recovery rolls ``begun`` back (staging removed) and ``durable`` forward (the
copy that verifies against the journaled manifest is put in place; when none
does, what there is goes to quarantine and the operation is aborted).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from shipslog.journal import InsufficientSpaceError, crash_point, crc32, register_crash_point

from ._context import OperationContext, RecoveryContext
from ._errors import ConflictError, IntegrityError, InvalidNameError
from ._events import Event
from ._fields import expect_count, expect_equal, expect_name, expect_nested_within, reject
from ._layout import ARTIFACT_FOLDERS, artifact_relpath, staging_relpath
from ._manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    checksum_file,
    new_manifest,
    scan_folder,
    verify_folder,
    write_manifest,
)
from ._names import check_name
from ._names import check_relpath as check_names_relpath
from ._optypes import OperationType, Recovery, RecoveryAction
from ._state import ArtifactInfo, EngineState, OpRecord, StateBuilder

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = [
    "CHECKPOINT",
    "ArtifactAborted",
    "ArtifactBegun",
    "ArtifactCommitted",
    "ArtifactDurable",
    "CheckpointState",
    "CheckpointWriter",
    "begin_artifact",
    "check_relpath",
    "settle_copies",
    "verify_problem",
]

_log = logging.getLogger("shipslog.engine.checkpoint")


# -- events --------------------------------------------------------------------------------


class ArtifactBegun(Event, tag="checkpoint.begun", frozen=True):
    """A checkpoint (or model) began: files go to ``staging``; nothing is a result yet."""

    name: str
    artifact: str = "checkpoint"
    step: int | None = None
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    expected_bytes: int = 0
    staging: str = ""
    source: str | None = None

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if self.artifact not in ARTIFACT_FOLDERS:
            reject("artifact", self.artifact, f"one of {sorted(ARTIFACT_FOLDERS)}")
        expect_name("name", self.name, self.artifact)
        expect_equal("staging", self.staging, staging_relpath(self.op))
        if self.step is not None:
            expect_count("step", self.step)
        expect_count("expected_bytes", self.expected_bytes)
        expect_nested_within("meta", self.meta)


class ArtifactDurable(Event, tag="checkpoint.durable", frozen=True):
    """Every file and the manifest are fsynced in staging; ``files``/``bytes``/``manifest_crc`` describe them."""

    files: int
    bytes: int
    manifest_crc: int

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("files", self.files)
        expect_count("bytes", self.bytes)
        if not 0 <= self.manifest_crc <= 0xFFFFFFFF:
            reject("manifest_crc", self.manifest_crc, "a CRC-32 (0 to 2**32 - 1)")


class ArtifactCommitted(Event, tag="checkpoint.committed", frozen=True):
    """The folder was renamed into place (``path``, relative to the root) and that rename is durable."""

    path: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if info is not None:
            artifact = info.get("artifact", "checkpoint")
            if artifact not in ARTIFACT_FOLDERS:
                reject("path", self.path, f"the folder of a {artifact!r}, which is not an artifact kind")
            expect_equal("path", self.path, artifact_relpath(str(artifact), str(info.get("name"))))


class ArtifactAborted(Event, tag="checkpoint.aborted", frozen=True):
    """The checkpoint was abandoned; its staging folder is gone (or quarantined, as ``reason`` says)."""

    reason: str


# -- states and projection ---------------------------------------------------------------


class CheckpointState(str, enum.Enum):
    """States of a checkpoint (or model) operation."""

    BEGUN = "begun"
    DURABLE = "durable"
    COMMITTED = "committed"
    ABORTED = "aborted"


def _checkpoint_committed(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, ArtifactCommitted)
    info = op.info
    art = ArtifactInfo(
        name=info["name"],
        artifact=info.get("artifact", "checkpoint"),
        path=ev.path,
        step=info.get("step"),
        op=op.id,
        seq=seq,
        time=time,
        files=info.get("files", 0),
        bytes=info.get("bytes", 0),
        meta=info.get("meta", {}),
    )
    if art.artifact == "model":
        b.models[art.name] = art
        return
    if art.artifact == "adapter":
        b.adapters[art.name] = art
        return
    b.checkpoints[art.name] = art
    current = b.checkpoints.get(b.latest) if b.latest is not None else None
    if current is None or (art.step or 0) >= (current.step or 0):
        b.latest = art.name
        b.global_step = art.step or 0


# -- the forward path ------------------------------------------------------------------------

_COPY_CHUNK = 8 << 20

CP_BEGUN = register_crash_point("checkpoint.after_begun", "checkpoint.begun is durable; the staging folder may not exist yet")
CP_FILE = register_crash_point("checkpoint.after_file", "one more file is written and fsynced in staging; others may follow; no manifest")
CP_FILES = register_crash_point("checkpoint.after_files", "every file is fsynced in staging; no manifest yet")
CP_MANIFEST = register_crash_point("checkpoint.after_manifest", "the manifest is durable in staging; checkpoint.durable is not journaled")
CP_DURABLE = register_crash_point("checkpoint.after_durable", "checkpoint.durable is journaled; the folder is still in staging")
CP_RENAMED = register_crash_point("checkpoint.after_rename", "the folder is in its final place, durably; checkpoint.committed is not journaled")
CP_ABORT_REMOVED = register_crash_point("checkpoint.abort.after_remove", "staging is removed; checkpoint.aborted is not journaled")


def check_relpath(relpath: str) -> list[str]:
    """The components of a '/'-separated path inside a checkpoint; each must be a safe name, and not the MANIFEST."""
    parts = check_names_relpath("file", relpath)
    if relpath == MANIFEST_NAME:
        raise InvalidNameError("file", relpath, "MANIFEST is written by the engine")
    return parts


def begin_artifact(
    ctx: OperationContext,
    name: str,
    *,
    artifact: str = "checkpoint",
    step: int | None = None,
    meta: Mapping[str, Any] | None = None,
    expected_bytes: int = 0,
    source: str | None = None,
) -> CheckpointWriter:
    """Journal ``checkpoint.begun`` and create the staging folder; return the writer."""
    check_name(artifact, name)
    if artifact not in ARTIFACT_FOLDERS:
        raise ValueError(f"artifact must be one of {sorted(ARTIFACT_FOLDERS)}, got {artifact!r}")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    meta_dict = dict(meta or {})
    try:
        msgspec.msgpack.encode(meta_dict)
        msgspec.json.encode(meta_dict)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"meta must hold only JSON-able values: {exc}") from None
    ctx.check_usable()
    ctx.preflight(expected_bytes, f"{artifact} {name!r} ({expected_bytes} bytes)")
    op = ctx.new_op_id("checkpoint")
    staging_rel = staging_relpath(op)
    final = ctx.path(ARTIFACT_FOLDERS[artifact], name)

    def no_conflict(state: EngineState) -> None:
        table = {"checkpoint": state.checkpoints, "model": state.models, "adapter": state.adapters}[artifact]
        if name in table:
            raise ConflictError(f"{artifact} name {name!r}", f"committed {artifact} {table[name].path} (op {table[name].op})")
        for other in state.ops_of("checkpoint"):
            if other.info.get("name") == name and other.info.get("artifact", "checkpoint") == artifact:
                raise ConflictError(f"{artifact} name {name!r}", f"operation {other.id} (state {other.state})")
        if os.path.lexists(final):
            raise ConflictError(f"{artifact} name {name!r}", f"an existing folder {final} that the journal does not account for")

    ctx.journal_events(
        ArtifactBegun(
            op=op, name=name, artifact=artifact, step=step, meta=meta_dict, expected_bytes=expected_bytes, staging=staging_rel, source=source
        ),
        check=no_conflict,
        sync=False,
    )
    crash_point(CP_BEGUN)
    staging = ctx.path(staging_rel)
    writer = CheckpointWriter(ctx, op, name, artifact, step, meta_dict, staging, final)
    try:
        ctx.fs.mkdir(staging)  # made durable by the manifest's folder fsync, before checkpoint.durable
    except OSError as exc:
        writer.abort(f"could not create the staging folder: {exc}")
        raise
    return writer


@contextlib.contextmanager
def _space_errors(ctx: OperationContext, path: str, size: int) -> Iterator[None]:
    """Turn ``ENOSPC`` from a write into :class:`InsufficientSpaceError` (needed vs free)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC or isinstance(exc, InsufficientSpaceError):
            raise
        raise InsufficientSpaceError(path, size, ctx.fs.free_bytes(ctx.root), "the disk filled while writing a checkpoint file") from exc


class CheckpointWriter:
    """A checkpoint (or model) in progress: write files into :attr:`path`, then :meth:`commit` or :meth:`abort`.

    As a context manager it commits on a clean exit and aborts (removing
    staging, journaling ``checkpoint.aborted``) when the block raises.  Files
    written with :meth:`write_bytes`, :meth:`copy_file` or :meth:`open` are
    checksummed while written; files put into :attr:`path` by other code are
    checksummed at commit, and files recorded with :meth:`add_file` must match
    their recorded size.  Nothing in :attr:`path` is a result until commit.
    """

    def __init__(
        self,
        ctx: OperationContext,
        op: str,
        name: str,
        artifact: str,
        step: int | None,
        meta: dict[str, Any],
        staging: str,
        final: str,
    ) -> None:
        self._ctx = ctx
        self.op = op
        self.name = name
        self.artifact = artifact
        self.step = step
        self.meta = meta
        self.path = staging
        self.final_path = final
        self._entries: dict[str, FileEntry] = {}
        self._synced: set[str] = set()
        self._done: str | None = None
        self.info: ArtifactInfo | None = None

    def __repr__(self) -> str:
        return f"<CheckpointWriter {self.artifact} {self.name!r} op={self.op} {self._done or 'open'}>"

    @property
    def state(self) -> str:
        """``open`` (files may be written), ``committed`` or ``aborted``."""
        return self._done or "open"

    # -- writing files ---------------------------------------------------------------

    def _check_open(self) -> None:
        self._ctx.check_usable()
        if self._done is not None:
            raise ValueError(f"{self.artifact} {self.name!r} is already {self._done}")

    def file_path(self, relpath: str) -> str:
        """The absolute staging path of ``relpath`` (validated; parent folders are created)."""
        self._check_open()
        parts = check_relpath(relpath)
        full = os.path.join(self.path, *parts)
        if len(parts) > 1:
            self._ctx.fs.ensure_dir(os.path.dirname(full))
        return full

    def write_bytes(self, relpath: str, data: bytes | bytearray | memoryview) -> FileEntry:
        """Write ``data`` to ``relpath`` (new file), fsync it, and record its size and CRC-32."""
        full = self.file_path(relpath)
        fs = self._ctx.fs
        fd = fs.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with _space_errors(self._ctx, full, len(data)):
                fs.write_all(fd, data)
            fs.fsync(fd)
        finally:
            fs.close(fd)
        entry = FileEntry(relpath, len(data), crc32(data))
        self._entries[relpath] = entry
        self._synced.add(relpath)
        crash_point(CP_FILE)
        return entry

    def write_json(self, relpath: str, obj: Any) -> FileEntry:
        """Write ``obj`` as JSON (msgspec) to ``relpath``; see :meth:`write_bytes`."""
        return self.write_bytes(relpath, msgspec.json.encode(obj))

    def copy_file(self, src: str | os.PathLike[str], relpath: str) -> FileEntry:
        """Copy the regular file ``src`` to ``relpath``, checksumming in the same pass, and fsync it."""
        full = self.file_path(relpath)
        fs = self._ctx.fs
        crc = 0
        size = 0
        with open(src, "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise IntegrityError(os.fspath(src), "a regular file", "something else")
            fd = fs.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                buf = bytearray(_COPY_CHUNK)
                view = memoryview(buf)
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    chunk = view[:n]
                    with _space_errors(self._ctx, full, n):
                        fs.write_all(fd, chunk)
                    crc = crc32(chunk, crc)
                    size += n
                fs.fsync(fd)
            finally:
                fs.close(fd)
        entry = FileEntry(relpath, size, crc)
        self._entries[relpath] = entry
        self._synced.add(relpath)
        crash_point(CP_FILE)
        return entry

    def add_file(self, entry: FileEntry, *, synced: bool = False) -> None:
        """Record a file another writer put at ``path/entry.path`` with its checksum computed while writing.

        At commit its size is checked and, unless ``synced`` (the writer
        fsynced it itself), it is fsynced; its CRC-32 is trusted (a later
        verify re-checks it).
        """
        self._check_open()
        check_relpath(entry.path)
        self._entries[entry.path] = entry
        if synced:
            self._synced.add(entry.path)
        else:
            self._synced.discard(entry.path)

    # -- ending ----------------------------------------------------------------------

    def commit(self) -> ArtifactInfo:
        """Write the manifest last, journal durable, rename into place, journal committed.

        Returns the committed :class:`ArtifactInfo`.  A failure before the
        folder is durable aborts the checkpoint (staging removed, aborted
        journaled) and re-raises.
        """
        self._check_open()
        ctx = self._ctx
        try:
            manifest, manifest_bytes = self._seal()
        except BaseException as exc:
            self._abort_after_failure(exc)
            raise
        ctx.journal_events(
            ArtifactDurable(op=self.op, files=len(manifest.files), bytes=manifest.total_bytes, manifest_crc=crc32(manifest_bytes))
        )
        crash_point(CP_DURABLE)
        try:
            ctx.fs.ensure_dir(os.path.dirname(self.final_path))
            if os.path.lexists(self.final_path):
                raise ConflictError(f"{self.artifact} name {self.name!r}", f"an existing folder {self.final_path}")
            # Only the destination folder is fsynced: if a power cut keeps the staging entry
            # too, recovery finds the final copy verified and removes the staging leftover.
            ctx.fs.rename_durable(self.path, self.final_path, sync_source=False)
        except BaseException as exc:
            self._abort_after_failure(exc)
            raise
        crash_point(CP_RENAMED)
        rel = os.path.relpath(self.final_path, ctx.root).replace(os.sep, "/")
        ctx.journal_events(ArtifactCommitted(op=self.op, path=rel))
        self._done = "committed"
        table = {"checkpoint": ctx.state.checkpoints, "model": ctx.state.models, "adapter": ctx.state.adapters}[self.artifact]
        self.info = table[self.name]
        return self.info

    def _seal(self) -> tuple[Manifest, bytes]:
        """Checksum what needs it, fsync every file and folder, write the manifest."""
        fs = self._ctx.fs
        on_disk = scan_folder(self.path)
        present = set(on_disk)
        for rel, recorded in self._entries.items():
            if rel not in present:
                raise IntegrityError(os.path.join(self.path, rel), f"a file of {recorded.size} bytes", "no file")
        entries: list[FileEntry] = []
        for rel in on_disk:
            full = os.path.join(self.path, *rel.split("/"))
            entry = self._entries.get(rel)
            if entry is None:
                entry = checksum_file(self.path, rel)
            elif os.stat(full).st_size != entry.size:
                raise IntegrityError(full, f"{entry.size} bytes (as recorded)", f"{os.stat(full).st_size} bytes")
            if rel not in self._synced:
                fd = fs.open(full, os.O_RDONLY)
                try:
                    fs.fsync(fd)
                finally:
                    fs.close(fd)
            entries.append(entry)
        for dirpath, _dirs, _files in sorted(os.walk(self.path), key=lambda t: -len(t[0])):
            if dirpath != self.path:
                fs.fsync_dir(dirpath)
        crash_point(CP_FILES)
        manifest = new_manifest(self.artifact, self.name, entries, step=self.step, meta=self.meta)
        data = write_manifest(fs, self.path, manifest)  # fsyncs the staging folder
        # ``staging/<op>``'s own entry in ``staging/`` must be durable too before the record says durable:
        # after a power cut the journal would otherwise name a folder that is gone.
        fs.fsync_dir(os.path.dirname(self.path))
        crash_point(CP_MANIFEST)
        return manifest, data

    def abort(self, reason: str = "aborted by the caller") -> None:
        """Remove staging and journal ``checkpoint.aborted``.  Only before commit."""
        self._check_open()
        ctx = self._ctx
        ctx.fs.remove_tree_durable(self.path)
        crash_point(CP_ABORT_REMOVED)
        ctx.journal_events(ArtifactAborted(op=self.op, reason=reason))
        self._done = "aborted"

    def _abort_after_failure(self, exc: BaseException) -> None:
        if self._ctx.broken is not None or self._ctx.closed:
            return  # the journal cannot record it; recovery will, on the next open
        try:
            self.abort(f"failed: {type(exc).__name__}: {exc}")
        except Exception as abort_exc:  # noqa: BLE001 - best-effort cleanup: the caller's error propagates, recovery finishes the rest
            _log.error("could not abort %s %r after %s: %s; recovery will finish it", self.artifact, self.name, exc, abort_exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self._done is not None:
            return
        if exc is None:
            self.commit()
        else:
            self._abort_after_failure(exc)

# -- recovery ------------------------------------------------------------------------------


def verify_problem(ctx: OperationContext, rel: str, manifest_crc: object) -> str | None:
    """None when the folder at root-relative ``rel`` verifies against its manifest (and that manifest is the
    journaled one, when ``manifest_crc`` is an int), else why not."""
    path = ctx.path(*rel.split("/"))
    if not os.path.isdir(path):
        return "missing"
    try:
        verify_folder(path)
        with open(os.path.join(path, MANIFEST_NAME), "rb") as f:
            crc = crc32(f.read())
    except (IntegrityError, OSError, ValueError) as exc:
        return str(exc)
    if isinstance(manifest_crc, int) and crc != manifest_crc:
        return f"its MANIFEST (crc32 {crc:08x}) is not the one journaled durable ({manifest_crc:08x})"
    return None


def settle_copies(ctx: RecoveryContext, final_rel: str, staging_rel: str, crc: object) -> tuple[str | None, str]:
    """Choose the copy of a durable folder to keep: ``"final"``, ``"staged"`` or None (neither verifies).

    The copies not kept are moved to quarantine (never deleted); the second
    value says why when neither verifies.
    """
    final_problem = verify_problem(ctx, final_rel, crc)
    if final_problem is None:
        if staging_rel and os.path.lexists(ctx.path(*staging_rel.split("/"))):
            ctx.quarantine(staging_rel)
        return "final", ""
    staged_problem = verify_problem(ctx, staging_rel, crc) if staging_rel else "no staging folder"
    if staged_problem is None:
        if final_problem != "missing":
            ctx.quarantine(final_rel)  # a final folder that does not verify is kept aside, never deleted
        return "staged", ""
    for rel in (final_rel, staging_rel):
        if rel and os.path.lexists(ctx.path(*rel.split("/"))):
            ctx.quarantine(rel)
    return None, f"final: {final_problem}; staged: {staged_problem}"


def _final_relpath(op: OpRecord) -> str:
    return artifact_relpath(str(op.info.get("artifact", "checkpoint")), str(op.info["name"]))


def _roll_back(ctx: RecoveryContext, op: OpRecord) -> str:
    staging_rel = str(op.info.get("staging", ""))
    if staging_rel:
        ctx.fs.remove_tree_durable(ctx.path(*staging_rel.split("/")))
        ctx.effect_done()
    ctx.journal_events(ArtifactAborted(op=op.id, reason="recovered: cut off before its files were durable; staging removed"))
    return "staging removed, journaled aborted"


def _roll_forward(ctx: RecoveryContext, op: OpRecord) -> str:
    staging_rel = str(op.info.get("staging", ""))
    final_rel = _final_relpath(op)
    kept, why = settle_copies(ctx, final_rel, staging_rel, op.info.get("manifest_crc"))
    if kept is None:
        ctx.journal_events(ArtifactAborted(op=op.id, reason=f"recovered: no copy verifies ({why}); quarantined"))
        return f"no copy verifies ({why}); quarantined what there was; journaled aborted"
    if kept == "staged":
        ctx.fs.ensure_dir(ctx.path(final_rel.partition("/")[0]))
        ctx.fs.rename_durable(ctx.path(*staging_rel.split("/")), ctx.path(*final_rel.split("/")), sync_source=False)
        ctx.effect_done()
    ctx.journal_events(ArtifactCommitted(op=op.id, path=final_rel))
    return f"{kept} copy verifies: {final_rel} in place, journaled committed"


def _claims(op: OpRecord) -> Iterable[str]:
    staging = op.info.get("staging")
    if isinstance(staging, str) and staging:
        yield staging
    if op.state == CheckpointState.DURABLE.value:
        yield _final_relpath(op)


# -- the declaration ----------------------------------------------------------------------

_FORWARD = RecoveryAction.ROLL_FORWARD
_BACK = RecoveryAction.ROLL_BACK

CHECKPOINT = OperationType(
    name="checkpoint",
    description="files written to staging, manifest last, fsynced, then renamed into checkpoints/ or models/",
    states=CheckpointState,
    events=(ArtifactBegun, ArtifactDurable, ArtifactCommitted, ArtifactAborted),
    begins={"checkpoint.begun": CheckpointState.BEGUN},
    transitions={
        (CheckpointState.BEGUN, "checkpoint.durable"): CheckpointState.DURABLE,
        (CheckpointState.BEGUN, "checkpoint.aborted"): CheckpointState.ABORTED,
        (CheckpointState.DURABLE, "checkpoint.committed"): CheckpointState.COMMITTED,
        (CheckpointState.DURABLE, "checkpoint.aborted"): CheckpointState.ABORTED,
    },
    terminal=frozenset({CheckpointState.COMMITTED, CheckpointState.ABORTED}),
    recovery={
        CheckpointState.BEGUN: Recovery(_BACK, "files were not all durable: remove staging and journal aborted", execute=_roll_back),
        CheckpointState.DURABLE: Recovery(
            _FORWARD,
            "files and manifest are durable: if the staged or final copy verifies, finish the rename and journal committed; "
            "otherwise quarantine it and journal aborted",
            execute=_roll_forward,
        ),
    },
    projections={"checkpoint.committed": _checkpoint_committed},
    claims=_claims,
)
