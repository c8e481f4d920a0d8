"""The ``worker`` operation's events and states (its table and recovery are declared in ``_operation``).

Two kinds of operation share the type, told apart by their states:

* a **supervision** (one per worker name and :class:`~shipslog.engine.Supervisor`):
  ``worker.supervised`` -> ``worker.failed`` (its restart budget ran out, or
  its policy does not restart a failed worker) | ``worker.released`` (the
  supervisor stopped, or the worker finished and its policy does not restart
  it).  It owns no process, so a supervision cut off by a crash is settled by
  the journal alone (``worker.released``).
* an **incarnation** (one per process started): ``worker.starting`` (name,
  attempt, the backoff delay before it) -> ``worker.started`` (pid, create
  time) -> ``worker.exited`` (code) | ``worker.died`` (signal, or "gone at
  recovery") | ``worker.stopped`` (terminated or killed by the supervisor, or
  cancelled before it started); a start that fails is ``worker.spawn-failed``.
  A restart is a new incarnation whose ``attempt`` and ``delay`` say which
  restart it is and how long it waited.

An incarnation that is not terminal owns (or may own) a process, so its
recovery rule has no ``close_with``: its executor (declared on the type) is
:func:`settle_cut_off_worker` (probe by pid *and* create time, stop a live
one, journal a gone one as died).

The worker view is derived from ``EngineState.ops`` alone: every incarnation
in progress holds ``name``, ``slot`` (its supervision's op id), ``attempt``,
``delay`` and, once started, ``pid``, ``create_time``, ``start_ticks`` and
``boot_id`` in its ``info`` (see :func:`worker_incarnations`).

Guarantee: declarations only, as data: importing this module starts, signals
and journals nothing.  The events and the table are what the reducer replays,
so their tags, fields and transitions are the journal format of workers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

import msgspec

from .._events import Event
from .._fields import expect_count, expect_name, expect_op_id, reject
from .._state import EngineState, OpRecord

__all__ = [
    "INCARNATION_STATES",
    "MAX_STOP_TIMEOUT",
    "SUPERVISION_STATES",
    "WORKER_OP_ENV",
    "WORKER_TYPE",
    "WorkerAdopted",
    "WorkerDied",
    "WorkerExited",
    "WorkerFailed",
    "WorkerReleased",
    "WorkerSpawnFailed",
    "WorkerStarted",
    "WorkerStarting",
    "WorkerState",
    "WorkerStopped",
    "WorkerSupervised",
    "event_kind",
    "worker_incarnations",
    "worker_supervisions",
]

MAX_STOP_TIMEOUT = 3600.0
"""The longest a stop waits after SIGTERM before SIGKILL, in seconds (a spec's and a journaled one's)."""

WORKER_OP_ENV = "SHIPSLOG_WORKER_OP"
"""Environment variable every worker process (and its children) is started with: its incarnation's op id.

