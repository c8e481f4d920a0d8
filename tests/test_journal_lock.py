"""One writer per root: a second opener, in this process or another, is refused at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from shipslog.journal import Journal, JournalLockedError, ShipslogError

_HOLDER = """
import sys
from shipslog.journal import Journal
j = Journal.open(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


def test_second_open_in_the_same_process_is_refused(root: str) -> None:
    with Journal.open(root):
        with pytest.raises(JournalLockedError) as info:
            Journal.open(root)
        assert f"pid {os.getpid()}" in str(info.value)
        assert isinstance(info.value, ShipslogError) and isinstance(info.value, BlockingIOError)
    Journal.open(root).close()


@pytest.mark.subprocess
def test_open_held_by_another_process_is_refused_and_freed_when_it_dies(root: str) -> None:
    Journal.open(root).close()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with pytest.raises(JournalLockedError) as info:
            Journal.open(root)
        assert f"pid {child.pid}" in str(info.value)
        assert info.value.root == root
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    Journal.open(root).close()


def test_failed_open_releases_the_lock(root: str) -> None:
    Journal.open(root).close()
    bad = os.path.join(root, "journal", f"{99:020d}.log")
    open(bad, "wb").close()
    with pytest.raises(ShipslogError):
        Journal.open(root)
    os.unlink(bad)
    Journal.open(root).close()
