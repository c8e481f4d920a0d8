"""The consolidation operation: merge an adapter into its base model, install it, point to it, retire the adapter.

The steps, each journaled after its effect:

1. ``consolidation.begun`` (base, adapter, into, pointer, staging folder);
2. the merge writes the merged model into ``staging/<op>/`` (checksummed),
   the manifest is written last and fsynced: ``consolidation.merged``;
3. the folder is renamed to ``models/<into>``: ``consolidation.installed``
   (from here the merged model is a committed model);
4. the pointer file names it: ``consolidation.pointer-set``;
5. the adapter folder is moved to ``retired/<op>-<adapter>`` (retention
   deletes it later): ``consolidation.adapter-retired``;
6. ``consolidation.committed``.

Its events, table, projections, forward path and recovery live here.  The adapter is retired only after the merged model is durable, installed
and pointed to, so no committed learning is ever lost.  A failure before
step 2 is durable (a merge that raises, NaN/Inf in the result, a full disk)
removes staging and journals ``consolidation.aborted``; the base, the
adapter and the pointer are untouched.  After step 2, recovery rolls forward.
The merge itself is a callable supplied by the caller (the front door passes
the GPU core's), so this module never imports torch.
"""

from __future__ import annotations

import enum
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import msgspec

from shipslog.journal import FileSystem, crash_point, register_crash_point

from ._checkpoint import settle_copies
from ._context import OperationContext, RecoveryContext
from ._errors import ConflictError, IntegrityError, NotFoundError
from ._events import Event
from ._fields import expect_count, expect_equal, expect_name, expect_nested_within, expect_relpath
from ._layout import (
    ADAPTERS_DIR,
    MODELS_DIR,
    POINTERS_DIR,
    RETIRED_DIR,
    artifact_relpath,
    staging_relpath,
)
from ._manifest import (
    FileEntry,
    checksum_file,
    new_manifest,
    scan_folder,
    verify_folder,
    write_manifest,
)
from ._names import check_name
from ._optypes import OperationType, Recovery, RecoveryAction
from ._pointer import write_pointer_file
from ._state import ArtifactInfo, EngineState, OpRecord, PointerInfo, StateBuilder

__all__ = [
    "CONSOLIDATION",
    "ConsolidationAborted",
    "ConsolidationAdapterRetired",
    "ConsolidationBegun",
    "ConsolidationCommitted",
    "ConsolidationInstalled",
    "ConsolidationMerged",
    "ConsolidationPointerSet",
    "ConsolidationState",
    "MergeFn",
    "consolidate",
    "finish_consolidation",
    "retire_adapter",
    "retired_relpath",
]

_log = logging.getLogger("shipslog.engine.consolidation")

class MergeFn(Protocol):
    """``merge(base_folder, base_files, adapter_folder, adapter_files, out_folder, *, fs) -> (files written, report)``.

    Writes the merged model's files into ``out_folder`` through ``fs`` (the
    engine's file system, so every byte and fsync is seen by the recording,
    fault-injecting and crash-image file systems), fsynced and checksummed
    while written, and returns their entries and a JSON-able report; raises
    on any failure (nothing it wrote is used then).
    """

    def __call__(
        self,
        base_folder: str,
        base_files: list[FileEntry],
        adapter_folder: str,
        adapter_files: list[FileEntry],
        out_folder: str,
        /,
        *,
        fs: FileSystem,
    ) -> tuple[list[FileEntry], dict[str, Any]]: ...

