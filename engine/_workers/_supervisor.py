"""The supervisor of worker processes: :class:`Supervisor`, whose starts, deaths, restarts and failures are journaled.

:class:`Supervisor` takes charge of each :class:`WorkerSpec` (journaling
``worker.supervised``), starts it as a process in its own session (its own
process group, so the worker's own children go with it) or, with
``adopt=True``, takes over a live worker of a dead session, and runs **one
monitor thread** that waits on every process's pidfd, on pending restarts and
on stop deadlines; what happens to each process (spawn, end, reap, journal,
restart by policy) is :class:`~shipslog.engine._workers._lifecycle.WorkerLifecycle`'s.
:meth:`Supervisor.stop` ends them all: ``worker.stopped`` (terminated,
killed or cancelled) and ``worker.released``.

Guarantees: :meth:`Supervisor.start` returns when each first start finished;
:meth:`Supervisor.stop` returns only when every worker was terminated
(SIGTERM to the group, ``stop_timeout``, then SIGKILL), reaped, journaled,
and no live member of its group is left; if the monitor fails or the engine
stops accepting records, every worker is killed rather than run unwatched or
unjournaled.  Health is explicit (:class:`Health`) and never "failed" or
"degraded" before the first start finished; status may be read from any thread.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shipslog.journal import crash_point, register_crash_point

from .._state import OpRecord
from ._errors import SupervisorError, WorkerConfigError
from ._events import (
    WORKER_OP_ENV,
    WorkerAdopted,
    WorkerDied,
    WorkerReleased,
    WorkerState,
    WorkerStopped,
    WorkerSupervised,
    worker_incarnations,
)
from ._identity import environ_op_of, probe_worker
from ._lifecycle import WorkerLifecycle
from ._operation import WORKER
from ._process import KILL_GRACE
from ._spec import WorkerSpec
from ._status import SEVERITY, Health, Incarnation, Slot, WorkerStatus

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; only the type checker reads this

    from .._core import EngineCore

__all__ = ["POLL_INTERVAL", "Supervisor"]

_log = logging.getLogger("shipslog.engine.supervisor")

POLL_INTERVAL = 0.005
"""Seconds between ``waitid`` polls where pidfds are not available."""

CP_STOP_SIGNAL = register_crash_point(
    "worker.after_stop_signal", "a stop sent SIGTERM to a running worker's group; worker.stopped is not journaled"
)
CP_STOPPED = register_crash_point(
    "worker.after_stopped", "every worker of a stopping supervisor is stopped and journaled; worker.released is not journaled"
)


class Supervisor(WorkerLifecycle):
    """Runs worker processes, restarts them by policy, and journals every start, exit, death and restart.

    ``Supervisor(engine, workers=[WorkerSpec(...), ...])``; ``workers`` may
    hold plain dicts (checked by :meth:`WorkerSpec.from_dict`).  Use it as a
    context manager, or call :meth:`start` and :meth:`stop`; stop it before
    closing the engine.  ``seed`` seeds each worker's backoff jitter (with the
    worker's name), so the delays are reproducible.  ``adopt=True`` takes over
    live workers of the same name left running by a dead session (found in
    the engine state, checked by pid and create time) instead of starting new
    processes.

    Thread-safe: :attr:`health`, :meth:`workers` and :meth:`wait_until` may be
    called from any thread (a subscriber too); all process handling happens
    in one monitor thread.  If the engine stops accepting records (closed,
    broken), the supervisor kills its workers rather than run them unjournaled.
    """

    def __init__(
        self,
        engine: EngineCore,
        workers: Sequence[WorkerSpec | Mapping[str, Any]],
        *,
        seed: int | str | None = None,
        adopt: bool = False,
    ) -> None:
        specs = [w if isinstance(w, WorkerSpec) else WorkerSpec.from_dict(w) for w in workers]
        if not specs:
            raise WorkerConfigError("a supervisor needs at least one worker")
        names = [s.name for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise WorkerConfigError(f"worker names must be unique; given more than once: {duplicates}")
        if engine.registry.op_type(WORKER.name) is not WORKER:
            raise SupervisorError("the engine does not register the 'worker' operation type; open it with operations=[WORKER]")
        super().__init__(engine, specs, seed=seed, adopt=adopt)

    # -- public ------------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Journal the supervisions and start every worker (or adopt it); returns when each first start finished.

        A worker whose first start fails is handled like a failure (restart
        with backoff, or failed).  Raises :class:`SupervisorError` when called twice.
        """
        with self._cond:
            if self._started:
                raise SupervisorError("this supervisor was started already; make a new one")
            self._started = True
        try:
            self.engine.check_usable()
            self._selector = selectors.DefaultSelector()
            with self._cond:
                self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
            adoptable = self._adoptable() if self.adopt else {}
            for slot in self._slots.values():
                slot.op = self.engine.new_op_id(WORKER.name)
                supervised = WorkerSupervised(
                    op=slot.op,
                    name=slot.spec.name,
                    policy=slot.spec.restart,
                    max_restarts=slot.spec.max_restarts,
                    restart_window=slot.spec.restart_window,
                    command=_shown(slot.spec),
                )
                found = adoptable.get(slot.spec.name)
                if found is not None and self._adopt(slot, found, supervised):
                    continue
                first = Incarnation(self.engine.new_op_id(WORKER.name), 0, 0.0, time.monotonic())
                if self._journal(supervised, self._starting(slot, first, "first start")):
                    slot.pending = first
                    self._spawn(slot)
                if self._journal_failure is not None:
                    raise SupervisorError(f"the supervisor could not journal its workers' start: {self._journal_failure}") from self._journal_failure
        except BaseException:
            self._emergency_stop()
            raise
        with self._cond:
            self._state = Health.HEALTHY
            self._cond.notify_all()
        self._thread = threading.Thread(target=self._monitor, name="shipslog-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop every worker (SIGTERM to its group, ``stop_timeout``, SIGKILL), reap it, journal it; idempotent.

        Returns when the monitor thread finished: every worker is gone and
        journaled ``worker.stopped``, every supervision ``worker.released``
        (or failed).  ``timeout`` bounds the wait (:class:`SupervisorError`
        when it passes).  Called from the monitor thread itself (a subscriber),
        it only asks for the stop.
        """
        with self._cond:
            self._stop_requested = True
            started = self._started
            if not started:
                self._started = True
                self._state = Health.STOPPED
                self._cond.notify_all()
        if not started:
            self._close_fds()
            return
        self._wake()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        if thread.is_alive():
            raise SupervisorError(f"the supervisor did not stop its workers within {timeout} s")

    def __enter__(self) -> Self:
        self.start()  # returns self
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def health(self) -> Health:
        """The supervisor's health: the worst of its workers' (failed > degraded > starting > healthy), or stopping/stopped."""
        with self._cond:
            return self._overall()

    def workers(self) -> dict[str, WorkerStatus]:
        """Every worker's status now, by name."""
        with self._cond:
            return {name: self._status(slot) for name, slot in self._slots.items()}

    def wait_until(self, predicate: Callable[[Supervisor], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked on every change); False when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))

    @property
    def journal_failure(self) -> BaseException | None:
        """The engine error that made the supervisor kill its workers (engine closed or broken), or None."""
        return self._journal_failure

    def __repr__(self) -> str:
        return f"<shipslog.Supervisor {len(self._slots)} worker(s) {self.health.value}>"

    # -- status (under self._cond) -------------------------------------------------------

    def _overall(self) -> Health:
        if self._state is not Health.HEALTHY:
            return self._state  # starting (start() has not finished), stopping or stopped
        live = [s.health for s in self._slots.values() if s.health is not Health.STOPPED]
        if not live:
            return Health.STOPPED
        return max(live, key=lambda h: SEVERITY.get(h, 0))

    def _status(self, slot: Slot) -> WorkerStatus:
        inc = slot.running or slot.pending
        running = slot.running
        return WorkerStatus(
            name=slot.spec.name,
            health=slot.health,
            slot=slot.op,
            op=inc.op if inc is not None else None,
            pid=running.pid if running is not None else None,
            create_time=running.create_time if running is not None else None,
            attempt=inc.attempt if inc is not None else slot.restarts,
            restarts=slot.restarts,
            last_exit=slot.last_exit,
            adopted=running.adopted if running is not None else False,
        )

    # -- adoption --------------------------------------------------------------------------

    def _adoptable(self) -> dict[str, OpRecord]:
        """Running incarnations of other (dead) sessions whose supervision ended, by worker name."""
        state = self.engine.state
        found: dict[str, OpRecord] = {}
        for op in worker_incarnations(state):
            slot_op = state.ops.get(str(op.info.get("slot")))
            if op.state != WorkerState.STARTED.value or slot_op is not None:
                continue
            name = str(op.info.get("name"))
            if name in self._slots:
                found[name] = op
        return found

    def _adopt(self, slot: Slot, op: OpRecord, supervised: WorkerSupervised) -> bool:
        """Take over live process ``op`` for ``slot`` (journal supervised + adopted); a gone one is journaled died."""
        info = op.info
        pid, created = int(info["pid"]), float(info["create_time"])
        ticks, boot = info.get("start_ticks"), info.get("boot_id") or None
        inc = Incarnation(op.id, int(info.get("attempt", 0)), 0.0, time.monotonic())
        inc.pid, inc.pgid, inc.create_time, inc.adopted = pid, int(info.get("pgid") or pid), created, True
        try:
            inc.pidfd = os.pidfd_open(pid)
        except OSError:
            inc.pidfd = None
        # the journal is untrusted: only a live process with the journaled identity *and* the op id mark is adopted
        if inc.pidfd is None or not probe_worker(pid, created, start_ticks=ticks, boot_id=boot) or environ_op_of(pid) != op.id:
            if inc.pidfd is not None:
                os.close(inc.pidfd)
            self._journal(WorkerDied(op=op.id, reason=f"gone at recovery: no live process {pid} with its create time and {WORKER_OP_ENV}"))
            return False
        self._sel.register(inc.pidfd, selectors.EVENT_READ, inc)
        with self._cond:
            slot.running = inc
        if self._journal(supervised, WorkerAdopted(op=op.id, slot=slot.op, session=self.engine.session)):
            _log.warning("worker %s: adopted live process %d left by session %s", slot.spec.name, pid, op.session)
            self._set(slot, Health.HEALTHY)
        return True

    # -- the monitor thread --------------------------------------------------------------

    def _monitor(self) -> None:
        try:
            while True:
                now = time.monotonic()
                if self._stop_requested and not self._stopping:
                    self._begin_stop()
                if not self._stopping:
                    for slot in self._slots.values():
                        if slot.pending is not None and slot.pending.start_at <= now:
                            self._spawn(slot)
                else:
                    self._escalate(now)
                    if not any(s.running is not None for s in self._slots.values()):
                        crash_point(CP_STOPPED)
                        break
                for key, _mask in self._sel.select(self._timeout()):
                    if key.data is None:
                        self._drain_wake()
                    else:
                        self._on_end(key.data)
                if self._polling:
                    self._poll_children()
        except BaseException:  # noqa: BLE001 - a bug here must not leave workers running unwatched
            _log.exception("the supervisor's monitor failed; killing every worker")
            self._emergency_stop()
        finally:
            self._finish()

    def _timeout(self) -> float | None:
        now = time.monotonic()
        times = [s.pending.start_at for s in self._slots.values() if s.pending is not None and not self._stopping]
        times += [s.running.kill_at for s in self._slots.values() if s.running is not None and s.running.kill_at is not None]
        wait = max(0.0, min(times) - now) if times else None
        if self._polling:
            wait = POLL_INTERVAL if wait is None else min(wait, POLL_INTERVAL)
        return wait

    # -- stopping ------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        self._stopping = True
        with self._cond:
            self._state = Health.STOPPING
            self._cond.notify_all()
        now = time.monotonic()
        for slot in self._slots.values():
            if slot.pending is not None:
                self._journal(WorkerStopped(op=slot.pending.op, how="cancelled"))
                with self._cond:
                    slot.pending = None
            inc = slot.running
            if inc is not None:
                inc.stop_how = "terminated"
                inc.kill_at = now + slot.spec.stop_timeout
                self._signal_inc(inc, signal.SIGTERM)
                crash_point(CP_STOP_SIGNAL)
            if not slot.ended:
                self._set(slot, Health.STOPPING)

    def _escalate(self, now: float) -> None:
        for slot in self._slots.values():
            inc = slot.running
            if inc is None or inc.kill_at is None or inc.kill_at > now:
                continue
            if not inc.killed:
                _log.warning("worker %s (pid %d) did not stop within %g s of SIGTERM: killing it", slot.spec.name, inc.pid, slot.spec.stop_timeout)
                inc.killed = True
                inc.stop_how = "killed"
                inc.kill_at = now + KILL_GRACE
                self._signal_inc(inc, signal.SIGKILL)
            else:
                _log.error("worker %s (pid %d) survived SIGKILL for %g s; leaving it journaled as started", slot.spec.name, inc.pid, KILL_GRACE)
                if inc.pidfd is not None:
                    self._sel.unregister(inc.pidfd)
                    os.close(inc.pidfd)
                    inc.pidfd = None
                with self._cond:
                    slot.running = None

    def _finish(self) -> None:
        """After the last worker ended: drain group leftovers, release the supervisions, close the fds."""
        for slot in self._slots.values():
            if not slot.ended:
                slot.ended = True
                reason = "the supervisor stopped" if self._journal_failure is None else f"the engine stopped accepting records ({self._journal_failure})"
                self._journal(WorkerReleased(op=slot.op, reason=reason, restarts=slot.restarts))
            if slot.health is not Health.FAILED:
                self._set(slot, Health.STOPPED)
        self._close_fds()
        with self._cond:
            self._state = Health.STOPPED
            self._cond.notify_all()

    def _emergency_stop(self) -> None:
        """Kill every process this supervisor started (no journaling needed to be safe: recovery finds the rest)."""
        for slot in self._slots.values():
            inc = slot.running
            if inc is None:
                continue
            self._signal_inc(inc, signal.SIGKILL)
            if inc.popen is not None:
                try:
                    inc.popen.wait(KILL_GRACE)
                except subprocess.TimeoutExpired:
                    _log.error("worker %s (pid %d) survived SIGKILL", slot.spec.name, inc.pid)
            with self._cond:
                slot.running = None
                slot.health = Health.STOPPED
        with self._cond:
            self._state = Health.STOPPED
            self._cond.notify_all()
        self._close_fds()


def _shown(spec: WorkerSpec) -> list[str]:
    """The command journaled by ``worker.supervised``: ``argv``, or ``python module:function args...``."""
    return list(spec.argv) if spec.argv is not None else ["python", f"{spec.target}", *spec.args]
