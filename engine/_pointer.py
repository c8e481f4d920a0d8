"""The pointer operation: a small JSON file naming a committed, verified folder, replaced atomically.

Its events, table, projection, forward path and recovery live here.

``pointer.intended`` (old, new) is durable before the file is written;
``pointer.set`` after the new file is durable.  Pointers are files, never
symlinks, and their targets are root-relative paths of committed checkpoints
or models.  Recovery of a move cut off after its intent: if the new target
verifies, the file is made to name it and the move journaled set; otherwise the
old file is restored and the move journaled aborted.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from shipslog.journal import crash_point, read_limited, register_crash_point

from ._checkpoint import verify_problem
from ._context import OperationContext, RecoveryContext
from ._errors import ConflictError, IntegrityError, InvalidFieldError, NotFoundError
from ._events import Event
from ._fields import expect_name, expect_op_id, expect_relpath
from ._layout import POINTERS_DIR, TARGET_FOLDERS
from ._manifest import verify_folder
from ._names import check_name
from ._optypes import OperationType, Recovery, RecoveryAction
from ._state import ArtifactInfo, EngineState, OpRecord, PointerInfo, StateBuilder

__all__ = [
    "MAX_POINTER_BYTES",
    "POINTER",
    "POINTER_VERSION",
    "PointerAborted",
    "PointerFile",
    "PointerIntended",
    "PointerSet",
    "PointerState",
    "read_pointer_file",
    "resolve_target",
    "set_pointer",
    "write_pointer_file",
]


# -- events --------------------------------------------------------------------------------


class PointerIntended(Event, tag="pointer.intended", frozen=True):
    """Pointer ``name`` is about to move from ``old`` to ``new`` (targets are root-relative paths)."""

    name: str
    old: str | None
    new: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_name("name", self.name, "pointer")
        expect_relpath("new", self.new, TARGET_FOLDERS)
        if self.old is not None:
            expect_relpath("old", self.old, TARGET_FOLDERS)


class PointerSet(Event, tag="pointer.set", frozen=True):
    """The pointer file names ``new`` and is durable."""


class PointerAborted(Event, tag="pointer.aborted", frozen=True):
    """The move was abandoned; the pointer still names ``old``."""

    reason: str


# -- states and projection ---------------------------------------------------------------


class PointerState(str, enum.Enum):
    """States of a pointer move."""

    INTENDED = "intended"
    SET = "set"
    ABORTED = "aborted"


def _pointer_set(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    name = op.info["name"]
    b.pointers[name] = PointerInfo(name=name, target=op.info["new"], op=op.id, seq=seq, time=time)


# -- the forward path ------------------------------------------------------------------------

POINTER_VERSION = 1

CP_INTENDED = register_crash_point("pointer.after_intended", "pointer.intended is durable; the pointer file still names the old target")
CP_WRITTEN = register_crash_point("pointer.after_write", "the pointer file names the new target, durably; pointer.set is not journaled")


class PointerFile(msgspec.Struct, frozen=True):
    """The content of ``pointers/<name>``: the pointer's name and the root-relative path it names."""

    version: int
    pointer: str
    target: str
    op: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PointerFile).decode


MAX_POINTER_BYTES = 64 * 1024
"""The largest pointer file read (they are a few hundred bytes)."""


def read_pointer_file(path: str) -> PointerFile:
    """Parse a pointer file; :class:`IntegrityError` when it is empty, truncated, too long or not a pointer.

    Its ``pointer`` must be a plain name and its ``target`` a
    ``checkpoints/<name>`` or ``models/<name>`` path, as the engine writes
    them.  ``OSError`` when it cannot be read.
    """
    data = read_limited(path, MAX_POINTER_BYTES)
    if data is None:
        raise IntegrityError(path, f"a pointer file of at most {MAX_POINTER_BYTES} bytes", "a longer file")
    try:
        found = _decode(data)
        expect_name("pointer", found.pointer, "pointer")
        expect_relpath("target", found.target, TARGET_FOLDERS)
        expect_op_id("op", found.op)
    except (msgspec.DecodeError, RecursionError) as exc:
        why = "nesting deeper than the decoder allows" if isinstance(exc, RecursionError) else str(exc)
        raise IntegrityError(path, 'a pointer file {"version", "pointer", "target", "op"}', f"bytes that do not parse as one ({why})") from None
    except InvalidFieldError as exc:
        raise IntegrityError(path, f"a pointer file whose {exc.field} is {exc.expected}", repr(exc.value)) from None
    return found


def resolve_target(state: EngineState, target: str) -> ArtifactInfo:
    """The committed folder ``target`` names: ``checkpoints/<name>``, ``models/<name>``, or a bare name found in one of them."""
    if not isinstance(target, str):
        raise TypeError(f"a pointer target is a string, got {type(target).__name__}")
    folder, sep, name = target.partition("/")
    if sep:
        tables = {"checkpoints": state.checkpoints, "models": state.models}
        if folder not in tables:
            raise NotFoundError("checkpoint or model", target, "targets look like 'checkpoints/<name>' or 'models/<name>'")
        check_name("checkpoint" if folder == "checkpoints" else "model", name)
        found = tables[folder].get(name)
        if found is None:
            raise NotFoundError(folder[:-1], name)
        return found
    check_name("pointer target", target)
    matches = [t[target] for t in (state.models, state.checkpoints) if target in t]
    if not matches:
        raise NotFoundError("checkpoint or model", target)
    if len(matches) > 1:
        raise ConflictError(f"target {target!r}", "both a model and a checkpoint of that name; say 'models/...' or 'checkpoints/...'")
    return matches[0]


