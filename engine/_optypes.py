"""Operation types as data: states, transition table, terminal states and recovery rules with their executors.

An :class:`OperationType` is declared once, for the built-ins and for a
host's own operations alike, through this one public mechanism.  The reducer
reads nothing but these tables; the recovery planner reads nothing but
:attr:`OperationType.recovery` and :attr:`OperationType.claims`, and the
executor calls the :attr:`Recovery.execute` function a type declares.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ._events import Event
from ._names import check_op_id

if TYPE_CHECKING:
    from ._context import RecoveryContext
    from ._state import EngineState, OpRecord, StateBuilder

__all__ = ["Claims", "CloseFields", "Executor", "OperationType", "Projection", "Recovery", "RecoveryAction"]


class RecoveryAction(str, enum.Enum):
    """What recovery does with an operation cut off in a given state."""

    ROLL_FORWARD = "roll-forward"
    """Finish the operation's remaining steps."""
    ROLL_BACK = "roll-back"
    """Undo what it did and journal it aborted."""


Executor = Callable[["RecoveryContext", "OpRecord"], str]
"""``(ctx, op) -> outcome``: finish or undo ``op`` (cut off in a state), journal its closing event, say what was done."""

CloseFields = Callable[["EngineState", "OpRecord", str], Mapping[str, Any]]
"""``(state, op, session) -> fields``: the fields besides ``op`` of a journal-only closing event."""

Claims = Callable[["OpRecord"], Iterable[str]]
"""``op -> root-relative paths``: what an operation not yet terminal owns on disk (recovery never quarantines them)."""


@dataclass(frozen=True)
class Recovery:
    """The recovery rule for one non-terminal state: which way, why, and who carries it out.

    ``action`` says which way; ``reason`` is the sentence shown in plans.
    Exactly one way of carrying it out, or none:

    - ``close_with`` names an event kind that settles the operation by itself
      (no file to touch: a run becomes interrupted, a session crashed).  Its
      fields besides ``op`` come from ``close_fields`` (or its defaults); the
      event is journaled in the frame that opens the new session.
    - ``execute`` is the executor: called by recovery with a
      :class:`~shipslog.engine.RecoveryContext` and the operation, it does the
      file work (idempotently) and journals the closing event.  ``step`` names
      the action in plans and in ``recovery.step`` records as
      ``<type>.<step>`` (default: the action's value, e.g.
      ``checkpoint.roll-back``).
    - neither: the state needs a person; opening such a root raises
      :class:`~shipslog.engine.CutOffOperationsError` naming the operation.
    """

    action: RecoveryAction
    reason: str
    close_with: str | None = None
    close_fields: CloseFields | None = None
    execute: Executor | None = None
    step: str | None = None

    @property
    def manual(self) -> bool:
        """True when nothing carries the rule out automatically."""
        return self.close_with is None and self.execute is None

    def action_name(self, op_type: str) -> str:
        """The name of an executed action in plans and ``recovery.step`` records."""
        return f"{op_type}.{self.step or self.action.value}"


Projection = Callable[["StateBuilder", "OpRecord", Event, int, float], None]
"""``(builder, op, event, seq, time)``: what an event changes outside the operation table (checkpoints, pointers, ...)."""


