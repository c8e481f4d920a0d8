"""A supervisor of worker processes whose starts, deaths, restarts and failures are journaled.

:class:`Supervisor` starts each :class:`WorkerSpec` as a process in its own
session (its own process group, so the worker's own children go with it),
watches every process through a pidfd (Linux >= 5.3; elsewhere it polls
``waitid`` every :data:`POLL_INTERVAL` seconds) in **one monitor thread**, and
journals, through the engine, every step of its life (see
:mod:`shipslog.engine._workers` for the ``worker`` operation table):

* ``worker.supervised`` when it takes charge of a worker;
* ``worker.starting`` (attempt, backoff delay) then ``worker.started`` (pid,
  psutil create time, start ticks, boot id) for every process;
* ``worker.exited`` (code) or ``worker.died`` (signal) when it ends by itself,
  in the same journal frame as what the supervisor decided: the next
  ``worker.starting`` (a restart, with its attempt number and delay),
  ``worker.failed`` (restart budget spent, or policy ``never``) or
  ``worker.released`` (finished, and the policy does not restart it);
* ``worker.stopped`` (terminated, killed or cancelled) and ``worker.released``
  when :meth:`Supervisor.stop` ends them.

Guarantees: a death is journaled within milliseconds (the pidfd wakes the
monitor; the record is fsynced before subscribers hear of it); the leftovers
of a dead worker's process group are killed before the worker is reaped (the
zombie leader keeps the group id from being reused); :meth:`Supervisor.stop`
returns only when every worker was terminated (SIGTERM to the group,
``stop_timeout``, then SIGKILL), reaped, and no live member of its group is
left; restarts back off exponentially (seeded jitter, a cap) and a worker
that spends its budget is journaled ``worker.failed`` and never restarted, so
a crash loop is never a hot loop.  Health is explicit (:class:`Health`) and
never "failed" or "degraded" before the first start finished.

Python callables run as ``python -c <bootstrap> module:qualname args...`` (a
fresh interpreter: no fork of this threaded process), with this process's
``sys.path`` passed on in ``PYTHONPATH`` (as multiprocessing's spawn does), so
the target must be importable by name (not a lambda, not defined inside a
function, not in ``__main__``).

Recovery of a host whose supervisor died (SIGKILL, power cut) uses the
module functions :func:`probe_worker`, :func:`stop_worker`,
:func:`find_worker_processes`, :func:`settle_worker_event` and
:func:`recover_worker`; a supervisor opened with ``adopt=True`` takes over
live workers of a dead session instead of starting new ones.
"""

from __future__ import annotations

import collections
import enum
import errno
import logging
import math
import os
import random
import re
import reprlib
import select
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import psutil

from shipslog.journal import JournalBrokenError, JournalClosedError, crash_point, register_crash_point

from ._errors import EngineError
from ._events import Event
from ._names import check_name
from ._state import OpRecord
from ._workers import (
    MAX_STOP_TIMEOUT,
    WORKER,
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
)

if TYPE_CHECKING:
    from ._core import EngineCore

__all__ = [
    "CREATE_TIME_TOLERANCE",
    "KILL_GRACE",
    "POLL_INTERVAL",
    "Health",
    "ProcessIdentity",
    "RestartPolicy",
    "Supervisor",
    "SupervisorError",
    "WorkerConfigError",
    "WorkerSpec",
    "WorkerStatus",
    "find_worker_processes",
    "probe_worker",
    "process_identity",
    "recover_worker",
    "settle_cut_off_worker",
    "settle_worker_event",
    "stop_worker",
]

_log = logging.getLogger("shipslog.engine.supervisor")

CREATE_TIME_TOLERANCE = 2.0
"""Seconds two psutil create times of one process may differ by, read in different processes.

psutil adds the boot time (whole seconds, re-read from /proc/stat, which moves
with clock adjustments) to the process's start ticks; where the exact start
ticks and boot id were journaled (Linux), they are compared instead, exactly.
"""
POLL_INTERVAL = 0.005
"""Seconds between ``waitid`` polls where pidfds are not available."""
KILL_GRACE = 5.0
"""Seconds to wait for a process to vanish after SIGKILL before reporting it unkillable (stuck in the kernel)."""
GROUP_DRAIN = 2.0
"""Seconds :meth:`Supervisor.stop` and :func:`stop_worker` wait for killed group members to vanish."""

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
CP_STOP_SIGNAL = register_crash_point(
    "worker.after_stop_signal", "a stop sent SIGTERM to a running worker's group; worker.stopped is not journaled"
)
CP_STOPPED = register_crash_point(
    "worker.after_stopped", "every worker of a stopping supervisor is stopped and journaled; worker.released is not journaled"
)

RestartPolicy = Literal["never", "on-failure", "always"]
_PY_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_BOOTSTRAP = (
    "import importlib, sys\n"
    "target = sys.argv[1]\n"
    "module, _, qualname = target.partition(':')\n"
    "fn = importlib.import_module(module)\n"
    "for part in qualname.split('.'):\n"
    "    fn = getattr(fn, part)\n"
    "sys.argv = [target, *sys.argv[2:]]\n"
    "rc = fn(*sys.argv[1:])\n"
    "sys.exit(rc if isinstance(rc, int) else 0)\n"
)

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]

