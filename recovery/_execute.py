"""The recovery executor: carries out a plan, journaling each action's intent before its effect.

``recovery.begun`` lists what was found; before each action ``recovery.step``
says what is about to happen; the action's own record (``checkpoint.aborted``,
``pointer.set``, ...) follows its effect; ``recovery.done`` ends it.  Every
action is idempotent, so a crash anywhere in here is recovered by planning
again from the journal on the next open.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable

import msgspec

from shipslog.engine import (
    ARTIFACT_FOLDERS,
    ArtifactAborted,
    ArtifactCommitted,
    EngineCore,
    EngineState,
    Event,
    IntegrityError,
    PointerAborted,
    PointerSet,
    RecoveryBegun,
    RecoveryDone,
    RecoveryStep,
    Registry,
    RetentionDeleted,
    RunInterrupted,
    SessionCrashed,
    verify_folder,
)
from shipslog.engine import (
    ConsolidationAborted,
    delete_paths,
    finish_consolidation,
    read_pointer_file,
    settle_cut_off_worker,
    write_pointer_file,
)
from shipslog.journal import crash_point, register_crash_point

from ._plan import Action, quarantine_name

__all__ = ["ActionResult", "RecoveryReport", "close_event", "execute", "register_executor"]

_log = logging.getLogger("shipslog.recovery")

CP_BEGUN = register_crash_point("recovery.after_begun", "recovery.begun is durable; no action has been carried out")
CP_STEP = register_crash_point("recovery.after_step", "an action's recovery.step is durable; its effect has not happened")
CP_EFFECT = register_crash_point(
    "recovery.after_effect", "an action's effect happened (on files, or a worker process stopped); its closing record is not journaled"
)
CP_ACTION = register_crash_point("recovery.after_action", "an action and its closing record are durable")


class ActionResult(msgspec.Struct, frozen=True):
    """What one action did (``outcome``: one line)."""

    action: Action
    outcome: str


class RecoveryReport(msgspec.Struct, frozen=True):
    """What recovery found, what it did and why; ``quarantined`` lists root-relative paths under quarantine/."""

    op: str | None
    found: list[str]
    results: list[ActionResult]
    quarantined: list[str]

    @property
    def empty(self) -> bool:
        """True when there was nothing to recover."""
        return not self.found


Executor = Callable[[EngineCore, Action, list[str]], str]
_EXECUTORS: dict[str, Executor] = {}


def register_executor(kind: str, executor: Executor) -> None:
    """Register the function that carries out actions of ``kind`` (idempotent, journals its own closing record)."""
    _EXECUTORS[kind] = executor


def execute(core: EngineCore, actions: list[Action]) -> RecoveryReport:
    """Carry out ``actions`` in order on an open engine; return the report (also journaled)."""
    if not actions:
        return RecoveryReport(None, [], [], [])
    found = [a.describe() for a in actions]
    op = core.new_op_id("recovery")
    core.journal_events(RecoveryBegun(op=op, actions=len(actions), found=_listed(found)))
    crash_point(CP_BEGUN)
    results: list[ActionResult] = []
    quarantined: list[str] = []
    for index, action in enumerate(actions):
        executor = _EXECUTORS.get(action.kind)
        if executor is None:
            raise ValueError(f"no executor for recovery action {action.kind!r} ({action.describe()})")
        core.journal_events(RecoveryStep(op=op, index=index, target=_journaled(action.target), action=action.kind, reason=action.reason))
        crash_point(CP_STEP)
        outcome = executor(core, action, quarantined)
        crash_point(CP_ACTION)
        _log.warning("%s: recovered %s -> %s", core.root, action.describe(), outcome)
        results.append(ActionResult(action, outcome))
    core.journal_events(RecoveryDone(op=op, done=len(actions), quarantined=_listed(quarantined)))
    return RecoveryReport(op, found, results, quarantined)


_LISTED = 1000
"""The most lines a recovery record lists (what it found, what it quarantined); the rest is counted."""


def _journaled(text: str) -> str:
    """``text`` as a record can hold it: a name read from disk that is not UTF-8 keeps its bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _listed(lines: list[str]) -> list[str]:
    """At most :data:`_LISTED` of ``lines`` (journalable), then one line counting the others: a record stays small
    however many entries a crash left."""
    shown = [_journaled(line) for line in lines[:_LISTED]]
    if len(lines) > _LISTED:
        shown.append(f"... and {len(lines) - _LISTED} more")
    return shown


# -- the executors -------------------------------------------------------------------


