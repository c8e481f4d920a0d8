"""A host's own operation, declared and recovered exactly like a built-in: export a model to a serving folder.

A serving system reads ``ROOT/serving/<slot>/``; a host publishes a committed
model there.  Copying in place would leave a half-written folder for the
server when the host dies, and deleting the old copy first would leave none.
The operation, in the order of its effects:

1. ``export.begun`` (model, slot, staging folder ``serving/.staging-<op>``);
2. the model's files are copied into staging and fsynced, its MANIFEST written
   last: ``export.copied`` (with the MANIFEST's CRC-32);
3. the live ``serving/<slot>`` (if any) is moved aside to
   ``serving/.old-<op>``, and staging renamed into ``serving/<slot>``:
   ``export.published``;
4. the old copy is removed: ``export.committed``.

Recovery, declared on the type beside the table: ``begun`` rolls back
(staging removed, ``export.aborted``); ``copied`` rolls forward when the staged
(or already published) copy verifies against the journaled MANIFEST, else
rolls back and puts the old copy back; ``published`` rolls forward (the old
copy removed, ``export.committed``).

Used three ways: by ``tests/test_host_operations.py``; by the crash harness,
``shipslog torture --operations tests/host_export_op.py`` (``OPERATIONS``,
:func:`workload` and :func:`check` are what it looks for); and as the README's
worked example.
"""

from __future__ import annotations

import enum
import os
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from shipslog.engine import (
    MODELS_DIR,
    Event,
    FileEntry,
    IntegrityError,
    NotFoundError,
    OperationContext,
    OperationType,
    OpRecord,
    Recovery,
    RecoveryAction,
    RecoveryContext,
    expect_count,
    expect_equal,
    expect_name,
    expect_relpath,
    new_manifest,
    read_manifest,
    verify_folder,
    write_manifest,
)
from shipslog.journal import crash_point, register_crash_point

__all__ = ["EXPORT", "OPERATIONS", "ExportState", "check", "export_model", "workload"]

SERVING_DIR = "serving"

CP_BEGUN = register_crash_point("export.after_begun", "export.begun is durable; nothing is copied yet")
CP_FILE = register_crash_point("export.after_file", "one more file is copied and fsynced in staging; no MANIFEST yet")
CP_COPIED = register_crash_point("export.after_copied", "export.copied is durable; the live slot is untouched")
CP_OLD_MOVED = register_crash_point("export.after_old_moved", "the live copy is moved aside; the slot is empty")
CP_RENAMED = register_crash_point("export.after_rename", "the new copy is in the slot, durably; export.published is not journaled")
CP_PUBLISHED = register_crash_point("export.after_published", "export.published is durable; the old copy is still aside")
CP_OLD_REMOVED = register_crash_point("export.after_old_removed", "the old copy is removed; export.committed is not journaled")


def staging_of(op: str) -> str:
    """``serving/.staging-<op>``: where export ``op`` copies to."""
    return f"{SERVING_DIR}/.staging-{op}"


def old_of(op: str) -> str:
    """``serving/.old-<op>``: where export ``op`` moves the slot's previous copy."""
    return f"{SERVING_DIR}/.old-{op}"


# -- events -------------------------------------------------------------------------------------


class ExportBegun(Event, tag="export.begun"):
    """Committed model ``model`` (``models/<name>``) is about to be copied to ``staging`` for ``slot``."""

    model: str
    slot: str
    staging: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_relpath("model", self.model, (MODELS_DIR,))
        expect_name("slot", self.slot, "serving slot")
        expect_equal("staging", self.staging, staging_of(self.op))


class ExportCopied(Event, tag="export.copied"):
    """Every file and the MANIFEST are durable in staging."""

    files: int
    manifest_crc: int

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("files", self.files)
        expect_count("manifest_crc", self.manifest_crc)


class ExportPublished(Event, tag="export.published"):
    """``serving/<slot>`` holds the new copy, durably; the old one may still be aside."""


class ExportCommitted(Event, tag="export.committed"):
    """The old copy is gone; the export is done."""


class ExportAborted(Event, tag="export.aborted"):
    """The export was abandoned; the slot holds what it held before."""

    reason: str


class ExportState(str, enum.Enum):
    """States of an export."""

    BEGUN = "begun"
    COPIED = "copied"
    PUBLISHED = "published"
    COMMITTED = "committed"
    ABORTED = "aborted"


# -- the forward path -----------------------------------------------------------------------------


