"""Helpers for the recovery tests: an in-process "process death" and roots left in a given state."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _engine_helpers import SimulatedCrash, open_engine

from shipslog import Engine
from shipslog.journal import (
    CRASH_AT_ENV,
    CRASH_MODE_ENV,
    CRASH_TRACE_ENV,
    FileSystem,
    PathLike,
    set_crash_hook,
)


class DyingFileSystem(FileSystem):
    """The real file system until :attr:`dead` is set; then every effect on file contents or names raises.

    A crash simulated in-process by raising at a crash point still runs the
    clean-up code on the way out (``finally``, ``__exit__``, abort handlers),
    which a killed process would never run; with this file system those
    handlers cannot change a byte once the "process" is dead.  Closing a file
    descriptor and fsync stay allowed: a killed process's page cache is kept
    and its descriptors are closed by the kernel.
    """

    def __init__(self) -> None:
        super().__init__(sync=False)
        self.dead = False

    def _alive(self) -> None:
        if self.dead:
            raise SimulatedCrash("the process is dead: no more file effects")

    def open(self, path: PathLike, flags: int, mode: int = 0o644) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            self._alive()
        return super().open(path, flags, mode)

    def write_all(self, fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        self._alive()
        super().write_all(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        self._alive()
        super().truncate(fd, size)

    def preallocate(self, fd: int, size: int) -> bool:
        self._alive()
        return super().preallocate(fd, size)

    def replace(self, src: PathLike, dst: PathLike) -> None:
        self._alive()
        super().replace(src, dst)

    def mkdir(self, path: PathLike) -> None:
        self._alive()
        super().mkdir(path)

    def unlink(self, path: PathLike) -> None:
        self._alive()
        super().unlink(path)

    def rmdir(self, path: PathLike) -> None:
        self._alive()
        super().rmdir(path)


@contextmanager
def dies_at(fs: DyingFileSystem, point: str, nth: int = 1) -> Iterator[list[str]]:
    """Within the block, the ``nth`` hit of crash point ``point`` kills the "process": ``fs`` goes dead and
    :class:`SimulatedCrash` is raised there.  Yields a list that holds the point once it was hit."""
    hits: list[str] = []
    seen = [0]

    def hook(name: str) -> None:
        if hits or name != point:
            return
        seen[0] += 1
        if seen[0] == nth:
            hits.append(name)
            fs.dead = True
            raise SimulatedCrash(name)

    previous = set_crash_hook(hook)
    try:
        yield hits
    finally:
        set_crash_hook(previous)


def drop(engine: Engine, fs: DyingFileSystem | None = None) -> None:
    """Let go of ``engine`` as a killed process would (no journaling), then bring ``fs`` back to life.

    ``fs`` comes back first: the kernel releases a dead process's lock, which
    is what closing the journal stands for here (it journals nothing).
    """
    if fs is not None:
        fs.dead = False
    engine.journal.close()


def open_with(root: str, fs: FileSystem, **kw: Any) -> Engine:
    """``open_engine`` through ``fs``."""
    return open_engine(root, fs=fs, **kw)


def run_child(code: str, *args: str, crash_at: str | None = None, trace: str | None = None, mode: str = "kill") -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` armed to die at ``crash_at`` (NAME or NAME@N)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPSLOG_CRASH")}
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
        env[CRASH_MODE_ENV] = mode
    if trace:
        env[CRASH_TRACE_ENV] = trace
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


OPEN_CHILD = """
import sys
from shipslog import Engine
Engine.open(sys.argv[1], fsync=False, segment_bytes=1 << 20).close()
"""
"""A child that opens a root (recovery runs) and closes it."""


def call_quietly(fn: Callable[[], object]) -> BaseException | None:
    """Call ``fn``; return what it raised (SimulatedCrash included), or None."""
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None
