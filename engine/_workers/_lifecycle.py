"""The life of each supervised worker's processes: spawned, watched, ended, reaped, journaled, restarted by policy.

:class:`WorkerLifecycle` is the process-owning half of
:class:`~shipslog.engine.Supervisor`: it spawns a worker's pending start,
watches the process through a pidfd (Linux >= 5.3; elsewhere the monitor
polls ``waitid``, see :data:`~shipslog.engine._workers._supervisor.POLL_INTERVAL`), and when it ends kills
the leftovers of its group, reaps it and journals, through the engine (see
:mod:`shipslog.engine._workers._events` for the ``worker`` operation table):

* ``worker.starting`` (attempt, backoff delay) then ``worker.started`` (pid,
  psutil create time, start ticks, boot id) for every process;
* ``worker.exited`` (code) or ``worker.died`` (signal) when it ends by itself,
  in the same journal frame as what the supervisor decided: the next
  ``worker.starting`` (a restart, with its attempt number and delay),
  ``worker.failed`` (restart budget spent, or policy ``never``) or
  ``worker.released`` (finished, and the policy does not restart it);
* ``worker.stopped`` when it ends while the supervisor stops.

Guarantees: a death is journaled within milliseconds (the pidfd wakes the
monitor; the record is fsynced before subscribers hear of it); the leftovers
of a dead worker's process group are killed before the worker is reaped (the
zombie leader keeps the group id from being reused); restarts back off
exponentially (seeded jitter, a cap) and a worker that spends its budget is
journaled ``worker.failed`` and never restarted, so a crash loop is never a
hot loop; if the engine stops accepting records, the supervisor is asked to
stop rather than run workers unjournaled.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import selectors
import signal
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shipslog.journal import (
    JournalBrokenError,
    JournalClosedError,
    crash_point,
    register_crash_point,
)

from .._events import Event
from ._events import (
    WorkerDied,
    WorkerExited,
    WorkerFailed,
    WorkerReleased,
    WorkerSpawnFailed,
    WorkerStarted,
    WorkerStarting,
    WorkerStopped,
    event_kind,
)
from ._identity import find_worker_processes, process_identity
from ._operation import WORKER
from ._policy import backoff_delay, restarts_within_window, wants_restart
from ._process import (
    child_exited,
    group_members,
    kill_group,
    kill_members,
    pgid_of,
    signal_name,
    signal_process,
    spawn_process,
    wait_group_gone,
)
from ._spec import WorkerSpec
from ._status import Health, Incarnation, Slot

if TYPE_CHECKING:
    from .._core import EngineCore

__all__ = ["WorkerLifecycle"]

_log = logging.getLogger("shipslog.engine.supervisor")

CP_STARTING = register_crash_point(
    "worker.after_starting", "worker.starting is journaled (a first start or a restart, after its backoff); no process is spawned yet"
)
CP_SPAWN = register_crash_point(
    "worker.after_spawn", "the worker process runs (its op id in its environment); worker.started is not journaled"
)
CP_STARTED = register_crash_point("worker.after_started", "the worker process runs and worker.started (pid, create time) is journaled")
CP_DEATH = register_crash_point(
    "worker.after_death_detected",
    "a worker process ended (by itself, killed, or stopped), its group's leftovers were sent SIGKILL and it was reaped; "
    "worker.exited, worker.died or worker.stopped is not journaled",
)


class WorkerLifecycle:
    """The process-owning half of a :class:`~shipslog.engine.Supervisor`: spawning, watching, ending and restarting workers.

    It holds the supervisor's state (its slots, the condition that guards
    their status, the stop flags, the selector and the wake pipe).  Its
    methods run in the one monitor thread (and, before that thread exists,
    in :meth:`Supervisor.start`); :class:`Supervisor` adds the public side
    and the monitor loop that drives them.
    """

    def __init__(self, engine: EngineCore, specs: Sequence[WorkerSpec], *, seed: int | str | None, adopt: bool) -> None:
        """The state of a supervisor of ``specs`` (checked by :class:`Supervisor`); nothing is started yet."""
        self.engine = engine
        self.adopt = adopt
        base = "" if seed is None else str(seed)
        self._slots = {s.name: Slot(s, random.Random(f"{base}:{s.name}") if seed is not None else random.Random()) for s in specs}
        self._cond = threading.Condition()
        self._state = Health.STARTING
        self._started = False
        self._stop_requested = False
        self._stopping = False
        self._journal_failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None  # made by start(), closed when the monitor ends
        self._wake_r = self._wake_w = -1
        self._polling = False

    @property
    def _sel(self) -> selectors.BaseSelector:
        assert self._selector is not None, "the selector exists from start() on"
        return self._selector

    # -- status (under self._cond) -------------------------------------------------------

    def _set(
        self,
        slot: Slot,
        health: Health,
        last_exit: str | None = None,
        *,
        ended: Incarnation | None = None,
        pending: Incarnation | None = None,
        restarts: int | None = None,
    ) -> None:
        """Change ``slot``'s status in one step (after its records are journaled): health, last exit, incarnations, restarts."""
        with self._cond:
            slot.health = health
            if restarts is not None:
                slot.restarts = restarts
            if last_exit is not None:
                slot.last_exit = last_exit
            if ended is not None and slot.running is ended:
                slot.running = None
            if pending is not None:
                slot.pending = pending
            self._cond.notify_all()

    # -- journaling ----------------------------------------------------------------------

    def _journal(self, *events: Event) -> bool:
        """Journal ``events`` in one frame; on an engine that no longer accepts records, ask for an emergency stop."""
        if self._journal_failure is not None:
            _log.error("not journaled (the engine stopped accepting records earlier): %s", [event_kind(e) for e in events])
            return False
        try:
            self.engine.journal_events(*events)
            return True
        except (JournalClosedError, JournalBrokenError) as exc:
            self._journal_failure = exc
            self._stop_requested = True
            _log.error("the engine stopped accepting records (%s); stopping every worker rather than run them unjournaled", exc)
            return False

    def _starting(self, slot: Slot, inc: Incarnation, reason: str) -> WorkerStarting:
        return WorkerStarting(
            op=inc.op,
            slot=slot.op,
            name=slot.spec.name,
            attempt=inc.attempt,
            delay=inc.delay,
            reason=reason,
            stop_timeout=slot.spec.stop_timeout,
        )

    # -- starting ------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        """Start the pending incarnation of ``slot`` now and journal ``worker.started`` (or a failure)."""
        inc = slot.pending
        assert inc is not None
        spec = slot.spec
        crash_point(CP_STARTING)
        try:
            inc.popen = spawn_process(spec, inc.op)
        except OSError as exc:
            with self._cond:
                slot.pending = None
            self._after_end(slot, WorkerSpawnFailed(op=inc.op, error=f"{type(exc).__name__}: {exc}"), True, f"could not be started ({exc})")
            return
        crash_point(CP_SPAWN)
        inc.pid = inc.pgid = inc.popen.pid
        identity = process_identity(inc.pid)  # the child is not reaped yet: it exists (maybe as a zombie)
        assert identity is not None, f"worker process {inc.pid} vanished before it was reaped"
        inc.create_time = identity.create_time
        self._watch(inc)
        with self._cond:  # running before it is journaled: a failed journal then stops it
            slot.pending = None
            slot.running = inc
        ok = self._journal(
            WorkerStarted(
                op=inc.op,
                pid=inc.pid,
                create_time=identity.create_time,
                pgid=inc.pgid,
                start_ticks=identity.start_ticks,
                boot_id=identity.boot_id,
            )
        )
        if ok:
            crash_point(CP_STARTED)
            _log.info("worker %s started: pid %d, attempt %d", spec.name, inc.pid, inc.attempt)
            self._set(slot, Health.HEALTHY)

    def _watch(self, inc: Incarnation) -> None:
        try:
            inc.pidfd = os.pidfd_open(inc.pid)
        except (OSError, AttributeError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ESRCH:
                raise
            inc.pidfd = None
            self._polling = True
            return
        self._sel.register(inc.pidfd, selectors.EVENT_READ, inc)

    # -- watching and ending -----------------------------------------------------------

    def _wake(self) -> None:
        with self._cond:  # _close_fds closes the pipe under the same lock: never a write to a reused fd number
            if self._wake_w < 0:
                return
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                return  # the pipe is full: the monitor is woken already

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            return

    def _poll_children(self) -> None:
        for slot in self._slots.values():
            inc = slot.running
            if inc is not None and inc.pidfd is None and child_exited(inc.pid):
                self._on_end(inc)

    def _on_end(self, inc: Incarnation) -> None:
        """Incarnation ``inc`` ended: clear its group, reap it, journal it and what comes next."""
        slot = next(s for s in self._slots.values() if s.running is inc)
        code, sig = self._collect(inc)
        crash_point(CP_DEATH)
        if code is not None:
            describe, failure = f"exited with code {code}", code != 0
            end: Event = WorkerExited(op=inc.op, code=code)
        elif sig is not None:
            describe, failure = f"was killed by {signal_name(sig)}", True
            end = WorkerDied(op=inc.op, signal=sig, reason=f"killed by {signal_name(sig)}")
        else:
            describe, failure = "ended (adopted: its exit status cannot be read by a non-parent)", True
            end = WorkerDied(op=inc.op, reason="the adopted process ended; a non-parent cannot read its exit status")
        if self._stopping:
            wait_group_gone(inc.pgid, inc.create_time)  # stop() returns only when the worker's children are gone too
            how = inc.stop_how or "terminated"
            self._journal(WorkerStopped(op=inc.op, how=how, code=code, signal=sig))
            self._set(slot, Health.STOPPING, f"stopped ({how}; {describe})", ended=inc)
            return
        _log.warning("worker %s (pid %d) %s", slot.spec.name, inc.pid, describe)
        self._after_end(slot, end, failure, describe, inc)

    def _collect(self, inc: Incarnation) -> tuple[int | None, int | None]:
        """Exit status of ``inc`` (None, None when adopted); its group's leftovers are killed before the leader is reaped."""
        code = sig = None
        if inc.popen is not None:
            result = os.waitid(os.P_PID, inc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if result is not None:
                if result.si_code == os.CLD_EXITED:
                    code = result.si_status
                else:
                    sig = result.si_status
            kill_group(inc.pgid, signal.SIGKILL)  # the zombie leader still holds the group id: no unrelated group is hit
            returncode = inc.popen.wait()
            if result is None:
                code, sig = (returncode, None) if returncode >= 0 else (None, -returncode)
        else:
            leftovers = group_members(inc.pgid, inc.create_time, inc.op)
            if leftovers:
                kill_members(leftovers)
        escaped = find_worker_processes(inc.op)  # children that left the group (setsid) but carry the incarnation's mark
        if escaped:
            _log.warning("killing %d process(es) of worker op %s outside its process group: %s", len(escaped), inc.op, [p.pid for p in escaped])
            kill_members(escaped)
        if inc.pidfd is not None:
            self._sel.unregister(inc.pidfd)
            os.close(inc.pidfd)
            inc.pidfd = None
        return code, sig

    def _after_end(self, slot: Slot, end: Event, failure: bool, describe: str, ended: Incarnation | None = None) -> None:
        """Journal ``end`` (of incarnation ``ended``, if it ran) with the decision: restart (with backoff), failed, or released."""
        spec = slot.spec
        restart = wants_restart(spec.restart, failure)
        if not restart:
            if failure:
                closing: Event = WorkerFailed(op=slot.op, reason=f"it {describe} and its restart policy is 'never'", restarts=slot.restarts)
                health = Health.FAILED
            else:
                closing = WorkerReleased(op=slot.op, reason=f"it {describe}; policy {spec.restart!r} does not restart it", restarts=slot.restarts)
                health = Health.STOPPED
            slot.ended = True
            self._journal(end, closing)
            self._set(slot, health, describe, ended=ended)
            return
        now = time.monotonic()
        if restarts_within_window(slot.recent, now, spec.restart_window) >= spec.max_restarts:
            slot.ended = True
            self._journal(
                end,
                WorkerFailed(
                    op=slot.op,
                    reason=(
                        f"it {describe} after {len(slot.recent)} restart(s) within {spec.restart_window:g} s; "
                        f"its budget is {spec.max_restarts}"
                    ),
                    restarts=slot.restarts,
                ),
            )
            _log.error("worker %s failed: restart budget of %d within %g s spent", spec.name, spec.max_restarts, spec.restart_window)
            self._set(slot, Health.FAILED, describe, ended=ended)
            return
        delay = backoff_delay(spec, len(slot.recent), slot.rng)
        slot.recent.append(now)
        inc = Incarnation(self.engine.new_op_id(WORKER.name), slot.restarts + 1, delay, now + delay)
        if self._journal(end, self._starting(slot, inc, f"restart: it {describe}")):
            _log.info("worker %s: restart %d in %.3f s", spec.name, inc.attempt, delay)
        # the restart count changes with the rest of the status (never "restarted" while still healthy on the dead pid)
        self._set(slot, Health.DEGRADED, describe, ended=ended, pending=inc, restarts=inc.attempt)  # a pending start is cancelled by a stop

    # -- signals and file descriptors --------------------------------------------------

    def _signal_inc(self, inc: Incarnation, sig: int) -> None:
        if inc.popen is not None or (inc.pidfd is not None and pgid_of(inc.pid) == inc.pgid):
            kill_group(inc.pgid, sig)  # the leader is alive or an unreaped zombie: the group id is ours
        elif inc.pidfd is not None:
            signal_process(inc.pid, inc.pidfd, sig, group=False)

    def _close_fds(self) -> None:
        for slot in self._slots.values():
            inc = slot.running
            if inc is not None and inc.pidfd is not None:
                os.close(inc.pidfd)
                inc.pidfd = None
        if self._selector is not None:
            self._selector.close()
        with self._cond:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
