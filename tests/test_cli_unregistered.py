"""The inspection commands on a root whose journal holds events of a host's own operation types.

The command line knows only the built-in types: log, tail, export and replay
show such events raw; verify and status report them as a finding (exit 1)
naming the kinds; nothing is changed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
import pytest
from _cli_helpers import cli, keep_logging, unchanged  # noqa: F401
from _engine_helpers import commit_checkpoint, open_engine
from test_engine_optypes import JobDone, JobQueued, JobRunning, job_type

from shipslog.journal import Journal


@pytest.fixture
def host(root: str) -> str:
    """A closed root: a checkpoint, then a job of the host's own type, queued, running and done."""
    job = job_type()
    e = open_engine(root, operations=[job])
    commit_checkpoint(e, "step-1", step=1)
    e.journal_events(JobQueued(op="job-1", name="q"))
    e.journal_events(JobRunning(op="job-1", worker="w1"))
    e.journal_events(JobDone(op="job-1"))
    e.close()
    return root


def test_log_shows_events_of_unregistered_kinds_raw(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = unchanged(host)
    code, out, err = cli(capsys, "log", host, "--json")
    assert code == 0, err
    rows = json.loads(out)
    jobs = [r for r in rows if r["kind"].startswith("job.")]
    assert [r["kind"] for r in jobs] == ["job.queued", "job.running", "job.done"]
    assert jobs[0]["op"] == "job-1" and jobs[0]["name"] == "q" and jobs[1]["worker"] == "w1"
    code, out, _err = cli(capsys, "log", host, "--kind", "job.running", "--json")
    assert code == 0 and [r["seq"] for r in json.loads(out)] == [jobs[1]["seq"]]
    assert unchanged(host) == before


def test_export_and_tail_show_them_too(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = cli(capsys, "export", host, "--format", "jsonl")
    assert code == 0
    assert [json.loads(line)["kind"] for line in out.splitlines() if "job." in line] == ["job.queued", "job.running", "job.done"]
    code, out, _err = cli(capsys, "tail", host, "-n", "5")
    assert code == 0 and "job.done" in out


def test_replay_shows_the_state_and_names_the_unregistered_kinds(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    last = str(json.loads(cli(capsys, "log", host, "--json")[1])[-1]["seq"])
    code, out, _err = cli(capsys, "replay", host, "--until", last, "--json")
    assert code == 0
    state = json.loads(out)
    assert state["unregistered"] == {"job.queued": 1, "job.running": 1, "job.done": 1}
    assert "step-1" in state["checkpoints"]
    code, out, _err = cli(capsys, "replay", host, "--until", last)
    assert code == 0 and "job.queued (1 record)" in out


def test_verify_and_status_report_them_as_a_finding_naming_the_kinds(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = unchanged(host)
    code, out, _err = cli(capsys, "verify", host, "--json")
    assert code == 1
    violations: list[dict[str, Any]] = json.loads(out)["violations"]
    assert [v["invariant"] for v in violations] == ["events-registered"]
    assert "job.done (1 record), job.queued (1 record), job.running (1 record)" in violations[0]["message"]
    code, out, _err = cli(capsys, "status", host, "--json")
    assert code == 1
    assert any("job.queued" in f for f in json.loads(out)["findings"])
    assert unchanged(host) == before


def test_an_unknown_kind_nested_too_deeply_is_a_damaged_journal_not_a_crash(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_engine(root).close()
    deep: Any = 0
    for _ in range(40):
        deep = [deep]
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        journal.append(msgspec.msgpack.encode({"kind": "job.queued", "op": "job-1", "data": deep}))
    code, _out, err = cli(capsys, "log", root)
    assert code == 2 and "nests more than 32 levels" in err and "Traceback" not in err
    code, out, _err = cli(capsys, "verify", root, "--json")
    assert code == 1 and json.loads(out)["violations"][0]["invariant"] == "journal-verifies"


def test_verify_of_a_record_naming_a_path_outside_the_root_reports_it_and_reads_nothing_there(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    open_engine(root).close()
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        for event in (
            {"kind": "checkpoint.begun", "op": "ck-1", "name": "x", "staging": "staging/ck-1"},
            {"kind": "checkpoint.durable", "op": "ck-1", "files": 0, "bytes": 0, "manifest_crc": 0},
            {"kind": "checkpoint.committed", "op": "ck-1", "path": "../../../../etc"},
        ):
            journal.append(msgspec.msgpack.encode(event))
    code, out, _err = cli(capsys, "verify", root, "--json")
    assert code == 1
    (violation,) = json.loads(out)["violations"]
    assert violation["invariant"] == "journal-verifies"
    assert "field 'path' is '../../../../etc', expected 'checkpoints/x'" in violation["message"]
    assert violation["path"] == os.path.join(root, "journal")


def test_log_shows_a_record_the_engine_refuses_with_a_note(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    open_engine(root).close()
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        journal.append(msgspec.msgpack.encode({"kind": "checkpoint.begun", "op": "ck-1", "name": "x", "staging": "../victim"}))
        seq = journal.last_seq
    before = unchanged(root)
    code, out, err = cli(capsys, "log", root, "--since", str(seq), "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["seq"] == seq and row["staging"] == "../victim"
    assert f"record seq {seq} (checkpoint.begun): field 'staging'" in err and err.count("\n") == 1
    code, out, err = cli(capsys, "export", root)
    assert code == 0 and '"../victim"' in out.splitlines()[-1]
    code, _out, err = cli(capsys, "status", root)
    assert code == 2 and "field 'staging'" in err
    assert unchanged(root) == before