def _quarantine(core: EngineCore, rel: str, moved: list[str]) -> str:
    """Move root-relative ``rel`` into quarantine/ (durably); return where it went."""
    src = core.path(*rel.split("/"))
    if not os.path.lexists(src):
        return f"{rel} is already gone"
    dst_rel = quarantine_name(core.state.seq, rel)
    dst = core.path(*dst_rel.split("/"))
    n = 1
    while os.path.lexists(dst):
        n += 1
        dst = core.path(*f"{dst_rel}.{n}".split("/"))
    core.fs.ensure_dir(os.path.dirname(dst))
    core.fs.rename_durable(src, dst)
    crash_point(CP_EFFECT)
    where = os.path.relpath(dst, core.root).replace(os.sep, "/")
    moved.append(where)
    return f"moved {rel} to {where}"


def close_event(state: EngineState, registry: Registry, action: Action, session: str) -> Event:
    """The event that settles a ``close`` action: its op's declared closing event, filled in from the state."""
    if action.event == "run.interrupted":
        run = state.runs.get(action.target)
        return RunInterrupted(
            op=action.target, step=run.step if run else 0, reason=f"its session ended without finishing it; found by session {session}"
        )
    if action.event == "session.crashed":
        return SessionCrashed(op=action.target, found_by=session)
    if action.event is None or action.event not in registry.event_classes:
        raise ValueError(f"{action.describe()}: no closing event is registered")
    return registry.event_classes[action.event](op=action.target)


def _close(core: EngineCore, action: Action, moved: list[str]) -> str:
    if action.target not in core.state.ops:
        return "already settled"
    core.journal_events(close_event(core.state, core.registry, action, core.session))
    return f"journaled {action.event}"


def _artifact_paths(core: EngineCore, action: Action) -> tuple[dict[str, object], str, str, str]:
    op = core.state.ops[action.target]
    info = op.info
    folder = ARTIFACT_FOLDERS.get(str(info.get("artifact", "checkpoint")), "checkpoints")
    final_rel = f"{folder}/{info['name']}"
    return info, str(info.get("staging", "")), final_rel, folder


def _checkpoint_roll_back(core: EngineCore, action: Action, moved: list[str]) -> str:
    if action.target not in core.state.ops:
        return "already settled"
    _info, staging_rel, _final_rel, _folder = _artifact_paths(core, action)
    if staging_rel:
        core.fs.remove_tree_durable(core.path(*staging_rel.split("/")))
        crash_point(CP_EFFECT)
    core.journal_events(ArtifactAborted(op=action.target, reason="recovered: cut off before its files were durable; staging removed"))
    return "staging removed, journaled aborted"


def _verifies(core: EngineCore, rel: str, manifest_crc: object) -> str | None:
    """None when the folder at ``rel`` verifies against its manifest (and that manifest is the journaled one), else why not."""
    path = core.path(*rel.split("/"))
    if not os.path.isdir(path):
        return "missing"
    try:
        verify_folder(path)
        with open(os.path.join(path, "MANIFEST"), "rb") as f:
            crc = zlib.crc32(f.read())
    except (IntegrityError, OSError, ValueError) as exc:
        return str(exc)
    if isinstance(manifest_crc, int) and crc != manifest_crc:
        return f"its MANIFEST (crc32 {crc:08x}) is not the one journaled durable ({manifest_crc:08x})"
    return None


def _settle_copies(core: EngineCore, final_rel: str, staging_rel: str, crc: object, moved: list[str]) -> tuple[str | None, str]:
    """Choose the copy of a durable folder to keep: ``"final"``, ``"staged"`` or None (neither verifies).

    The copies not kept are moved to quarantine (never deleted); the second
    value says why when neither verifies.
    """
    final_problem = _verifies(core, final_rel, crc)
    if final_problem is None:
        if staging_rel and os.path.lexists(core.path(*staging_rel.split("/"))):
            _quarantine(core, staging_rel, moved)
        return "final", ""
    staged_problem = _verifies(core, staging_rel, crc) if staging_rel else "no staging folder"
    if staged_problem is None:
        if final_problem != "missing":
            _quarantine(core, final_rel, moved)  # a final folder that does not verify is kept aside, never deleted
        return "staged", ""
    for rel in (final_rel, staging_rel):
        if rel and os.path.lexists(core.path(*rel.split("/"))):
            _quarantine(core, rel, moved)
    return None, f"final: {final_problem}; staged: {staged_problem}"


