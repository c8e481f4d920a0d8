"""Checks of an engine state read back from a snapshot: the rules replay holds every record to.

A snapshot is checksummed, but its bytes are as untrusted as the journal's: a
state that replay could never have produced (a committed folder outside its
kind's folder, an operation whose recorded fields break its events' rules, a
name that is not a plain name) must not reach recovery.  :func:`check_state`
finds such a state; the opener then ignores the snapshot and replays the
journal, where every record is checked as it is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._errors import InvalidFieldError
from ._events import Event
from ._fields import expect_equal, expect_name, expect_op_id, expect_relpath, reject
from ._layout import (
    ARTIFACT_FOLDERS,
    MODELS_DIR,
    RETAINABLE_FOLDERS,
    RETIRED_DIR,
    TARGET_FOLDERS,
    artifact_relpath,
)
from ._registry import Registry
from ._state import JOURNAL_REPAIRS_KEPT, MAX_REPAIR_LINE, ArtifactInfo, EngineState, OpRecord

__all__ = ["check_state"]


def check_state(state: EngineState, registry: Registry) -> None:
    """Raise :class:`InvalidFieldError` (naming where) unless ``state`` holds only what replay can produce.

    Checked: every committed checkpoint, model and adapter sits at
    ``<its folder>/<its plain name>``; ``latest`` is a committed checkpoint;
    pointers have plain names and name a checkpoint or model folder; retired
    adapters and paths being retired are paths retention may touch; every
    operation in progress has a plain id, a registered type, a non-terminal
    state of that type, and fields that pass the rules of its type's events.
    Linear in the size of the state.
    """
    tables = {"checkpoint": state.checkpoints, "model": state.models, "adapter": state.adapters}
    for artifact, table in tables.items():
        for name, art in table.items():
            _check_artifact(artifact, name, art)
    if state.latest is not None and state.latest not in state.checkpoints:
        reject("latest", state.latest, "the name of a committed checkpoint")
    for name, pointer in state.pointers.items():
        expect_name(f"pointers[{name!r}]", name, "pointer")
        expect_equal(f"pointers[{name!r}].name", pointer.name, name)
        expect_relpath(f"pointers[{name!r}].target", pointer.target, TARGET_FOLDERS)
    for retired, merged in state.retired.items():
        expect_relpath("retired", retired, (RETIRED_DIR,))
        expect_relpath(f"retired[{retired!r}]", merged, (MODELS_DIR,))
    for path, op_id in state.retiring.items():
        expect_relpath("retiring", path, RETAINABLE_FOLDERS)
        expect_op_id(f"retiring[{path!r}]", op_id)
    for op_id, op in state.ops.items():
        _check_op(op_id, op, registry)
    if len(state.journal_repairs) > JOURNAL_REPAIRS_KEPT or any(len(line) > MAX_REPAIR_LINE + 200 for line in state.journal_repairs):
        reject("journal_repairs", len(state.journal_repairs), f"at most {JOURNAL_REPAIRS_KEPT} lines of at most {MAX_REPAIR_LINE + 200} characters")


def _check_artifact(artifact: str, name: str, art: ArtifactInfo) -> None:
    where = f"{ARTIFACT_FOLDERS[artifact]}[{name!r}]"
    expect_name(where, name, artifact)
    expect_equal(f"{where}.name", art.name, name)
    expect_equal(f"{where}.artifact", art.artifact, artifact)
    expect_equal(f"{where}.path", art.path, artifact_relpath(artifact, name))


def _check_op(op_id: str, op: OpRecord, registry: Registry) -> None:
    where = f"ops[{op_id!r}]"
    expect_op_id(where, op_id)
    expect_equal(f"{where}.id", op.id, op_id)
    op_type = registry.op_type(op.type)
    if op_type is None:
        reject(f"{where}.type", op.type, f"a registered operation type ({', '.join(sorted(registry.types))})")
        return
    terminal = {s.value for s in op_type.terminal}
    if op.state not in {s.value for s in op_type.states} or op.state in terminal:
        reject(f"{where}.state", op.state, f"a state of a {op.type} operation in progress")
    classes = {str(cls.__struct_config__.tag): cls for cls in op_type.events}
    recorded = {kind: _event_from_info(cls, op_id, op.info) for kind, cls in classes.items()}
    # the fields of the event that began it, and of one that moved it into its state, must all be there:
    # recovery acts on them
    needed = [set(op_type.begins)]
    if op.state not in {s.value for s in op_type.begins.values()}:
        needed.append({k for (src, k), dst in op_type.transitions.items() if dst.value == op.state and src.value != op.state})
    for kinds in needed:
        if not any(recorded[k] is not None for k in kinds):
            reject(f"{where}.info", sorted(op.info), f"every field of one of {sorted(kinds)}")
    for kind, event in recorded.items():
        if event is None or not _has_own_check(classes[kind]):
            continue
        try:
            event.check_fields(None if kind in op_type.begins else op.info)
        except InvalidFieldError as exc:
            raise InvalidFieldError(f"{where}.info.{exc.field}", exc.value, exc.expected) from None


def _has_own_check(cls: type[Event]) -> bool:
    return cls.check_fields is not Event.check_fields


def _event_from_info(cls: Any, op_id: str, info: Mapping[str, Any]) -> Any:
    """The event of class ``cls`` that ``info`` records, when it holds every field the event needs (else None)."""
    fields = msgspec.structs.fields(cls)
    if any(f.required and f.name != "op" and f.name not in info for f in fields):
        return None
    data = {f.name: info[f.name] for f in fields if f.name in info and f.name != "op"}
    try:
        return msgspec.convert({**data, "op": op_id}, cls)
    except msgspec.ValidationError as exc:
        raise InvalidFieldError(f"ops[{op_id!r}].info", data, f"the fields of {cls.__struct_config__.tag} ({exc})") from None
