"""The engine core: journaling events around file effects, applying them to the state, and the built-in operations.

:class:`EngineCore` is given an open journal, a registry and the replayed
state; the front door (``shipslog.Engine``) composes it with opening and
recovery.  Every public method is thread-safe: journaling and applying happen
under one lock, in seq order; file effects (writing checkpoint bytes) happen
outside it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from shipslog.journal import (
    DelegatingFileSystem,
    FileSystem,
    InsufficientSpaceError,
    Journal,
    JournalBrokenError,
    JournalClosedError,
    JournalError,
)

from ._checkpoint import CheckpointWriter, begin_artifact
from ._consolidation import MergeFn, consolidate
from ._errors import (
    EngineBrokenError,
    EngineClosedError,
    IntegrityError,
    InvalidTransitionError,
    NotFoundError,
)
from ._events import Event
from ._manifest import Manifest, scan_folder, verify_folder
from ._names import check_name
from ._pointer import resolve_target, set_pointer
from ._reducer import Reducer
from ._registry import EventRecord, Registry
from ._retention import RetentionPlan, delete_committed, retain
from ._run import Run, start_run
from ._state import STATE_VERSION, ArtifactInfo, EngineState, PointerInfo
from ._status import Status, status_of
from ._subscribers import Subscribers, Subscription

__all__ = [
    "SPACE_RESERVE_BYTES",
    "EngineCore",
    "WatchedFileSystem",
    "decode_state",
    "encode_state",
]

_log = logging.getLogger("shipslog.engine")

SPACE_RESERVE_BYTES = 16 << 20
"""Free space kept in reserve by preflight checks, so the journal can still record an abort."""

_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(EngineState)


def encode_state(state: EngineState) -> bytes:
    """The snapshot payload of ``state``."""
    return _state_encoder.encode(state)


def decode_state(payload: bytes) -> EngineState:
    """The state in a snapshot payload; raises ``msgspec.DecodeError`` when it is not one of this version."""
    state = _state_decoder.decode(payload)
    if state.version != STATE_VERSION:
        raise msgspec.ValidationError(f"the snapshot holds state version {state.version}, this shipslog reads version {STATE_VERSION}")
    return state


class WatchedFileSystem(DelegatingFileSystem):
    """The durable primitives of ``inner``, reporting a failed fsync to the engine (which then refuses every call).

    Every single-call primitive is delegated to ``inner`` (the real file system,
    or a recording one in tests); the composite operations of
    :class:`FileSystem` are built on them, so ``inner`` sees every effect.
    """

    def __init__(self, inner: FileSystem, *, on_failure: Callable[[BaseException], None]) -> None:
        super().__init__(inner)
        self._on_failure = on_failure

    def fsync(self, fd: int) -> None:
        try:
            self.inner.fsync(fd)
        except OSError as exc:
            self._on_failure(exc)
            raise

    def fdatasync(self, fd: int) -> None:
        try:
            self.inner.fdatasync(fd)
        except OSError as exc:
            self._on_failure(exc)
            raise


class EngineCore:
    """Journals lifecycle events around their file effects and keeps the replayed state.

    Not created directly: use ``shipslog.Engine.open(root)``.
    """

    def __init__(
        self,
        journal: Journal,
        registry: Registry,
        state: EngineState,
        *,
        fs: FileSystem,
        snapshot_every: int,
    ) -> None:
        self.root = journal.root
        self.journal = journal
        self.registry = registry
        self.fs = fs
        self.snapshot_every = snapshot_every
        self._mutex = threading.RLock()
        self._reducer = Reducer(registry, state)
        self._state: EngineState | None = state
        self._last_snapshot = state.seq
        self._subscribers = Subscribers()
        self._closed = False
        self._broken: BaseException | None = None
        self._ids = itertools.count(1)
        self._undelivered: list[EventRecord] = []

    # -- state ----------------------------------------------------------------------

    @property
    def session(self) -> str:
        """The id of this opening of the root (its ``session.opened`` op is ``session-<id>``)."""
        return self.journal.session

    @property
    def state(self) -> EngineState:
        """The engine state as of the last durable record (an immutable value)."""
        with self._mutex:
            if self._state is None:
                self._state = self._reducer.state()
            return self._state

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def broken(self) -> BaseException | None:
        """The failure that broke the engine (an fsync that failed), or None."""
        return self._broken

    def check_usable(self) -> None:
        """Raise the closed error after close, the broken error after an fsync failure."""
        if self._closed:
            raise EngineClosedError(f"the engine for {self.root} is closed; open it again with Engine.open")
        if self._broken is not None:
            raise EngineBrokenError(
                f"the engine for {self.root} is broken by an earlier failure ({self._broken}); nothing after it was "
                "acknowledged; re-open the root with Engine.open to recover"
            ) from self._broken

    def mark_broken(self, exc: BaseException) -> None:
        """Refuse every later call: an effect that cannot be retried failed."""
        if self._broken is None:
            self._broken = exc
            _log.error("engine for %s is broken: %s", self.root, exc)

    def new_op_id(self, op_type: str) -> str:
        """A fresh operation id: ``<type>-<session>-<n>``, unique across sessions."""
        return f"{op_type}-{self.session}-{next(self._ids)}"

    def path(self, *parts: str) -> str:
        """An absolute path under the root."""
        return os.path.join(self.root, *parts)

    # -- journaling -----------------------------------------------------------------

    def journal_events(
        self, *events: Event, check: Callable[[EngineState], None] | None = None, sync: bool = True
    ) -> list[EventRecord]:
        """Durably append ``events`` (one frame: all or none) and apply them; then notify subscribers.

        ``sync=False`` writes the frame without waiting for its fdatasync: it
        becomes durable with the next synced append (subscribers hear of it
        then).  Only for intents whose loss in a power cut is harmless because
        recovery accounts for what they announced (a staging folder).

        ``check`` runs under the lock against the current state before anything
        is written, so conflict checks and the append are atomic.  Each event is
        checked against its operation's table first: an event the table does
        not allow raises :class:`InvalidTransitionError` and nothing is written.
        """
        with self._mutex:
            self.check_usable()
            if check is not None:
                check(self.state)
            self._reducer.check(events)
            payloads = [self.registry.encode(e) for e in events]
            try:
                records = self.journal.append_many(payloads, sync=sync)
            except JournalBrokenError as exc:
                self.mark_broken(exc)
                raise EngineBrokenError(f"the journal of {self.root} failed to fsync; re-open the root to recover: {exc}") from exc
            except JournalClosedError as exc:
                raise EngineClosedError(f"the engine for {self.root} is closed") from exc
            typed = [EventRecord(r.seq, r.time, r.session, e) for r, e in zip(records, events)]
            try:
                self._reducer.apply_all(typed)
            except InvalidTransitionError as exc:  # checked above; reaching here is a bug, and the state is behind the journal
                self.mark_broken(exc)
                raise
            self._state = None
            if not sync:
                self._undelivered.extend(typed)
                return typed
            self._maybe_snapshot()
            if self._undelivered:
                self._subscribers.notify(self._undelivered)
                self._undelivered.clear()
            self._subscribers.notify(typed)
            return typed

    def _maybe_snapshot(self) -> None:
        if self.snapshot_every and self._reducer.seq - self._last_snapshot >= self.snapshot_every:
            self.save_snapshot()

    def save_snapshot(self) -> None:
        """Store the current state as a snapshot now (open replays only what follows it).

        A snapshot that cannot be written (disk full) is logged and skipped:
        snapshots make opening fast, they are not needed for correctness.
        """
        with self._mutex:
            self.check_usable()
            seq = self._reducer.seq
            if seq == 0:
                return
            try:
                self.journal.sync()  # records written without their own fsync become durable first
                self.journal.save_snapshot(seq, encode_state(self.state))
            except JournalBrokenError as exc:
                self.mark_broken(exc)
                raise EngineBrokenError(f"saving a snapshot of {self.root} failed to fsync: {exc}") from exc
            except (OSError, JournalError) as exc:
                if self._broken is not None:
                    raise EngineBrokenError(f"saving a snapshot of {self.root} failed to fsync: {exc}") from exc
                _log.warning("could not save a snapshot of %s at seq %d (%s); opening will replay more records", self.root, seq, exc)
                return
            self._last_snapshot = seq

    # -- subscribers ----------------------------------------------------------------

    def subscribe(self, callback: Callable[[EventRecord], object], kinds: Iterable[str] | str | None = None) -> Subscription:
        """Call ``callback(record)`` for every durable record whose event kind is in ``kinds`` (None: all).

        Many callbacks may watch one kind; each is called in seq order, after
        its record is durable, in the thread that journaled it.  One that
        raises is logged with its traceback; the others and the engine go on.
        Returns a handle whose ``cancel()`` unsubscribes.
        """
        self.check_usable()
        if kinds is not None:
            wanted = [kinds] if isinstance(kinds, str) else list(kinds)
            unknown = self.registry.unknown_kinds(wanted)
            if unknown:
                raise ValueError(f"unknown event kind(s) {unknown}; known kinds: {sorted(self.registry.event_classes)}")
        return self._subscribers.add(callback, kinds)

    # -- preflight ------------------------------------------------------------------

    def preflight(self, needed: int, what: str) -> None:
        """Refuse ``what`` before any write when the disk lacks ``needed`` bytes (plus a small reserve)."""
        if needed < 0:
            raise ValueError(f"expected bytes must be 0 or more, got {needed}")
        free = self.fs.free_bytes(self.root)
        if needed + SPACE_RESERVE_BYTES > free:
            raise InsufficientSpaceError(self.root, needed + SPACE_RESERVE_BYTES, free, f"{what} was refused before writing anything")

    # -- closing --------------------------------------------------------------------

    def close_core(self, final: Sequence[Event]) -> None:
        """Journal ``final`` (when usable), release the journal and drop subscribers.  Idempotent."""
        with self._mutex:
            if self._closed:
                return
            try:
                if self._broken is None and final:
                    self.journal_events(*final)
                    if self.snapshot_every and self._reducer.seq - self._last_snapshot >= max(1, self.snapshot_every // 10):
                        self.save_snapshot()
            finally:
                self._closed = True
                self._subscribers.clear()
                self.journal.close()

    # -- built-in operations ----------------------------------------------------------

    def checkpoint(
        self, name: str, *, step: int | None = None, meta: Mapping[str, Any] | None = None, expected_bytes: int = 0
    ) -> CheckpointWriter:
        """Begin checkpoint ``name`` at global ``step``; use the writer as a context manager.

        ``with engine.checkpoint("step-100", step=100) as ck: ck.write_bytes("model.bin", data)``:
        on a clean exit the manifest is written last, fsynced, ``checkpoint.durable``
        journaled, the folder renamed into ``checkpoints/<name>`` and
        ``checkpoint.committed`` journaled; if the block raises, staging is
        removed and ``checkpoint.aborted`` journaled.  ``expected_bytes`` is
        checked against free space before anything is written
        (:class:`InsufficientSpaceError`).  A name used before is refused
        (:class:`ConflictError`).
        """
        return begin_artifact(self, name, artifact="checkpoint", step=step, meta=meta, expected_bytes=expected_bytes)

    def save_model(self, name: str, *, meta: Mapping[str, Any] | None = None, expected_bytes: int = 0) -> CheckpointWriter:
        """Begin model ``name`` (a base or merged model under ``models/``); same protocol as :meth:`checkpoint`."""
        return begin_artifact(self, name, artifact="model", meta=meta, expected_bytes=expected_bytes)

    def adopt_checkpoint(
        self, source: str | os.PathLike[str], *, name: str | None = None, step: int | None = None, meta: Mapping[str, Any] | None = None
    ) -> ArtifactInfo:
        """Copy a folder another library wrote (e.g. a HF Trainer ``checkpoint-N``) into a committed checkpoint.

        The files are copied into staging durably with checksums computed in the
        same pass, then the checkpoint protocol runs.  ``name`` defaults to the
        folder's name; ``step`` to the number after the last '-' in it (as in
        ``checkpoint-500``).  The source folder is not changed.
        """
        return self._adopt(source, "checkpoint", name, step, meta)

    def adopt_model(self, source: str | os.PathLike[str], *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> ArtifactInfo:
        """Copy a model folder into ``models/<name>`` as a committed model (see :meth:`adopt_checkpoint`)."""
        return self._adopt(source, "model", name, None, meta)

    def _adopt(
        self, source: str | os.PathLike[str], artifact: str, name: str | None, step: int | None, meta: Mapping[str, Any] | None
    ) -> ArtifactInfo:
        src = os.path.abspath(os.fspath(source))
        if not os.path.isdir(src) or os.path.islink(src):
            raise NotFoundError("folder to adopt", src, "expected an existing folder (not a symlink)")
        name = check_name(artifact, name if name is not None else os.path.basename(src.rstrip(os.sep)))
        if artifact == "checkpoint" and step is None:
            tail = name.rsplit("-", 1)[-1]
            step = int(tail) if tail.isdigit() else None
        files = scan_folder(src)
        total = sum(os.path.getsize(os.path.join(src, *rel.split("/"))) for rel in files)
        with begin_artifact(self, name, artifact=artifact, step=step, meta=meta, expected_bytes=total, source=src) as writer:
            for rel in files:
                writer.copy_file(os.path.join(src, *rel.split("/")), rel)
        assert writer.info is not None
        return writer.info

    def save_adapter(self, name: str, *, meta: Mapping[str, Any] | None = None, expected_bytes: int = 0) -> CheckpointWriter:
        """Begin adapter ``name`` under ``adapters/`` (PEFT layout: adapter_config.json + weights); same protocol as :meth:`checkpoint`."""
        return begin_artifact(self, name, artifact="adapter", meta=meta, expected_bytes=expected_bytes)

    def adopt_adapter(self, source: str | os.PathLike[str], *, name: str | None = None, meta: Mapping[str, Any] | None = None) -> ArtifactInfo:
        """Copy an adapter folder (e.g. one PEFT saved) into ``adapters/<name>`` as a committed adapter."""
        return self._adopt(source, "adapter", name, None, meta)

    def consolidate_with(self, merge: MergeFn, *, base: str, adapter: str, into: str, pointer: str) -> ArtifactInfo:
        """Merge committed adapter ``adapter`` into committed model ``base`` as ``models/<into>`` with ``merge``,
        point ``pointer`` at it, and only then retire the adapter; see :mod:`shipslog.engine._consolidation`.

        Refused up front while a run or another consolidation is in progress
        (:class:`ConflictError`).  A merge that raises (NaN/Inf, bad shapes,
        out of memory) aborts: nothing is installed, the adapter is kept.
        """
        return consolidate(self, base=base, adapter=adapter, into=into, pointer=pointer, merge=merge)

    def latest_checkpoint(self, *, deep: bool = False) -> ArtifactInfo | None:
        """The newest committed checkpoint by step (never by name or mtime) whose folder verifies.

        Chosen from the engine state in O(1); its folder is then checked
        (presence and sizes, or every checksum with ``deep=True``).  A checkpoint
        that fails is skipped with a logged error and the next newest is tried;
        None when there is none.
        """
        self.check_usable()
        state = self.state
        candidate = state.latest_checkpoint()
        if candidate is None:
            return None
        try:
            verify_folder(self.path(candidate.path), deep=deep)
            return candidate
        except IntegrityError as exc:
            _log.error("newest checkpoint %s does not verify (%s); trying older ones", candidate.path, exc)
        for art in sorted(state.checkpoints.values(), key=lambda a: (a.step or 0, a.seq), reverse=True):
            if art is candidate:
                continue
            try:
                verify_folder(self.path(art.path), deep=deep)
                return art
            except IntegrityError as exc:
                _log.error("checkpoint %s does not verify (%s)", art.path, exc)
        return None

    def verify(self, target: str) -> Manifest:
        """Re-checksum every file of a committed checkpoint or model; :class:`IntegrityError` on any difference."""
        self.check_usable()
        art = resolve_target(self.state, target)
        return verify_folder(self.path(art.path), deep=True)

    def set_pointer(self, name: str, target: str) -> PointerInfo:
        """Point ``name`` at a committed checkpoint or model (``checkpoints/x``, ``models/x`` or a unique bare name).

        The target must exist in the engine state and verify against its
        manifest (every checksum) before anything is journaled; the pointer
        file is replaced atomically.
        """
        return set_pointer(self, name, target)

    def pointer(self, name: str) -> str:
        """The absolute path of the folder pointer ``name`` names (:class:`NotFoundError` when unset)."""
        check_name("pointer", name)
        self.check_usable()
        found = self.state.pointers.get(name)
        if found is None:
            raise NotFoundError("pointer", name)
        return self.path(found.target)

    def retain(self, keep_last: int, *, keep_models: int | None = None, dry_run: bool = False) -> RetentionPlan:
        """Delete checkpoints beyond the ``keep_last`` newest (by step) and, with ``keep_models``, old models.

        Never deletes a pointer's target, the newest committed checkpoint or a
        folder an operation in progress uses.  The list is journaled before the
        first delete.  ``dry_run`` returns the plan and changes nothing.
        """
        return retain(self, keep_last, keep_models=keep_models, dry_run=dry_run)

    def delete(self, targets: Sequence[str], *, reason: str = "") -> list[str]:
        """Delete the committed checkpoints or models ``targets`` (names or ``checkpoints/<name>`` paths), as retention
        does: the list is journaled before the first delete, and a crash is finished by recovery.

        Refused up front, with nothing journaled (:class:`ConflictError`
        naming why), when one of them is a pointer's target, the newest
        committed checkpoint, or in use by an operation in progress;
        :class:`NotFoundError` for one that is not committed.  Returns the
        root-relative paths deleted.
        """
        return delete_committed(self, targets, reason=reason)

    def run(
        self,
        data_file: str | os.PathLike[str],
        *,
        required_fields: Sequence[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> Run:
        """Validate ``data_file`` whole, then start a run at the global step of the newest committed checkpoint.

        A bad file raises :class:`DataFileError` naming the line, and nothing is
        journaled.  ``on_progress`` is called with the bytes validated since its
        last call (see :func:`validate_data_file`), for a progress bar.  Use the returned :class:`Run` as a context manager: it
        journals ``run.finished`` on a clean exit and ``run.failed`` when the
        block raises.  One run at a time (:class:`ConflictError`).
        """
        return start_run(self, data_file, required_fields, on_progress)

    def status(self) -> Status:
        """The host at a glance, derived from the journal (never stale, never from a side file)."""
        self.check_usable()
        return status_of(self.state)
