"""The recovery planner: ``plan(state, listing) -> [Action]``, pure and table-driven.

Each cut-off operation gets the action its type declares for its state (a
journal-only close, or the roll-forward / roll-back of a built-in), and every
entry under the engine's folders that no journal record accounts for gets a
quarantine action.  The planner reads the state and a listing of the folders
taken beforehand; it touches nothing.
"""

from __future__ import annotations

import hashlib
import os

import msgspec

from shipslog.engine import ARTIFACT_FOLDERS, ENGINE_FOLDERS, EngineState, OpRecord, Registry
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
    ``checkpoint.roll-back``, ``checkpoint.roll-forward``, ``pointer.settle``,
    ``retention.redo``, ``worker.settle``, ``quarantine`` (move ``target``, a
    root-relative path, to ``quarantine/``) or ``manual`` (an operation type
    that declares no automatic recovery for this state).  ``target`` is the
    op id, or the path for ``quarantine``.
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


_BUILTIN_ACTIONS = {
    ("checkpoint", "begun"): "checkpoint.roll-back",
    ("checkpoint", "durable"): "checkpoint.roll-forward",
    ("pointer", "intended"): "pointer.settle",
    ("retention", "intended"): "retention.redo",
    ("worker", "started"): "worker.settle",
    ("worker", "starting"): "worker.settle",
    ("consolidation", "begun"): "consolidation.roll-back",
    ("consolidation", "merged-durable"): "consolidation.roll-forward",
    ("consolidation", "installed"): "consolidation.roll-forward",
    ("consolidation", "pointer-set"): "consolidation.roll-forward",
    ("consolidation", "adapter-retired"): "consolidation.roll-forward",
}


def _op_action(registry: Registry, op: OpRecord) -> Action:
    op_type = registry.op_type(op.type)
    if op_type is None:
        return Action("manual", op.id, "its operation type is not registered", op.type, op.state)
    rule = op_type.recovery.get(op_type.state(op.state))
    if rule is None:
        return Action("manual", op.id, f"state {op.state!r} has no recovery rule", op.type, op.state)
    if rule.close_with is not None:
        return Action("close", op.id, rule.reason, op.type, op.state, rule.close_with)
    kind = _BUILTIN_ACTIONS.get((op.type, op.state))
    if kind is None:
        return Action("manual", op.id, f"{rule.action.value}: {rule.reason} (no automatic executor for this type)", op.type, op.state)
    return Action(kind, op.id, rule.reason, op.type, op.state)


def _accounted(state: EngineState) -> set[str]:
    """Root-relative paths that the journal accounts for (committed folders, pointers, in-flight work)."""
    paths: set[str] = set()
    paths.update(a.path for a in state.checkpoints.values())
    paths.update(a.path for a in state.models.values())
    paths.update(a.path for a in state.adapters.values())
    paths.update(state.retired)
    paths.update(f"pointers/{name}" for name in state.pointers)
    for op in state.ops.values():
        info = op.info
        if op.type == "checkpoint":
            staging = info.get("staging")
            if isinstance(staging, str):
                paths.add(staging)
            if op.state == "durable":
                folder = ARTIFACT_FOLDERS.get(str(info.get("artifact", "checkpoint")), "checkpoints")
                paths.add(f"{folder}/{info.get('name')}")
        elif op.type == "pointer":
            paths.add(f"pointers/{info.get('name')}")
        elif op.type == "consolidation":
            paths.add(str(info.get("staging")))
            if op.state != "begun":
                paths.add(f"models/{info.get('into')}")
            paths.add(f"pointers/{info.get('pointer')}")
            adapter = str(info.get("adapter", ""))
            paths.add(f"retired/{op.id}-{adapter.partition('/')[2]}")
        elif op.type == "retention":
            paths.update(p for p in info.get("paths", ()) if isinstance(p, str))
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
    accounted = _accounted(state)
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
