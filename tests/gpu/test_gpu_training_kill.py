"""A training process killed at file events of its saves resumes from the newest committed checkpoint and ends
with the weights of an uninterrupted run, bit for bit (a seeded sample here; ``shipslog torture --training``
runs every point)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("torch")

from shipslog.journal import OS_FS
from shipslog.tools import (
    TEARDOWN_ABORT,
    KillingFileSystem,
    aborted_after_result,
    build_kill_library,
    kill_library_env,
    run_training_torture,
)

_COMPILER = shutil.which("cc") or shutil.which("gcc")
_EXPECTED_INTERCEPT = "libc" if _COMPILER else "python"


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_a_plain_loop_killed_at_file_events_resumes_from_the_newest_checkpoint_bit_for_bit(tmp_path: Any) -> None:
    lines: list[str] = []
    result = run_training_torture("plain", folder=str(tmp_path), quick=True, sample=2, seed=3, log=lines.append)
    assert result["violations"] == []
    assert result["intercept"] == _EXPECTED_INTERCEPT
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
    assert result["intercept"] == _EXPECTED_INTERCEPT
    assert result["points"] == 2 and result["killed"] == 2


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("framework", "module"), [("hf", "transformers"), ("lightning", "lightning")])
def test_a_two_rank_ddp_job_killed_at_either_ranks_file_events_resumes_from_the_newest_checkpoint_bit_for_bit(
    tmp_path: Any, framework: str, module: str
) -> None:
    pytest.importorskip(module)
    lines: list[str] = []
    result = run_training_torture(framework, folder=str(tmp_path), quick=True, sample=1, seed=11, ranks=2, log=lines.append)
    assert result["violations"] == []
    assert result["ranks"] == 2
    before, half = result["events"]["before"], result["events"]["half"]
    assert len(before) == 2 and all(n > 0 for n in before) and before[0] > before[1]  # rank 0 writes the shared state
    assert len(half) == 2 and all(n > 0 for n in half)
    assert result["points"] == 4 and result["killed"] == 4 and result["verdicts"]["resumed"] == 4
    assert sorted(line.split(":")[1].split()[1] for line in lines) == ["0", "0", "1", "1"]  # both ranks were killed


def test_two_ranks_are_refused_for_a_baseline_and_for_frameworks_without_a_ddp_path(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="ranks=2 runs shipslog's DDP path"):
        run_training_torture("plain", folder=str(tmp_path), ranks=2)
    with pytest.raises(ValueError, match="ranks=2 runs shipslog's DDP path"):
        run_training_torture("hf", folder=str(tmp_path), ranks=2, baseline=True)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_without_a_compiler_the_python_level_killers_still_cut_the_engine_s_own_file_events(tmp_path: Any) -> None:
    result = run_training_torture("plain", folder=str(tmp_path), quick=True, sample=1, seed=11, intercept="python")
    assert result["violations"] == []
    assert result["intercept"] == "python" and result["points"] == 2 and result["killed"] == 2


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.timeout(600)
def test_a_baseline_killed_in_libc_has_its_native_writes_cut_and_its_failures_counted(tmp_path: Any) -> None:
    if _COMPILER is None:
        pytest.skip("no C compiler: the kill library cannot be built")
    result = run_training_torture("plain", folder=str(tmp_path), quick=True, sample=3, seed=2, baseline=True)
    assert result["intercept"] == "libc" and result["events"]["half"] > 0  # torch.save's own writes, cut in half
    assert result["points"] == 6 and result["killed"] == 6


_NATIVE_SAVE = """
import os, sys, torch
root = sys.argv[1]
os.makedirs(os.path.join(root, "a"), exist_ok=True)      # before-event 1 (root) and 2 (a)
open(os.path.join(root, "..", "outside.txt"), "w").close()  # outside the roots: never counted
torch.save({"w": torch.arange(100000)}, os.path.join(root, "a", "t.pt"))  # native: create 3, writes
os.rename(os.path.join(root, "a", "t.pt"), os.path.join(root, "a", "u.pt"))  # 4
from shipslog.tools import kill_library_events
print(kill_library_events())
"""


def _run_native_save(tmp_path: Any, mode: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    if _COMPILER is None:
        pytest.skip("no C compiler: the kill library cannot be built")
    library = build_kill_library(str(tmp_path))
    assert library is not None
    root = os.path.join(str(tmp_path), "root")
    env = kill_library_env(dict(os.environ), library, [root], mode, kill_at)
    return subprocess.run([sys.executable, "-c", _NATIVE_SAVE, root], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_the_kill_library_counts_creates_renames_and_removes_under_its_roots_only(tmp_path: Any) -> None:
    done = _run_native_save(tmp_path, "before", 0)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == 4
    assert os.path.exists(os.path.join(str(tmp_path), "root", "a", "u.pt"))


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_the_kill_library_kills_before_a_native_create(tmp_path: Any) -> None:
    done = _run_native_save(tmp_path, "before", 3)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert os.path.isdir(os.path.join(str(tmp_path), "root", "a"))
    assert os.listdir(os.path.join(str(tmp_path), "root", "a")) == []  # torch's zip writer never created its file


@pytest.mark.subprocess
@pytest.mark.timeout(300)
def test_the_kill_library_cuts_a_native_write_in_half(tmp_path: Any) -> None:
    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    whole = _run_native_save(tmp_path / "whole", "half", 0)
    assert whole.returncode == 0, whole.stderr
    full = os.path.getsize(os.path.join(str(tmp_path), "whole", "root", "a", "u.pt"))
    done = _run_native_save(tmp_path / "cut", "half", 1)
    assert done.returncode == -signal.SIGKILL, done.stderr
    cut = os.path.getsize(os.path.join(str(tmp_path), "cut", "root", "a", "t.pt"))
    assert 0 < cut < full  # the file torch was writing, left torn: the first write's first half


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


_ABORTS_AFTER = r'''
import os, sys
result, body, message = sys.argv[1:4]
if body:
    with open(result, "w") as f:
        f.write(body)
sys.stderr.write(message + "\n")
sys.stderr.flush()
os.abort()
'''


def _aborted_child(tmp_path: Any, body: str, message: str = TEARDOWN_ABORT) -> tuple[int, str, str]:
    result = os.path.join(tmp_path, "result.json")
    proc = subprocess.run([sys.executable, "-c", _ABORTS_AFTER, result, body, message], capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode, proc.stderr, result


def test_a_child_that_aborts_in_torch_s_teardown_after_a_complete_result_has_finished(tmp_path: Any) -> None:
    code, err, result = _aborted_child(tmp_path, '{"start": 4, "digest": "ab"}')
    assert code == -signal.SIGABRT
    assert aborted_after_result(code, err, result)


@pytest.mark.parametrize(
    ("body", "message"),
    [("", TEARDOWN_ABORT), ('{"start": 4, "dig', TEARDOWN_ABORT), ('{"start": 4}', "Fatal Python error: Segmentation fault")],
    ids=["no-result", "result-cut-short", "another-abort"],
)
def test_an_abort_without_a_complete_result_or_with_another_message_is_a_failure(tmp_path: Any, body: str, message: str) -> None:
    code, err, result = _aborted_child(tmp_path, body, message)
    assert code == -signal.SIGABRT
    assert not aborted_after_result(code, err, result)


def test_only_sigabrt_counts_as_the_teardown_abort(tmp_path: Any) -> None:
    result = os.path.join(tmp_path, "result.json")
    with open(result, "w", encoding="utf-8") as f:
        f.write("{}")
    assert aborted_after_result(-signal.SIGABRT, TEARDOWN_ABORT, result)
    assert not aborted_after_result(-signal.SIGKILL, TEARDOWN_ABORT, result)
    assert not aborted_after_result(1, TEARDOWN_ABORT, result)
