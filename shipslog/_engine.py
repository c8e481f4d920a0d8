"""``shipslog.Engine``: the composition root of journal, engine core (and recovery).

``Engine.open(root)`` takes the root's lock, opens and verifies the journal
(repairing a torn tail), loads the newest valid snapshot, replays the records
after it, settles what a crash left that needs no file work (the previous
session's unclean shutdown, its runs left "started"), and refuses a root with
operations cut off half-way through their file effects until they are
recovered.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shipslog.engine import (
    ARTIFACT_FOLDERS,
    ENGINE_FOLDERS,
    ROOT_FOLDERS,
    SALVAGE_MARKER,
    ArtifactInfo,
    CutOffOperationsError,
    EngineCore,
    EngineLockedError,
    EngineState,
    IntegrityError,
    MergeFn,
    MissingDependencyError,
    OperationType,
    Registry,
    SalvageInterruptedError,
    SessionClosed,
    SessionOpened,
    WatchedFileSystem,
    check_root_folders,
    load_state,
    verify_folder,
)
from shipslog.journal import (
    OS_FS,
    QUARANTINE_DIR,
    FileSystem,
    Journal,
    JournalLockedError,
    RootedFileSystem,
    crash_point,
    register_crash_point,
)
from shipslog.recovery import (
    Action,
    ActionResult,
    RecoveryReport,
    Violation,
    check_invariants,
    close_event,
    execute,
    list_root,
    plan,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

__all__ = ["DEFAULT_SNAPSHOT_EVERY", "Engine"]

_log = logging.getLogger("shipslog.engine")

CP_OPENED = register_crash_point(
    "session.after_opened",
    "session.opened (with the previous session's crash and its runs' interruptions) is durable; cut-off operations are not yet recovered",
)

DEFAULT_SNAPSHOT_EVERY = 10_000
"""Records between snapshots: opening replays at most about this many records."""


class Engine(EngineCore):
    """What a training host embeds: every lifecycle change journaled around its file effects.

    Open it with :meth:`open` (a context manager).  After :meth:`close` every
    call raises :class:`~shipslog.engine.EngineClosedError`; after an fsync
    failure every call raises :class:`~shipslog.engine.EngineBrokenError`
    until the root is opened again.
    """

    replayed: int
    """Records replayed at open (after the snapshot, if one was used)."""
    settled: list[Any]
    """Records journaled at open to settle what the previous session left (crashed session, interrupted runs)."""
    recovery: RecoveryReport
    """What start-up recovery found and did (empty when the root was clean)."""
    violations: list[Violation]
    """Invariants that did not hold after recovery (logged as errors; empty when all hold)."""

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        operations: Iterable[OperationType] = (),
        snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
        fsync: bool = True,
        segment_bytes: int | None = None,
        preallocate: bool = True,
        recover: bool = True,
        fs: FileSystem | None = None,
    ) -> Engine:
        """Lock ``root`` (creating it when new), replay its journal, settle the previous session, and start a new one.

        ``operations`` registers the caller's own operation types beside the
        built-ins.  ``snapshot_every`` (records) bounds how much opening
        replays; 0 turns snapshots off.  ``segment_bytes`` is where journal
        segments roll (default: the size the root was created with, 64 MiB for
        a new root).  ``fsync=False`` is for tests and benchmarks only.  Operations a crash cut off are finished or rolled back
        (``recover=False`` refuses such a root instead), entries no journal
        record accounts for are moved to ``quarantine/``, and the invariants
        are checked; :attr:`recovery` and :attr:`violations` say what was found
        and done.  ``fs`` replaces the file-system primitives (tests).  Raises
        :class:`EngineLockedError` when another engine holds the root,
        :class:`UnknownOperationError` when the journal holds events of
        unregistered types, :class:`CutOffOperationsError` for cut-off
        operations whose type declares no automatic recovery, and
        :class:`CorruptJournalError` for damage that is not a torn tail
        (nothing is changed then).
        """
        if not isinstance(snapshot_every, int) or snapshot_every < 0:
            raise ValueError(f"snapshot_every must be 0 (off) or a positive number of records, got {snapshot_every!r}")
        registry = Registry(operations)
        holder: list[EngineCore] = []
        root = os.path.abspath(os.fspath(root))
        check_root_folders(root, new_root_is_empty=True)
        marker = os.path.join(root, SALVAGE_MARKER)
        if os.path.lexists(marker):
            raise SalvageInterruptedError(root, marker)

        def on_fsync_failure(exc: BaseException) -> None:
            if holder:
                holder[0].mark_broken(exc)

        base = fs if fs is not None else (OS_FS if fsync else FileSystem(sync=False))
        watched = WatchedFileSystem(RootedFileSystem(base, root, trusted=ROOT_FOLDERS), on_failure=on_fsync_failure)
        try:
            # The history before the snapshot is verified on a thread while the state is replayed and recovery planned.
            journal = Journal.open(root, fs=watched, segment_bytes=segment_bytes, preallocate=preallocate, defer_history=True)
        except JournalLockedError as exc:
            raise EngineLockedError(exc.root, exc.holder) from exc
        try:
            for path, why in journal.report.skipped_snapshots:
                _log.warning("snapshot %s was not used (%s); replaying more of the journal instead", path, why)
            state, replayed = _load_state(journal, registry)
            actions = plan(state, list_root(journal.root), registry)
            journal.wait_verified()  # damage anywhere in the journal raises here, before anything is changed
            if state.journal_repairs or journal.report.tail_repair is not None:
                actions = _keep_verifying_folders(journal.root, actions)
            refused = [a for a in actions if a.kind == "manual" or (not recover and a.kind != "close")]
            if refused:
                ops = [(a.target, a.op_type or "", a.state or "") for a in refused if a.op_type is not None]
                paths = [a.target for a in refused if a.op_type is None]
                raise CutOffOperationsError(journal.root, ops, paths)
            for folder in (*ENGINE_FOLDERS, QUARANTINE_DIR):
                watched.ensure_dir(os.path.join(journal.root, folder))
            engine = cls(journal, registry, state, fs=watched, snapshot_every=snapshot_every)
            holder.append(engine)
            engine.replayed = replayed
            closes = [a for a in actions if a.kind == "close"]
            repaired = _describe_repair(journal)
            opened = SessionOpened(
                op=f"session-{journal.session}", pid=os.getpid(), host=socket.gethostname(), version=_version(), repaired=repaired or ""
            )
            engine.settled = engine.journal_events(*(close_event(state, registry, a, journal.session, root=journal.root) for a in closes), opened)[:-1]
            crash_point(CP_OPENED)
            report = execute(engine, [a for a in actions if a.kind != "close"])
            engine.recovery = RecoveryReport(
                report.op,
                [a.describe() for a in actions],
                [ActionResult(a, f"journaled {a.event}") for a in closes] + report.results,
                report.quarantined,
                repaired,
            )
            for action in closes:
                _log.warning("%s: recovered after an unclean shutdown: %s -> journaled %s", journal.root, action.describe(), action.event)
            # Always checked (the journal itself was verified as it was opened; pointer targets by size, not re-read).
            engine.violations = check_invariants(
                journal.root, engine.state, registry=registry, live_session=journal.session,
                check_journal=False, deep_pointers=False,
            )
            for violation in engine.violations:
                _log.error("%s: at open, invariant %s", journal.root, violation)
            if snapshot_every and replayed >= snapshot_every:
                engine.save_snapshot()
        except BaseException:
            journal.close()
            raise
        return engine

    def consolidate(
        self,
        *,
        base: str,
        adapter: str,
        into: str,
        pointer: str,
        merge: MergeFn | None = None,
        memory_budget_bytes: int | None = None,
    ) -> ArtifactInfo:
        """Merge committed adapter ``adapter`` into committed model ``base`` as ``models/<into>``, point
        ``pointer`` at it, and only then retire the adapter (to ``retired/``; ``gc`` deletes it later).

        ``merge`` defaults to :func:`shipslog.gpu.merge_folders` (LoRA merge in
        float32 row chunks within ``memory_budget_bytes``, finite-checked),
        imported only now: without torch this raises
        :class:`MissingDependencyError` naming the ``gpu`` extra.  A merge that
        fails aborts the operation with base, adapter and pointer untouched.
        """
        if merge is None:
            try:
                from shipslog.gpu import merge_folders
            except ImportError as exc:
                raise MissingDependencyError("torch", "gpu") from exc
            if memory_budget_bytes is not None:
                merge = functools.partial(merge_folders, memory_budget_bytes=memory_budget_bytes)
            else:
                merge = merge_folders
        return self.consolidate_with(merge, base=base, adapter=adapter, into=into, pointer=pointer)

    def close(self) -> None:
        """Journal a clean end of this session and release the root.  Idempotent.

        After close every call raises :class:`EngineClosedError`.
        """
        self.close_core([SessionClosed(op=f"session-{self.session}")])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "broken" if self.broken else "open"
        return f"<shipslog.Engine {self.root} {state} seq={self.state.seq}>"


def _keep_verifying_folders(root: str, actions: list[Action]) -> list[Action]:
    """``actions`` without quarantining committed folders that verify in full: after a torn journal tail was cut
    back (and until a salvage), their records may have been in it, so they stay where they are for
    ``shipslog recover --salvage`` to adopt."""
    kept: list[Action] = []
    for action in actions:
        if action.kind == "quarantine" and action.target.partition("/")[0] in ARTIFACT_FOLDERS.values():
            try:
                verify_folder(os.path.join(root, *action.target.split("/")), deep=True)
            except (IntegrityError, OSError):
                kept.append(action)
                continue
            _log.error(
                "%s: %s is not in the journal but verifies; left in place since a torn journal tail was cut back: "
                "run 'shipslog recover --salvage %s' to adopt it", root, action.target, root,
            )
            continue
        kept.append(action)
    return kept


def _describe_repair(journal: Journal) -> str | None:
    """One line for the torn journal tail opening cut back, if it did."""
    repair = journal.report.tail_repair
    if repair is None:
        return None
    return (
        f"torn journal tail: {repair.length} bytes at {os.path.relpath(repair.path, journal.root)} offset {repair.offset} "
        f"({repair.reason}) cut back, copied to {os.path.relpath(repair.quarantined_to, journal.root)}"
    )


def _version() -> str:
    from shipslog import __version__

    return __version__


def _load_state(journal: Journal, registry: Registry) -> tuple[EngineState, int]:
    """The state at the journal's end and the records replayed: the newest usable snapshot, then every record after it.

    A snapshot with any flaw is ignored with a warning and the journal replayed
    from its first record (see :func:`shipslog.engine.load_state`).
    """
    loaded = load_state(journal, registry)
    return loaded.state, loaded.replayed
