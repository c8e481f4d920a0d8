"""The ``worker`` operation type, declared as data with its recovery executor.

Kept apart from the events (``_events``) because its executor,
:func:`~._recovery.settle_cut_off_worker`, needs the process machinery,
which needs the events.

Guarantee: declarations only: importing this module starts, signals and
journals nothing.
"""

from __future__ import annotations

from .._context import RecoveryContext
from .._optypes import OperationType, Recovery, RecoveryAction
from .._state import OpRecord
from ._events import (
    WORKER_TYPE,
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
)
from ._recovery import settle_cut_off_worker

__all__ = ["WORKER"]


def _settle(ctx: RecoveryContext, op: OpRecord) -> str:
    return settle_cut_off_worker(ctx, op.id, on_effect=ctx.effect_done)


_W = WorkerState
_FORWARD = RecoveryAction.ROLL_FORWARD

WORKER = OperationType(
    name=WORKER_TYPE,
    description="supervised worker processes: a supervision per worker name, an incarnation per process started",
    states=WorkerState,
    events=(
        WorkerSupervised,
        WorkerFailed,
        WorkerReleased,
        WorkerStarting,
        WorkerStarted,
        WorkerAdopted,
        WorkerSpawnFailed,
        WorkerExited,
        WorkerDied,
        WorkerStopped,
    ),
    begins={"worker.supervised": _W.SUPERVISED, "worker.starting": _W.STARTING},
    transitions={
        (_W.SUPERVISED, "worker.failed"): _W.FAILED,
        (_W.SUPERVISED, "worker.released"): _W.RELEASED,
        (_W.STARTING, "worker.started"): _W.STARTED,
        (_W.STARTING, "worker.spawn-failed"): _W.SPAWN_FAILED,
        (_W.STARTING, "worker.stopped"): _W.STOPPED,
        (_W.STARTING, "worker.died"): _W.DIED,
        (_W.STARTED, "worker.adopted"): _W.STARTED,
        (_W.STARTED, "worker.exited"): _W.EXITED,
        (_W.STARTED, "worker.died"): _W.DIED,
        (_W.STARTED, "worker.stopped"): _W.STOPPED,
    },
    terminal=frozenset({_W.FAILED, _W.RELEASED, _W.EXITED, _W.DIED, _W.STOPPED, _W.SPAWN_FAILED}),
    recovery={
        _W.SUPERVISED: Recovery(
            _FORWARD, "a supervision owns no process; its supervisor is gone: journal released", "worker.released"
        ),
        _W.STARTING: Recovery(
            _FORWARD,
            "its start was cut off before the pid was journaled: a process carrying the op id in its environment "
            "is stopped (journal stopped); none found: journal died 'gone at recovery'",
            execute=_settle,
            step="settle",
        ),
        _W.STARTED: Recovery(
            _FORWARD,
            "probe pid and create time: a live worker is stopped (or adopted), a gone one is journaled died",
            execute=_settle,
            step="settle",
        ),
    },
)
"""The ``worker`` operation type (a built-in)."""