@dataclass(frozen=True)
class OperationType:
    """One kind of operation, declared as data.

    ``states`` is an enum whose values are the state names journaled views show.
    ``events`` are the event classes of this type (their tags must start with
    ``"<name>."``).  ``begins`` maps the event kinds that start an operation to
    its first state; ``transitions`` maps ``(state, event kind)`` to the next
    state (a state may move to itself, e.g. progress).  ``terminal`` states have
    no way out; every other state needs a :class:`Recovery` rule in
    ``recovery``.  ``projections`` (optional) maps an event kind to the function
    that applies its effect on the rest of the engine state (checkpoints,
    pointers, runs).  ``grows`` (optional) maps a frequent self-loop event
    kind (progress) to the integer field it carries, which never decreases:
    replay folds consecutive such records of one operation and projects only
    the last one, which is how a history of mostly progress replays fast.  ``claims`` (optional)
    lists the root-relative paths an operation not yet terminal owns, so
    recovery never moves them to quarantine.  The declaration is checked when it is made, so a
    table with a hole is a programming error at import time, not at 3 a.m.
    """

    name: str
    states: type[enum.Enum]
    events: tuple[type[Event], ...]
    begins: Mapping[str, enum.Enum]
    transitions: Mapping[tuple[enum.Enum, str], enum.Enum]
    terminal: frozenset[enum.Enum]
    recovery: Mapping[enum.Enum, Recovery]
    projections: Mapping[str, Projection] = field(default_factory=dict)
    claims: Claims | None = None
    grows: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    kinds: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        kinds = frozenset(_tag_of(cls) for cls in self.events)
        object.__setattr__(self, "kinds", kinds)
        problems = list(self._problems(kinds))
        if problems:
            raise ValueError(f"operation type {self.name!r} is not well formed: " + "; ".join(problems))

    def _problems(self, kinds: frozenset[str]) -> Iterable[str]:
        if not self.name or "." in self.name:
            yield "its name must be non-empty and without '.'"
        else:
            try:
                check_op_id("operation type name", self.name)
            except ValueError as exc:
                yield f"its name becomes part of operation ids, which name folders: {exc}"
        for kind in kinds:
            if not kind.startswith(self.name + "."):
                yield f"event kind {kind!r} must start with {self.name + '.'!r}"
        states = set(self.states)
        if not self.begins:
            yield "no event kind begins it"
        for kind in self.projections:
            if kind not in kinds:
                yield f"projection for {kind!r}, which is not one of its events"
        for kind, attr in self.grows.items():
            cls = next((c for c in self.events if _tag_of(c) == kind), None)
            if cls is None:
                yield f"grows names {kind!r}, which is not one of its events"
                continue
            if attr not in {f.name for f in msgspec.structs.fields(cls)}:
                yield f"grows names field {attr!r} of {kind!r}, which it does not have"
            if any(k == kind and src != dst for (src, k), dst in self.transitions.items()):
                yield f"grows names {kind!r}, which moves an operation to another state (only a self-loop folds)"
        for kind, state in self.begins.items():
            if kind not in kinds:
                yield f"begins with {kind!r}, which is not one of its events"
            if state not in states:
                yield f"begins in {state!r}, which is not one of its states"
        for (state, kind), nxt in self.transitions.items():
            if state not in states or nxt not in states:
                yield f"transition {state!r} --{kind}--> {nxt!r} uses a state it does not declare"
            if kind not in kinds:
                yield f"transition on {kind!r}, which is not one of its events"
            if state in self.terminal:
                yield f"terminal state {state.value!r} has a way out ({kind!r})"
        for state in states - set(self.terminal):
            if state not in self.recovery:
                yield f"non-terminal state {state.value!r} has no recovery rule"
        for state, rule in self.recovery.items():
            if state in self.terminal:
                yield f"terminal state {state.value!r} has a recovery rule"
            if rule.close_with is not None and rule.execute is not None:
                yield f"recovery of {state.value!r} both closes with {rule.close_with!r} and has an executor; choose one"
            if rule.close_fields is not None and rule.close_with is None:
                yield f"recovery of {state.value!r} has close_fields but no close_with event"
            if rule.step is not None and ("." in rule.step or not rule.step):
                yield f"recovery of {state.value!r} names its step {rule.step!r}; a step is a non-empty word without '.'"
            if rule.close_with is not None:
                cls = next((c for c in self.events if _tag_of(c) == rule.close_with), None)
                required = [f.name for f in msgspec.structs.fields(cls) if f.required and f.name != "op"] if cls else []
                if required and rule.close_fields is None:
                    yield f"recovery of {state.value!r} closes with {rule.close_with!r}, whose fields {required} need defaults or close_fields (it is built from the op id alone)"
                if rule.close_with not in kinds:
                    yield f"recovery of {state.value!r} closes with {rule.close_with!r}, not one of its events"
                elif (state, rule.close_with) not in self.transitions:
                    yield f"recovery of {state.value!r} closes with {rule.close_with!r}, which the table does not allow there"
        reachable = set(self.begins.values())
        frontier = list(reachable)
        while frontier:
            state = frontier.pop()
            for (src, _kind), nxt in self.transitions.items():
                if src == state and nxt not in reachable:
                    reachable.add(nxt)
                    frontier.append(nxt)
        for state in states - reachable:
            yield f"state {state.value!r} cannot be reached"

    def state(self, value: str) -> enum.Enum:
        """The state named ``value`` (as journaled views show it)."""
        return self.states(value)

    def describe(self) -> dict[str, Any]:
        """The table as plain data (for ``shipslog`` and documentation)."""
        return {
            "name": self.name,
            "states": [s.value for s in self.states],
            "terminal": sorted(s.value for s in self.terminal),
            "begins": {k: s.value for k, s in self.begins.items()},
            "transitions": [[s.value, k, n.value] for (s, k), n in self.transitions.items()],
            "recovery": {
                s.value: {
                    "action": r.action.value,
                    "reason": r.reason,
                    "close_with": r.close_with,
                    "executor": None if r.execute is None else r.action_name(self.name),
                }
                for s, r in self.recovery.items()
            },
        }


def _tag_of(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise ValueError(f"event class {cls.__name__} needs a string tag (class {cls.__name__}(Event, tag='type.event'))")  # noqa: TRY004 - an ill-formed OperationType raises ValueError, like every declaration problem here
    return tag
