"""Salvage: keep the part of a damaged journal that verifies, and reconcile it with the folders on disk.

:func:`salvage` is what ``shipslog recover --salvage`` runs, with the root's
lock held throughout:

1. find the longest prefix of the journal that verifies and that the engine
   accepts (:func:`~shipslog.journal.find_valid_prefix`), and replay it;
2. decide, against the disk: a committed folder the prefix does not know and
   whose MANIFEST verifies in full is adopted (with the step its MANIFEST
   records); a committed artifact the prefix names that is missing or does
   not verify is lost; a pointer follows its file on disk when that names a
   folder that verifies, keeps its journaled target when that one does (its
   file rewritten), and is lost otherwise;
3. unless it is a dry run: leave ``SALVAGING`` in the root (no engine opens
   it while it is there), cut the journal back to the prefix (every byte
   after it copied to ``quarantine/<seq>-journal-salvage/`` first), journal
   the decisions as one ``salvage`` operation, and remove the marker.

A folder that verifies is never quarantined: it is either known to the prefix
or adopted.  What is left (folders that do not verify, staging, cut-off
operations) is normal recovery's, which the caller runs next by opening the
engine.  A dry run changes no byte.  Running salvage again after an
interruption finishes the job (the cut is idempotent, and the decisions are
made again from what the journal then holds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import msgspec

from shipslog.engine import (
    ARTIFACT_FOLDERS,
    POINTERS_DIR,
    SALVAGE_MARKER,
    EngineLockedError,
    EngineState,
    Event,
    IntegrityError,
    OperationType,
    PointerFile,
    Reducer,
    Registry,
    SalvageAdopted,
    SalvageBegun,
    SalvageDone,
    SalvageLost,
    SalvagePointerLost,
    SalvagePointerSet,
    UnknownOperationError,
    check_name,
    load_state,
    read_pointer_file,
    verify_folder,
)
from shipslog.journal import (
    JOURNAL_DIR,
    OS_FS,
    QUARANTINE_DIR,
    SNAPSHOT_DIR,
    FileSystem,
    Journal,
    JournalLockedError,
    JournalPrefix,
    RootLock,
    ShipslogError,
    cut_journal,
    find_valid_prefix,
)

__all__ = ["SalvageDecision", "SalvageReport", "salvage"]

_log = logging.getLogger("shipslog.recovery")

_EVENTS_PER_FRAME = 1000


class SalvageDecision(msgspec.Struct, frozen=True):
    """One thing salvage decided: ``action`` (cut, adopt, lost, pointer-set, pointer-lost), its ``target``
    (root-relative), and why."""

    action: str
    target: str
    reason: str


class SalvageReport(msgspec.Struct, frozen=True):
    """What salvage found and decided (``dry_run``: decided only; nothing was changed)."""

    root: str
    dry_run: bool
    kept_seq: int
    """The last record kept: the journal is cut back to it."""
    dropped_from: str | None
    """Where the dropped bytes start (``segment@offset``, root-relative), None when nothing is dropped."""
    damage: str | None
    """What ended the verified prefix (None when the journal verifies to its end)."""
    decisions: list[SalvageDecision]
    quarantined: str | None = None
    """The root-relative folder the dropped journal bytes were copied to (None on a dry run or nothing dropped)."""
    op: str | None = None
    """The salvage operation that journaled the decisions (None on a dry run)."""


def salvage(root: str, operations: Iterable[OperationType] = (), *, dry_run: bool = False, fs: FileSystem | None = None) -> SalvageReport:
    """Salvage ``root`` (see the module); return the report.  The caller opens the engine afterwards.

    Raises :class:`~shipslog.engine.EngineLockedError` when an engine holds
    the root, and :class:`~shipslog.engine.UnknownOperationError` when the
    journal holds events of operation types not given in ``operations`` (they
    are never cut away for want of their declaration).
    """
    root = os.path.abspath(root)
    fs = fs if fs is not None else OS_FS
    registry = Registry(operations)
    lock = RootLock(root, fs=fs)
    try:
        lock.acquire()
    except JournalLockedError as exc:
        raise EngineLockedError(root, exc.holder) from None
    handed_over = False
    try:
        journal_dir = os.path.join(root, JOURNAL_DIR)
        prefix = find_valid_prefix(journal_dir, accept=_Acceptor(registry))
        state = load_state(root, registry, until=prefix.last_seq, snapshots=False).state if prefix.last_seq else EngineState()
        decisions, events, rewrites = _reconcile(root, state, registry)
        dropped_from = None if prefix.whole else _where(root, prefix)
        listed = ([SalvageDecision("cut", dropped_from or "journal", f"kept records 1..{prefix.last_seq}; {prefix.damage}")]
                  if dropped_from else []) + decisions
        if dry_run:
            return SalvageReport(root, True, prefix.last_seq, dropped_from, prefix.damage, listed)
        marker = os.path.join(root, SALVAGE_MARKER)
        fs.write_file_atomic(marker, msgspec.json.encode({"kept_seq": prefix.last_seq, "damage": prefix.damage}) + b"\n")
        quarantined: str | None = None
        dropped_bytes = 0
        if not prefix.whole:
            folder = os.path.join(root, QUARANTINE_DIR, f"{prefix.last_seq + 1}-journal-salvage")
            cut = cut_journal(fs, prefix, folder, os.path.join(root, SNAPSHOT_DIR))
            quarantined = os.path.relpath(folder, root)
            dropped_bytes = cut.dropped_bytes
        handed_over = True
        cut_off = _open_salvage(state)
        with Journal.open(root, fs=fs, lock=lock) as journal:
            op = cut_off or f"salvage-{journal.session}-1"
            head: list[Event] = []
            if cut_off is None:
                head.append(SalvageBegun(op=op, kept_seq=prefix.last_seq, damage=prefix.damage or "", dropped_bytes=dropped_bytes,
                                         quarantined=quarantined or ""))
            for name, target in rewrites:
                data = msgspec.json.encode(PointerFile(version=1, pointer=name, target=target, op=op)) + b"\n"
                fs.write_file_atomic(os.path.join(root, POINTERS_DIR, name), data)
            body = [msgspec.structs.replace(ev, op=op) for ev in events]
            adopted = sum(isinstance(ev, SalvageAdopted) for ev in body)
            tail = [SalvageDone(op=op, adopted=adopted, lost=len(body) - adopted)]
            everything = [*head, *body, *tail]
            for start in range(0, len(everything), _EVENTS_PER_FRAME):
                journal.append_many([registry.encode(ev) for ev in everything[start:start + _EVENTS_PER_FRAME]])
        fs.unlink(marker)
        fs.fsync_dir(root)
        _log.warning("salvaged %s: kept records 1..%d, %d decision(s) journaled as %s", root, prefix.last_seq, len(body), op)
        return SalvageReport(root, False, prefix.last_seq, dropped_from, prefix.damage, listed, quarantined, op)
    finally:
        if not handed_over:
            lock.release()


class _Acceptor:
    """Feeds each verified frame to a reducer; a frame whose events the engine refuses ends the prefix."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._reducer = Reducer(registry)

    def __call__(self, payload: bytes) -> bool:
        try:
            records = self._registry.decode_frame(payload)
            self._reducer.apply_all(records)
        except UnknownOperationError:
            raise  # a host type not given: never cut its records away
        except (ShipslogError, msgspec.DecodeError, ValueError) as exc:
            _log.warning("salvage: the journal's verified prefix ends at a frame the engine refuses: %s", exc)
            return False
        return True


