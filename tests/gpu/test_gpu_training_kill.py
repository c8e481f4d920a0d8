"""A training process killed at file events of its saves resumes from the newest committed checkpoint and ends
with the weights of an uninterrupted run, bit for bit (a seeded sample here; ``shipslog torture --training``
runs every point)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("torch")

from shipslog.journal import OS_FS
from shipslog.tools import KillingFileSystem, run_training_torture


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_a_plain_loop_killed_at_file_events_resumes_from_the_newest_checkpoint_bit_for_bit(tmp_path: Any) -> None:
    lines: list[str] = []
    result = run_training_torture("plain", folder=str(tmp_path), quick=True, sample=2, seed=3, log=lines.append)
    assert result["violations"] == []
    assert result["points"] == 4 and result["killed"] == 4
    assert len(lines) == 4 and all(line.startswith("plain (shipslog): ") and line.endswith(": resumed") for line in lines)
    assert result["events"]["before"] > 10 and result["events"]["half"] > 10


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("framework", "module", "seed"), [("lightning", "lightning", 5), ("hf", "transformers", 7), ("accelerate", "accelerate", 9)])
def test_a_framework_killed_at_file_events_resumes_from_the_newest_checkpoint_bit_for_bit(
    framework: str, module: str, seed: int, tmp_path: Any
) -> None:
    pytest.importorskip(module)
    result = run_training_torture(framework, folder=str(tmp_path), quick=True, sample=1, seed=seed)
    assert result["violations"] == []
    assert result["points"] == 2 and result["killed"] == 2


def test_the_killing_file_system_counts_the_events_of_its_mode(tmp_path: Any) -> None:
    before = KillingFileSystem(OS_FS, mode="before")
    half = KillingFileSystem(OS_FS, mode="half")
    for fs in (before, half):
        path = os.path.join(str(tmp_path), f"{fs.mode}.bin")
        fs.write_file_atomic(path, b"x" * 10)  # a create, a write, a rename (and syncs, which do not count)
        fs.unlink(path)
    assert before.events == 3  # create, rename, remove
    assert half.events == 1  # one write


def test_a_write_cut_in_half_leaves_half_of_it_and_kills(tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "cut.bin")
    pid = os.fork()
    if pid == 0:  # the child: dies in its first write
        fs = KillingFileSystem(OS_FS, mode="half", kill_at=1)
        fd = fs.open(path, os.O_WRONLY | os.O_CREAT)
        fs.write_all(fd, b"a" * 100)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    with open(path, "rb") as f:
        assert f.read() == b"a" * 50


def test_the_audit_killer_dies_before_the_counted_create_of_code_that_writes_without_shipslog(tmp_path: Any) -> None:
    first, second = os.path.join(str(tmp_path), "a"), os.path.join(str(tmp_path), "b")
    code = (
        "import sys\n"
        "from shipslog.tools import AuditKiller\n"
        "AuditKiller(kill_at=2)\n"
        f"open({first!r}, 'w').close()\n"
        f"open({first!r}, 'r').close()\n"  # a read is not counted
        f"open({second!r}, 'w').close()\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert os.path.exists(first) and not os.path.exists(second)