MAX_SPEC_STRING_BYTES = 64 * 1024
"""Most bytes (encoded for the OS) of one string that reaches the worker process: an argv item, an arg,
the target, the cwd, an env name or value.  Linux refuses single exec strings over 128 KiB."""
MAX_SPEC_ITEMS = 4096
"""Most items of ``argv``, of ``args`` and of ``env`` (each counted on its own)."""
MAX_SPEC_COMMAND_BYTES = 1024 * 1024
"""Most bytes of ``argv``/``args`` and ``env`` together (Linux allows about 2 MiB for exec, inherited environment included)."""
MAX_SPEC_RESTARTS = 1_000_000
"""Largest ``max_restarts``: it is journaled as a 64-bit integer, and a million restarts in one window is unlimited in practice."""
MAX_SPEC_DEPTH = 2
"""Deepest nesting of a plain-data worker config: the config mapping, then a list (``argv``, ``args``) or a
mapping (``env``) of strings.  :meth:`WorkerSpec.from_dict` refuses anything deeper before converting."""
_MESSAGE_LIMIT = 600
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SHOW = reprlib.Repr()
_SHOW.maxstring = 80
_SHOW.maxother = 80
_SHOW.maxlevel = 3


def _show(value: object) -> str:
    """A short ``repr`` of ``value`` for an error message: bounded in length and depth, whatever ``value`` is."""
    return _SHOW.repr(value)


def _cap(text: str) -> str:
    """``text`` cut to about :data:`_MESSAGE_LIMIT` characters (head and tail kept), so no message repeats a huge input."""
    if len(text) <= _MESSAGE_LIMIT:
        return text
    return f"{text[: _MESSAGE_LIMIT - 100]}...{text[-90:]}"


class WorkerConfigError(EngineError, ValueError):
    """A worker configuration is not valid: an unknown key, a wrong type, a value out of range.

    The message names the key and what was expected.
    """


class SupervisorError(EngineError, RuntimeError):
    """A supervisor was used the wrong way (started twice, started after stop) or a worker could not be ended."""


class WorkerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How to run and restart one worker; validated when made (:class:`WorkerConfigError`).

    Exactly one of ``argv`` (a command, ``argv[0]`` looked up on ``PATH``) and
    ``target`` (``"module:function"``, called as ``function(*args)`` in a
    fresh Python; an int it returns is the exit code) is given.  ``env`` is
    added to this process's environment (or replaces it, with
    ``inherit_env=False``); ``output`` is ``"inherit"`` or ``"devnull"`` for
    the worker's stdout and stderr.

    ``restart``: ``never``, ``on-failure`` (a non-zero exit or a signal) or
    ``always``.  At most ``max_restarts`` restarts within ``restart_window``
    seconds; the next failure journals ``worker.failed``.  The n-th restart
    within the window waits ``min(backoff_max, backoff_initial *
    backoff_multiplier ** n)`` seconds, scaled by ``1 +- backoff_jitter``
    (seeded, see :class:`Supervisor`), never more than ``backoff_max``.  A stop
    sends SIGTERM to the worker's process group, waits ``stop_timeout``
    seconds, then sends SIGKILL.

    Build one from plain data (a config file) with :meth:`from_dict`.
    """

    name: str
    argv: tuple[str, ...] | None = None
    target: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    inherit_env: bool = True
    cwd: str | None = None
    output: Literal["inherit", "devnull"] = "inherit"
    restart: RestartPolicy = "on-failure"
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=MAX_SPEC_RESTARTS)] = 5
    restart_window: Positive = 60.0
    backoff_initial: NonNegative = 0.1
    backoff_multiplier: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    backoff_max: NonNegative = 30.0
    backoff_jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    stop_timeout: Annotated[float, msgspec.Meta(ge=0, le=MAX_STOP_TIMEOUT)] = 10.0

    def __post_init__(self) -> None:
        """Check every field; raise :class:`WorkerConfigError` naming the first bad one (e.g. ``WorkerSpec.argv[1]``).

        Guarantees: a spec that exists can be handed to ``subprocess.Popen``
        without a ``ValueError`` or ``UnicodeEncodeError`` of its own making:
        no string that reaches the process (argv items, args, target, cwd, env
        names and values) holds NUL, every one encodes for the OS and is at
        most :data:`MAX_SPEC_STRING_BYTES` bytes, env names are non-empty
        without ``=``, ``argv[0]`` is non-empty, there are at most
        :data:`MAX_SPEC_ITEMS` argv items, args and env entries each and
        :data:`MAX_SPEC_COMMAND_BYTES` bytes of them in all, and every number
        is finite.
        """
        for field in msgspec.structs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, bool) and field.type is not bool:
                raise WorkerConfigError(f"WorkerSpec.{field.name}: expected {_type_name(field.type)}, got bool")
            try:
                msgspec.convert(value, field.type)
            except msgspec.ValidationError as exc:
                raise WorkerConfigError(f"WorkerSpec.{field.name}: {_cap(_plain(str(exc)))} (got {_show(value)})") from None
            except RecursionError:
                raise WorkerConfigError(f"WorkerSpec.{field.name}: expected {_type_name(field.type)}, got data nested too deeply to check") from None
            if isinstance(value, float) and not math.isfinite(value):
                raise WorkerConfigError(f"WorkerSpec.{field.name}: expected a finite number of seconds, got {value!r}")
        try:
            check_name("worker", self.name)
        except ValueError as exc:
            raise WorkerConfigError(f"WorkerSpec.name: {_cap(str(exc))}") from None
        of = f" of worker {self.name!r}"
        if (self.argv is None) == (self.target is None):
            raise WorkerConfigError(
                f"worker {self.name!r}: give exactly one of 'argv' (a command) and 'target' ('module:function'), "
                f"got {'both' if self.argv is not None else 'neither'}"
            )
        total = 0
        if self.argv is not None:
            if not self.argv:
                raise WorkerConfigError(f"WorkerSpec.argv{of}: expected a non-empty command, got []")
            if not self.argv[0]:
                raise WorkerConfigError(f"WorkerSpec.argv[0]{of}: expected a non-empty command (a program name or path), got ''")
            total += _check_items("argv", self.argv, of)
        if self.target is not None:
            total += _check_os_string("target", self.target, of)
            if not _PY_TARGET.fullmatch(self.target):
                raise WorkerConfigError(f"WorkerSpec.target{of}: expected 'module:function' (dotted names), got {_show(self.target)}")
        if self.args and self.target is None:
            raise WorkerConfigError(f"WorkerSpec.args{of}: only a 'target' takes args (put them in 'argv')")
        total += _check_items("args", self.args, of)
        if self.cwd is not None:
            if not self.cwd:
                raise WorkerConfigError(f"WorkerSpec.cwd{of}: expected a folder path or null, got ''")
            _check_os_string("cwd", self.cwd, of)
        if len(self.env) > MAX_SPEC_ITEMS:
            raise WorkerConfigError(f"WorkerSpec.env{of}: expected at most {MAX_SPEC_ITEMS} variables, got {len(self.env)}")
        for key, value in self.env.items():
            where = f"env[{_show(key)}]"
            if not key:
                raise WorkerConfigError(f"WorkerSpec.{where}{of}: expected a variable name, got an empty string")
            if "=" in key:
                raise WorkerConfigError(f"WorkerSpec.{where}{of}: invalid variable name: expected a name without '=', got {_show(key)}")
            total += _check_os_string(f"{where} (the name)", key, of)
            total += _check_os_string(where, value, of)
        if total > MAX_SPEC_COMMAND_BYTES:
            raise WorkerConfigError(
                f"WorkerSpec{of}: expected at most {MAX_SPEC_COMMAND_BYTES} bytes of command line and environment in all, got {total}"
            )
        if self.backoff_max < self.backoff_initial:
            raise WorkerConfigError(
                f"WorkerSpec.backoff_max{of}: expected >= backoff_initial ({self.backoff_initial}), got {self.backoff_max}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerSpec:
        """A spec from plain data; an unknown key, a wrong type or a bad value raises :class:`WorkerConfigError`.

        The message names the key and the expected type, e.g.
        ``WorkerSpec.stop_timeout: Expected `float`, got `str```.

        Guarantees: for any plain data (mappings, lists, strings, numbers,
        booleans, None, nested to any depth) this returns a valid spec or
        raises :class:`WorkerConfigError`, nothing else.  Nesting deeper than
        :data:`MAX_SPEC_DEPTH`, keys that are not strings and text that is not
        UTF-8 are refused by an iterative walk before anything is converted,
        so the work is linear in the size of ``data`` and never recursive.
        """
        if not isinstance(data, Mapping):
            raise WorkerConfigError(f"a worker config must be a mapping of keys to values, got {type(data).__name__}")
        _check_plain_shape(data)
        try:
            return msgspec.convert(dict(data), cls)
        except WorkerConfigError:
            raise
        except RecursionError:
            raise WorkerConfigError(f"WorkerSpec: expected at most {MAX_SPEC_DEPTH} levels of nesting, got data nested too deeply to convert") from None
        except UnicodeEncodeError as exc:
            raise WorkerConfigError(f"WorkerSpec: expected text that encodes as UTF-8, got {_show(exc.object)} ({exc.reason})") from None
        except msgspec.ValidationError as exc:
            message = str(exc)
            found = re.search(r"unknown field `([^`]*)`", message)
            if found:
                known = ", ".join(f.name for f in msgspec.structs.fields(cls))
                raise WorkerConfigError(f"WorkerSpec: unknown key {_show(found.group(1))}; known keys: {known}") from None
            where = re.search(r" - at `\$\.([^`]*)`$", message)
            key = where.group(1) if where else None
            text = _cap(_plain(message))
            if key:
                raise WorkerConfigError(f"WorkerSpec.{_cap(key)}: {text}") from None
            raise WorkerConfigError(text if text.startswith(("WorkerSpec", "worker ")) else f"WorkerSpec: {text}") from None

    @classmethod
    def python(cls, name: str, target: Callable[..., Any] | str, *, args: Sequence[str] = (), **options: Any) -> WorkerSpec:
        """A spec that runs the importable function ``target`` (or a ``"module:function"`` string) as ``target(*args)``."""
        return cls(name=name, target=callable_target(target), args=tuple(args), **options)

    def command(self) -> list[str]:
        """The argv the worker process is started with."""
        if self.argv is not None:
            return list(self.argv)
        assert self.target is not None
        return [sys.executable, "-c", _BOOTSTRAP, self.target, *self.args]


def callable_target(target: Callable[..., Any] | str) -> str:
    """The ``"module:qualname"`` of an importable function (a string is checked and returned)."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not callable(target) or not isinstance(module, str) or not isinstance(qualname, str):
        raise WorkerConfigError(f"WorkerSpec.target: expected an importable function or 'module:function', got {target!r}")
    if "<" in qualname or module == "__main__":
        raise WorkerConfigError(
            f"WorkerSpec.target: {module}.{qualname} cannot be imported by name in a fresh interpreter "
            "(lambdas, nested functions and __main__ cannot); define it at the top level of an importable module"
        )
    return f"{module}:{qualname}"