def _checkpoint_roll_forward(core: EngineCore, action: Action, moved: list[str]) -> str:
    if action.target not in core.state.ops:
        return "already settled"
    info, staging_rel, final_rel, folder = _artifact_paths(core, action)
    kept, why = _settle_copies(core, final_rel, staging_rel, info.get("manifest_crc"), moved)
    if kept is None:
        core.journal_events(ArtifactAborted(op=action.target, reason=f"recovered: no copy verifies ({why}); quarantined"))
        return f"no copy verifies ({why}); quarantined what there was; journaled aborted"
    if kept == "staged":
        core.fs.ensure_dir(core.path(folder))
        core.fs.rename_durable(core.path(*staging_rel.split("/")), core.path(*final_rel.split("/")), sync_source=False)
        crash_point(CP_EFFECT)
    core.journal_events(ArtifactCommitted(op=action.target, path=final_rel))
    return f"{kept} copy verifies: {final_rel} in place, journaled committed"


def _pointer_file_target(core: EngineCore, name: str) -> str | None:
    try:
        return read_pointer_file(core.path("pointers", name)).target
    except (OSError, IntegrityError):
        return None


def _pointer_settle(core: EngineCore, action: Action, moved: list[str]) -> str:
    op = core.state.ops.get(action.target)
    if op is None:
        return "already settled"
    name, old, new = op.info["name"], op.info.get("old"), op.info["new"]
    state = core.state
    committed = {a.path for a in state.checkpoints.values()} | {a.path for a in state.models.values()}
    problem = "not committed" if new not in committed else _verifies(core, new, None)
    on_disk = _pointer_file_target(core, name)
    if problem is None:
        if on_disk != new:
            write_pointer_file(core, name, new, op.id)
            crash_point(CP_EFFECT)
        core.journal_events(PointerSet(op=op.id))
        return f"{new} verifies: pointer file names it, journaled set"
    if old is not None and on_disk != old:
        write_pointer_file(core, name, old, op.id)
        crash_point(CP_EFFECT)
    elif old is None and os.path.lexists(core.path("pointers", name)):
        _quarantine(core, f"pointers/{name}", moved)
    core.journal_events(PointerAborted(op=op.id, reason=f"recovered: new target {new} does not verify ({problem}); kept {old}"))
    return f"{new} does not verify ({problem}): kept {old}, journaled aborted"


def _retention_redo(core: EngineCore, action: Action, moved: list[str]) -> str:
    op = core.state.ops.get(action.target)
    if op is None:
        return "already settled"
    paths = list(op.info.get("paths", ()))
    delete_paths(core, paths)
    crash_point(CP_EFFECT)
    core.journal_events(RetentionDeleted(op=op.id))
    return f"deleted {len(paths)} path(s) again, journaled deleted"


def _consolidation_roll_back(core: EngineCore, action: Action, moved: list[str]) -> str:
    op = core.state.ops.get(action.target)
    if op is None:
        return "already settled"
    staging = str(op.info.get("staging", ""))
    if staging:
        core.fs.remove_tree_durable(core.path(*staging.split("/")))
        crash_point(CP_EFFECT)
    core.journal_events(ConsolidationAborted(op=op.id, reason="recovered: cut off before the merged model was durable; staging removed"))
    return "staging removed, journaled aborted; base, adapter and pointer untouched"


def _consolidation_roll_forward(core: EngineCore, action: Action, moved: list[str]) -> str:
    op = core.state.ops.get(action.target)
    if op is None:
        return "already settled"
    if op.state == "merged-durable":
        info = op.info
        kept, why = _settle_copies(core, f"models/{info['into']}", str(info["staging"]), info.get("manifest_crc"), moved)
        if kept is None:
            core.journal_events(ConsolidationAborted(op=op.id, reason=f"recovered: no copy of the merged model verifies ({why}); adapter kept"))
            return "no copy verifies: quarantined, journaled aborted; the adapter is kept"
    start = op.state
    finish_consolidation(core, op.id, on_effect=lambda: crash_point(CP_EFFECT))
    return f"rolled forward from {start} to committed"


def _quarantine_action(core: EngineCore, action: Action, moved: list[str]) -> str:
    return _quarantine(core, action.target, moved)


def _manual(core: EngineCore, action: Action, moved: list[str]) -> str:
    raise ValueError(f"{action.describe()}: recovery cannot settle it automatically")


register_executor("close", _close)
register_executor("checkpoint.roll-back", _checkpoint_roll_back)
register_executor("checkpoint.roll-forward", _checkpoint_roll_forward)
register_executor("pointer.settle", _pointer_settle)
register_executor("retention.redo", _retention_redo)
register_executor("quarantine", _quarantine_action)
register_executor("manual", _manual)
register_executor("consolidation.roll-back", _consolidation_roll_back)
register_executor("consolidation.roll-forward", _consolidation_roll_forward)
register_executor("worker.settle", lambda core, action, moved: settle_cut_off_worker(core, action.target, on_effect=lambda: crash_point(CP_EFFECT)))
