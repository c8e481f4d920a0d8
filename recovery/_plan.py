"""The recovery planner: ``plan(state, listing) -> [Action]``, pure and table-driven.

Each cut-off operation gets the action its type declares for its state (a
journal-only close, or the executor its :class:`~shipslog.engine.Recovery`
rule names: built-in and host types alike), and every entry under the
engine's folders that no journal record accounts for (committed folders,
pointers, and what each unfinished operation's type ``claims``) gets a
quarantine action.  The planner reads the state and a listing of the folders
taken beforehand; it touches nothing.
"""

from __future__ import annotations

import hashlib
import os

import msgspec

from shipslog.engine import ENGINE_FOLDERS, EngineState, OpRecord, Registry
from shipslog.journal import QUARANTINE_DIR, is_temp_name

__all__ = [
    "ENGINE_FOLDERS",
    "Action",
    "RootListing",
    "list_root",
    "plan",
    "quarantine_name",
]

_DELETING = ".deleting"


class RootListing(msgspec.Struct, frozen=True):
    """The entries of the engine's folders (names only, hidden ones included), as found on disk."""

    entries: dict[str, list[str]]


def list_root(root: str) -> RootListing:
    """List ``staging/``, ``checkpoints/``, ``models/`` and ``pointers/`` under ``root`` (missing folders are empty)."""
    entries: dict[str, list[str]] = {}
    for folder in ENGINE_FOLDERS:
        try:
            entries[folder] = sorted(os.listdir(os.path.join(root, folder)))
        except FileNotFoundError:
            entries[folder] = []
    return RootListing(entries)


class Action(msgspec.Struct, frozen=True):
    """One thing recovery will do.

    ``kind`` is ``close`` (journal ``event`` for the op; no file to touch),
    ``<type>.<step>`` (the executor the op's type declares for its state:
    ``checkpoint.roll-back``, ``pointer.settle``, ``export.roll-forward``, ...),
    ``quarantine`` (move ``target``, a root-relative path, to
    ``quarantine/``) or ``manual`` (an unregistered type, or a state whose
    rule names no executor).  ``target`` is the op id, or the path for
    ``quarantine``.
    """

    kind: str
    target: str
    reason: str
    op_type: str | None = None
    state: str | None = None
    event: str | None = None

    def describe(self) -> str:
        """One line: what, on what, why."""
        what = f"{self.op_type} {self.target} ({self.state})" if self.op_type else self.target
        return f"{self.kind}: {what}: {self.reason}"


def _op_action(registry: Registry, op: OpRecord) -> Action:
    op_type = registry.op_type(op.type)
    if op_type is None:
        return Action("manual", op.id, "its operation type is not registered", op.type, op.state)
    rule = op_type.recovery.get(op_type.state(op.state))
    if rule is None:
        return Action("manual", op.id, f"state {op.state!r} has no recovery rule", op.type, op.state)
    if rule.close_with is not None:
        return Action("close", op.id, rule.reason, op.type, op.state, rule.close_with)
    if rule.execute is None:
        return Action("manual", op.id, f"{rule.action.value}: {rule.reason} (its type names no executor: it needs a person)", op.type, op.state)
    return Action(rule.action_name(op.type), op.id, rule.reason, op.type, op.state)


def _accounted(state: EngineState, registry: Registry) -> set[str]:
    """Root-relative paths that the journal accounts for (committed folders, pointers, what unfinished ops claim)."""
    paths: set[str] = set()
    paths.update(a.path for a in state.checkpoints.values())
    paths.update(a.path for a in state.models.values())
    paths.update(a.path for a in state.adapters.values())
    paths.update(state.retired)
    paths.update(f"pointers/{name}" for name in state.pointers)
    for op in state.ops.values():
        op_type = registry.op_type(op.type)
        if op_type is not None and op_type.claims is not None:
            paths.update(op_type.claims(op))
    return paths


def plan(state: EngineState, listing: RootListing, registry: Registry | None = None) -> list[Action]:
    """Everything recovery must do for ``state`` (every op in it is cut off) and the folders in ``listing``.

    Operations come first, oldest first (sessions before the rest, so the
    unclean shutdown is recorded before what it left); then quarantine
    actions for unaccounted entries, in path order.  An empty list means the
    root needs nothing.
    """
    reg = registry or Registry()
    ops = sorted(state.ops.values(), key=lambda o: (o.type != "session", o.first_seq))
    actions = [_op_action(reg, op) for op in ops]
    accounted = _accounted(state, reg)
    for folder, names in sorted(listing.entries.items()):
        for name in names:
            rel = f"{folder}/{name}"
            owner = rel
            if name.startswith(".") and name.endswith(_DELETING):
                owner = f"{folder}/{name[1:-len(_DELETING)]}"  # a removal in progress belongs to its target
            if owner in accounted:
                continue
            why = "a temporary file left by an interrupted write" if is_temp_name(name) else "no journal record accounts for it"
            actions.append(Action("quarantine", rel, why))
    return actions


_QUARANTINE_NAME_BYTES = 200
"""The longest name (in bytes, as the file system sees it) given to an entry under ``quarantine/``; the limit is 255."""


def quarantine_name(seq: int, rel: str) -> str:
    """The name under ``quarantine/`` for root-relative ``rel`` moved there at record ``seq``.

    ``<seq>-<rel with '/' as '-'>``, cut to fit a file name (a name found on
    disk may be as long as the file system allows): a long one keeps its
    start and ends in a digest of the whole, so two long names never meet.
    """
    base = f"{seq:020d}-{rel.replace('/', '-').lstrip('.')}"
    raw = os.fsencode(base)
    if len(raw) > _QUARANTINE_NAME_BYTES:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        base = os.fsdecode(raw[: _QUARANTINE_NAME_BYTES - 17]) + "-" + digest
        while len(os.fsencode(base)) > _QUARANTINE_NAME_BYTES:  # a multi-byte character cut in half decodes longer
            base = base[:-18] + "-" + digest
    return f"{QUARANTINE_DIR}/{base}"