def _check_os_string(where: str, value: str, of: str) -> int:
    """Return the OS-encoded length of ``value``; raise :class:`WorkerConfigError` when it cannot reach a process.

    Refused: NUL (exec cannot pass it), text that does not encode as UTF-8
    (a lone surrogate: the command is journaled) or for the OS, more than
    :data:`MAX_SPEC_STRING_BYTES` bytes encoded.
    """
    if len(value) > MAX_SPEC_STRING_BYTES:
        raise WorkerConfigError(f"WorkerSpec.{where}{of}: expected at most {MAX_SPEC_STRING_BYTES} bytes, got {len(value)} characters")
    nul = value.find("\0")
    if nul >= 0:
        raise WorkerConfigError(
            f"WorkerSpec.{where}{of}: expected text without NUL characters (a process cannot receive them), "
            f"got a NUL at index {nul} in {_show(value)}"
        )
    try:
        size = len(value.encode("utf-8"))
        os.fsencode(value)
    except UnicodeEncodeError as exc:
        raise WorkerConfigError(
            f"WorkerSpec.{where}{of}: expected text that encodes as UTF-8 (it is journaled and passed to the OS), "
            f"got {_show(value)} ({exc.reason} at index {exc.start})"
        ) from None
    if size > MAX_SPEC_STRING_BYTES:
        raise WorkerConfigError(f"WorkerSpec.{where}{of}: expected at most {MAX_SPEC_STRING_BYTES} bytes, got {size}")
    return size


def _check_items(field: str, items: Sequence[str], of: str) -> int:
    """Check the count and every string of ``argv`` or ``args``; return their encoded bytes in all."""
    if len(items) > MAX_SPEC_ITEMS:
        raise WorkerConfigError(f"WorkerSpec.{field}{of}: expected at most {MAX_SPEC_ITEMS} items, got {len(items)}")
    return sum(_check_os_string(f"{field}[{i}]", item, of) for i, item in enumerate(items))


def _check_plain_shape(data: Mapping[Any, Any]) -> None:
    """Refuse plain data nested deeper than :data:`MAX_SPEC_DEPTH`, keys that are not strings, and text that is not UTF-8.

    Every key and string is looked at once (a spec's strings are journaled,
    so each must encode as UTF-8: no lone surrogates).  Iterative (an
    explicit stack), so any depth is refused without recursion; the work is
    linear in the number of items looked at.
    """
    stack: list[tuple[object, int, str]] = [(data, 1, "WorkerSpec")]
    while stack:
        value, depth, where = stack.pop()
        if isinstance(value, str):
            _check_utf8(where, value)
            continue
        if isinstance(value, Mapping):
            kind = "mapping"
        elif isinstance(value, (list, tuple)):
            kind = "list"
        else:
            continue
        if depth > MAX_SPEC_DEPTH:
            raise WorkerConfigError(
                f"{where}: expected a string, number, boolean or null here (a worker config nests at most "
                f"{MAX_SPEC_DEPTH} levels: the config, then a list or mapping of strings), got a {kind} nested {depth} levels deep"
            )
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise WorkerConfigError(f"{where}: expected keys that are strings, got {_show(key)} ({type(key).__name__})")
                field = f".{key}" if depth == 1 and _IDENTIFIER.fullmatch(key) else f"[{_show(key)}]"
                _check_utf8(f"{where}{field} (the key)", key)
                stack.append((item, depth + 1, f"{where}{field}"))
        else:
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))  # type: ignore[arg-type]


