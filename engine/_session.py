"""The session operation: one opening of the root by an engine, and its clean or unclean end.

``session.opened`` carries the event schema the session writes; a journal
whose sessions wrote a newer schema is refused.  A session that ended without
``session.closed`` is settled by the next one with ``session.crashed``
(journal-only).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgspec

from shipslog.journal import UnsupportedFormatError, short_repr

from ._events import EVENT_SCHEMA_VERSION, Event
from ._fields import reject
from ._optypes import OperationType, Recovery, RecoveryAction
from ._state import (
    JOURNAL_REPAIRS_KEPT,
    MAX_REPAIR_LINE,
    EngineState,
    OpRecord,
    SessionInfo,
    StateBuilder,
)

__all__ = ["SESSION", "SessionClosed", "SessionCrashed", "SessionOpened", "SessionState"]

_replace = msgspec.structs.replace


# -- events --------------------------------------------------------------------------------


class SessionOpened(Event, tag="session.opened", frozen=True):
    """An engine opened the root: process ``pid`` on ``host``, writing event schema ``schema``."""

    pid: int
    host: str
    schema: int = EVENT_SCHEMA_VERSION
    version: str = ""
    repaired: str = ""
    """The torn journal tail this opening cut back, one line ("" when the journal ended clean)."""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        if len(self.repaired) > MAX_REPAIR_LINE:
            reject("repaired", short_repr(self.repaired), f"at most {MAX_REPAIR_LINE} characters")


class SessionClosed(Event, tag="session.closed", frozen=True):
    """The session ended cleanly."""


class SessionCrashed(Event, tag="session.crashed", frozen=True):
    """The session ended without closing (an unclean shutdown), found by session ``found_by``."""

    found_by: str = ""


# -- states and projection ---------------------------------------------------------------


class SessionState(str, enum.Enum):
    """States of a session (one opening of the root)."""

    OPENED = "opened"
    CLOSED = "closed"
    CRASHED = "crashed"


def _session_opened(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    assert isinstance(ev, SessionOpened)
    if ev.schema > EVENT_SCHEMA_VERSION:
        raise UnsupportedFormatError(f"journal record seq {seq}", "event schema", ev.schema, EVENT_SCHEMA_VERSION)
    if b.session is not None:
        b.previous_session = b.session
    b.session = SessionInfo(id=op.id, pid=ev.pid, host=ev.host, opened_seq=seq, state="opened")
    if ev.repaired:
        b.journal_repairs = [*b.journal_repairs, f"opening {op.id} (seq {seq}) cut back {ev.repaired}"][-JOURNAL_REPAIRS_KEPT:]


def _session_ended(b: StateBuilder, op: OpRecord, ev: Event, seq: int, time: float) -> None:
    state = op.state
    if state == "crashed":
        b.unclean_sessions += 1
    for attr in ("session", "previous_session"):
        current: SessionInfo | None = getattr(b, attr)
        if current is not None and current.id == op.id:
            setattr(b, attr, _replace(current, state=state, ended_seq=seq))


def _found_by(state: EngineState, op: OpRecord, session: str) -> Mapping[str, Any]:
    return {"found_by": session}


SESSION = OperationType(
    name="session",
    description="one opening of the root by an engine",
    states=SessionState,
    events=(SessionOpened, SessionClosed, SessionCrashed),
    begins={"session.opened": SessionState.OPENED},
    transitions={
        (SessionState.OPENED, "session.closed"): SessionState.CLOSED,
        (SessionState.OPENED, "session.crashed"): SessionState.CRASHED,
    },
    terminal=frozenset({SessionState.CLOSED, SessionState.CRASHED}),
    recovery={
        SessionState.OPENED: Recovery(
            RecoveryAction.ROLL_FORWARD,
            "it ended without closing: journal the unclean shutdown",
            "session.crashed",
            close_fields=_found_by,
        )
    },
    projections={"session.opened": _session_opened, "session.closed": _session_ended, "session.crashed": _session_ended},
)