def _open_salvage(state: EngineState) -> str | None:
    """The id of a salvage that was cut off (journaled begun, not done), to go on with."""
    for op in state.ops.values():
        if op.type == "salvage":
            return op.id
    return None


def _where(root: str, prefix: JournalPrefix) -> str:
    if prefix.damage_at is not None:
        path, offset = prefix.damage_at
    else:
        path, offset = prefix.dropped[0], 0
    rel = os.path.relpath(path, root)
    return rel if offset is None else f"{rel}@{offset}"


def _reconcile(
    root: str, state: EngineState, registry: Registry
) -> tuple[list[SalvageDecision], list[Event], list[tuple[str, str]]]:
    """The decisions for ``state`` against the disk, the events that journal them (op to be filled in), and the
    pointer files to rewrite."""
    decisions: list[SalvageDecision] = []
    events: list[Event] = []
    committed = {a.path: a for a in (*state.checkpoints.values(), *state.models.values(), *state.adapters.values())}
    kept: set[str] = set()
    for path in sorted(committed):
        problem = _verify_problem(os.path.join(root, *path.split("/")))
        if problem is None:
            kept.add(path)
            continue
        decisions.append(SalvageDecision("lost", path, problem))
        events.append(SalvageLost(op="", path=path, reason=problem))
    claimed: set[str] = set()
    for op in state.ops.values():
        op_type = registry.types.get(op.type)
        if op_type is not None and op_type.claims is not None:
            claimed.update(op_type.claims(op))
    for artifact, folder in ARTIFACT_FOLDERS.items():
        for name in _names(os.path.join(root, folder)):
            rel = f"{folder}/{name}"
            if rel in committed or rel in claimed:
                continue
            path = os.path.join(root, folder, name)
            try:
                check_name(artifact, name)
            except ValueError:
                continue  # not a name shipslog writes: normal recovery quarantines it
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            try:
                manifest = verify_folder(path, deep=True)
            except (IntegrityError, OSError) as exc:
                _log.info("salvage: %s does not verify (%s); left to recovery", rel, exc)
                continue
            step = manifest.step if artifact == "checkpoint" else None
            decisions.append(SalvageDecision("adopt", rel, f"unknown to the kept journal; its MANIFEST verifies (step {step})"
                                             if step is not None else "unknown to the kept journal; its MANIFEST verifies"))
            events.append(SalvageAdopted(op="", artifact=artifact, name=name, path=rel, step=step,
                                         files=len(manifest.files), bytes=manifest.total_bytes))
            kept.add(rel)
    rewrites: list[tuple[str, str]] = []
    pointer_names = set(state.pointers) | set(_names(os.path.join(root, POINTERS_DIR)))
    for name in sorted(pointer_names):
        on_disk = _pointer_target(root, name)
        journaled = state.pointers[name].target if name in state.pointers else None
        if on_disk is not None and on_disk in kept:
            if on_disk != journaled:
                decisions.append(SalvageDecision("pointer-set", f"{POINTERS_DIR}/{name}", f"its file names {on_disk}, which verifies"))
                events.append(SalvagePointerSet(op="", name=name, target=on_disk))
        elif journaled is not None and journaled in kept:
            decisions.append(SalvageDecision("pointer-set", f"{POINTERS_DIR}/{name}",
                                             f"its file does not name a folder that verifies; rewritten to {journaled}"))
            events.append(SalvagePointerSet(op="", name=name, target=journaled))
            rewrites.append((name, journaled))
        elif journaled is not None:
            why = f"neither {journaled} nor what its file names verifies"
            decisions.append(SalvageDecision("pointer-lost", f"{POINTERS_DIR}/{name}", why))
            events.append(SalvagePointerLost(op="", name=name, reason=why))
    return decisions, events, rewrites


def _verify_problem(folder: str) -> str | None:
    """Why a committed folder cannot be kept (missing, or it does not verify in full), or None."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return "missing on disk"
    try:
        verify_folder(folder, deep=True)
    except (IntegrityError, OSError) as exc:
        return f"does not verify: {exc}"
    return None


def _pointer_target(root: str, name: str) -> str | None:
    try:
        check_name("pointer", name)
        return read_pointer_file(os.path.join(root, POINTERS_DIR, name)).target
    except (ValueError, OSError):
        return None


def _names(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
