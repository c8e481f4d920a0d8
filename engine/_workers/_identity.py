"""Which process is a worker: its identity across pid reuse, and the probes that find and recognise worker processes.

A :class:`ProcessIdentity` is a pid with its psutil create time, its start
ticks after boot and the boot id; ``worker.started`` journals them, and
:func:`probe_worker` checks a live process against them.  Every worker
process carries its incarnation's op id in its environment
(:data:`~shipslog.engine.WORKER_OP_ENV`); :func:`environ_op_of` reads it and
:func:`find_worker_processes` finds processes by it.

Guarantee: read-only (nothing here signals or changes a process); a pid
reused by another process never matches a journaled identity: start ticks and
boot id are compared exactly where both are known, create times within
:data:`CREATE_TIME_TOLERANCE` otherwise.
"""

from __future__ import annotations

import os

import msgspec
import psutil

from ._events import WORKER_OP_ENV

__all__ = [
    "CREATE_TIME_TOLERANCE",
    "ProcessIdentity",
    "environ_op",
    "environ_op_of",
    "find_worker_processes",
    "is_alive",
    "probe_worker",
    "process_identity",
    "read_boot_id",
    "read_start_ticks",
]

CREATE_TIME_TOLERANCE = 2.0
"""Seconds two psutil create times of one process may differ by, read in different processes.

psutil adds the boot time (whole seconds, re-read from /proc/stat, which moves
with clock adjustments) to the process's start ticks; where the exact start
ticks and boot id were journaled (Linux), they are compared instead, exactly.
"""


class ProcessIdentity(msgspec.Struct, frozen=True):
    """What identifies one process across pid reuse: psutil create time, start ticks after boot, boot id."""

    pid: int
    create_time: float
    start_ticks: int | None
    boot_id: str


def read_boot_id() -> str:
    """This boot's id (Linux); "" where it cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def read_start_ticks(pid: int) -> int | None:
    """Clock ticks after boot at which process ``pid`` started (Linux /proc); None where it cannot be read."""
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
    return ProcessIdentity(pid=pid, create_time=create_time, start_ticks=read_start_ticks(pid), boot_id=read_boot_id())


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


def environ_op(proc: psutil.Process) -> str | None:
    """The worker op id in ``proc``'s environment (None: gone, unreadable, or not a worker)."""
    try:
        value = proc.environ().get(WORKER_OP_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None
    return str(value) if value is not None else None


def environ_op_of(pid: int) -> str | None:
    """The worker op id in process ``pid``'s environment (None: gone, unreadable, or not a worker)."""
    try:
        proc = psutil.Process(pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return environ_op(proc)


def find_worker_processes(op_id: str) -> list[psutil.Process]:
    """The live processes started for worker op ``op_id`` (and their children): those whose environment carries it.

    Scans every process this user can read (milliseconds for hundreds of
    processes); used at recovery for a start cut off before its pid was journaled.
    """
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        if environ_op(proc) == op_id and is_alive(proc):
            found.append(proc)
    return found


def is_alive(proc: psutil.Process) -> bool:
    """True while ``proc`` exists and is not a zombie."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
