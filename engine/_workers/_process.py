"""Starting and ending worker processes: a worker runs in its own session, and is stopped together with its process group.

:func:`spawn_process` starts a spec's command in a new session (its own
process group, so the worker's own children go with it), marked with its op
id in its environment; :func:`stop_worker` ends a worker (SIGTERM to its
group, a timeout, SIGKILL) and the leftovers of its group; the other
functions signal, reap and wait for processes and groups.

Guarantee: a process is signalled only once it is verified to be the worker
(pid and identity, and with an op id the environment mark), and a group only
while its leader is ours (alive or an unreaped zombie) or member by member
when each carries the mark; :func:`stop_worker` returns only when the worker
and the members of its group that are provably ours are gone, or raises
:class:`SupervisorError`.  Nothing here journals.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import psutil

from ._errors import SupervisorError
from ._events import WORKER_OP_ENV
from ._identity import (
    CREATE_TIME_TOLERANCE,
    environ_op,
    environ_op_of,
    find_worker_processes,
    is_alive,
    probe_worker,
)
from ._spec import WorkerSpec

__all__ = [
    "GROUP_DRAIN",
    "KILL_GRACE",
    "child_exited",
    "group_members",
    "kill_group",
    "kill_members",
    "pgid_of",
    "signal_name",
    "signal_process",
    "spawn_process",
    "stop_worker",
    "wait_group_gone",
]

_log = logging.getLogger("shipslog.engine.supervisor")

KILL_GRACE = 5.0
"""Seconds to wait for a process to vanish after SIGKILL before reporting it unkillable (stuck in the kernel)."""
GROUP_DRAIN = 2.0
"""Seconds :meth:`Supervisor.stop` and :func:`stop_worker` wait for killed group members to vanish."""


def group_members(pgid: int, not_before: float, op_id: str | None) -> list[psutil.Process]:
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
            if proc.create_time() < not_before - CREATE_TIME_TOLERANCE or not is_alive(proc):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
        if op_id is not None:
            if environ_op(proc) != op_id:
                continue
        elif proc.pid == pgid:
            continue
        members.append(proc)
    return members


def kill_members(members: Iterable[psutil.Process]) -> list[psutil.Process]:
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
        alive = [p for p in alive if is_alive(p)]
        if alive:
            time.sleep(0.01)
    return alive


def wait_group_gone(pgid: int, not_before: float, timeout: float = GROUP_DRAIN) -> list[int]:
    """Wait until no live member of our group ``pgid`` (created after the worker) is left; the pids still alive after ``timeout``.

    SIGKILL is delivered asynchronously: a killed process may still be
    exiting when ``kill`` returns; this is what makes "stopped" mean "gone".
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [p.pid for p in group_members(pgid, not_before, None)]
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
    """True when ``proc`` is gone (or a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while is_alive(proc):
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
    environment (whether or not the leader was alive), and any other live
    process carrying it (a child that left the group with ``setsid``);
    without it, only after the leader was verified to be the worker.  Raises
    :class:`SupervisorError` when the process survives SIGKILL for
    :data:`KILL_GRACE` seconds (stuck in the kernel): then nothing may be journaled.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be 0 or more seconds, got {timeout}")
    outcome = "gone"
    if probe_worker(pid, create_time, start_ticks=start_ticks, boot_id=boot_id):
        if op_id is not None and environ_op_of(pid) != op_id:
            # the journal is untrusted: a process it names is stopped only when it is provably the worker
            _log.warning(
                "process %d matches the journaled identity of worker %s but does not carry %s=%s in its environment: "
                "not a worker of this root, left alone", pid, op_id, WORKER_OP_ENV, op_id,
            )
        else:
            outcome = _end_process(pid, create_time, timeout, start_ticks=start_ticks, boot_id=boot_id)
    elif op_id is None:
        return outcome  # the group id may belong to whoever reuses the pid now: only a member carrying op_id is ours
    leftovers = group_members(pid, create_time, op_id)
    if op_id is not None:  # a child that left the group (setsid after a double fork) still carries the mark
        grouped = {p.pid for p in leftovers}
        leftovers += [p for p in find_worker_processes(op_id) if p.pid not in grouped]
    if leftovers:
        _log.warning("killing %d leftover process(es) of worker %d's group: %s", len(leftovers), pid, [p.pid for p in leftovers])
        stuck = kill_members(leftovers)
        if stuck:
            raise SupervisorError(f"processes {[p.pid for p in stuck]} of worker {pid}'s group survived SIGKILL for {GROUP_DRAIN} s")
    return outcome


def _end_process(pid: int, create_time: float, timeout: float, *, start_ticks: int | None, boot_id: str | None) -> str:
    """SIGTERM, ``timeout``, SIGKILL to verified worker ``pid`` (its group when it leads one); ``terminated``, ``killed`` or ``gone``."""
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
        leader = pgid_of(pid) == pid
        signal_process(pid, pidfd, signal.SIGTERM, group=leader)
        ended = _wait_fd(pidfd, timeout) if pidfd is not None else _wait_gone(proc, timeout)
        how = "terminated"
        if not ended:
            how = "killed"
            signal_process(pid, pidfd, signal.SIGKILL, group=leader)
            ended = _wait_fd(pidfd, KILL_GRACE) if pidfd is not None else _wait_gone(proc, KILL_GRACE)
            if not ended:
                raise SupervisorError(f"worker process {pid} survived SIGKILL for {KILL_GRACE} s (stuck in the kernel?)")
        if leader:
            kill_group(pid, signal.SIGKILL)  # its children, while the (zombie or unreaped) leader still holds the group id
        _reap_if_child(pid)
        if leader:
            wait_group_gone(pid, create_time)
        return how
    finally:
        if pidfd is not None:
            os.close(pidfd)


def pgid_of(pid: int) -> int | None:
    """The process group of ``pid`` (None when it is gone or not ours to ask)."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def kill_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; an empty group is fine, a refusal is logged."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return  # the group is empty
    except PermissionError as exc:
        _log.warning("could not send %s to process group %d: %s", signal.Signals(sig).name, pgid, exc)


def signal_process(pid: int, pidfd: int | None, sig: int, *, group: bool) -> None:
    """Send ``sig`` to the group ``pid`` leads (``group``) or to ``pid`` alone, through its pidfd when there is one."""
    if group:
        kill_group(pid, sig)
        return
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return  # it ended already


def child_exited(pid: int) -> bool:
    """True when child ``pid`` has ended (or is no child of ours); it is not reaped."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def signal_name(sig: int) -> str:
    """``SIGTERM`` for 15, ``signal 99`` for a number without a name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def spawn_process(spec: WorkerSpec, op_id: str) -> subprocess.Popen[bytes]:
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