def export_model(ctx: OperationContext, model: str, slot: str) -> str:
    """Publish committed model ``model`` as ``serving/<slot>``; return the slot's root-relative path.

    When this returns, the slot holds a complete, verified copy and the
    export is journaled committed; a crash at any point leaves the slot
    either as it was or with the new copy, never empty after recovery.
    """
    ctx.check_usable()
    art = ctx.state.models.get(model)
    if art is None:
        raise NotFoundError("model", model)
    op = ctx.new_op_id("export")
    ctx.journal_events(ExportBegun(op=op, model=art.path, slot=slot, staging=staging_of(op)))
    crash_point(CP_BEGUN)
    source = ctx.path(*art.path.split("/"))
    staging = ctx.path(*staging_of(op).split("/"))
    ctx.fs.ensure_dir(ctx.path(SERVING_DIR))
    ctx.fs.mkdir(staging)
    entries: list[FileEntry] = []
    for entry in read_manifest(source).files:
        entries.append(_copy(ctx, os.path.join(source, *entry.path.split("/")), staging, entry.path))
        crash_point(CP_FILE)
    data = write_manifest(ctx.fs, staging, new_manifest("model", slot, entries, meta={"export_op": op, "model": model}))
    ctx.fs.fsync_dir(ctx.path(SERVING_DIR))
    ctx.journal_events(ExportCopied(op=op, files=len(entries), manifest_crc=zlib.crc32(data)))
    crash_point(CP_COPIED)
    _publish(ctx, ctx.state.ops[op], lambda: None)
    return f"{SERVING_DIR}/{slot}"


def _copy(ctx: OperationContext, src: str, folder: str, rel: str) -> FileEntry:
    with open(src, "rb") as f:
        data = f.read()
    dst = os.path.join(folder, *rel.split("/"))
    ctx.fs.ensure_dir(os.path.dirname(dst))
    fd = ctx.fs.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        ctx.fs.write_all(fd, data)
        ctx.fs.fsync(fd)
    finally:
        ctx.fs.close(fd)
    return FileEntry(rel, len(data), zlib.crc32(data))


def _publish(ctx: OperationContext, op: OpRecord, effect: Callable[[], None]) -> None:
    """From ``copied``: move the live copy aside, rename staging into the slot, journal published, then finish."""
    slot = ctx.path(SERVING_DIR, op.info["slot"])
    staging = ctx.path(*staging_of(op.id).split("/"))
    old = ctx.path(*old_of(op.id).split("/"))
    if os.path.lexists(staging):
        if os.path.lexists(slot) and not os.path.lexists(old):
            ctx.fs.rename_durable(slot, old)
            effect()
            crash_point(CP_OLD_MOVED)
        ctx.fs.rename_durable(staging, slot)
        effect()
        crash_point(CP_RENAMED)
    ctx.journal_events(ExportPublished(op=op.id))
    crash_point(CP_PUBLISHED)
    _finish(ctx, op, effect)


def _finish(ctx: OperationContext, op: OpRecord, effect: Callable[[], None]) -> None:
    """From ``published``: remove the old copy, journal committed."""
    ctx.fs.remove_tree_durable(ctx.path(*old_of(op.id).split("/")))
    effect()
    crash_point(CP_OLD_REMOVED)
    ctx.journal_events(ExportCommitted(op=op.id))


# -- recovery ---------------------------------------------------------------------------------------


def _verifies(ctx: OperationContext, rel: str, crc: object) -> bool:
    path = ctx.path(*rel.split("/"))
    try:
        verify_folder(path)
        with open(os.path.join(path, "MANIFEST"), "rb") as f:
            return zlib.crc32(f.read()) == crc
    except (IntegrityError, OSError, ValueError):
        return False


def _roll_back(ctx: RecoveryContext, op: OpRecord) -> str:
    """Remove staging (and any new copy that does not verify), put the old copy back, journal aborted."""
    ctx.fs.remove_tree_durable(ctx.path(*staging_of(op.id).split("/")))
    ctx.effect_done()
    slot_rel = f"{SERVING_DIR}/{op.info['slot']}"
    old = ctx.path(*old_of(op.id).split("/"))
    if os.path.lexists(old):
        if os.path.lexists(ctx.path(*slot_rel.split("/"))):
            ctx.quarantine(slot_rel)
        ctx.fs.rename_durable(old, ctx.path(*slot_rel.split("/")))
        ctx.effect_done()
    ctx.journal_events(ExportAborted(op=op.id, reason="recovered: cut off before its copy was published"))
    return "staging removed, the slot holds what it held before, journaled aborted"


