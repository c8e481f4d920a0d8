"""The status of a host, derived from the engine state alone (never from a side file)."""

from __future__ import annotations

import msgspec

from ._state import ArtifactInfo, EngineState, OpRecord, PointerInfo, RunInfo, SessionInfo

__all__ = ["Status", "status_of"]

RECENT_RUNS = 10


class Status(msgspec.Struct, frozen=True):
    """A host at a glance.

    ``shutdown`` is ``"clean"`` when the session before the current one closed,
    ``"unclean"`` when it crashed, ``"none"`` on a new root.  ``training`` is
    the run in progress (its session is alive), if any; ``runs`` the newest
    runs; ``in_flight`` operations not yet terminal; ``latest`` the newest
    committed checkpoint and ``global_step`` its step.
    """

    seq: int
    session: SessionInfo | None
    previous_session: SessionInfo | None
    shutdown: str
    unclean_sessions: int
    training: RunInfo | None
    runs: list[RunInfo]
    in_flight: list[OpRecord]
    pointers: dict[str, PointerInfo]
    latest: ArtifactInfo | None
    global_step: int
    checkpoints: int
    models: int
    largest_checkpoint_bytes: int
    journal_repairs: list[str] = []
    """Torn journal tails openings cut back since the last salvage (records after them may have been acknowledged)."""


def status_of(state: EngineState) -> Status:
    """The :class:`Status` of ``state``."""
    prev = state.previous_session
    if prev is None:
        shutdown = "none"
    else:
        shutdown = "unclean" if prev.state == "crashed" else "clean" if prev.state == "closed" else "in progress"
    live = state.session.id if state.session is not None and state.session.state == "opened" else None
    training = next(
        (r for r in state.runs.values() if r.state == "started" and live is not None and f"session-{r.session}" == live), None
    )
    runs = sorted(state.runs.values(), key=lambda r: r.last_seq, reverse=True)[:RECENT_RUNS]
    return Status(
        seq=state.seq,
        session=state.session,
        previous_session=prev,
        shutdown=shutdown,
        unclean_sessions=state.unclean_sessions,
        training=training,
        runs=runs,
        in_flight=sorted((o for o in state.ops.values() if o.type != "session"), key=lambda o: o.first_seq),
        pointers=dict(state.pointers),
        latest=state.latest_checkpoint(),
        global_step=state.global_step,
        checkpoints=len(state.checkpoints),
        models=len(state.models),
        largest_checkpoint_bytes=max((c.bytes for c in state.checkpoints.values()), default=0),
        journal_repairs=list(state.journal_repairs),
    )