CP_BEGUN = register_crash_point("consolidation.after_begun", "consolidation.begun is durable; nothing is merged yet")
CP_MERGED_FILES = register_crash_point("consolidation.after_merge", "the merged files are in staging; no manifest yet")
CP_MERGED = register_crash_point("consolidation.after_merged", "consolidation.merged is durable; the model is still in staging")
CP_RENAMED = register_crash_point("consolidation.after_rename", "the model is in models/, durably; consolidation.installed is not journaled")
CP_INSTALLED = register_crash_point("consolidation.after_installed", "consolidation.installed is durable; the pointer still names the old target")
CP_POINTER_WRITTEN = register_crash_point("consolidation.after_pointer_write", "the pointer file names the merged model; pointer-set is not journaled")
CP_POINTER_SET = register_crash_point("consolidation.before_adapter_retire", "pointer-set is durable; the adapter is still in adapters/")
CP_RETIRED_MOVE = register_crash_point("consolidation.after_adapter_move", "the adapter is in retired/; adapter-retired is not journaled")
CP_RETIRED = register_crash_point("consolidation.after_adapter_retired", "adapter-retired is durable; committed is not journaled")


# -- events and table ------------------------------------------------------------------------


class ConsolidationBegun(Event, tag="consolidation.begun", frozen=True):
    """Merging adapter ``adapter`` (``adapters/<name>``) into ``base`` (``models/<name>``) as ``models/<into>``."""

    base: str
    adapter: str
    into: str
    pointer: str
    staging: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_relpath("base", self.base, (MODELS_DIR,))
        expect_relpath("adapter", self.adapter, (ADAPTERS_DIR,))
        expect_name("into", self.into, "model")
        expect_name("pointer", self.pointer, "pointer")
        expect_equal("staging", self.staging, staging_relpath(self.op))


class ConsolidationMerged(Event, tag="consolidation.merged", frozen=True):
    """The merged model and its manifest are durable in staging."""

    files: int
    bytes: int
    manifest_crc: int
    report: dict[str, Any] = msgspec.field(default_factory=dict)

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("files", self.files)
        expect_count("bytes", self.bytes)
        expect_nested_within("report", self.report)


class ConsolidationInstalled(Event, tag="consolidation.installed", frozen=True):
    """The merged model is at ``path`` (``models/<into>``), durably: a committed model."""

    path: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if info is not None:
            expect_equal("path", self.path, artifact_relpath("model", str(info.get("into"))))


class ConsolidationPointerSet(Event, tag="consolidation.pointer-set", frozen=True):
    """The pointer file names the merged model, durably."""


class ConsolidationAdapterRetired(Event, tag="consolidation.adapter-retired", frozen=True):
    """The adapter folder was moved to ``retired`` (a root-relative path under ``retired/``), durably."""

    retired: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if info is not None:
            expect_equal("retired", self.retired, retired_relpath(self.op, str(info.get("adapter", ""))))


class ConsolidationCommitted(Event, tag="consolidation.committed", frozen=True):
    """Every step is done."""


class ConsolidationAborted(Event, tag="consolidation.aborted", frozen=True):
    """Abandoned before the merged model was durable: staging removed; base, adapter and pointer untouched."""

    reason: str


class ConsolidationState(str, enum.Enum):
    """States of a consolidation."""

    BEGUN = "begun"
    MERGED = "merged-durable"
    INSTALLED = "installed"
    POINTER_SET = "pointer-set"
    ADAPTER_RETIRED = "adapter-retired"
    COMMITTED = "committed"
    ABORTED = "aborted"


