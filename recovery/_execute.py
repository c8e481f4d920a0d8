"""The recovery executor: carries out a plan, journaling each action's intent before its effect.

``recovery.begun`` lists what was found; before each action ``recovery.step``
says what is about to happen; the action's own record (``checkpoint.aborted``,
``pointer.set``, ...) follows its effect; ``recovery.done`` ends it.  An
operation's action is carried out by the executor its type declares
(:attr:`shipslog.engine.Recovery.execute`), given a
:class:`~shipslog.engine.RecoveryContext`; this module knows no operation
type by name.  Every action is idempotent, so a crash anywhere in here is
recovered by planning again from the journal on the next open.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import msgspec

from shipslog.engine import (
    CutOffOperationsError,
    EngineCore,
    EngineState,
    Event,
    EventRecord,
    OpRecord,
    Recovery,
    RecoveryBegun,
    RecoveryDone,
    RecoveryStep,
    Registry,
    UnknownOperationError,
)
from shipslog.journal import FileSystem, crash_point, register_crash_point

from ._plan import Action, quarantine_name

__all__ = ["ActionResult", "RecoveryReport", "close_event", "execute"]

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
    """What recovery found, what it did and why; ``quarantined`` lists root-relative paths under quarantine/.

    ``journal_repair`` is one line for the torn journal tail that opening cut
    back (its bytes copied to quarantine/), None when the journal ended clean.
    """

    op: str | None
    found: list[str]
    results: list[ActionResult]
    quarantined: list[str]
    journal_repair: str | None = None

    @property
    def empty(self) -> bool:
        """True when there was nothing to recover (no cut-off operation, no stray entry, no torn journal tail)."""
        return not self.found and self.journal_repair is None


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
        if action.kind == "manual":
            raise CutOffOperationsError(core.root, [(action.target, action.op_type or "", action.state or "")])
        core.journal_events(RecoveryStep(op=op, index=index, target=_journaled(action.target), action=action.kind, reason=action.reason))
        crash_point(CP_STEP)
        outcome = _carry_out(core, _Recovering(core, quarantined), action)
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


# -- carrying out one action ----------------------------------------------------------------


class _Recovering:
    """The :class:`~shipslog.engine.RecoveryContext` an executor is given: the open engine's journal, file
    system, paths and state, plus quarantine (each move listed in the report) and the effect crash point."""

    def __init__(self, core: EngineCore, moved: list[str]) -> None:
        self._core = core
        self._moved = moved

    @property
    def root(self) -> str:
        return self._core.root

    @property
    def fs(self) -> FileSystem:
        return self._core.fs

    @property
    def state(self) -> EngineState:
        return self._core.state

    @property
    def session(self) -> str:
        return self._core.session

    @property
    def broken(self) -> BaseException | None:
        return self._core.broken

    @property
    def closed(self) -> bool:
        return self._core.closed

    def path(self, *parts: str) -> str:
        return self._core.path(*parts)

    def journal_events(
        self, *events: Event, check: Callable[[EngineState], None] | None = None, sync: bool = True
    ) -> list[EventRecord]:
        return self._core.journal_events(*events, check=check, sync=sync)

    def new_op_id(self, op_type: str) -> str:
        return self._core.new_op_id(op_type)

    def preflight(self, needed: int, what: str) -> None:
        self._core.preflight(needed, what)

    def check_usable(self) -> None:
        self._core.check_usable()

    def quarantine(self, rel: str) -> str:
        return _quarantine(self._core, rel, self._moved)

    def effect_done(self) -> None:
        crash_point(CP_EFFECT)


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


def _carry_out(core: EngineCore, ctx: _Recovering, action: Action) -> str:
    """One action: a quarantine, a journal-only close, or the executor the op's type declares for its state now."""
    if action.kind == "quarantine":
        return ctx.quarantine(action.target)
    op = core.state.ops.get(action.target)
    if op is None:
        return "already settled"
    if action.kind == "close":
        core.journal_events(close_event(core.state, core.registry, action, core.session, root=core.root))
        return f"journaled {action.event}"
    rule = _rule_of(core.registry, op, core.root)
    if rule.execute is None:
        raise CutOffOperationsError(core.root, [(op.id, op.type, op.state)])
    return rule.execute(ctx, op)


def _rule_of(registry: Registry, op: OpRecord, root: str) -> Recovery:
    op_type = registry.op_type(op.type)
    if op_type is None:
        raise UnknownOperationError([op.type])
    rule = op_type.recovery.get(op_type.state(op.state))
    if rule is None:
        raise CutOffOperationsError(root, [(op.id, op.type, op.state)])
    return rule


def close_event(state: EngineState, registry: Registry, action: Action, session: str, *, root: str = "the root") -> Event:
    """The event that settles a ``close`` action: its op's declared closing event, filled in by its ``close_fields``.

    Raises :class:`~shipslog.engine.CutOffOperationsError` (naming ``root``)
    when the action's op is not in progress in ``state`` or names no event.
    """
    op = state.ops.get(action.target)
    if op is None or action.event is None:
        raise CutOffOperationsError(root, [(action.target, action.op_type or "", action.state or "")])
    rule = _rule_of(registry, op, root)
    cls = registry.event_classes.get(action.event)
    if cls is None:
        raise UnknownOperationError([action.event])
    fields = dict(rule.close_fields(state, op, session)) if rule.close_fields is not None else {}
    return cls(op=op.id, **fields)