Recovery uses it to find a process whose start was cut off before its pid was
journaled, and to check that a process-group member really is one of ours.
"""


# -- supervision events ------------------------------------------------------------------


class WorkerSupervised(Event, tag="worker.supervised", frozen=True):
    """A supervisor took charge of worker ``name`` with restart ``policy`` and its budget."""

    name: str
    policy: str
    max_restarts: int
    restart_window: float
    command: list[str] = msgspec.field(default_factory=list)

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_name("name", self.name, "worker")


class WorkerFailed(Event, tag="worker.failed", frozen=True):
    """Worker ``name`` will not be restarted: ``reason`` (budget exceeded, or policy ``never``); ``restarts`` made."""

    reason: str
    restarts: int = 0


class WorkerReleased(Event, tag="worker.released", frozen=True):
    """The supervision ended without failure: the supervisor stopped, the worker finished, or its session is gone."""

    reason: str = ""
    restarts: int = 0


# -- incarnation events ------------------------------------------------------------------


class WorkerStarting(Event, tag="worker.starting", frozen=True):
    """Incarnation ``attempt`` (0: first start, n: n-th restart) of worker ``name`` starts after ``delay`` seconds.

    ``slot`` is the op id of its supervision; ``reason`` why it (re)starts;
    ``stop_timeout`` how long a stop waits after SIGTERM before SIGKILL
    (recovery honours it too).
    """

    slot: str
    name: str
    attempt: int
    delay: float
    reason: str = ""
    stop_timeout: float = 10.0

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_op_id("slot", self.slot)
        expect_name("name", self.name, "worker")
        expect_count("attempt", self.attempt)
        if not (math.isfinite(self.stop_timeout) and 0 <= self.stop_timeout <= MAX_STOP_TIMEOUT):
            reject("stop_timeout", self.stop_timeout, f"a number of seconds from 0 to {MAX_STOP_TIMEOUT:g}")


class WorkerStarted(Event, tag="worker.started", frozen=True):
    """The process runs: ``pid``, ``create_time`` (psutil, seconds since the epoch), ``start_ticks`` and ``boot_id``.

    ``start_ticks`` (clock ticks after boot, from /proc/<pid>/stat) and
    ``boot_id`` identify the process exactly on Linux; ``create_time`` is the
    portable identity, compared within a small tolerance.  ``pgid`` is the
    process group the worker leads (its own children are in it too).
    """

    pid: int
    create_time: float
    pgid: int = 0
    start_ticks: int | None = None
    boot_id: str = ""

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        # pid 0 or -1 would signal a whole process group or every process: never a worker's
        expect_count("pid", self.pid, 2)
        expect_count("pgid", self.pgid)
        if self.pgid == 1:
            reject("pgid", self.pgid, "0 (unknown) or the worker's own process group, never init's")
        if not (math.isfinite(self.create_time) and self.create_time > 0):
            reject("create_time", self.create_time, "a positive, finite time in seconds since the epoch")
        if self.start_ticks is not None:
            expect_count("start_ticks", self.start_ticks)


class WorkerAdopted(Event, tag="worker.adopted", frozen=True):
    """A supervisor of session ``session`` took over this running process (found alive after a crash) for supervision ``slot``."""

    slot: str
    session: str

    def check_fields(self, info: Mapping[str, Any] | None) -> None:
        expect_op_id("slot", self.slot)


class WorkerSpawnFailed(Event, tag="worker.spawn-failed", frozen=True):
    """The process could not be started (``error``: executable missing, permission, ...)."""

    error: str


class WorkerExited(Event, tag="worker.exited", frozen=True):
    """The process exited by itself with ``code``."""

    code: int


class WorkerDied(Event, tag="worker.died", frozen=True):
    """The process was killed by ``signal`` (not by its supervisor), or ``reason`` says how it was found gone."""

    signal: int | None = None
    reason: str = ""


class WorkerStopped(Event, tag="worker.stopped", frozen=True):
    """The supervisor (or recovery) ended it: ``how`` is terminated, killed, cancelled (never started) or gone.

    ``code`` or ``signal`` is its exit status when the stopper could read it.
    """

    how: str
    code: int | None = None
    signal: int | None = None


class WorkerState(str, enum.Enum):
    """States of a ``worker`` operation: a supervision or an incarnation (one process)."""

    SUPERVISED = "supervised"
    FAILED = "failed"
    RELEASED = "released"
    STARTING = "starting"
    STARTED = "started"
    EXITED = "exited"
    DIED = "died"
    STOPPED = "stopped"
    SPAWN_FAILED = "spawn-failed"


SUPERVISION_STATES = frozenset({WorkerState.SUPERVISED.value, WorkerState.FAILED.value, WorkerState.RELEASED.value})
"""State names of a supervision op (all others are an incarnation's)."""
INCARNATION_STATES = frozenset(s.value for s in WorkerState) - SUPERVISION_STATES
"""State names of an incarnation op."""

WORKER_TYPE = "worker"
"""The name of the ``worker`` operation type (declared in :mod:`._operation`, with its recovery)."""


def worker_incarnations(state: EngineState) -> list[OpRecord]:
    """The worker incarnations in progress (``starting`` or ``started``), oldest first.

    Each one's ``info`` holds ``name``, ``slot``, ``attempt``, ``delay`` and,
    once started, ``pid``, ``create_time``, ``pgid``, ``start_ticks``, ``boot_id``.
    """
    return [op for op in state.ops.values() if op.type == WORKER_TYPE and op.state in INCARNATION_STATES]


def worker_supervisions(state: EngineState) -> list[OpRecord]:
    """The supervisions in progress (a supervisor is, or was until a crash, in charge of them), oldest first."""
    return [op for op in state.ops.values() if op.type == WORKER_TYPE and op.state in SUPERVISION_STATES]


def event_kind(event: Event) -> str:
    """The tag of ``event`` (``worker.died``, ...), or its class name when it has none: how log lines name an event."""
    tag = type(event).__struct_config__.tag
    return tag if isinstance(tag, str) else type(event).__name__
