"""The engine state: one immutable value, built by the reducer from the journal.

Every field is derived from journal records and nothing else: no side file,
no mtime, no directory listing.  :class:`EngineState` values handed out are
never changed afterwards; the reducer works on a private
:class:`StateBuilder` and freezes it into a new value.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "JOURNAL_REPAIRS_KEPT",
    "MAX_REPAIR_LINE",
    "STATE_VERSION",
    "ArtifactInfo",
    "EngineState",
    "OpRecord",
    "PointerInfo",
    "RunInfo",
    "SessionInfo",
    "StateBuilder",
]

STATE_VERSION = 1
"""Version of the state's encoding in snapshots; a snapshot of another version is ignored (full replay)."""

RUNS_KEPT = 1000
"""Finished (terminal) runs kept in the state, newest first; runs in progress are always kept."""


_TRIM_SLACK = 64
_RUN_ENDED = frozenset({"finished", "failed", "interrupted"})


class OpRecord(msgspec.Struct, frozen=True, gc=False):
    """One operation that has not reached a terminal state.

    ``info`` holds the fields of every state-changing event it journaled, merged
    (later events win), so recovery and status need nothing but the state.
    """

    id: str
    type: str
    state: str
    first_seq: int
    seq: int
    session: str
    time: float
    info: dict[str, Any]


class ArtifactInfo(msgspec.Struct, frozen=True, gc=False):
    """A committed checkpoint or model: its folder (root-relative ``path``), step, size and the op that made it."""

    name: str
    artifact: str
    path: str
    step: int | None
    op: str
    seq: int
    time: float
    files: int
    bytes: int
    meta: dict[str, Any] = {}


class PointerInfo(msgspec.Struct, frozen=True, gc=False):
    """A pointer and the root-relative path of the committed folder it names."""

    name: str
    target: str
    op: str
    seq: int
    time: float


class RunInfo(msgspec.Struct, frozen=True, gc=False):
    """A training run: ``state`` is validated, started, finished, failed or interrupted."""

    op: str
    data_file: str
    state: str
    session: str
    start_step: int = 0
    step: int = 0
    first_seq: int = 0
    last_seq: int = 0
    error: str | None = None


class SessionInfo(msgspec.Struct, frozen=True, gc=False):
    """One opening of the root: ``state`` is opened, closed or crashed (an unclean shutdown)."""

    id: str
    pid: int
    host: str
    opened_seq: int
    state: str
    ended_seq: int | None = None


JOURNAL_REPAIRS_KEPT = 16
"""The most torn-tail repairs the state lists (the newest); older ones are dropped from the list."""
MAX_REPAIR_LINE = 2000
"""The longest description of one torn-tail repair a record or snapshot may carry."""


class EngineState(msgspec.Struct, frozen=True, gc=False):
    """Everything the journal says, as of record ``seq``.

    ``ops``: operations not yet terminal, by id.  ``checkpoints`` / ``models`` /
    ``adapters``: committed folders by name.  ``retired`` maps the path an
    adapter was moved to after its merge was installed and pointed to, to the
    merged model's path (retention deletes it later).  ``pointers`` by name.  ``runs`` by op id (all
    runs in progress and the newest finished ones).  ``latest`` names the newest
    committed checkpoint by step (ties: the later commit); ``global_step`` is its
    step.  ``retiring`` maps root-relative paths a retention intends to delete
    to that retention's op id.  ``session`` is the newest session;
    ``unclean_sessions`` counts sessions found crashed.  ``journal_repairs``
    lists the torn journal tails openings cut back since the last salvage
    (the newest :data:`JOURNAL_REPAIRS_KEPT`), one line each: records after
    them may have been acknowledged, so each is a finding until a salvage.
    """

    version: int = STATE_VERSION
    seq: int = 0
    ops: dict[str, OpRecord] = {}
    checkpoints: dict[str, ArtifactInfo] = {}
    models: dict[str, ArtifactInfo] = {}
    adapters: dict[str, ArtifactInfo] = {}
    retired: dict[str, str] = {}
    pointers: dict[str, PointerInfo] = {}
    runs: dict[str, RunInfo] = {}
    retiring: dict[str, str] = {}
    latest: str | None = None
    global_step: int = 0
    session: SessionInfo | None = None
    previous_session: SessionInfo | None = None
    unclean_sessions: int = 0
    op_counts: dict[str, int] = {}
    journal_repairs: list[str] = []

    def latest_checkpoint(self) -> ArtifactInfo | None:
        """The newest committed checkpoint by step, in O(1) (None when there is none)."""
        return self.checkpoints.get(self.latest) if self.latest is not None else None

    def ops_of(self, op_type: str) -> list[OpRecord]:
        """The non-terminal operations of one type, oldest first."""
        return [op for op in self.ops.values() if op.type == op_type]