def _check_utf8(where: str, text: str) -> None:
    """Raise :class:`WorkerConfigError` naming ``where`` unless ``text`` encodes as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WorkerConfigError(f"{where}: expected text that encodes as UTF-8, got {_show(text)} ({exc.reason} at index {exc.start})") from None


def _plain(message: str) -> str:
    return re.sub(r" - at `\$[^`]*`$", "", message)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


# -- health ------------------------------------------------------------------------------


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


_SEVERITY = {Health.HEALTHY: 0, Health.STARTING: 1, Health.DEGRADED: 2, Health.FAILED: 3}


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


# -- process identity, probing and stopping (used by recovery too) -----------------------


class ProcessIdentity(msgspec.Struct, frozen=True):
    """What identifies one process across pid reuse: psutil create time, start ticks after boot, boot id."""

    pid: int
    create_time: float
    start_ticks: int | None
    boot_id: str


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat: starttime, counted from field 3 (state)
    except (IndexError, ValueError):
        return None


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of process ``pid`` now (None when there is none; a zombie still has one)."""
    try:
        create_time = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return ProcessIdentity(pid=pid, create_time=create_time, start_ticks=_start_ticks(pid), boot_id=_boot_id())


def _same(found: ProcessIdentity, create_time: float, start_ticks: int | None, boot_id: str | None, tolerance: float) -> bool:
    if boot_id and found.boot_id and boot_id != found.boot_id:
        return False  # the host rebooted: no process of the old boot is alive
    if start_ticks is not None and found.start_ticks is not None:
        return start_ticks == found.start_ticks
    return abs(found.create_time - create_time) <= tolerance


def probe_worker(
    pid: int,
    create_time: float,
    *,
    start_ticks: int | None = None,
    boot_id: str | None = None,
    tolerance: float = CREATE_TIME_TOLERANCE,
) -> bool:
    """True when process ``pid`` is alive (not a zombie) *and* is the process journaled with that identity.

    A pid reused by another process has another create time (and start
    ticks), so it is not the worker: False.  ``start_ticks`` and ``boot_id``
    (journaled by ``worker.started`` on Linux) make the match exact; without
    them create times must agree within ``tolerance`` seconds.  Read-only.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    found = process_identity(pid)
    return found is not None and _same(found, create_time, start_ticks, boot_id, tolerance)


def _environ_op(proc: psutil.Process) -> str | None:
    try:
        value = proc.environ().get(WORKER_OP_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None
    return str(value) if value is not None else None


def _environ_op_of(pid: int) -> str | None:
    """The worker op id in process ``pid``'s environment (None: gone, unreadable, or not a worker)."""
    try:
        proc = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return _environ_op(proc)


def find_worker_processes(op_id: str) -> list[psutil.Process]:
    """The live processes started for worker op ``op_id`` (and their children): those whose environment carries it.

    Scans every process this user can read (milliseconds for hundreds of
    processes); used at recovery for a start cut off before its pid was journaled.
    """
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        if _environ_op(proc) == op_id and _alive(proc):
            found.append(proc)
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _group_members(pgid: int, not_before: float, op_id: str | None) -> list[psutil.Process]:
    """Live members of process group ``pgid`` that are provably ours, created no earlier than the worker.

    With ``op_id`` a member must carry it in its environment (a process whose
    environment cannot be read, or lacks it, is left alone: a reused pid may
    lead an unrelated group).  Without ``op_id`` (only after the leader itself
    was verified to be the worker, so the group id was ours) every live member
    but the leader's pid counts.
    """
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or os.getpgid(proc.pid) != pgid:
                continue
            if proc.create_time() < not_before - CREATE_TIME_TOLERANCE or not _alive(proc):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
        if op_id is not None:
            if _environ_op(proc) != op_id:
                continue
        elif proc.pid == pgid:
            continue
        members.append(proc)
    return members


