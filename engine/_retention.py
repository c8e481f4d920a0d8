"""The retention operation: deleting old checkpoints and models, the intent journaled first.

Never deletes a pointer's target, the newest committed checkpoint, anything an
operation in progress uses, or anything outside the engine's folders.
``retention.intended`` lists the paths before the first delete, so a crash
half-way is finished by redoing the (idempotent) deletes.  Its events, table,
projection, forward path and recovery live here.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from shipslog.journal import crash_point, register_crash_point

from ._context import OperationContext, RecoveryContext
from ._errors import ConflictError
from ._events import Event
from ._fields import expect_relpath
from ._layout import RETAINABLE_FOLDERS
from ._optypes import OperationType, Recovery, RecoveryAction
from ._pointer import resolve_target
from ._state import ArtifactInfo, EngineState, OpRecord, StateBuilder

__all__ = [
    "RETENTION",
    "RetentionDeleted",
    "RetentionIntended",
    "RetentionPlan",
    "RetentionState",
    "delete_committed",
    "delete_paths",
    "plan_retention",
    "protected_paths",
    "retain",
]


# -- events --------------------------------------------------------------------------------


class RetentionIntended(Event, tag="retention.intended", frozen=True):
    """These root-relative ``paths`` are about to be deleted (recovery redoes the deletes)."""

    paths: list[str]
    reason: str = ""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        for i, path in enumerate(self.paths):
            expect_relpath(f"paths[{i}]", path, RETAINABLE_FOLDERS)


class RetentionDeleted(Event, tag="retention.deleted", frozen=True):
    """Every path of the intent is gone, durably."""


# -- states and projection ---------------------------------------------------------------


class RetentionState(str, enum.Enum):
    """States of a retention (gc) pass."""

    INTENDED = "intended"
    DELETED = "deleted"


def _retention_intended(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, RetentionIntended)
    for path in ev.paths:
        b.retiring[path] = op.id


def _retention_deleted(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    paths = set(op.info.get("paths", ()))
    lost_latest = False
    tables = {"checkpoints": b.checkpoints, "models": b.models, "adapters": b.adapters}
    for path in paths:
        b.retiring.pop(path, None)
        b.retired.pop(path, None)
        folder, _, name = path.partition("/")
        table = tables.get(folder)
        if table is not None and name in table and table[name].path == path:
            del table[name]
            lost_latest = lost_latest or (table is b.checkpoints and name == b.latest)
    if lost_latest:
        b.recompute_latest()


# -- the forward path ------------------------------------------------------------------------

CP_INTENDED = register_crash_point("retention.after_intended", "retention.intended is durable; nothing is deleted yet")
CP_DELETED_ONE = register_crash_point("retention.after_delete", "one path of the intent is deleted, durably; others may remain")


class RetentionPlan(msgspec.Struct, frozen=True):
    """What a retention pass deletes (``delete``, root-relative) and keeps (``keep``, with the reason)."""

    delete: list[str]
    keep: dict[str, str]
    dry_run: bool
    op: str | None = None


def protected_paths(state: EngineState) -> dict[str, str]:
    """Root-relative paths that retention must never delete, with the reason."""
    keep: dict[str, str] = {}
    for pointer in state.pointers.values():
        keep[pointer.target] = f"target of pointer {pointer.name!r}"
    latest = state.latest_checkpoint()
    if latest is not None:
        keep.setdefault(latest.path, "the newest committed checkpoint")
    for op in state.ops.values():
        for key in ("new", "old", "path"):
            value = op.info.get(key)
            if isinstance(value, str):
                keep.setdefault(value, f"used by operation {op.id} ({op.type}, {op.state})")
    return keep


def plan_retention(state: EngineState, keep_last: int, keep_models: int | None = None) -> RetentionPlan:
    """Choose what to delete: checkpoints beyond the ``keep_last`` newest by step, models beyond ``keep_models`` newest."""
    if not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be 1 or more (the newest checkpoint is always kept), got {keep_last!r}")
    if keep_models is not None and (not isinstance(keep_models, int) or keep_models < 0):
        raise ValueError(f"keep_models must be 0 or more, got {keep_models!r}")
    protected = protected_paths(state)
    keep: dict[str, str] = {}
    delete: list[str] = []

    def sweep(items: list[ArtifactInfo], count: int, what: str) -> None:
        for i, art in enumerate(items):
            if art.path in state.retiring:
                continue
            if art.path in protected:
                keep[art.path] = protected[art.path]
            elif i < count:
                keep[art.path] = f"one of the {count} newest {what}"
            else:
                delete.append(art.path)

    for path in sorted(state.retired):
        if path not in state.retiring:
            delete.append(path)  # an adapter whose merge is installed and pointed to
    by_step = sorted(state.checkpoints.values(), key=lambda a: (a.step or 0, a.seq), reverse=True)
    sweep(by_step, keep_last, "checkpoints")
    if keep_models is not None:
        by_age = sorted(state.models.values(), key=lambda a: a.seq, reverse=True)
        sweep(by_age, keep_models, "models")
    return RetentionPlan(delete=delete, keep=keep, dry_run=True)


def retain(ctx: OperationContext, keep_last: int, *, keep_models: int | None = None, dry_run: bool = False) -> RetentionPlan:
    """Plan and (unless ``dry_run``) carry out a retention pass; see :meth:`Engine.retain`."""
    ctx.check_usable()
    plan = plan_retention(ctx.state, keep_last, keep_models)
    if dry_run or not plan.delete:
        return msgspec.structs.replace(plan, dry_run=dry_run)
    op = _delete_journaled(ctx, plan.delete, f"keep_last={keep_last} keep_models={keep_models}")
    return msgspec.structs.replace(plan, dry_run=False, op=op)


def delete_committed(ctx: OperationContext, targets: Sequence[str], *, reason: str = "") -> list[str]:
    """Delete the committed checkpoints or models ``targets`` (names or root-relative paths) as one retention
    operation; see :meth:`Engine.delete`.  Returns the root-relative paths deleted."""
    ctx.check_usable()
    state = ctx.state
    paths: list[str] = []
    for target in targets:
        art = resolve_target(state, target)
        if art.path not in paths:
            paths.append(art.path)
    if not paths:
        return []
    _check_deletable(state, paths)
    _delete_journaled(ctx, paths, reason or "deleted by request")
    return paths


def _check_deletable(state: EngineState, paths: Sequence[str]) -> None:
    """Raise :class:`ConflictError` when a path is protected (a pointer's target, the newest checkpoint, in use)
    or already being deleted."""
    protected = protected_paths(state)
    for path in paths:
        if path in protected:
            raise ConflictError(f"deleting {path}", protected[path])
        if path in state.retiring:
            raise ConflictError(f"deleting {path}", f"retention {state.retiring[path]}")


def _delete_journaled(ctx: OperationContext, paths: list[str], reason: str) -> str:
    """Journal the intent (checked again under the journal's lock), delete each path durably, journal deleted."""
    op = ctx.new_op_id("retention")
    ctx.journal_events(RetentionIntended(op=op, paths=list(paths), reason=reason), check=lambda state: _check_deletable(state, paths))
    crash_point(CP_INTENDED)
    delete_paths(ctx, paths)
    ctx.journal_events(RetentionDeleted(op=op))
    return op


def delete_paths(ctx: OperationContext, paths: list[str]) -> None:
    """Remove each root-relative path durably (idempotent: a path already gone is fine)."""
    for rel in paths:
        folder, _, name = rel.partition("/")
        if folder not in ("checkpoints", "models", "adapters", "retired") or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"retention only deletes folders under checkpoints/, models/, adapters/ or retired/, not {rel!r}")
        ctx.fs.remove_tree_durable(os.path.join(ctx.root, folder, name))
        crash_point(CP_DELETED_ONE)


# -- recovery ------------------------------------------------------------------------------


def _redo(ctx: RecoveryContext, op: OpRecord) -> str:
    paths = list(op.info.get("paths", ()))
    delete_paths(ctx, paths)
    ctx.effect_done()
    ctx.journal_events(RetentionDeleted(op=op.id))
    return f"deleted {len(paths)} path(s) again, journaled deleted"


def _claims(op: OpRecord) -> Iterable[str]:
    return [p for p in op.info.get("paths", ()) if isinstance(p, str)]


# -- the declaration ----------------------------------------------------------------------

RETENTION = OperationType(
    name="retention",
    description="old checkpoints and models deleted, the intent journaled first",
    states=RetentionState,
    events=(RetentionIntended, RetentionDeleted),
    begins={"retention.intended": RetentionState.INTENDED},
    transitions={(RetentionState.INTENDED, "retention.deleted"): RetentionState.DELETED},
    terminal=frozenset({RetentionState.DELETED}),
    recovery={
        RetentionState.INTENDED: Recovery(RecoveryAction.ROLL_FORWARD, "redo the deletes (idempotent) and journal deleted", execute=_redo, step="redo")
    },
    projections={"retention.intended": _retention_intended, "retention.deleted": _retention_deleted},
    claims=_claims,
)
