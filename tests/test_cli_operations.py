"""``--operations MODULE`` on the commands that read a root, and read-only views that start from a snapshot.

A host's own operation type lives in a module written to the test's folder
(an ``export`` operation: ``export.begun`` -> ``export.done``); the commands
load it by path or by dotted name and then show its events typed and its
operations in the state.  A module that cannot be used is one line, exit 2,
and no byte of the root changes.  The read-only views load the state as
``Engine.open`` does: the newest usable snapshot, then only the records after
it (the counts are asserted, never the time).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from _cli_helpers import cli, keep_logging, unchanged  # noqa: F401  (keep_logging: autouse fixture)
from _engine_helpers import commit_checkpoint, crash, open_engine
from _helpers import segments

from shipslog.journal import CorruptJournalError, encode_snapshot, list_snapshots, read_snapshot
from shipslog.tools import (
    OperationsModuleError,
    load_operations,
    load_operations_module,
    open_view,
    operation_types,
)

HOST_MODULE = '''
"""A host's own operation type: an export of rows to a target, begun then done (or aborted)."""

import enum

from shipslog.engine import Event, OperationType, Recovery, RecoveryAction


class ExportState(str, enum.Enum):
    BEGUN = "begun"
    DONE = "done"
    ABORTED = "aborted"


class ExportBegun(Event, tag="export.begun"):
    target: str


class ExportDone(Event, tag="export.done"):
    rows: int


class ExportAborted(Event, tag="export.aborted"):
    pass


EXPORT = OperationType(
    name="export",
    states=ExportState,
    events=(ExportBegun, ExportDone, ExportAborted),
    begins={"export.begun": ExportState.BEGUN},
    transitions={
        (ExportState.BEGUN, "export.done"): ExportState.DONE,
        (ExportState.BEGUN, "export.aborted"): ExportState.ABORTED,
    },
    terminal=frozenset({ExportState.DONE, ExportState.ABORTED}),
    recovery={ExportState.BEGUN: Recovery(RecoveryAction.ROLL_BACK, "never finished: abort it", "export.aborted")},
)

