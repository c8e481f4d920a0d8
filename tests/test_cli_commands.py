"""The inspection commands, gc and demo argument checks: output, JSON, exit codes, and read-only-ness."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from _cli_helpers import healthy_host
from _engine_helpers import commit_checkpoint, crash, flip_bit, open_engine

from shipslog import Engine
from shipslog.tools import main


def _digest(root: str) -> dict[str, str]:
    """Every file under root (LOCK included) with its content hash: any change shows."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def host(root: str) -> str:
    return healthy_host(root)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_of_a_clean_root_exits_0_and_names_the_latest_and_pointers(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", host)
    assert code == 0
    assert "latest      checkpoints/step-300 (step 300" in out and "pointer     current -> checkpoints/step-300" in out
    assert "previous session: none" in out


def test_status_json_of_a_root_needing_recovery_exits_1_with_findings(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    e = open_engine(host)
    e.checkpoint("half", step=400)
    crash(e)
    code, out, _ = run(capsys, "status", host, "--json")
    data = json.loads(out)
    assert code == 1
    assert any("'begun'" in f and "shipslog recover" in f for f in data["findings"])
    assert data["status"]["global_step"] == 300


def test_a_folder_that_is_not_a_root_exits_2_and_is_not_created(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    missing = os.path.join(tmp_path, "nope")
    for command in ("status", "log", "verify", "checkpoints", "pointers", "export"):
        code, _, err = run(capsys, command, missing)
        assert code == 2 and "is not a shipslog root" in err, command
    assert not os.path.exists(missing)


def test_log_filters_by_kind_and_limit_and_prints_json(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "log", host, "--kind", "checkpoint.committed", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["path"] for r in rows] == ["checkpoints/step-100", "checkpoints/step-200", "checkpoints/step-300"]
    code, out, _ = run(capsys, "log", host, "--limit", "2")
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["seq", "time", "session"] and len(lines) == 3
    assert "session.closed" in lines[-1]


def test_log_with_an_unknown_kind_is_a_usage_error_listing_the_kinds(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["log", host, "--kind", "checkpoint.nope"])
    assert info.value.code == 2
    assert "known kinds: " in capsys.readouterr().err


def test_replay_until_gives_the_state_at_that_record_and_past_the_end_is_a_usage_error(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "replay", host, "--until", "6", "--json")
    state = json.loads(out)
    assert code == 0 and state["seq"] == 6 and sorted(state["checkpoints"]) == ["step-100"]
    with pytest.raises(SystemExit) as info:
        main(["replay", host, "--until", "9999"])
    assert info.value.code == 2 and "past the end" in capsys.readouterr().err


def test_export_writes_one_json_line_per_record(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "export", host, "--format", "jsonl")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["kind"] == "session.opened" and rows[-1]["kind"] == "session.closed"


def test_checkpoints_and_pointers_list_what_the_journal_says(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "checkpoints", host, "--json")
    data = json.loads(out)
    assert code == 0 and data["latest"] == "step-300" and [a["step"] for a in data["items"]] == [100, 200, 300]
    code, out, _ = run(capsys, "pointers", host)
    assert code == 0 and "current  checkpoints/step-300" in out


def test_verify_deep_finds_a_bit_flip_that_the_shallow_check_does_not(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "verify", host)[0] == 0
    flip_bit(os.path.join(host, "checkpoints", "step-200", "model.bin"))
    code, out, _ = run(capsys, "verify", host)
    assert code == 0
    code, out, _ = run(capsys, "verify", host, "--deep", "--json")
    found = json.loads(out)["violations"]
    assert code == 1 and [v["invariant"] for v in found] == ["checkpoints-verify"] and "step-200" in found[0]["message"]


def test_read_only_commands_change_no_byte_and_work_while_an_engine_holds_the_root(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Engine.open(host, fsync=False) as live:
        commit_checkpoint(live, "step-400", step=400)
        before = _digest(host)
        for argv in (["status", host], ["log", host], ["verify", host], ["checkpoints", host], ["pointers", host],
                     ["export", host], ["replay", host, "--until", "3"]):
            code, _, err = run(capsys, *argv)
            assert code == 0, (argv, err)
        assert _digest(host) == before
        code, out, _ = run(capsys, "status", host)
        assert "session     live: pid" in out


def test_gc_dry_run_changes_nothing_and_gc_keeps_the_pointer_target_and_newest(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(os.listdir(os.path.join(host, "checkpoints")))
    code, out, _ = run(capsys, "gc", host, "--keep", "1", "--dry-run")
    assert code == 0 and "would delete: checkpoints/step-100" in out
    assert sorted(os.listdir(os.path.join(host, "checkpoints"))) == before
    code, out, _ = run(capsys, "gc", host, "--keep", "1", "--json")
    assert code == 0 and sorted(json.loads(out)["delete"]) == ["checkpoints/step-100", "checkpoints/step-200"]
    assert os.listdir(os.path.join(host, "checkpoints")) == ["step-300"]


def test_demo_with_an_unknown_crash_point_exits_2_and_lists_the_known_ones(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", os.path.join(tmp_path, "d"), "--crash-at", "no.such.point"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "known points: " in err and "checkpoint.after_durable" in err


def test_tail_shows_the_last_records(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tail", host, "-n", "3")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    assert [line.split()[4] for line in lines[1:]] == ["pointer.intended", "pointer.set", "session.closed"]


@pytest.mark.subprocess
def test_tail_follow_prints_records_appended_while_it_runs(host: str) -> None:
    import subprocess
    import sys
    import time

    follower = subprocess.Popen(
        [sys.executable, "-m", "shipslog", "tail", host, "-n", "1", "-f", "--interval", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().startswith("seq")
        assert "session.closed" in follower.stdout.readline()
        with Engine.open(host, fsync=False) as e:
            commit_checkpoint(e, "step-400", step=400)
        seen = []
        deadline = time.monotonic() + 30
        while "session.closed" not in "".join(seen) and time.monotonic() < deadline:
            seen.append(follower.stdout.readline())
        kinds = [line.split()[4] for line in seen if line.strip()]
        assert kinds[:2] == ["session.opened", "checkpoint.begun"] and kinds[-1] == "session.closed"
    finally:
        follower.kill()
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()


@pytest.mark.subprocess
def test_status_lists_running_workers_with_their_pid_and_liveness(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from shipslog.engine import Supervisor, WorkerSpec

    sleep = shutil.which("sleep") or "/bin/sleep"
    spec = WorkerSpec(name="loader", argv=(sleep, "1000"), output="devnull", stop_timeout=1.0)
    with Engine.open(host, fsync=False) as e, Supervisor(e, [spec]) as sup:
        pid = sup.workers()["loader"].pid
        code, out, _ = run(capsys, "status", host)
        assert code == 0
        assert f"worker      loader pid {pid} attempt 0 started (alive)" in out


def test_gc_dry_run_changes_no_byte_of_a_root_that_needs_recovery(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No lock taken, no session journaled, no recovery carried out: a dry run reads the root like status does."""
    e = open_engine(root)
    for step in (100, 200, 300):
        commit_checkpoint(e, f"step-{step}", step=step)
    e.checkpoint("step-400", step=400).write_bytes("model.bin", b"half")
    crash(e)
    before = _digest(root)
    code, out, err = run(capsys, "gc", root, "--keep", "1", "--dry-run")
    assert code == 0, err
    assert "would delete: checkpoints/step-100" in out and "would delete: checkpoints/step-200" in out
    assert _digest(root) == before


@pytest.mark.parametrize("keep", ["0", "-1"])
def test_gc_keep_below_one_is_a_usage_error_before_anything_is_journaled(host: str, capsys: pytest.CaptureFixture[str], keep: str) -> None:
    before = _digest(host)
    with pytest.raises(SystemExit) as info:
        main(["gc", host, "--keep", keep])
    assert info.value.code == 2
    assert "expected a number of 1 or more" in capsys.readouterr().err
    assert _digest(host) == before


def test_tail_json_prints_one_object_per_record(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tail", host, "-n", "3", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 3 and all({"seq", "kind", "op"} <= set(line) for line in lines)
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)


@pytest.mark.parametrize("argv", [["tail", "-n", "-3"], ["replay", "--until", "0"], ["log", "--op", "no-such-op"]], ids=" ".join)
def test_out_of_range_or_unknown_arguments_are_usage_errors(host: str, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([argv[0], host, *argv[1:]])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_replay_lists_checkpoints_by_step_in_plain_words(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    with open_engine(root) as e:
        for step in (10, 5, 100):
            commit_checkpoint(e, f"step-{step}", step=step)
        last = e.state.seq
    code, out, _ = run(capsys, "replay", root, "--until", str(last))
    assert code == 0
    assert "checkpoints (by step): step-5 (step 5), step-10 (step 10), step-100 (step 100)" in out
    assert "[" not in out and "'" not in out  # no Python reprs


def test_the_demo_names_a_shipslog_command_that_runs_without_an_activated_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``make demo`` the venv is not activated: the look-around commands give the script's path."""
    import shutil
    import subprocess

    from shipslog.tools import shipslog_command

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    prog = shipslog_command()
    assert shutil.which(prog.split()[0]) is not None or os.path.exists(prog.split()[0])
    done = subprocess.run([*prog.split(), "--help"], capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "exit codes:" in done.stdout


def test_tail_columns_line_up(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "tail", host, "-n", "6")
    assert code == 0
    lines = out.splitlines()
    starts = {line.index(kind) for line in lines[1:] for kind in [line.split()[4]]}
    assert len(lines) == 7 and starts == {lines[0].index("event")}
