"""Events: frozen msgspec Structs in one tagged union (``kind``), each naming its operation (``op``).

A journal record's event payload is one of these, msgpack-encoded as a map
(field names included, defaults omitted), so the inspection tool can show an
event of an operation type it does not know as plain data.

The event schema version is :data:`EVENT_SCHEMA_VERSION`; every session writes
it into its ``session.opened`` event, and the reducer refuses a journal whose
sessions wrote a newer one.  Within a version, events only ever gain fields
with defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._fields import expect_count, expect_equal, expect_name, expect_nested_within, expect_relpath, reject
from ._layout import ARTIFACT_FOLDERS, CHECKPOINTS_DIR, RETAINABLE_FOLDERS, TARGET_FOLDERS, artifact_relpath, staging_relpath

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "ArtifactAborted",
    "ArtifactBegun",
    "ArtifactCommitted",
    "ArtifactDurable",
    "Event",
    "PointerAborted",
    "RecoveryBegun",
    "RecoveryDone",
    "RecoveryStep",
    "RecoverySuperseded",
    "PointerIntended",
    "PointerSet",
    "RawEvent",
    "RetentionDeleted",
    "RetentionIntended",
    "RunFailed",
    "RunFinished",
    "RunInterrupted",
    "RunProgress",
    "RunStarted",
    "RunValidated",
    "SessionClosed",
    "SessionCrashed",
    "SessionOpened",
]

EVENT_SCHEMA_VERSION = 1


class Event(msgspec.Struct, tag_field="kind", frozen=True, gc=False, omit_defaults=True, kw_only=True):
    """The base of every event.  ``op`` is the id of the operation the event belongs to.

    Subclass it with ``tag="<type>.<event>"`` to declare the events of your own
    operation types; keep field values msgpack-able and small.
    """

    op: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        """Raise :class:`~shipslog.engine.InvalidFieldError` when a field holds what its operation does not allow.

        ``info`` is the operation's fields so far (every state-changing event's,
        merged), or None for the event that begins it.  Called before the event
        is journaled and again when it is replayed, so a record read back from
        disk is held to the same rules as the API.  The default checks
        nothing; override it for every field that names a path, a name or a
        free-form value (see :mod:`shipslog.engine` ``expect_*`` helpers).
        """


class RawEvent(msgspec.Struct, frozen=True, gc=False):
    """An event whose kind is not registered here, kept as decoded plain data (``data`` holds every field)."""

    kind: str
    op: str
    data: dict[str, Any]


# -- checkpoints and models ("artifacts": folders with a manifest) ----------------------


class ArtifactBegun(Event, tag="checkpoint.begun"):
    """A checkpoint (or model) began: files go to ``staging``; nothing is a result yet."""

    name: str
    artifact: str = "checkpoint"
    step: int | None = None
    meta: dict[str, Any] = {}
    expected_bytes: int = 0
    staging: str = ""
    source: str | None = None

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if self.artifact not in ARTIFACT_FOLDERS:
            reject("artifact", self.artifact, f"one of {sorted(ARTIFACT_FOLDERS)}")
        expect_name("name", self.name, self.artifact)
        expect_equal("staging", self.staging, staging_relpath(self.op))
        if self.step is not None:
            expect_count("step", self.step)
        expect_count("expected_bytes", self.expected_bytes)
        expect_nested_within("meta", self.meta)


class ArtifactDurable(Event, tag="checkpoint.durable"):
    """Every file and the manifest are fsynced in staging; ``files``/``bytes``/``manifest_crc`` describe them."""

    files: int
    bytes: int
    manifest_crc: int

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("files", self.files)
        expect_count("bytes", self.bytes)
        if not 0 <= self.manifest_crc <= 0xFFFFFFFF:
            reject("manifest_crc", self.manifest_crc, "a CRC-32 (0 to 2**32 - 1)")


class ArtifactCommitted(Event, tag="checkpoint.committed"):
    """The folder was renamed into place (``path``, relative to the root) and that rename is durable."""

    path: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if info is not None:
            artifact = info.get("artifact", "checkpoint")
            if artifact not in ARTIFACT_FOLDERS:
                reject("path", self.path, f"the folder of a {artifact!r}, which is not an artifact kind")
            expect_equal("path", self.path, artifact_relpath(str(artifact), str(info.get("name"))))


class ArtifactAborted(Event, tag="checkpoint.aborted"):
    """The checkpoint was abandoned; its staging folder is gone (or quarantined, as ``reason`` says)."""

    reason: str


# -- pointers ----------------------------------------------------------------------------


class PointerIntended(Event, tag="pointer.intended"):
    """Pointer ``name`` is about to move from ``old`` to ``new`` (targets are root-relative paths)."""

    name: str
    old: str | None
    new: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_name("name", self.name, "pointer")
        expect_relpath("new", self.new, TARGET_FOLDERS)
        if self.old is not None:
            expect_relpath("old", self.old, TARGET_FOLDERS)


class PointerSet(Event, tag="pointer.set"):
    """The pointer file names ``new`` and is durable."""


class PointerAborted(Event, tag="pointer.aborted"):
    """The move was abandoned; the pointer still names ``old``."""

    reason: str


# -- retention ---------------------------------------------------------------------------


class RetentionIntended(Event, tag="retention.intended"):
    """These root-relative ``paths`` are about to be deleted (recovery redoes the deletes)."""

    paths: list[str]
    reason: str = ""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        for i, path in enumerate(self.paths):
            expect_relpath(f"paths[{i}]", path, RETAINABLE_FOLDERS)


class RetentionDeleted(Event, tag="retention.deleted"):
    """Every path of the intent is gone, durably."""


# -- runs --------------------------------------------------------------------------------


class RunValidated(Event, tag="run.validated"):
    """The data file was checked whole: ``lines`` JSON lines, ``size`` bytes, ``crc32``, fields present."""

    data_file: str
    lines: int
    size: int
    crc32: int
    required_fields: list[str] = []


class RunStarted(Event, tag="run.started"):
    """Training started at global step ``start_step`` (from committed checkpoint ``checkpoint``)."""

    start_step: int
    checkpoint: str | None = None

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("start_step", self.start_step)
        if self.checkpoint is not None:
            expect_relpath("checkpoint", self.checkpoint, (CHECKPOINTS_DIR,))


class RunProgress(Event, tag="run.progress"):
    """The run reached global ``step`` (never below the run's step: the projection checks it)."""

    step: int


class RunFinished(Event, tag="run.finished"):
    """The run completed at global ``step``."""

    step: int

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("step", self.step)


class RunFailed(Event, tag="run.failed"):
    """The run raised ``error`` at global ``step``."""

    step: int
    error: str


class RunInterrupted(Event, tag="run.interrupted"):
    """The run's session ended without finishing it (a crash); recorded by a later session."""

    step: int = 0
    reason: str = ""


# -- recovery ----------------------------------------------------------------------------


class RecoveryBegun(Event, tag="recovery.begun"):
    """Start-up recovery found ``actions`` things to finish or roll back (``found`` says what, one line each)."""

    actions: int
    found: list[str] = []


class RecoveryStep(Event, tag="recovery.step"):
    """Recovery is about to carry out ``action`` on ``target`` (an op id or a root-relative path), because ``reason``.

    Journaled before the effect; the effect's own record (e.g. ``checkpoint.aborted``)
    follows it, so a crash in between is recovered by planning again.
    """

    index: int
    target: str
    action: str
    reason: str = ""


class RecoveryDone(Event, tag="recovery.done"):
    """Every action was carried out; ``quarantined`` lists what was moved to ``quarantine/``."""

    done: int
    quarantined: list[str] = []


class RecoverySuperseded(Event, tag="recovery.superseded"):
    """A recovery that was itself cut off; the next one planned again from the journal."""


# -- sessions ----------------------------------------------------------------------------


class SessionOpened(Event, tag="session.opened"):
    """An engine opened the root: process ``pid`` on ``host``, writing event schema ``schema``."""

    pid: int
    host: str
    schema: int = EVENT_SCHEMA_VERSION
    version: str = ""


class SessionClosed(Event, tag="session.closed"):
    """The session ended cleanly."""


class SessionCrashed(Event, tag="session.crashed"):
    """The session ended without closing (an unclean shutdown), found by session ``found_by``."""

    found_by: str = ""