class StateBuilder:
    """The reducer's private, mutable copy of an :class:`EngineState`.

    Projections change it in place; :meth:`freeze` produces an immutable value.
    Never handed to callers.
    """

    __slots__ = (
        "adapters",
        "checkpoints",
        "global_step",
        "journal_repairs",
        "latest",
        "models",
        "op_counts",
        "ops",
        "pointers",
        "previous_session",
        "retired",
        "retiring",
        "runs",
        "seq",
        "session",
        "unclean_sessions",
    )

    def __init__(self, state: EngineState | None = None) -> None:
        s = state if state is not None else EngineState()
        self.seq = s.seq
        self.ops = dict(s.ops)
        self.checkpoints = dict(s.checkpoints)
        self.models = dict(s.models)
        self.adapters = dict(s.adapters)
        self.retired = dict(s.retired)
        self.pointers = dict(s.pointers)
        self.runs = dict(s.runs)
        self.retiring = dict(s.retiring)
        self.latest = s.latest
        self.global_step = s.global_step
        self.session = s.session
        self.previous_session = s.previous_session
        self.unclean_sessions = s.unclean_sessions
        self.op_counts = dict(s.op_counts)
        self.journal_repairs = list(s.journal_repairs)

    def freeze(self) -> EngineState:
        """An immutable :class:`EngineState` of the builder as it is now (containers are copied)."""
        return EngineState(
            seq=self.seq,
            ops=dict(self.ops),
            checkpoints=dict(self.checkpoints),
            models=dict(self.models),
            adapters=dict(self.adapters),
            retired=dict(self.retired),
            pointers=dict(self.pointers),
            runs=dict(self.runs),
            retiring=dict(self.retiring),
            latest=self.latest,
            global_step=self.global_step,
            session=self.session,
            previous_session=self.previous_session,
            unclean_sessions=self.unclean_sessions,
            op_counts=dict(self.op_counts),
            journal_repairs=list(self.journal_repairs),
        )

    def recompute_latest(self) -> None:
        """Choose the newest committed checkpoint by (step, commit seq) again; O(n), used only after deletions."""
        best: ArtifactInfo | None = None
        for info in self.checkpoints.values():
            if best is None or (info.step or 0, info.seq) > (best.step or 0, best.seq):
                best = info
        self.latest = best.name if best is not None else None
        self.global_step = (best.step or 0) if best is not None else 0

    def trim_runs(self) -> None:
        """Drop the oldest finished runs beyond :data:`RUNS_KEPT` (amortized O(1): trims in batches)."""
        if len(self.runs) <= RUNS_KEPT + _TRIM_SLACK:
            return
        excess = len(self.runs) - RUNS_KEPT
        doomed = []
        for run in self.runs.values():  # insertion order: oldest runs first
            if run.state in _RUN_ENDED:
                doomed.append(run.op)
                if len(doomed) == excess:
                    break
        for op_id in doomed:
            del self.runs[op_id]