def _roll_forward(ctx: RecoveryContext, op: OpRecord) -> str:
    """Publish the copy that verifies against the journaled MANIFEST; none does: roll back."""
    if op.state == ExportState.COPIED.value:
        crc = op.info.get("manifest_crc")
        staged = staging_of(op.id)
        placed = os.path.lexists(ctx.path(*staged.split("/")))
        ready = _verifies(ctx, staged, crc) if placed else _verifies(ctx, f"{SERVING_DIR}/{op.info['slot']}", crc)
        if not ready:
            slot_rel = f"{SERVING_DIR}/{op.info['slot']}"
            if not placed and os.path.lexists(ctx.path(*slot_rel.split("/"))):
                ctx.quarantine(slot_rel)  # the new copy, renamed in, does not verify: kept aside, never deleted
            return "no copy verifies: " + _roll_back(ctx, op)
        _publish(ctx, op, ctx.effect_done)
        return "the copy verifies: published and committed"
    _finish(ctx, op, ctx.effect_done)
    return "the old copy removed, journaled committed"


_BACK, _FORWARD = RecoveryAction.ROLL_BACK, RecoveryAction.ROLL_FORWARD
_S = ExportState

EXPORT = OperationType(
    name="export",
    description="a committed model copied to serving/<slot>: staged, verified, swapped in, the old copy removed",
    states=ExportState,
    events=(ExportBegun, ExportCopied, ExportPublished, ExportCommitted, ExportAborted),
    begins={"export.begun": _S.BEGUN},
    transitions={
        (_S.BEGUN, "export.copied"): _S.COPIED,
        (_S.BEGUN, "export.aborted"): _S.ABORTED,
        (_S.COPIED, "export.published"): _S.PUBLISHED,
        (_S.COPIED, "export.aborted"): _S.ABORTED,
        (_S.PUBLISHED, "export.committed"): _S.COMMITTED,
    },
    terminal=frozenset({_S.COMMITTED, _S.ABORTED}),
    recovery={
        _S.BEGUN: Recovery(_BACK, "the copy was not durable: remove staging, journal aborted", execute=_roll_back),
        _S.COPIED: Recovery(_FORWARD, "publish the copy if it verifies (else put the old one back)", execute=_roll_forward),
        _S.PUBLISHED: Recovery(_FORWARD, "remove the old copy, journal committed", execute=_roll_forward),
    },
)

OPERATIONS = (EXPORT,)
"""What ``Engine.open(root, operations=...)`` and ``--operations`` register."""


# -- for the crash harness ---------------------------------------------------------------------------

PLAN = (("prod", "m1"), ("prod", "m2"), ("canary", "m1"))
"""The exports the workload makes, in order: a new slot, a replacement, a second slot."""


def workload(engine: Any, ack: Callable[..., None]) -> None:
    """Save two models, then export them per :data:`PLAN`; ``ack`` each export that returned."""
    for name, size in (("m1", 1500), ("m2", 2300)):
        with engine.save_model(name) as model:
            model.write_bytes("weights.bin", bytes((i * 7 + size) % 251 for i in range(size)))
            model.write_json("config.json", {"name": name})
    for index, (slot, model) in enumerate(PLAN):
        export_model(engine, model, slot)
        ack(slot=slot, model=model, index=index)


def check(engine: Any, acks: list[dict[str, Any]]) -> list[str]:
    """After recovery: no export in progress, no leftover in serving/, each slot a verified copy of a model
    not older (in :data:`PLAN` order) than the last one acknowledged for it."""
    problems = [f"export {op.id} is still {op.state}" for op in engine.state.ops_of("export")]
    serving = engine.path(SERVING_DIR)
    names = sorted(os.listdir(serving)) if os.path.isdir(serving) else []
    problems += [f"serving/{n} is left behind" for n in names if n.startswith(".")]
    last: dict[str, int] = {}
    for ack in acks:
        last[ack["slot"]] = max(last.get(ack["slot"], -1), int(ack["index"]))
    for slot, index in sorted(last.items()):
        path = os.path.join(serving, slot)
        try:
            manifest = verify_folder(path, deep=True)
        except (IntegrityError, OSError) as exc:
            problems.append(f"serving/{slot} was acknowledged and does not verify: {exc}")
            continue
        model = manifest.meta.get("model")
        allowed = {m for i, (s, m) in enumerate(PLAN) if s == slot and i >= index}
        if model not in allowed:
            problems.append(f"serving/{slot} holds {model!r}; acknowledged was export #{index} ({PLAN[index][1]!r}) or later")
    return problems
