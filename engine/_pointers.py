"""The pointer operation: a small JSON file naming a committed, verified folder, replaced atomically.

``pointer.intended`` (old, new) is durable before the file is written;
``pointer.set`` after the new file is durable.  Pointers are files, never
symlinks, and their targets are root-relative paths of committed checkpoints
or models.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import msgspec

from shipslog.journal import crash_point, read_limited, register_crash_point

from ._errors import ConflictError, IntegrityError, InvalidFieldError, NotFoundError
from ._fields import expect_name, expect_op_id, expect_relpath
from ._layout import TARGET_FOLDERS
from ._events import PointerAborted, PointerIntended, PointerSet
from ._manifest import verify_folder
from ._names import check_name
from ._state import ArtifactInfo, EngineState, PointerInfo

if TYPE_CHECKING:
    from ._core import EngineCore

__all__ = ["MAX_POINTER_BYTES", "POINTER_VERSION", "PointerFile", "read_pointer_file", "resolve_target", "set_pointer"]

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


def set_pointer(core: EngineCore, name: str, target: str) -> PointerInfo:
    """Move pointer ``name`` to the committed folder ``target`` after verifying it (see :meth:`Engine.set_pointer`)."""
    check_name("pointer", name)
    core.check_usable()
    art = resolve_target(core.state, target)
    verify_folder(core.path(art.path))  # IntegrityError: refused, nothing journaled
    op = core.new_op_id("pointer")

    def no_conflict(state: EngineState) -> None:
        for other in state.ops_of("pointer"):
            if other.info.get("name") == name:
                raise ConflictError(f"moving pointer {name!r}", f"operation {other.id} (state {other.state})")
        if art.path in state.retiring:
            raise ConflictError(f"pointing {name!r} at {art.path}", f"retention {state.retiring[art.path]}, which is deleting it")
        current = state.checkpoints if art.artifact == "checkpoint" else state.models
        if art.name not in current:
            raise NotFoundError(art.artifact, art.name, "it was deleted meanwhile")

    old = core.state.pointers.get(name)
    core.journal_events(PointerIntended(op=op, name=name, old=old.target if old else None, new=art.path), check=no_conflict)
    crash_point(CP_INTENDED)
    try:
        write_pointer_file(core, name, art.path, op)
    except BaseException as exc:
        if core.broken is None and not core.closed:
            core.journal_events(PointerAborted(op=op, reason=f"writing the pointer file failed: {type(exc).__name__}: {exc}"))
        raise
    crash_point(CP_WRITTEN)
    core.journal_events(PointerSet(op=op))
    return core.state.pointers[name]


def write_pointer_file(core: EngineCore, name: str, target: str, op: str) -> None:
    """Replace ``pointers/<name>`` atomically and durably with a file naming ``target``."""
    data = _encode(PointerFile(version=POINTER_VERSION, pointer=name, target=target, op=op)) + b"\n"
    core.fs.write_file_atomic(os.path.join(core.root, "pointers", name), data)
