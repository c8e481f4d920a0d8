"""The recovery operation: one start-up recovery, each action journaled before its effect.

Its events and table live here (the engine replays them like any other); the
planner and executor that journal them are the ``shipslog.recovery``
package.  A recovery cut off is journaled ``recovery.superseded`` and the next
one plans again from the journal.
"""

from __future__ import annotations

import enum

import msgspec

from ._events import Event
from ._optypes import OperationType, Recovery, RecoveryAction

__all__ = ["RECOVERY", "RecoveryBegun", "RecoveryDone", "RecoveryState", "RecoveryStep", "RecoverySuperseded"]


# -- events --------------------------------------------------------------------------------


class RecoveryBegun(Event, tag="recovery.begun", frozen=True):
    """Start-up recovery found ``actions`` things to finish or roll back (``found`` says what, one line each)."""

    actions: int
    found: list[str] = msgspec.field(default_factory=list)


class RecoveryStep(Event, tag="recovery.step", frozen=True):
    """Recovery is about to carry out ``action`` on ``target`` (an op id or a root-relative path), because ``reason``.

    Journaled before the effect; the effect's own record (e.g. ``checkpoint.aborted``)
    follows it, so a crash in between is recovered by planning again.
    """

    index: int
    target: str
    action: str
    reason: str = ""


class RecoveryDone(Event, tag="recovery.done", frozen=True):
    """Every action was carried out; ``quarantined`` lists what was moved to ``quarantine/``."""

    done: int
    quarantined: list[str] = msgspec.field(default_factory=list)


class RecoverySuperseded(Event, tag="recovery.superseded", frozen=True):
    """A recovery that was itself cut off; the next one planned again from the journal."""


# -- states and the declaration -----------------------------------------------------------


class RecoveryState(str, enum.Enum):
    """States of one start-up recovery."""

    RUNNING = "running"
    DONE = "done"
    SUPERSEDED = "superseded"


RECOVERY = OperationType(
    name="recovery",
    description="start-up recovery: each action journaled before its effect",
    states=RecoveryState,
    events=(RecoveryBegun, RecoveryStep, RecoveryDone, RecoverySuperseded),
    begins={"recovery.begun": RecoveryState.RUNNING},
    transitions={
        (RecoveryState.RUNNING, "recovery.step"): RecoveryState.RUNNING,
        (RecoveryState.RUNNING, "recovery.done"): RecoveryState.DONE,
        (RecoveryState.RUNNING, "recovery.superseded"): RecoveryState.SUPERSEDED,
    },
    terminal=frozenset({RecoveryState.DONE, RecoveryState.SUPERSEDED}),
    recovery={
        RecoveryState.RUNNING: Recovery(
            RecoveryAction.ROLL_FORWARD, "it was cut off: journal it superseded; the next recovery plans again from the journal", "recovery.superseded"
        )
    },
)