def _kill_members(members: Iterable[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL ``members``, wait up to :data:`GROUP_DRAIN` seconds for them to go; the ones still alive."""
    members = list(members)
    for proc in members:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone already, or not ours to kill: the survivors list below reports it
    deadline = time.monotonic() + GROUP_DRAIN
    alive = members
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.01)
    return alive


def _wait_group_gone(pgid: int, not_before: float, timeout: float = GROUP_DRAIN) -> list[int]:
    """Wait until no live member of our group ``pgid`` (created after the worker) is left; the pids still alive after ``timeout``.

    SIGKILL is delivered asynchronously: a killed process may still be
    exiting when ``kill`` returns; this is what makes "stopped" mean "gone".
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [p.pid for p in _group_members(pgid, not_before, None)]
        if not alive:
            return []
        if time.monotonic() >= deadline:
            _log.warning("processes %s of group %d are still alive %g s after SIGKILL", alive, pgid, timeout)
            return alive
        time.sleep(0.005)


def _reap_if_child(pid: int) -> tuple[int | None, int | None]:
    """Reap ``pid`` when it is an exited child of this process; its (exit code, signal) when known."""
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None, None
    if waited == 0:
        return None, None
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return None, None


def _wait_fd(fd: int, timeout: float) -> bool:
    """True when ``fd`` (a pidfd) becomes readable (its process ended) within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if poller.poll(max(0, math.ceil(left * 1000))):
            return True
        if left <= 0:
            return False


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def stop_worker(
    pid: int,
    create_time: float,
    timeout: float,
    *,
    start_ticks: int | None = None,
    boot_id: str | None = None,
    op_id: str | None = None,
) -> str:
    """End worker process ``pid`` (identified by its create time) and its process group; say what happened.

    Returns ``"gone"`` when no such process is alive (a pid reused by another
    process is never signalled), ``"terminated"`` when it ended within
    ``timeout`` seconds of SIGTERM (sent to its process group when it leads
    one), ``"killed"`` when SIGKILL was needed.  It is reaped when it is a
    child of this process.  With ``op_id`` (recovery, acting on journaled
    identities, which are untrusted), the process itself must carry ``op_id``
    in its environment (:data:`WORKER_OP_ENV`) to be stopped: a process that
    matches the identity but not the mark is left alone and reported gone.  The live members of its group that are provably
    ours are killed too: with ``op_id``, those carrying it in their
    environment (whether or not the leader was alive); without it, only
    after the leader was verified to be the worker.  Raises
    :class:`SupervisorError` when the process survives SIGKILL for
    :data:`KILL_GRACE` seconds (stuck in the kernel): then nothing may be journaled.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be 0 or more seconds, got {timeout}")
    outcome = "gone"
    if probe_worker(pid, create_time, start_ticks=start_ticks, boot_id=boot_id):
        if op_id is not None and _environ_op_of(pid) != op_id:
            # the journal is untrusted: a process it names is stopped only when it is provably the worker
            _log.warning(
                "process %d matches the journaled identity of worker %s but does not carry %s=%s in its environment: "
                "not a worker of this root, left alone", pid, op_id, WORKER_OP_ENV, op_id,
            )
        else:
            outcome = _end_process(pid, create_time, timeout, start_ticks=start_ticks, boot_id=boot_id)
    elif op_id is None:
        return outcome  # the group id may belong to whoever reuses the pid now: only a member carrying op_id is ours
    leftovers = _group_members(pid, create_time, op_id)
    if leftovers:
        _log.warning("killing %d leftover process(es) of worker %d's group: %s", len(leftovers), pid, [p.pid for p in leftovers])
        stuck = _kill_members(leftovers)
        if stuck:
            raise SupervisorError(f"processes {[p.pid for p in stuck]} of worker {pid}'s group survived SIGKILL for {GROUP_DRAIN} s")
    return outcome


def _end_process(pid: int, create_time: float, timeout: float, *, start_ticks: int | None, boot_id: str | None) -> str:
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except (OSError, AttributeError):
        pidfd = None
    try:
        # the pidfd pins the process: check once more that it is still the same one
        if not probe_worker(pid, create_time, start_ticks=start_ticks, boot_id=boot_id):
            return "gone"
        proc = psutil.Process(pid)
        leader = _pgid(pid) == pid
        _signal(pid, pidfd, signal.SIGTERM, group=leader)
        ended = _wait_fd(pidfd, timeout) if pidfd is not None else _wait_gone(proc, timeout)
        how = "terminated"
        if not ended:
            how = "killed"
            _signal(pid, pidfd, signal.SIGKILL, group=leader)
            ended = _wait_fd(pidfd, KILL_GRACE) if pidfd is not None else _wait_gone(proc, KILL_GRACE)
            if not ended:
                raise SupervisorError(f"worker process {pid} survived SIGKILL for {KILL_GRACE} s (stuck in the kernel?)")
        if leader:
            _killpg(pid, signal.SIGKILL)  # its children, while the (zombie or unreaped) leader still holds the group id
        _reap_if_child(pid)
        if leader:
            _wait_group_gone(pid, create_time)
        return how
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return  # the group is empty
    except PermissionError as exc:
        _log.warning("could not send %s to process group %d: %s", signal.Signals(sig).name, pgid, exc)


def _signal(pid: int, pidfd: int | None, sig: int, *, group: bool) -> None:
    if group:
        _killpg(pid, sig)
        return
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return  # it ended already


def settle_worker_event(op: OpRecord, outcome: str) -> Event:
    """The event that settles cut-off worker incarnation ``op`` after recovery found or stopped its process.

    ``outcome`` is what :func:`stop_worker` returned: ``"gone"`` gives
    ``worker.died`` with reason "gone at recovery"; ``"terminated"`` or
    ``"killed"`` gives ``worker.stopped``.  Pure: journals nothing.
    """
    if op.type != WORKER.name or op.state not in (WorkerState.STARTING.value, WorkerState.STARTED.value):
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
        if adopt and probe_worker(pid, created, start_ticks=ticks, boot_id=boot) and _environ_op_of(pid) == op.id:
            return None
        outcome = stop_worker(pid, created, wait, start_ticks=ticks, boot_id=boot, op_id=op.id)
        return settle_worker_event(op, outcome)
    if op.state == WorkerState.STARTING.value:
        outcomes = []
        found = find_worker_processes(op.id)
        found.sort(key=lambda p: _pgid(p.pid) != p.pid)  # group leaders first: stopping one ends its group
        for proc in found:
            try:
                identity = ProcessIdentity(proc.pid, proc.create_time(), _start_ticks(proc.pid), _boot_id())
            except psutil.NoSuchProcess:
                continue
            outcomes.append(stop_worker(proc.pid, identity.create_time, wait, start_ticks=identity.start_ticks, op_id=op.id))
        ended = [o for o in outcomes if o != "gone"]
        return settle_worker_event(op, "killed" if "killed" in ended else ended[0] if ended else "gone")
    return settle_worker_event(op, "gone")  # raises: not an incarnation in progress


def settle_cut_off_worker(core: EngineCore, op_id: str, *, adopt: bool = False, on_effect: Callable[[], None] | None = None) -> str:
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
    return f"{who}: {event.reason if isinstance(event, WorkerDied) else _kind(event)}"


# -- the supervisor ----------------------------------------------------------------------


class _Incarnation:
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


class _Slot:
    """One supervised worker: its spec, supervision op, budget and current incarnation."""

    def __init__(self, spec: WorkerSpec, rng: random.Random) -> None:
        self.spec = spec
        self.rng = rng
        self.op = ""
        self.health = Health.STARTING
        self.restarts = 0
        self.recent: collections.deque[float] = collections.deque()
        self.pending: _Incarnation | None = None
        self.running: _Incarnation | None = None
        self.last_exit: str | None = None
        self.ended = False


class Supervisor:
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
        self.engine = engine
        self.adopt = adopt
        base = "" if seed is None else str(seed)
        self._slots = {s.name: _Slot(s, random.Random(f"{base}:{s.name}") if seed is not None else random.Random()) for s in specs}
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
                first = _Incarnation(self.engine.new_op_id(WORKER.name), 0, 0.0, time.monotonic())
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

    def __enter__(self) -> Supervisor:
        return self.start()

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

    @property
    def _sel(self) -> selectors.BaseSelector:
        assert self._selector is not None, "the selector exists from start() on"
        return self._selector

    # -- status (under self._cond) -------------------------------------------------------

    def _overall(self) -> Health:
        if self._state is not Health.HEALTHY:
            return self._state  # starting (start() has not finished), stopping or stopped
        live = [s.health for s in self._slots.values() if s.health is not Health.STOPPED]
        if not live:
            return Health.STOPPED
        return max(live, key=lambda h: _SEVERITY.get(h, 0))

    def _status(self, slot: _Slot) -> WorkerStatus:
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

    def _set(
        self,
        slot: _Slot,
        health: Health,
        last_exit: str | None = None,
        *,
        ended: _Incarnation | None = None,
        pending: _Incarnation | None = None,
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
            _log.error("not journaled (the engine stopped accepting records earlier): %s", [_kind(e) for e in events])
            return False
        try:
            self.engine.journal_events(*events)
            return True
        except (JournalClosedError, JournalBrokenError) as exc:
            self._journal_failure = exc
            self._stop_requested = True
            _log.error("the engine stopped accepting records (%s); stopping every worker rather than run them unjournaled", exc)
            return False

    def _starting(self, slot: _Slot, inc: _Incarnation, reason: str) -> WorkerStarting:
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

    def _spawn(self, slot: _Slot) -> None:
        """Start the pending incarnation of ``slot`` now and journal ``worker.started`` (or a failure)."""
        inc = slot.pending
        assert inc is not None
        spec = slot.spec
        crash_point(CP_STARTING)
        try:
            inc.popen = _popen(spec, inc.op)
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

    def _watch(self, inc: _Incarnation) -> None:
        try:
            inc.pidfd = os.pidfd_open(inc.pid)
        except (OSError, AttributeError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ESRCH:
                raise
            inc.pidfd = None
            self._polling = True
            return
        self._sel.register(inc.pidfd, selectors.EVENT_READ, inc)

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

    def _adopt(self, slot: _Slot, op: OpRecord, supervised: WorkerSupervised) -> bool:
        """Take over live process ``op`` for ``slot`` (journal supervised + adopted); a gone one is journaled died."""
        info = op.info
        pid, created = int(info["pid"]), float(info["create_time"])
        ticks, boot = info.get("start_ticks"), info.get("boot_id") or None
        inc = _Incarnation(op.id, int(info.get("attempt", 0)), 0.0, time.monotonic())
        inc.pid, inc.pgid, inc.create_time, inc.adopted = pid, int(info.get("pgid") or pid), created, True
        try:
            inc.pidfd = os.pidfd_open(pid)
        except OSError:
            inc.pidfd = None
        # the journal is untrusted: only a live process with the journaled identity *and* the op id mark is adopted
        if inc.pidfd is None or not probe_worker(pid, created, start_ticks=ticks, boot_id=boot) or _environ_op_of(pid) != op.id:
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
        except BaseException:  # a bug here must not leave workers running unwatched
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
            if inc is not None and inc.pidfd is None and _exited(inc.pid):
                self._on_end(inc)

    def _on_end(self, inc: _Incarnation) -> None:
        """Incarnation ``inc`` ended: clear its group, reap it, journal it and what comes next."""
        slot = next(s for s in self._slots.values() if s.running is inc)
        code, sig = self._collect(inc)
        crash_point(CP_DEATH)
        if code is not None:
            describe, failure = f"exited with code {code}", code != 0
            end: Event = WorkerExited(op=inc.op, code=code)
        elif sig is not None:
            describe, failure = f"was killed by {_signame(sig)}", True
            end = WorkerDied(op=inc.op, signal=sig, reason=f"killed by {_signame(sig)}")
        else:
            describe, failure = "ended (adopted: its exit status cannot be read by a non-parent)", True
            end = WorkerDied(op=inc.op, reason="the adopted process ended; a non-parent cannot read its exit status")
        if self._stopping:
            _wait_group_gone(inc.pgid, inc.create_time)  # stop() returns only when the worker's children are gone too
            how = inc.stop_how or "terminated"
            self._journal(WorkerStopped(op=inc.op, how=how, code=code, signal=sig))
            self._set(slot, Health.STOPPING, f"stopped ({how}; {describe})", ended=inc)
            return
        _log.warning("worker %s (pid %d) %s", slot.spec.name, inc.pid, describe)
        self._after_end(slot, end, failure, describe, inc)

    def _collect(self, inc: _Incarnation) -> tuple[int | None, int | None]:
        """Exit status of ``inc`` (None, None when adopted); its group's leftovers are killed before the leader is reaped."""
        code = sig = None
        if inc.popen is not None:
            result = os.waitid(os.P_PID, inc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if result is not None:
                if result.si_code == os.CLD_EXITED:
                    code = result.si_status
                else:
                    sig = result.si_status
            _killpg(inc.pgid, signal.SIGKILL)  # the zombie leader still holds the group id: no unrelated group is hit
            returncode = inc.popen.wait()
            if result is None:
                code, sig = (returncode, None) if returncode >= 0 else (None, -returncode)
        else:
            leftovers = _group_members(inc.pgid, inc.create_time, inc.op)
            if leftovers:
                _kill_members(leftovers)
        if inc.pidfd is not None:
            self._sel.unregister(inc.pidfd)
            os.close(inc.pidfd)
            inc.pidfd = None
        return code, sig

    def _after_end(self, slot: _Slot, end: Event, failure: bool, describe: str, ended: _Incarnation | None = None) -> None:
        """Journal ``end`` (of incarnation ``ended``, if it ran) with the decision: restart (with backoff), failed, or released."""
        spec = slot.spec
        restart = spec.restart == "always" or (spec.restart == "on-failure" and failure)
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
        while slot.recent and slot.recent[0] <= now - spec.restart_window:
            slot.recent.popleft()
        if len(slot.recent) >= spec.max_restarts:
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
        delay = self._backoff(slot)
        slot.recent.append(now)
        inc = _Incarnation(self.engine.new_op_id(WORKER.name), slot.restarts + 1, delay, now + delay)
        if self._journal(end, self._starting(slot, inc, f"restart: it {describe}")):
            _log.info("worker %s: restart %d in %.3f s", spec.name, inc.attempt, delay)
        # the restart count changes with the rest of the status (never "restarted" while still healthy on the dead pid)
        self._set(slot, Health.DEGRADED, describe, ended=ended, pending=inc, restarts=inc.attempt)  # a pending start is cancelled by a stop

    def _backoff(self, slot: _Slot) -> float:
        spec = slot.spec
        base = min(spec.backoff_max, spec.backoff_initial * spec.backoff_multiplier ** len(slot.recent))
        jittered = base * (1 + spec.backoff_jitter * (2 * slot.rng.random() - 1))
        return round(min(spec.backoff_max, max(0.0, jittered)), 6)

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

    def _signal_inc(self, inc: _Incarnation, sig: int) -> None:
        if inc.popen is not None or (inc.pidfd is not None and _pgid(inc.pid) == inc.pgid):
            _killpg(inc.pgid, sig)  # the leader is alive or an unreaped zombie: the group id is ours
        elif inc.pidfd is not None:
            _signal(inc.pid, inc.pidfd, sig, group=False)

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


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _kind(event: Event) -> str:
    tag = type(event).__struct_config__.tag
    return tag if isinstance(tag, str) else type(event).__name__


def _shown(spec: WorkerSpec) -> list[str]:
    return list(spec.argv) if spec.argv is not None else ["python", f"{spec.target}", *spec.args]


def _popen(spec: WorkerSpec, op_id: str) -> subprocess.Popen[bytes]:
    """Start ``spec``'s process in its own session (own process group), marked with ``op_id`` in its environment."""
    env = dict(os.environ) if spec.inherit_env else {}
    env.update(spec.env)
    if spec.target is not None:
        path = [p for p in sys.path if p]
        extra = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join([*path, extra] if extra else path)
    env[WORKER_OP_ENV] = op_id
    output = subprocess.DEVNULL if spec.output == "devnull" else None
    return subprocess.Popen(
        spec.command(),
        env=env,
        cwd=spec.cwd,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
        start_new_session=True,
        close_fds=True,
    )