def _installed(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    info = op.info
    name = info["into"]
    b.models[name] = ArtifactInfo(
        name=name,
        artifact="model",
        path=info["path"],
        step=None,
        op=op.id,
        seq=seq,
        time=time,
        files=info.get("files", 0),
        bytes=info.get("bytes", 0),
        meta={"merged_from": {"base": info["base"], "adapter": info["adapter"]}},
    )


def _pointer_set(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    name = op.info["pointer"]
    b.pointers[name] = PointerInfo(name=name, target=artifact_relpath("model", op.info["into"]), op=op.id, seq=seq, time=time)


def _adapter_retired(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    adapter_path = op.info["adapter"]
    b.adapters.pop(adapter_path.partition("/")[2], None)
    assert isinstance(ev, ConsolidationAdapterRetired)
    b.retired[ev.retired] = artifact_relpath("model", op.info["into"])


# -- the operation ------------------------------------------------------------------------------


def consolidate(ctx: OperationContext, *, base: str, adapter: str, into: str, pointer: str, merge: MergeFn) -> ArtifactInfo:
    """Run a whole consolidation (see the module docstring); return the installed model."""
    check_name("model", base)
    check_name("adapter", adapter)
    check_name("model", into)
    check_name("pointer", pointer)
    ctx.check_usable()
    state = ctx.state
    base_art = state.models.get(base)
    if base_art is None:
        raise NotFoundError("model", base, "the base must be a committed model (save_model or adopt_model)")
    adapter_art = state.adapters.get(adapter)
    if adapter_art is None:
        raise NotFoundError("adapter", adapter, "the adapter must be committed (save_adapter or adopt_adapter)")
    base_manifest = verify_folder(ctx.path(base_art.path))
    adapter_manifest = verify_folder(ctx.path(adapter_art.path))
    ctx.preflight(base_art.bytes, f"consolidating {adapter!r} into {base!r} ({base_art.bytes} bytes)")
    op = ctx.new_op_id("consolidation")
    staging_rel = staging_relpath(op)
    final_rel = artifact_relpath("model", into)

    def no_conflict(st: EngineState) -> None:
        if into in st.models or os.path.lexists(ctx.path(final_rel)):
            raise ConflictError(f"model name {into!r}", f"an existing model {final_rel}")
        for other in st.ops.values():
            if other.type == "run":
                raise ConflictError(f"consolidating into {base!r}", f"run {other.id} (state {other.state}), which trains on it")
            if other.type == "consolidation":
                raise ConflictError(f"consolidating {adapter!r}", f"consolidation {other.id} (state {other.state})")
            if other.type == "pointer" and other.info.get("name") == pointer:
                raise ConflictError(f"moving pointer {pointer!r}", f"operation {other.id} (state {other.state})")
        if base_art.path in st.retiring or adapter_art.path in st.retiring:
            raise ConflictError(f"consolidating {adapter!r} into {base!r}", "a retention pass that is deleting one of them")

    ctx.journal_events(
        ConsolidationBegun(op=op, base=base_art.path, adapter=adapter_art.path, into=into, pointer=pointer, staging=staging_rel),
        check=no_conflict,
    )
    crash_point(CP_BEGUN)
    staging = ctx.path(staging_rel)
    try:
        ctx.fs.mkdir(staging)
        files, report = merge(
            ctx.path(base_art.path), list(base_manifest.files), ctx.path(adapter_art.path), list(adapter_manifest.files), staging, fs=ctx.fs
        )
        crash_point(CP_MERGED_FILES)
        _seal(ctx, op, staging, into, files, report, base, adapter)
    except BaseException as exc:
        _abort(ctx, op, staging, exc)
        raise
    crash_point(CP_MERGED)
    return finish_consolidation(ctx, op)


def _seal(
    ctx: OperationContext, op: str, staging: str, into: str, files: list[FileEntry], report: dict[str, Any], base: str, adapter: str
) -> None:
    """Check what the merge wrote, fsync, write the manifest last, journal merged."""
    recorded = {f.path: f for f in files}
    entries: list[FileEntry] = []
    for rel in scan_folder(staging):
        full = os.path.join(staging, *rel.split("/"))
        entry = recorded.get(rel)
        if entry is None or os.stat(full).st_size != entry.size:
            entry = checksum_file(staging, rel)
        fd = ctx.fs.open(full, os.O_RDONLY)
        try:
            ctx.fs.fsync(fd)
        finally:
            ctx.fs.close(fd)
        entries.append(entry)
    manifest = new_manifest("model", into, entries, meta={"merged_from": {"base": base, "adapter": adapter}, "merge": report})
    data = write_manifest(ctx.fs, staging, manifest)
    ctx.fs.fsync_dir(os.path.dirname(staging))  # the merged folder's own entry is durable before the record says so
    ctx.journal_events(
        ConsolidationMerged(op=op, files=len(entries), bytes=manifest.total_bytes, manifest_crc=zlib.crc32(data), report=report)
    )


def _abort(ctx: OperationContext, op: str, staging: str, exc: BaseException) -> None:
    if ctx.broken is not None or ctx.closed or op not in ctx.state.ops:
        return
    try:
        ctx.fs.remove_tree_durable(staging)
        ctx.journal_events(ConsolidationAborted(op=op, reason=f"failed: {type(exc).__name__}: {exc}"))
    except Exception as abort_exc:  # noqa: BLE001 - best-effort cleanup: the caller's error propagates, recovery finishes the rest
        _log.error("could not abort consolidation %s after %s: %s; recovery will finish it", op, exc, abort_exc)


def finish_consolidation(ctx: OperationContext, op: str, *, on_effect: Callable[[], None] | None = None) -> ArtifactInfo:
    """Carry a consolidation forward from whatever durable state it is in to committed (used by recovery too).

    ``on_effect`` is called after each file effect, before the record that
    says it happened (recovery passes its crash point).
    """
    effect = on_effect or (lambda: None)
    record = ctx.state.ops[op]
    info = record.info
    into = info["into"]
    final_rel = artifact_relpath("model", into)
    if record.state == _S.MERGED.value:
        staging = ctx.path(*info["staging"].split("/"))
        if not os.path.lexists(ctx.path(final_rel)):
            ctx.fs.ensure_dir(ctx.path("models"))
            ctx.fs.rename_durable(staging, ctx.path(final_rel), sync_source=False)
        crash_point(CP_RENAMED)
        effect()
        ctx.journal_events(ConsolidationInstalled(op=op, path=final_rel))
        crash_point(CP_INSTALLED)
        record = ctx.state.ops[op]
    if record.state == _S.INSTALLED.value:
        write_pointer_file(ctx, info["pointer"], final_rel, op)
        crash_point(CP_POINTER_WRITTEN)
        effect()
        ctx.journal_events(ConsolidationPointerSet(op=op))
        crash_point(CP_POINTER_SET)
        record = ctx.state.ops[op]
    if record.state == _S.POINTER_SET.value:
        retired_rel = retire_adapter(ctx, op, info["adapter"])
        effect()
        ctx.journal_events(ConsolidationAdapterRetired(op=op, retired=retired_rel))
        crash_point(CP_RETIRED)
        record = ctx.state.ops[op]
    if record.state == _S.ADAPTER_RETIRED.value:
        ctx.journal_events(ConsolidationCommitted(op=op))
    return ctx.state.models[into]


def retired_relpath(op: str, adapter_rel: str) -> str:
    """``retired/<op>-<name>``: where consolidation ``op`` moves adapter ``adapters/<name>``."""
    return f"{RETIRED_DIR}/{op}-{adapter_rel.partition('/')[2]}"


def retire_adapter(ctx: OperationContext, op: str, adapter_rel: str) -> str:
    """Move ``adapters/<name>`` to ``retired/<op>-<name>`` durably (idempotent); return the new root-relative path.

    Handles every state a cut-off durable rename can leave: the source only
    (move it), the target only (done), or both names (the target's folder
    was synced, the source's not): the copy that verifies is kept as the
    retired one and the other removed, so ``adapters/`` never keeps a name
    the journal says is retired.
    """
    retired_rel = retired_relpath(op, adapter_rel)
    src, dst = ctx.path(*adapter_rel.split("/")), ctx.path(*retired_rel.split("/"))
    if os.path.lexists(src) and os.path.lexists(dst):
        if _verifies(dst):
            ctx.fs.remove_tree_durable(src)
        else:
            ctx.fs.remove_tree_durable(dst)
    if os.path.lexists(src):
        ctx.fs.ensure_dir(ctx.path("retired"))
        ctx.fs.rename_durable(src, dst)
    crash_point(CP_RETIRED_MOVE)
    return retired_rel


def _verifies(folder: str) -> bool:
    try:
        verify_folder(folder)
    except (IntegrityError, OSError):
        return False
    return True


# -- recovery ------------------------------------------------------------------------------


def _roll_back(ctx: RecoveryContext, op: OpRecord) -> str:
    staging = str(op.info.get("staging", ""))
    if staging:
        ctx.fs.remove_tree_durable(ctx.path(*staging.split("/")))
        ctx.effect_done()
    ctx.journal_events(ConsolidationAborted(op=op.id, reason="recovered: cut off before the merged model was durable; staging removed"))
    return "staging removed, journaled aborted; base, adapter and pointer untouched"


def _roll_forward(ctx: RecoveryContext, op: OpRecord) -> str:
    staging = str(op.info.get("staging", ""))
    if op.state != _S.MERGED.value and staging and os.path.lexists(ctx.path(*staging.split("/"))):
        # installed with only models/ synced: a power cut kept the staged name too; the installed copy is the one
        ctx.quarantine(staging)
    if op.state == _S.MERGED.value:
        info = op.info
        kept, why = settle_copies(ctx, artifact_relpath("model", info["into"]), str(info["staging"]), info.get("manifest_crc"))
        if kept is None:
            ctx.journal_events(ConsolidationAborted(op=op.id, reason=f"recovered: no copy of the merged model verifies ({why}); adapter kept"))
            return "no copy verifies: quarantined, journaled aborted; the adapter is kept"
    finish_consolidation(ctx, op.id, on_effect=ctx.effect_done)
    return f"rolled forward from {op.state} to committed"


def _claims(op: OpRecord) -> Iterable[str]:
    info = op.info
    yield str(info.get("staging"))
    if op.state != _S.BEGUN.value:
        yield artifact_relpath("model", str(info.get("into")))
    yield f"{POINTERS_DIR}/{info.get('pointer')}"
    yield retired_relpath(op.id, str(info.get("adapter", "")))


# -- the declaration ----------------------------------------------------------------------

_S = ConsolidationState
_FORWARD = RecoveryAction.ROLL_FORWARD

CONSOLIDATION = OperationType(
    name="consolidation",
    description="an adapter merged into its base, installed, pointed to, and only then retired",
    states=ConsolidationState,
    events=(
        ConsolidationBegun,
        ConsolidationMerged,
        ConsolidationInstalled,
        ConsolidationPointerSet,
        ConsolidationAdapterRetired,
        ConsolidationCommitted,
        ConsolidationAborted,
    ),
    begins={"consolidation.begun": _S.BEGUN},
    transitions={
        (_S.BEGUN, "consolidation.merged"): _S.MERGED,
        (_S.BEGUN, "consolidation.aborted"): _S.ABORTED,
        (_S.MERGED, "consolidation.installed"): _S.INSTALLED,
        (_S.MERGED, "consolidation.aborted"): _S.ABORTED,
        (_S.INSTALLED, "consolidation.pointer-set"): _S.POINTER_SET,
        (_S.POINTER_SET, "consolidation.adapter-retired"): _S.ADAPTER_RETIRED,
        (_S.ADAPTER_RETIRED, "consolidation.committed"): _S.COMMITTED,
    },
    terminal=frozenset({_S.COMMITTED, _S.ABORTED}),
    recovery={
        _S.BEGUN: Recovery(
            RecoveryAction.ROLL_BACK,
            "the merged model was not durable: remove staging; base, adapter and pointer are untouched",
            execute=_roll_back,
        ),
        _S.MERGED: Recovery(
            _FORWARD,
            "install the merged model if a copy verifies (else quarantine it and abort; the adapter is untouched)",
            execute=_roll_forward,
        ),
        _S.INSTALLED: Recovery(_FORWARD, "make the pointer name the merged model", execute=_roll_forward),
        _S.POINTER_SET: Recovery(_FORWARD, "retire the adapter (the merged model is installed and pointed to)", execute=_roll_forward),
        _S.ADAPTER_RETIRED: Recovery(_FORWARD, "journal committed", execute=_roll_forward),
    },
    projections={
        "consolidation.installed": _installed,
        "consolidation.pointer-set": _pointer_set,
        "consolidation.adapter-retired": _adapter_retired,
    },
    claims=_claims,
)
