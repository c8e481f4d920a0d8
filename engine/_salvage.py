"""The salvage operation: a damaged journal cut back to what verifies, then reconciled with the folders on disk.

Run by ``shipslog recover --salvage`` (:func:`shipslog.recovery.salvage`),
never by an engine on its own.  Its events are facts checked against the
disk when they were journaled:

* ``salvage.begun``: the journal was cut back to record ``kept_seq``; the
  bytes after it are in ``quarantined`` (root-relative);
* ``salvage.adopted``: a committed folder the surviving journal did not know,
  whose MANIFEST verified in full, is committed again (with its step);
* ``salvage.lost``: a committed artifact the journal names is missing or
  does not verify: it is no longer committed;
* ``salvage.pointer-set`` / ``salvage.pointer-lost``: a pointer re-pointed at
  what its file on disk names (when that verifies), or no longer a pointer;
* ``salvage.done``.

A salvage cut off before ``salvage.done`` needs a person: opening the root
refuses it (:class:`~shipslog.engine.CutOffOperationsError`) until
``shipslog recover --salvage`` runs again, which goes on under the same
operation.  So normal recovery never sees a half-reconciled root, and never
quarantines a folder salvage would have kept.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from ._events import Event
from ._fields import expect_count, expect_equal, expect_name, expect_relpath, reject
from ._layout import ARTIFACT_FOLDERS, TARGET_FOLDERS, artifact_relpath
from ._optypes import OperationType, Recovery, RecoveryAction
from ._state import ArtifactInfo, OpRecord, PointerInfo, StateBuilder

__all__ = [
    "SALVAGE",
    "SalvageAdopted",
    "SalvageBegun",
    "SalvageDone",
    "SalvageLost",
    "SalvagePointerLost",
    "SalvagePointerSet",
    "SalvageState",
]


# -- events --------------------------------------------------------------------------------


class SalvageBegun(Event, tag="salvage.begun", frozen=True):
    """The journal was cut back to record ``kept_seq`` because of ``damage``; ``dropped_bytes`` after it were
    copied to ``quarantined`` (a root-relative folder, "" when nothing was dropped)."""

    kept_seq: int
    damage: str = ""
    dropped_bytes: int = 0
    quarantined: str = ""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("kept_seq", self.kept_seq)
        expect_count("dropped_bytes", self.dropped_bytes)
        if self.quarantined:
            expect_relpath("quarantined", self.quarantined, ("quarantine",))


class SalvageAdopted(Event, tag="salvage.adopted", frozen=True):
    """Committed folder ``path`` (an ``artifact`` named ``name``), unknown to the surviving journal, verified in
    full against its MANIFEST and is committed again."""

    artifact: str
    name: str
    path: str
    step: int | None = None
    files: int = 0
    bytes: int = 0

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if self.artifact not in ARTIFACT_FOLDERS:
            reject("artifact", self.artifact, f"one of {sorted(ARTIFACT_FOLDERS)}")
        expect_name("name", self.name, self.artifact)
        expect_equal("path", self.path, artifact_relpath(self.artifact, self.name))
        if self.step is not None:
            expect_count("step", self.step)
        expect_count("files", self.files)
        expect_count("bytes", self.bytes)


class SalvageLost(Event, tag="salvage.lost", frozen=True):
    """Committed ``path`` is missing on disk or does not verify (``reason``): it is no longer committed."""

    path: str
    reason: str = ""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        folder, _, name = self.path.partition("/")
        if folder not in ARTIFACT_FOLDERS.values():
            reject("path", self.path, f"a folder under one of {sorted(ARTIFACT_FOLDERS.values())}")
        expect_name("path", name, "artifact")


class SalvagePointerSet(Event, tag="salvage.pointer-set", frozen=True):
    """Pointer ``name`` names ``target`` again: what its file on disk names, and that verifies."""

    name: str
    target: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_name("name", self.name, "pointer")
        expect_relpath("target", self.target, TARGET_FOLDERS)


class SalvagePointerLost(Event, tag="salvage.pointer-lost", frozen=True):
    """Pointer ``name`` is no longer a pointer: neither its journaled target nor its file's verifies (``reason``)."""

    name: str
    reason: str = ""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_name("name", self.name, "pointer")


class SalvageDone(Event, tag="salvage.done", frozen=True):
    """The reconciliation is complete: ``adopted`` folders committed again, ``lost`` artifacts and pointers dropped."""

    adopted: int = 0
    lost: int = 0

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_count("adopted", self.adopted)
        expect_count("lost", self.lost)


# -- states and projections ---------------------------------------------------------------


class SalvageState(str, enum.Enum):
    """States of a salvage."""

    RECONCILING = "reconciling"
    DONE = "done"


def _tables(b: StateBuilder) -> dict[str, dict[str, ArtifactInfo]]:
    return {"checkpoints": b.checkpoints, "models": b.models, "adapters": b.adapters}


def _begun(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    b.journal_repairs = []  # a salvage reconciles what a torn-tail repair may have dropped: acknowledged


def _adopted(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, SalvageAdopted)
    art = ArtifactInfo(
        name=ev.name, artifact=ev.artifact, path=ev.path, step=ev.step, op=op.id, seq=seq, time=time, files=ev.files, bytes=ev.bytes
    )
    _tables(b)[ARTIFACT_FOLDERS[ev.artifact]][ev.name] = art
    if ev.artifact == "checkpoint":
        b.recompute_latest()


def _lost(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, SalvageLost)
    folder, _, name = ev.path.partition("/")
    table = _tables(b).get(folder)
    if table is not None and name in table and table[name].path == ev.path:
        del table[name]
        if table is b.checkpoints:
            b.recompute_latest()


def _pointer_set(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, SalvagePointerSet)
    b.pointers[ev.name] = PointerInfo(name=ev.name, target=ev.target, op=op.id, seq=seq, time=time)


def _pointer_lost(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, SalvagePointerLost)
    b.pointers.pop(ev.name, None)


# -- the declaration ----------------------------------------------------------------------

_RECONCILING = SalvageState.RECONCILING

SALVAGE = OperationType(
    name="salvage",
    description="a damaged journal cut back to what verifies, then reconciled with the folders on disk",
    states=SalvageState,
    events=(SalvageBegun, SalvageAdopted, SalvageLost, SalvagePointerSet, SalvagePointerLost, SalvageDone),
    begins={"salvage.begun": _RECONCILING},
    transitions={
        (_RECONCILING, "salvage.adopted"): _RECONCILING,
        (_RECONCILING, "salvage.lost"): _RECONCILING,
        (_RECONCILING, "salvage.pointer-set"): _RECONCILING,
        (_RECONCILING, "salvage.pointer-lost"): _RECONCILING,
        (_RECONCILING, "salvage.done"): SalvageState.DONE,
    },
    terminal=frozenset({SalvageState.DONE}),
    recovery={
        _RECONCILING: Recovery(
            RecoveryAction.ROLL_FORWARD,
            "a salvage was cut off before it reconciled every folder: run 'shipslog recover --salvage ROOT' again "
            "(normal recovery could quarantine folders it would keep)",
        )
    },
    projections={
        "salvage.begun": _begun,
        "salvage.adopted": _adopted,
        "salvage.lost": _lost,
        "salvage.pointer-set": _pointer_set,
        "salvage.pointer-lost": _pointer_lost,
    },
)
