"""Named crash points: places in the code where a test can make the process die.

A crash point is registered once, at import time, with a name such as
``journal.after_write`` and a sentence saying what has and has not happened
when the process dies there.  In normal runs :func:`crash_point` is a function
call and one global check.

A process is armed by the environment variable ``SHIPSLOG_CRASH_AT`` holding
``NAME`` (die at the first hit) or ``NAME@N`` (die at the N-th hit).  The
variable is read and removed when this module is imported, so it arms that one
process and none of its children.  ``SHIPSLOG_CRASH_MODE`` chooses how to die:
``kill`` (SIGKILL to itself, the default) or ``exit`` (``os._exit``); neither
runs any clean-up.  ``SHIPSLOG_CRASH_TRACE`` names a file to which every hit is
appended as one line, so a harness can see which points a workload reaches.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

__all__ = [
    "CRASH_AT_ENV",
    "CRASH_EXIT_CODE",
    "CRASH_MODE_ENV",
    "CRASH_TRACE_ENV",
    "crash_point",
    "register_crash_point",
    "registered_crash_points",
    "set_crash_hook",
]

CRASH_AT_ENV = "SHIPSLOG_CRASH_AT"
CRASH_MODE_ENV = "SHIPSLOG_CRASH_MODE"
CRASH_TRACE_ENV = "SHIPSLOG_CRASH_TRACE"
CRASH_EXIT_CODE = 77
"""Exit status of a process that died at a crash point in ``exit`` mode."""

_registry: dict[str, str] = {}


def register_crash_point(name: str, doc: str) -> str:
    """Register crash point ``name`` with a sentence describing it; returns ``name``.

    Registering the same name twice with the same text is allowed (modules can
    be re-imported); with different text it is a programming error.
    """
    if not name or any(c.isspace() for c in name) or "@" in name:
        raise ValueError(f"crash point names are non-empty, without spaces or '@'; got {name!r}")
    previous = _registry.get(name)
    if previous is not None and previous != doc:
        raise ValueError(f"crash point {name!r} is already registered as {previous!r}")
    _registry[name] = doc
    return name


def registered_crash_points() -> dict[str, str]:
    """Every registered crash point and its description (a copy)."""
    return dict(_registry)


def _parse_armed(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    count = int(nth) if nth else 1
    if count < 1:
        raise ValueError(f"{CRASH_AT_ENV}={spec!r}: the hit number after '@' must be 1 or more")
    return name, count


_armed = _parse_armed(os.environ.pop(CRASH_AT_ENV, None))
_mode = os.environ.pop(CRASH_MODE_ENV, "kill")
_trace_path = os.environ.pop(CRASH_TRACE_ENV, None)
_hits: dict[str, int] = {}
_hook: Callable[[str], None] | None = None


def set_crash_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Call ``hook(name)`` at every crash point hit in this process (None removes it); returns the previous hook.

    For in-process crash simulation in tests: the hook may raise to stop the
    operation at that point.  Independent of the environment-variable arming.
    """
    global _hook
    previous, _hook = _hook, hook
    return previous


def crash_point(name: str) -> None:
    """Die here, without clean-up, if this process was armed for ``name``.

    Otherwise do nothing.  The name must be registered.
    """
    if _armed is None and _trace_path is None and _hook is None:
        return
    _hit(name)


def _hit(name: str) -> None:
    if name not in _registry:
        raise ValueError(f"crash point {name!r} is not registered")
    if _trace_path is not None:
        fd = os.open(_trace_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (name + "\n").encode())
        finally:
            os.close(fd)
    if _hook is not None:
        _hook(name)
    if _armed is None or _armed[0] != name:
        return
    seen = _hits.get(name, 0) + 1
    _hits[name] = seen
    if seen < _armed[1]:
        return
    if _mode == "exit":
        os._exit(CRASH_EXIT_CODE)
    os.kill(os.getpid(), signal.SIGKILL)
