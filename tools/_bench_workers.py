"""``shipslog bench workers``: how fast the supervisor journals a worker's death and runs its replacement.

One run, in one temporary folder on the disk under test (fsync on), with one
supervised worker (``sleep``) killed with SIGKILL ``rounds`` times:

* ``detect_death_ms``: from the ``kill`` call to the moment a subscriber holds
  the durable ``worker.died`` record (pidfd wake-up, reaping, one fsynced frame);
* ``restart_ms``: from the ``kill`` call to the durable ``worker.started``
  record of the replacement (the process has exec'ed); this includes the
  policy's backoff, reported as ``backoff_ms`` (the journaled delays), and
  ``restart_overhead_ms`` is ``restart_ms - backoff_ms``, round by round.

Targets: ``detect_death_ms <= 50`` and ``restart_overhead_ms <= 250``.  The
policy is ``on-failure`` with a 50 ms backoff +-10 % jitter (seeded) and a
restart window shorter than a round, so every kill is a first restart.
Medians and maxima are reported.  Nothing here prints; progress is logged at INFO.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from typing import Any

from shipslog import Engine
from shipslog.engine import (
    EventRecord,
    Supervisor,
    WorkerDied,
    WorkerSpec,
    WorkerStarted,
    WorkerStarting,
)

from ._bench_targets import Target, judge

__all__ = [
    "BACKOFF_S",
    "TARGETS",
    "run_workers_bench",
]

TARGETS = (
    Target("detect_death_le_50ms", "detect_death_ms", "<=", 50, "death -> worker.died journaled (ms)"),
    Target("restart_overhead_le_250ms", "restart_overhead_ms", "<=", 250, "restart beyond the backoff (ms)"),
)
"""What ``shipslog bench workers`` must show."""

_log = logging.getLogger("shipslog.tools.bench")

BACKOFF_S = 0.05
"""The policy's backoff before each restart (seconds, before jitter)."""
_WAIT_S = 30.0


def run_workers_bench(directory: str, *, rounds: int = 20) -> dict[str, Any]:
    """Kill a supervised worker ``rounds`` times and time the journaled death and the running replacement."""
    if rounds < 1:
        raise ValueError(f"rounds must be 1 or more, got {rounds}")
    sleep = shutil.which("sleep")
    if sleep is None:
        raise FileNotFoundError("the benchmark's worker is the 'sleep' program, which is not on PATH")
    tmp = tempfile.mkdtemp(prefix="shipslog-bench-workers-", dir=directory)
    detect: list[float] = []
    restart: list[float] = []
    backoff: list[float] = []
    try:
        with Engine.open(os.path.join(tmp, "root"), fsync=True) as engine:
            changed = threading.Condition()
            died: dict[str, float] = {}
            starting: list[WorkerStarting] = []
            started: dict[str, float] = {}

            def heard(rec: EventRecord) -> None:
                now = time.perf_counter()
                with changed:
                    if isinstance(rec.event, WorkerDied):
                        died[rec.event.op] = now
                    elif isinstance(rec.event, WorkerStarting):
                        starting.append(rec.event)
                    elif isinstance(rec.event, WorkerStarted):
                        started[rec.event.op] = now
                    changed.notify_all()

            engine.subscribe(heard, ["worker.died", "worker.starting", "worker.started"])
            spec = WorkerSpec(
                name="bench",
                argv=(sleep, "100000"),
                output="devnull",
                max_restarts=1,
                restart_window=0.001,
                backoff_initial=BACKOFF_S,
                backoff_jitter=0.1,
                stop_timeout=5,
            )
            with Supervisor(engine, [spec], seed=0) as sv:
                for n in range(rounds):
                    status = sv.workers()["bench"]
                    if status.pid is None or status.op is None:
                        raise RuntimeError(f"round {n}: the worker is not running ({status.health.value})")
                    old = status.op

                    def replaced(old: str = old) -> bool:
                        return old in died and bool(starting) and starting[-1].op in started

                    time.sleep(0.01)  # longer than the restart window: every kill is a first restart
                    with changed:
                        starting.clear()
                    t0 = time.perf_counter()
                    os.kill(status.pid, signal.SIGKILL)
                    with changed:
                        if not changed.wait_for(replaced, _WAIT_S):
                            raise TimeoutError(f"round {n}: no replacement journaled within {_WAIT_S} s")
                        replacement = starting[-1]
                        detect.append((died[old] - t0) * 1000)
                        restart.append((started[replacement.op] - t0) * 1000)
                        backoff.append(replacement.delay * 1000)
                    _log.info(
                        "round %d: death journaled in %.2f ms, replacement running in %.2f ms (backoff %.1f ms)",
                        n, detect[-1], restart[-1], backoff[-1],
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    overhead = [r - b for r, b in zip(restart, backoff)]
    result: dict[str, Any] = {
        "dir": os.path.abspath(directory),
        "rounds": rounds,
        "statistic": "median",
        "detect_death_ms": round(statistics.median(detect), 3),
        "detect_death_ms_max": round(max(detect), 3),
        "restart_ms": round(statistics.median(restart), 3),
        "restart_ms_max": round(max(restart), 3),
        "backoff_ms": round(statistics.median(backoff), 3),
        "restart_overhead_ms": round(statistics.median(overhead), 3),
        "restart_overhead_ms_max": round(max(overhead), 3),
        "policy": {"restart": "on-failure", "backoff_initial_s": BACKOFF_S, "backoff_jitter": 0.1},
    }
    return judge(TARGETS, result)
