"""Recovery of worker incarnations cut off by a crash: find or stop their processes, and the event that settles each.

When a supervisor dies (SIGKILL, power cut) its incarnations stay
``starting`` or ``started`` in the journal.  :func:`recover_worker` carries
out their recovery rule (probe by pid *and* create time, stop a live one,
find a start cut off before its pid was journaled by the op id in the
environment), :func:`settle_worker_event` names the event that settles one,
and :func:`settle_cut_off_worker` does both on an open engine and journals
it: what the recovery package's ``worker.settle`` executor calls.  A
supervisor opened with ``adopt=True`` takes over live workers of a dead
session instead.

Guarantee: the journal is untrusted: a process it names is stopped only when
it carries the op id mark; a settling event is journaled only after its
process is gone (stopped, or found gone); settling is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

from .._events import Event
from .._state import OpRecord
from ._events import WORKER_TYPE, WorkerDied, WorkerState, WorkerStopped, event_kind
from ._identity import (
    ProcessIdentity,
    environ_op_of,
    find_worker_processes,
    probe_worker,
    read_boot_id,
    read_start_ticks,
)
from ._process import pgid_of, stop_worker

if TYPE_CHECKING:
    from .._context import OperationContext

__all__ = ["recover_worker", "settle_cut_off_worker", "settle_worker_event"]


def settle_worker_event(op: OpRecord, outcome: str) -> Event:
    """The event that settles cut-off worker incarnation ``op`` after recovery found or stopped its process.

    ``outcome`` is what :func:`stop_worker` returned: ``"gone"`` gives
    ``worker.died`` with reason "gone at recovery"; ``"terminated"`` or
    ``"killed"`` gives ``worker.stopped``.  Pure: journals nothing.
    """
    if op.type != WORKER_TYPE or op.state not in (WorkerState.STARTING.value, WorkerState.STARTED.value):
        raise ValueError(f"operation {op.id!r} ({op.type} in state {op.state!r}) is not a worker incarnation in progress")
    if outcome == "gone":
        if op.state == WorkerState.STARTING.value:
            reason = "gone at recovery: its start was cut off and no process carrying its op id is alive"
        else:
            reason = f"gone at recovery: no live process {op.info.get('pid')} with its create time"
        return WorkerDied(op=op.id, reason=reason)
    if outcome in ("terminated", "killed"):
        return WorkerStopped(op=op.id, how=outcome)
    raise ValueError(f"unknown stop outcome {outcome!r}; expected 'gone', 'terminated' or 'killed'")


def recover_worker(op: OpRecord, *, adopt: bool = False, timeout: float | None = None) -> Event | None:
    """Carry out the recovery rule of cut-off worker incarnation ``op``; the event to journal (None: adopted).

    ``started`` (running): probe pid and create time; a live worker is stopped
    (``worker.stopped``) or, with ``adopt=True``, left running for a
    :class:`Supervisor` opened with ``adopt=True`` (returns None); a gone one
    gives ``worker.died`` "gone at recovery".  ``starting``: every live
    process carrying the op id in its environment is stopped (``worker.stopped``);
    none gives ``worker.died``.  ``timeout`` defaults to the ``stop_timeout``
    the op journaled.  The caller journals the event (intent first is not
    needed: stopping a stopped worker again is harmless, the outcome is then "gone").
    """
    wait = float(op.info.get("stop_timeout", 10.0)) if timeout is None else timeout
    if op.state == WorkerState.STARTED.value:
        info = op.info
        pid, created = int(info["pid"]), float(info["create_time"])
        ticks, boot = info.get("start_ticks"), info.get("boot_id") or None
        if adopt and probe_worker(pid, created, start_ticks=ticks, boot_id=boot) and environ_op_of(pid) == op.id:
            return None
        outcome = stop_worker(pid, created, wait, start_ticks=ticks, boot_id=boot, op_id=op.id)
        return settle_worker_event(op, outcome)
    if op.state == WorkerState.STARTING.value:
        outcomes = []
        found = find_worker_processes(op.id)
        found.sort(key=lambda p: pgid_of(p.pid) != p.pid)  # group leaders first: stopping one ends its group
        for proc in found:
            try:
                identity = ProcessIdentity(proc.pid, proc.create_time(), read_start_ticks(proc.pid), read_boot_id())
            except psutil.NoSuchProcess:
                continue
            outcomes.append(stop_worker(proc.pid, identity.create_time, wait, start_ticks=identity.start_ticks, op_id=op.id))
        ended = [o for o in outcomes if o != "gone"]
        return settle_worker_event(op, "killed" if "killed" in ended else ended[0] if ended else "gone")
    return settle_worker_event(op, "gone")  # raises: not an incarnation in progress


def settle_cut_off_worker(core: OperationContext, op_id: str, *, adopt: bool = False, on_effect: Callable[[], None] | None = None) -> str:
    """Recover cut-off worker incarnation ``op_id`` on an open engine and journal its settling event; say what was done.

    What the recovery package's ``worker.settle`` executor calls: idempotent
    (an op no longer in progress is left alone), it stops or finds gone the
    process by :func:`recover_worker` and journals ``worker.stopped`` or
    ``worker.died``; with ``adopt=True`` a live worker is left for a
    supervisor opened with ``adopt=True`` and nothing is journaled.
    ``on_effect`` is called when a live process was stopped, before the
    event is journaled (the recovery executor's crash point).
    """
    op = core.state.ops.get(op_id)
    if op is None:
        return f"worker {op_id} is settled already"
    event = recover_worker(op, adopt=adopt)
    if event is None:
        return f"worker {op.info.get('name')} (pid {op.info.get('pid')}) is alive: left for adoption"
    if on_effect is not None and isinstance(event, WorkerStopped):
        on_effect()
    core.journal_events(event)
    pid = op.info.get("pid")
    who = f"worker {op.info.get('name')}" + (f" (pid {pid})" if pid is not None else "")
    if isinstance(event, WorkerStopped):
        return f"{who} was alive: {event.how}"
    return f"{who}: {event.reason if isinstance(event, WorkerDied) else event_kind(event)}"
