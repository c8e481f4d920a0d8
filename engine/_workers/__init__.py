"""Supervised worker processes: the ``worker`` operation, worker specs, the supervisor, and recovery of cut-off workers.

A private subpackage of :mod:`shipslog.engine`, which re-exports its public
names; import them from there.  One job per module:

* :mod:`._events`: the ``worker`` operation type (events, :class:`WorkerState`,
  the :data:`WORKER` table) and the views of it in the engine state;
* :mod:`._errors`: :class:`WorkerConfigError` and :class:`SupervisorError`;
* :mod:`._spec`: :class:`WorkerSpec` (how to run and restart a worker), its
  validation and bounds;
* :mod:`._policy`: the restart policy applied (restart or not, budget, backoff);
* :mod:`._status`: :class:`Health`, :class:`WorkerStatus` and the per-worker
  bookkeeping they are read from;
* :mod:`._identity`: which process is a worker (pid, create time, start
  ticks, boot id, the op id mark) and the read-only probes;
* :mod:`._process`: spawning a worker in its own process group, and ending
  it with its group;
* :mod:`._lifecycle`: the life of each worker's processes under a
  supervisor (spawned, watched, ended, journaled, restarted);
* :mod:`._supervisor`: :class:`Supervisor`, its monitor loop and its stop;
* :mod:`._recovery`: settling workers cut off by a crash.

Guarantee: importing this package registers the worker crash points once
(``worker.after_*``, in :mod:`._lifecycle` and :mod:`._supervisor`) and
starts, signals or journals nothing.
"""

from __future__ import annotations

from ._errors import SupervisorError, WorkerConfigError
from ._events import (
    INCARNATION_STATES,
    MAX_STOP_TIMEOUT,
    SUPERVISION_STATES,
    WORKER_OP_ENV,
    WorkerAdopted,
    WorkerDied,
    WorkerExited,
    WorkerFailed,
    WorkerReleased,
    WorkerSpawnFailed,
    WorkerStarted,
    WorkerStarting,
    WorkerState,
    WorkerStopped,
    WorkerSupervised,
    worker_incarnations,
    worker_supervisions,
)
from ._identity import (
    CREATE_TIME_TOLERANCE,
    ProcessIdentity,
    find_worker_processes,
    probe_worker,
    process_identity,
)
from ._operation import WORKER
from ._process import KILL_GRACE, stop_worker
from ._recovery import recover_worker, settle_cut_off_worker, settle_worker_event
from ._spec import (
    MAX_SPEC_COMMAND_BYTES,
    MAX_SPEC_DEPTH,
    MAX_SPEC_ITEMS,
    MAX_SPEC_RESTARTS,
    MAX_SPEC_STRING_BYTES,
    RestartPolicy,
    WorkerSpec,
)
from ._status import Health, WorkerStatus
from ._supervisor import POLL_INTERVAL, Supervisor

__all__ = [
    "CREATE_TIME_TOLERANCE",
    "INCARNATION_STATES",
    "KILL_GRACE",
    "MAX_SPEC_COMMAND_BYTES",
    "MAX_SPEC_DEPTH",
    "MAX_SPEC_ITEMS",
    "MAX_SPEC_RESTARTS",
    "MAX_SPEC_STRING_BYTES",
    "MAX_STOP_TIMEOUT",
    "POLL_INTERVAL",
    "SUPERVISION_STATES",
    "WORKER",
    "WORKER_OP_ENV",
    "Health",
    "ProcessIdentity",
    "RestartPolicy",
    "Supervisor",
    "SupervisorError",
    "WorkerAdopted",
    "WorkerConfigError",
    "WorkerDied",
    "WorkerExited",
    "WorkerFailed",
    "WorkerReleased",
    "WorkerSpawnFailed",
    "WorkerSpec",
    "WorkerStarted",
    "WorkerStarting",
    "WorkerState",
    "WorkerStatus",
    "WorkerStopped",
    "WorkerSupervised",
    "find_worker_processes",
    "probe_worker",
    "process_identity",
    "recover_worker",
    "settle_cut_off_worker",
    "settle_worker_event",
    "stop_worker",
    "worker_incarnations",
    "worker_supervisions",
]
