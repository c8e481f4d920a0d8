"""Health and status of supervised workers, and the bookkeeping a supervisor keeps per worker to derive them.

:class:`Health` and :class:`WorkerStatus` are what a caller reads;
:class:`Slot` (one supervised worker: spec, supervision op, restart budget)
and :class:`Incarnation` (one process of it, or its pending start) are what
the supervisor's monitor thread keeps.

Guarantee: health is explicit and never ``failed`` or ``degraded`` before a
worker's first start finished; slots and incarnations are changed by the
monitor thread only, and read by other threads only under the supervisor's
lock.  Nothing here starts, signals or journals anything.
"""

from __future__ import annotations

import collections
import enum
import random
import subprocess

import msgspec

from ._spec import WorkerSpec

__all__ = ["SEVERITY", "Health", "Incarnation", "Slot", "WorkerStatus"]


class Health(str, enum.Enum):
    """Health of a worker or of the whole supervisor.

    ``starting`` until the first start finished; ``healthy`` while running;
    ``degraded`` while a worker is down and its restart is pending; ``failed``
    once its restart budget is spent (or policy ``never`` met a failure);
    ``stopping`` / ``stopped`` during and after :meth:`Supervisor.stop` (a
    worker that finished and is not restarted by its policy is ``stopped`` too).
    """

    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


SEVERITY = {Health.HEALTHY: 0, Health.STARTING: 1, Health.DEGRADED: 2, Health.FAILED: 3}
"""How bad each health is, for the supervisor's overall health: the worst of its live workers' wins."""


class WorkerStatus(msgspec.Struct, frozen=True):
    """One supervised worker now: its health, current process, restarts and how its last process ended."""

    name: str
    health: Health
    slot: str
    op: str | None
    pid: int | None
    create_time: float | None
    attempt: int
    restarts: int
    last_exit: str | None
    adopted: bool = False


class Incarnation:
    """One process of a worker (or its pending start), owned by the monitor thread."""

    __slots__ = ("adopted", "attempt", "create_time", "delay", "kill_at", "killed", "op", "pgid", "pid", "pidfd", "popen", "start_at", "stop_how")

    def __init__(self, op: str, attempt: int, delay: float, start_at: float) -> None:
        self.op = op
        self.attempt = attempt
        self.delay = delay
        self.start_at = start_at
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.pgid = 0
        self.create_time = 0.0
        self.pidfd: int | None = None
        self.adopted = False
        self.kill_at: float | None = None
        self.killed = False
        self.stop_how = ""


class Slot:
    """One supervised worker: its spec, supervision op, budget and current incarnation."""

    def __init__(self, spec: WorkerSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.op = ""
        self.health = Health.STARTING
        self.restarts = 0
        self.recent: collections.deque[float] = collections.deque()
        self.pending: Incarnation | None = None
        self.running: Incarnation | None = None
        self.last_exit: str | None = None
        self.ended = False
