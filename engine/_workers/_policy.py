"""Restart policy: whether a worker whose process ended is restarted, its restart budget, and the backoff before a restart.

The rules a :class:`~shipslog.engine.WorkerSpec` declares (``restart``,
``max_restarts`` within ``restart_window``, ``backoff_*``), as pure
functions; the supervisor's monitor thread applies them.

Guarantee: pure (nothing here starts, signals or journals; the only state
touched is the deque of recent restart times passed in); a delay is never
below 0 nor above ``backoff_max``, and the same seeded generator gives the
same delays.
"""

from __future__ import annotations

import collections
import random

from ._spec import RestartPolicy, WorkerSpec

__all__ = ["backoff_delay", "restarts_within_window", "wants_restart"]


def wants_restart(policy: RestartPolicy, failure: bool) -> bool:
    """True when ``policy`` restarts a worker that ended; ``failure``: a non-zero exit, a signal or a failed start."""
    return policy == "always" or (policy == "on-failure" and failure)


def restarts_within_window(recent: collections.deque[float], now: float, window: float) -> int:
    """Drop from ``recent`` (monotonic restart times, oldest first) those ``window`` seconds or more before ``now``; how many are left."""
    while recent and recent[0] <= now - window:
        recent.popleft()
    return len(recent)


def backoff_delay(spec: WorkerSpec, restarts_in_window: int, rng: random.Random) -> float:
    """Seconds to wait before a restart: ``min(backoff_max, backoff_initial * backoff_multiplier ** n)``, jittered.

    ``n`` is ``restarts_in_window``; one draw of ``rng`` scales the delay by
    ``1 +- backoff_jitter``; the result is kept within ``[0, backoff_max]``
    and rounded to microseconds.
    """
    base = min(spec.backoff_max, spec.backoff_initial * spec.backoff_multiplier ** restarts_in_window)
    jittered = base * (1 + spec.backoff_jitter * (2 * rng.random() - 1))
    return round(min(spec.backoff_max, max(0.0, jittered)), 6)
