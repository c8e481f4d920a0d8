"""Helpers for the worker tests: worker targets (run in fresh interpreters), polling, and the no-stray-process check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

WAIT = 20.0
"""Generous seconds to wait for a process event (the 2-core test machine may be busy)."""


def wait_for(condition: Callable[[], Any], timeout: float = WAIT, what: str = "the condition") -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def running(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_quietly(pid: int) -> None:
    """SIGKILL ``pid`` if it still runs (clean-up after a failed test)."""
    if running(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return


@pytest.fixture
def no_stray_children() -> Iterator[None]:
    """Fail the test when it leaves a child process (or a zombie child) behind; kill and reap what it left."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in me.children(recursive=True) if p.pid not in before]
    for proc in left:
        kill_quietly(proc.pid)
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:
            pass  # not our direct child: PID 1 reaps it
    assert not left, f"the test left child processes behind: {[(p.pid, p.name()) for p in left]}"


# -- worker targets (run as ``python -c <bootstrap> _workers_helpers:<name> args...``) -------


def sleep_forever() -> None:
    """A well-behaved worker: runs until signalled."""
    while True:
        time.sleep(60)


def exit_with(code: str) -> int:
    """Exit at once with ``code``."""
    return int(code)


def ignore_sigterm(ready: str) -> None:
    """Ignore SIGTERM, then say so by creating ``ready``, then run forever."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _touch(ready)
    while True:
        time.sleep(60)


def fork_child_and_die(pid_file: str) -> int:
    """Start a long-running child (same process group), write its pid to ``pid_file``, then exit with 3."""
    child = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL)
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(child.pid))
    os.replace(tmp, pid_file)
    os._exit(3)


def fork_child_and_run(pid_file: str) -> None:
    """Start a long-running child that ignores SIGTERM, write its pid to ``pid_file``, run until signalled."""
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"], stdin=subprocess.DEVNULL)
    tmp = pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(child.pid))
    os.replace(tmp, pid_file)
    while True:
        time.sleep(60)


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


def read_pid(path: str) -> int:
    """The pid a worker wrote to ``path`` (waits for the file)."""
    wait_for(lambda: os.path.exists(path), what=f"{path} to be written")
    with open(path) as f:
        return int(f.read())


def escape_with_setsid_and_run(pid_file: str) -> None:
    """Double-fork a child that leaves the process group with ``setsid`` (it keeps the environment, so the
    incarnation's mark), write its pid to ``pid_file``, run until signalled."""
    first = os.fork()
    if first == 0:
        os.setsid()
        if os.fork() == 0:
            tmp = pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, pid_file)
            while True:
                time.sleep(60)
        os._exit(0)
    os.waitpid(first, 0)
    while True:
        time.sleep(60)