def set_pointer(ctx: OperationContext, name: str, target: str) -> PointerInfo:
    """Move pointer ``name`` to the committed folder ``target`` after verifying it (see :meth:`Engine.set_pointer`)."""
    check_name("pointer", name)
    ctx.check_usable()
    art = resolve_target(ctx.state, target)
    verify_folder(ctx.path(art.path))  # IntegrityError: refused, nothing journaled
    op = ctx.new_op_id("pointer")

    def no_conflict(state: EngineState) -> None:
        for other in state.ops_of("pointer"):
            if other.info.get("name") == name:
                raise ConflictError(f"moving pointer {name!r}", f"operation {other.id} (state {other.state})")
        if art.path in state.retiring:
            raise ConflictError(f"pointing {name!r} at {art.path}", f"retention {state.retiring[art.path]}, which is deleting it")
        current = state.checkpoints if art.artifact == "checkpoint" else state.models
        if art.name not in current:
            raise NotFoundError(art.artifact, art.name, "it was deleted meanwhile")

    old = ctx.state.pointers.get(name)
    ctx.journal_events(PointerIntended(op=op, name=name, old=old.target if old else None, new=art.path), check=no_conflict)
    crash_point(CP_INTENDED)
    try:
        write_pointer_file(ctx, name, art.path, op)
    except BaseException as exc:
        if ctx.broken is None and not ctx.closed:
            ctx.journal_events(PointerAborted(op=op, reason=f"writing the pointer file failed: {type(exc).__name__}: {exc}"))
        raise
    crash_point(CP_WRITTEN)
    ctx.journal_events(PointerSet(op=op))
    return ctx.state.pointers[name]


def write_pointer_file(ctx: OperationContext, name: str, target: str, op: str) -> None:
    """Replace ``pointers/<name>`` atomically and durably with a file naming ``target``."""
    data = _encode(PointerFile(version=POINTER_VERSION, pointer=name, target=target, op=op)) + b"\n"
    ctx.fs.write_file_atomic(os.path.join(ctx.root, "pointers", name), data)


# -- recovery ------------------------------------------------------------------------------


def _pointer_file_target(ctx: OperationContext, name: str) -> str | None:
    try:
        return read_pointer_file(ctx.path(POINTERS_DIR, name)).target
    except (OSError, IntegrityError):
        return None


def _settle(ctx: RecoveryContext, op: OpRecord) -> str:
    name, old, new = op.info["name"], op.info.get("old"), op.info["new"]
    state = ctx.state
    committed = {a.path for a in state.checkpoints.values()} | {a.path for a in state.models.values()}
    problem = "not committed" if new not in committed else verify_problem(ctx, new, None)
    on_disk = _pointer_file_target(ctx, name)
    if problem is None:
        if on_disk != new:
            write_pointer_file(ctx, name, new, op.id)
            ctx.effect_done()
        ctx.journal_events(PointerSet(op=op.id))
        return f"{new} verifies: pointer file names it, journaled set"
    if old is not None and on_disk != old:
        write_pointer_file(ctx, name, old, op.id)
        ctx.effect_done()
    elif old is None and os.path.lexists(ctx.path(POINTERS_DIR, name)):
        ctx.quarantine(f"{POINTERS_DIR}/{name}")
    ctx.journal_events(PointerAborted(op=op.id, reason=f"recovered: new target {new} does not verify ({problem}); kept {old}"))
    return f"{new} does not verify ({problem}): kept {old}, journaled aborted"


def _claims(op: OpRecord) -> Iterable[str]:
    return (f"{POINTERS_DIR}/{op.info.get('name')}",)


# -- the declaration ----------------------------------------------------------------------

POINTER = OperationType(
    name="pointer",
    description="a small JSON file naming a committed folder, replaced atomically",
    states=PointerState,
    events=(PointerIntended, PointerSet, PointerAborted),
    begins={"pointer.intended": PointerState.INTENDED},
    transitions={
        (PointerState.INTENDED, "pointer.set"): PointerState.SET,
        (PointerState.INTENDED, "pointer.aborted"): PointerState.ABORTED,
    },
    terminal=frozenset({PointerState.SET, PointerState.ABORTED}),
    recovery={
        PointerState.INTENDED: Recovery(
            RecoveryAction.ROLL_FORWARD,
            "if the new target verifies, make the pointer file name it and journal set; otherwise keep the old one and journal aborted",
            execute=_settle,
            step="settle",
        ),
    },
    projections={"pointer.set": _pointer_set},
    claims=_claims,
)
