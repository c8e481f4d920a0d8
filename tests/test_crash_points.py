"""Crash points: registered names, a no-op unless armed, and a real SIGKILL when armed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from _helpers import event_index

from shipslog.journal import (
    CRASH_AT_ENV,
    CRASH_EXIT_CODE,
    CRASH_MODE_ENV,
    Journal,
    crash_point,
    register_crash_point,
    registered_crash_points,
)

_WORKLOAD = """
import sys
import msgspec
from shipslog.journal import Journal
with Journal.open(sys.argv[1]) as j:
    for i in range(1, 6):
        j.append(msgspec.msgpack.encode({"i": i}))
"""


def _run(root: str, point: str, mode: str = "kill") -> int:
    env = dict(os.environ)
    env[CRASH_AT_ENV] = point
    env[CRASH_MODE_ENV] = mode
    return subprocess.run([sys.executable, "-c", _WORKLOAD, root], env=env, timeout=60, check=False).returncode


def test_journal_crash_points_are_registered() -> None:
    points = registered_crash_points()
    for name in ("journal.before_write", "journal.after_write", "journal.after_fsync",
                 "journal.roll.after_create", "journal.snapshot.after_write"):
        assert points.get(name)


def test_an_unarmed_crash_point_does_nothing() -> None:
    name = register_crash_point("test.unarmed", "a point no test arms")
    crash_point(name)


def test_registering_a_name_twice_with_another_meaning_is_refused() -> None:
    register_crash_point("test.twice", "one meaning")
    register_crash_point("test.twice", "one meaning")
    with pytest.raises(ValueError, match="already registered"):
        register_crash_point("test.twice", "another meaning")


@pytest.mark.subprocess
@pytest.mark.parametrize(("point", "survivors"), [
    ("journal.before_write@3", [1, 2]),
    ("journal.after_write@3", [1, 2, 3]),
    ("journal.after_fsync@3", [1, 2, 3]),
])
def test_sigkill_at_a_journal_crash_point_loses_nothing_acknowledged(root: str, point: str, survivors: list[int]) -> None:
    assert _run(root, point) == -signal.SIGKILL
    with Journal.open(root) as j:
        assert [event_index(r.event) for r in j.records()] == survivors
        assert j.report.tail_repair is None


@pytest.mark.subprocess
def test_exit_mode_dies_with_the_crash_exit_code(root: str) -> None:
    assert _run(root, "journal.after_fsync@2", mode="exit") == CRASH_EXIT_CODE
    with Journal.open(root) as j:
        assert [event_index(r.event) for r in j.records()] == [1, 2]