OPERATIONS = [EXPORT]
'''

DOTTED = "shipslog_test_host_operations"

READ_ONLY = [
    ["status"], ["log"], ["tail"], ["verify"], ["checkpoints"], ["pointers"], ["replay", "--until", "3"], ["export"],
    ["recover", "--dry-run"],
]
"""Every command that reads a root and changes nothing, as argv before ROOT (recover --dry-run takes the lock)."""

EVERY_ROOT_COMMAND = [*READ_ONLY, ["recover"], ["gc", "--keep", "1", "--dry-run"], ["gc", "--keep", "1"]]


def _name(argv: list[str]) -> str:
    return "-".join(a.lstrip("-") for a in argv)


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("shipslog: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def ops_file(tmp_path: Any) -> str:
    """The host's module, as a .py file beside the root."""
    path = os.path.join(os.fspath(tmp_path), "host_operations.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(HOST_MODULE)
    return path


@pytest.fixture
def host_module(ops_file: str) -> ModuleType:
    """The host's module, loaded as the command line loads it (so the test can journal its events)."""
    return load_operations_module(ops_file)


@pytest.fixture
def dotted(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The host's module importable by a dotted name (its folder on sys.path); forgotten afterwards."""
    folder = os.path.join(os.fspath(tmp_path), "site")
    os.makedirs(folder)
    with open(os.path.join(folder, f"{DOTTED}.py"), "w", encoding="utf-8") as f:
        f.write(HOST_MODULE)
    monkeypatch.syspath_prepend(folder)
    yield DOTTED
    sys.modules.pop(DOTTED, None)


def _write_module(tmp_path: Any, name: str, text: str) -> str:
    path = os.path.join(os.fspath(tmp_path), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@pytest.fixture
def host(root: str, host_module: ModuleType) -> str:
    """A closed root: a checkpoint, export-1 begun and done, export-2 begun and left so (its session is gone)."""
    m = host_module
    e = open_engine(root, operations=operation_types(m), snapshot_every=0)
    commit_checkpoint(e, "step-1", step=1)
    e.journal_events(m.ExportBegun(op="export-1", target="s3://bucket/a"))
    e.journal_events(m.ExportDone(op="export-1", rows=42))
    e.journal_events(m.ExportBegun(op="export-2", target="s3://bucket/b"))
    e.close()
    return root


# -- the module, by path and by dotted name -----------------------------------------------------


def test_the_loader_returns_the_module_types_by_path_and_by_dotted_name(ops_file: str, dotted: str) -> None:
    by_path = load_operations(ops_file)
    by_name = load_operations(dotted)
    assert [t.name for t in by_path] == [t.name for t in by_name] == ["export"]
    assert by_path[0].kinds == frozenset({"export.begun", "export.done", "export.aborted"})
    assert load_operations(None) == ()
    assert operation_types(load_operations_module(dotted)) == by_name


def test_status_without_operations_reports_the_kinds_and_with_them_shows_the_operation(
    host: str, ops_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = unchanged(host)
    code, out, err = cli(capsys, "status", host, "--json")
    assert code == 1, err
    findings = json.loads(out)["findings"]
    assert any("export.begun (2 records), export.done (1 record)" in f for f in findings)
    assert json.loads(out)["status"]["in_flight"] == []

    code, out, err = cli(capsys, "status", host, "--json", "--operations", ops_file)
    assert code == 1, err  # export-2 was cut off: its session is gone
    data = json.loads(out)
    assert not any("do not know" in f for f in data["findings"])
    assert any("export export-2 is 'begun' and its session is gone" in f for f in data["findings"])
    assert [(op["type"], op["id"], op["state"]) for op in data["status"]["in_flight"]] == [("export", "export-2", "begun")]
    code, out, _err = cli(capsys, "status", host, "--operations", ops_file)
    assert "export export-2 begun" in out
    assert unchanged(host) == before


def test_replay_and_log_show_typed_events_with_a_dotted_module_name(
    host: str, dotted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = unchanged(host)
    last = json.loads(cli(capsys, "log", host, "--json")[1])[-1]["seq"]
    code, out, _err = cli(capsys, "replay", host, "--until", str(last), "--json")
    assert code == 0 and json.loads(out)["unregistered"] == {"export.begun": 2, "export.done": 1}
    code, out, err = cli(capsys, "replay", host, "--until", str(last), "--json", "--operations", dotted)
    assert code == 0, err
    state = json.loads(out)
    assert state["unregistered"] == {}
    assert state["ops"]["export-2"]["type"] == "export" and state["ops"]["export-2"]["info"]["target"] == "s3://bucket/b"
    assert state["op_counts"]["export"] == 2

    code, out, _err = cli(capsys, "log", host, "--json", "--kind", "export.done", "--operations", dotted)
    assert code == 0
    (row,) = json.loads(out)
    assert (row["op"], row["rows"]) == ("export-1", 42)
    # a kind the module declares is a known kind even when the journal holds none of it
    code, out, _err = cli(capsys, "log", host, "--json", "--kind", "export.aborted", "--operations", dotted)
    assert code == 0 and json.loads(out) == []
    code, _out, err = cli(capsys, "log", host, "--kind", "export.aborted")
    assert code == 2 and "unknown --kind 'export.aborted'" in err
    assert unchanged(host) == before


def test_verify_with_operations_checks_the_host_operations_instead_of_reporting_their_kinds(
    host: str, ops_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = cli(capsys, "verify", host, "--json")
    assert code == 1 and [v["invariant"] for v in json.loads(out)["violations"]] == ["events-registered"]
    code, out, _err = cli(capsys, "verify", host, "--json", "--operations", ops_file)
    assert code == 1
    violations = json.loads(out)["violations"]
    assert [v["invariant"] for v in violations] == ["ops-terminal", "recovery-idempotent"]  # what a cut-off operation is
    assert all("export-2" in v["message"] for v in violations)


def test_recover_with_operations_settles_the_host_operation(host: str, ops_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = cli(capsys, "recover", host, "--dry-run")
    assert code == 2 and "export.begun" in err  # the plan needs the types: named, nothing changed
    before = unchanged(host)
    code, out, err = cli(capsys, "recover", host, "--dry-run", "--json", "--operations", ops_file)
    assert code == 0, err
    plan = json.loads(out)["plan"]
    assert [(p["operation"], p["type"], p["state"]) for p in plan if p["type"] == "export"] == [("export-2", "export", "begun")]
    assert unchanged(host) == before
    code, out, err = cli(capsys, "recover", host, "--json", "--operations", ops_file)
    assert code == 0, err and json.loads(out)["violations"] == []
    code, out, _err = cli(capsys, "log", host, "--json", "--op", "export-2", "--operations", ops_file)
    assert [r["kind"] for r in json.loads(out)] == ["export.begun", "export.aborted"]
    code, out, _err = cli(capsys, "status", host, "--json", "--operations", ops_file)
    assert code == 0 and json.loads(out)["status"]["in_flight"] == []


def test_gc_with_operations_opens_the_root_with_the_host_types(host: str, ops_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = cli(capsys, "gc", host, "--keep", "1", "--dry-run")
    assert code == 2 and "export.begun" in err
    code, out, err = cli(capsys, "gc", host, "--keep", "1", "--dry-run", "--json", "--operations", ops_file)
    assert code == 0, err
    assert json.loads(out)["delete"] == []


@pytest.mark.parametrize("argv", READ_ONLY, ids=_name)
def test_read_only_commands_with_operations_change_no_byte(
    host: str, ops_file: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    before = unchanged(host)
    code, out, err = cli(capsys, *argv[:1], host, *argv[1:], "--operations", ops_file)
    assert code in (0, 1), err
    assert out and "error" not in err
    assert unchanged(host) == before


# -- modules that cannot be used -----------------------------------------------------------------

BAD_MODULES: dict[str, tuple[str | None, str]] = {
    "raises": ('raise RuntimeError("the host is not configured")\n', "importing it raised RuntimeError: the host is not configured"),
    "syntax": ("def broken(:\n", "importing it raised SyntaxError"),
    "no-operations": ("EXPORT = 1\n", "the module defines no OPERATIONS; it must define OPERATIONS, a sequence"),
    "not-a-type": (
        HOST_MODULE.replace("OPERATIONS = [EXPORT]", 'OPERATIONS = [EXPORT, "export"]'),
        "OPERATIONS[1] is a str ('export'), not a shipslog.engine.OperationType",
    ),
    "not-a-sequence": (HOST_MODULE.replace("OPERATIONS = [EXPORT]", "OPERATIONS = EXPORT"), "OPERATIONS is a OperationType"),
    "a-string": (HOST_MODULE.replace("OPERATIONS = [EXPORT]", 'OPERATIONS = "EXPORT"'), "OPERATIONS is a str ('EXPORT')"),
    "clash": (
        HOST_MODULE.replace("OPERATIONS = [EXPORT]", "import dataclasses\nOPERATIONS = [EXPORT, dataclasses.replace(EXPORT, description='again')]"),
        "cannot be registered beside the built-ins: operation type 'export' is registered twice",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MODULES))
def test_a_module_that_cannot_be_used_is_one_line_exit_2(
    root: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    open_engine(root).close()
    text, message = BAD_MODULES[case]
    assert text is not None
    path = _write_module(tmp_path, f"bad_{case.replace('-', '_')}.py", text)
    before = unchanged(root)
    err = _one_line_error(*cli(capsys, "status", root, "--operations", path))
    assert err.startswith(f"shipslog: error: --operations {path}: "), err
    assert message in err
    assert unchanged(root) == before


def test_a_module_that_is_not_there_is_one_line_exit_2(root: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    open_engine(root).close()
    missing = os.path.join(os.fspath(tmp_path), "nowhere", "ops.py")
    err = _one_line_error(*cli(capsys, "status", root, "--operations", missing))
    assert f"no such file: {missing}" in err
    err = _one_line_error(*cli(capsys, "log", root, "--operations", "shipslog_no_such_module.ops"))
    assert "no module named 'shipslog_no_such_module'" in err and "PYTHONPATH" in err
    err = _one_line_error(*cli(capsys, "log", root, "--operations", "not a module"))
    assert "neither a dotted module name" in err
    with pytest.raises(OperationsModuleError, match=r"a path must name a \.py file"):
        load_operations_module(os.path.join(os.fspath(tmp_path), "ops.txt"))


def test_a_dotted_module_whose_own_import_fails_names_what_it_imports(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = os.path.join(os.fspath(tmp_path), "site")
    os.makedirs(folder)
    with open(os.path.join(folder, "shipslog_test_needs_more.py"), "w", encoding="utf-8") as f:
        f.write("import shipslog_test_not_installed\n")
    monkeypatch.syspath_prepend(folder)
    try:
        with pytest.raises(OperationsModuleError, match="importing it raised ModuleNotFoundError: No module named 'shipslog_test_not_installed'"):
            load_operations_module("shipslog_test_needs_more")
    finally:
        sys.modules.pop("shipslog_test_needs_more", None)


@pytest.mark.parametrize("argv", EVERY_ROOT_COMMAND, ids=_name)
def test_every_root_command_refuses_a_bad_module_before_touching_the_root(
    host: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    path = _write_module(tmp_path, "no_operations.py", "EXPORT = 1\n")
    before = unchanged(host)
    err = _one_line_error(*cli(capsys, *argv[:1], host, *argv[1:], "--operations", path))
    assert "defines no OPERATIONS" in err
    assert unchanged(host) == before


# -- the state from a snapshot and the records after it ---------------------------------------------


def _snapshot_root(root: str, *, before: int = 5, after: int = 3) -> tuple[int, int]:
    """A closed root (small segments) with ``before`` checkpoints, a pointer, a snapshot, and ``after`` more checkpoints:
    (snapshot seq, last seq)."""
    e = open_engine(root, snapshot_every=0, segment_bytes=2048, preallocate=False)
    for step in range(1, before + 1):
        commit_checkpoint(e, f"step-{step}", step=step)
    e.set_pointer("current", f"step-{before}")
    e.save_snapshot()
    snap_seq = e.state.seq
    for step in range(before + 1, before + 1 + after):
        commit_checkpoint(e, f"step-{step}", step=step)
    e.close()
    return snap_seq, e.state.seq


def test_status_replays_only_the_records_after_the_newest_snapshot(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    snap_seq, last = _snapshot_root(root)
    assert 0 < snap_seq < last
    before = unchanged(root)
    code, out, err = cli(capsys, "status", root, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["replayed"] == {"snapshot_seq": snap_seq, "records": last - snap_seq}
    assert data["status"]["global_step"] == 8
    assert unchanged(root) == before
    # the same state as a replay of every record, and the same work as Engine.open
    tail, whole = open_view(root), open_view(root, snapshots=False)
    assert (tail.snapshot_seq, tail.replayed) == (snap_seq, last - snap_seq)
    assert (whole.snapshot_seq, whole.replayed) == (None, last)
    assert tail.state == whole.state
    with open_engine(root) as e:
        assert e.replayed == last - snap_seq


def test_status_and_open_find_damage_in_the_journal_before_the_snapshot(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    snap_seq, _last = _snapshot_root(root, before=12)
    first = segments(root)[0]
    (_seq, newest), *_ = list_snapshots(os.path.join(root, "snapshots"))
    assert read_snapshot(newest).position.segment > 1, "the snapshot should start reading after the first segment"
    with open(first, "r+b") as f:  # damage a frame of the first segment, long before the snapshot
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    code, _out, err = cli(capsys, "status", root, "--json")
    assert code == 2 and f"{first} offset " in err and "frame crc mismatch" in err
    with pytest.raises(CorruptJournalError) as caught:
        open_engine(root)
    assert caught.value.path == first and caught.value.offset is not None and caught.value.offset <= 200
    code, out, _err = cli(capsys, "verify", root, "--json")
    assert code == 1 and json.loads(out)["violations"][0]["invariant"] == "journal-verifies"
    assert snap_seq > 0


def test_a_snapshot_at_the_end_of_the_journal_replays_nothing(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    snap_seq, last = _snapshot_root(root, after=0)
    assert last == snap_seq + 1  # session.closed
    e = open_engine(root, snapshot_every=0)
    e.save_snapshot()
    crash(e)
    code, out, err = cli(capsys, "status", root, "--json")
    assert code == 1, err  # the crashed session is a finding
    assert json.loads(out)["replayed"]["records"] == 0


def test_a_snapshot_past_the_end_of_the_journal_is_refused_as_engine_open_refuses_it(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _snapshot_root(root, after=0)
    (_seq, older), *_ = list_snapshots(os.path.join(root, "snapshots"))
    e = open_engine(root, snapshot_every=0, segment_bytes=2048, preallocate=False)
    commit_checkpoint(e, "step-10", step=10)
    e.save_snapshot()
    snap_seq = e.state.seq
    crash(e)
    # the snapshot starts reading at an older frame (valid: at or before its seq) and the journal loses its
    # last frame, which held the snapshot's seq, as a disk that lied about its fsync would
    (_seq, newest), *_ = list_snapshots(os.path.join(root, "snapshots"))
    snap = read_snapshot(newest)
    with open(newest, "wb") as f:
        f.write(encode_snapshot(snap.seq, read_snapshot(older).position, snap.payload))
    path = segments(root)[-1]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    before = unchanged(root)
    code, out, err = cli(capsys, "status", root)
    assert code == 2 and out == ""
    assert f"is at seq {snap_seq} but the journal ends at seq {snap_seq - 1}: acknowledged records are missing" in err
    assert unchanged(root) == before
    with pytest.raises(CorruptJournalError, match=f"is at seq {snap_seq} but the journal ends at seq {snap_seq - 1}"):
        open_engine(root)


def test_a_snapshot_of_host_operations_is_used_only_with_their_module(
    root: str, host_module: ModuleType, ops_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    m = host_module
    e = open_engine(root, operations=operation_types(m), snapshot_every=0)
    e.journal_events(m.ExportBegun(op="export-1", target="t"))
    e.journal_events(m.ExportDone(op="export-1", rows=1))
    e.journal_events(m.ExportBegun(op="export-2", target="t"))
    e.save_snapshot()  # export-2 is in flight in the snapshot: a state the built-ins alone cannot hold
    snap_seq = e.state.seq
    commit_checkpoint(e, "step-1", step=1)
    e.close()
    last = e.state.seq
    before = unchanged(root)

    code, out, err = cli(capsys, "status", root, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["replayed"] == {"snapshot_seq": None, "records": last}  # the whole journal, to count the kinds
    assert any("export.begun (2 records), export.done (1 record)" in f for f in data["findings"])
    assert "snapshot" in err and "replaying the whole journal" in err  # the unusable snapshot is a warning

    code, out, err = cli(capsys, "status", root, "--json", "--operations", ops_file)
    assert code == 1, err  # export-2's session is gone
    data = json.loads(out)
    assert data["replayed"] == {"snapshot_seq": snap_seq, "records": last - snap_seq}
    assert [op["id"] for op in data["status"]["in_flight"]] == ["export-2"]
    assert unchanged(root) == before


def test_a_snapshot_counting_finished_host_operations_is_not_used_without_their_module(
    root: str, host_module: ModuleType, ops_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    m = host_module
    e = open_engine(root, operations=operation_types(m), snapshot_every=0)
    e.journal_events(m.ExportBegun(op="export-1", target="t"))
    e.journal_events(m.ExportDone(op="export-1", rows=1))
    e.save_snapshot()  # nothing in flight: only op_counts remembers the export
    snap_seq = e.state.seq
    commit_checkpoint(e, "step-1", step=1)
    e.close()
    code, out, _err = cli(capsys, "status", root, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["replayed"]["snapshot_seq"] is None
    assert any("export.begun (1 record), export.done (1 record)" in f for f in data["findings"])
    code, out, err = cli(capsys, "status", root, "--json", "--operations", ops_file)
    assert code == 0, err
    assert json.loads(out)["replayed"]["snapshot_seq"] == snap_seq
