"""The command line's exit codes (0 healthy, 1 findings, 2 usage error or unusable root) and its one-line errors.

Bad input of every shape (missing root, not a root, unreadable root, a root
written by a newer shipslog, arguments past the end of the journal) exits 2
with one clear line on stderr, nothing on stdout and no byte of the root
changed; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from _cli_helpers import cli, healthy_host, keep_logging, unchanged  # noqa: F401  (keep_logging: autouse fixture)
from _engine_helpers import crash, open_engine
from _helpers import frames, rewrite_segment_version, segments

from shipslog.engine import EVENT_SCHEMA_VERSION, Registry, SessionOpened
from shipslog.journal import (
    FORMAT_VERSION,
    SNAPSHOT_VERSION,
    Journal,
    UnsupportedFormatError,
)
from shipslog.tools import EXIT_CODES, NotARootError, RootView, UnreadableRootError, main

READ_ONLY = [
    ["status"], ["log"], ["tail"], ["verify"], ["verify", "--deep"], ["checkpoints"], ["pointers"],
    ["replay", "--until", "1"], ["export"],
]
"""Every read-only command, as argv before ROOT."""

EVERY_ROOT_COMMAND = [*READ_ONLY, ["recover", "--dry-run"], ["recover"], ["gc", "--keep", "1", "--dry-run"]]


def _name(argv: list[str]) -> str:
    return "-".join(a.lstrip("-") for a in argv)


def _one_line_error(code: int, out: str, err: str) -> str:
    """Assert the shape of every refusal: exit 2, nothing on stdout, one 'shipslog: error:' line, no traceback."""
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("shipslog: error: "), err
    assert "Traceback" not in err
    return err


# -- exit codes ---------------------------------------------------------------------------


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    assert "exit codes:" in out
    for number, meaning in EXIT_CODES.items():
        assert f"  {number}  {meaning.split(':')[0]}" in out
    assert "NO_COLOR" in out and "--debug" in out


@pytest.mark.parametrize("argv", [*READ_ONLY, ["recover", "--dry-run"], ["recover"]], ids=_name)
def test_every_command_exits_0_on_a_healthy_root(root: str, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    healthy_host(root)
    code, _, err = cli(capsys, *argv[:1], root, *argv[1:])
    assert code == 0, err


@pytest.mark.parametrize("command", ["status", "verify", "recover --dry-run"])
def test_a_root_needing_recovery_exits_1_for_status_and_verify_and_0_for_a_dry_run(
    root: str, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    e = open_engine(healthy_host(root))
    e.checkpoint("half", step=400)
    crash(e)
    code, out, err = cli(capsys, *command.split(), root)
    assert code == (0 if command.startswith("recover") else 1), err
    assert "half" in out or "checkpoint-" in out


def test_verify_prints_each_finding_with_its_seq_and_what_to_do(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    e = open_engine(healthy_host(root))
    e.checkpoint("half", step=400)
    crash(e)
    before = unchanged(root)
    code, out, _ = cli(capsys, "verify", root)
    assert code == 1
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("ops-terminal: checkpoint operation "))
    assert "'begun'" in lines[at] and "(its last record is seq 15)" in lines[at]
    assert lines[at + 1] == f"  what to do: run 'shipslog recover {root}' to finish or roll back the operation"
    assert len(lines) % 2 == 0 and all(line.startswith("  what to do: ") for line in lines[1::2])
    assert unchanged(root) == before


def test_verify_deep_prints_the_damaged_file_and_what_to_do(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    from _engine_helpers import flip_bit

    model = os.path.join(healthy_host(root), "checkpoints", "step-200", "model.bin")
    flip_bit(model)
    code, out, _ = cli(capsys, "verify", root, "--deep")
    assert code == 1
    finding, advice = out.splitlines()
    assert finding.startswith("checkpoints-verify: ") and model in finding and "crc32" in finding
    assert advice.startswith("  what to do: restore the folder from a backup")


def test_verify_reports_a_corrupt_journal_as_a_finding_with_its_offset(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    from _engine_helpers import flip_bit

    path = segments(healthy_host(root))[0]
    offset, length = frames(path)[2]
    flip_bit(path, offset + 8 + length // 2)
    before = unchanged(root)
    code, out, _ = cli(capsys, "verify", root)
    assert code == 1
    assert out.startswith(f"journal-verifies: corrupt journal at {path} offset {offset}: ")
    assert "what to do: keep a copy of the root and restore the damaged segment from a backup" in out
    code, out, _ = cli(capsys, "verify", root, "--json")
    data = json.loads(out)
    assert code == 1 and data["seq"] is None
    assert [(v["invariant"], v["path"]) for v in data["violations"]] == [("journal-verifies", path)]
    assert unchanged(root) == before


# -- roots that cannot be used ---------------------------------------------------------------


@pytest.mark.parametrize("argv", EVERY_ROOT_COMMAND, ids=_name)
def test_a_missing_root_is_one_line_exit_2_and_is_not_created(tmp_path: Any, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    missing = os.path.join(tmp_path, "nope")
    err = _one_line_error(*cli(capsys, *argv[:1], missing, *argv[1:]))
    assert f"{missing} is not a shipslog root: it does not exist" in err
    assert not os.path.exists(missing)


@pytest.mark.parametrize("make", ["empty-folder", "a-file", "journal-is-a-file", "no-segments"])
def test_a_folder_that_is_not_a_root_is_one_line_exit_2(tmp_path: Any, capsys: pytest.CaptureFixture[str], make: str) -> None:
    target = os.path.join(tmp_path, "target")
    if make == "a-file":
        with open(target, "wb") as f:
            f.write(b"x")
    else:
        os.mkdir(target)
    if make == "journal-is-a-file":
        with open(os.path.join(target, "journal"), "wb") as f:
            f.write(b"x")
    if make == "no-segments":
        os.mkdir(os.path.join(target, "journal"))
    before = unchanged(tmp_path)
    for argv in (["status", target], ["verify", target], ["recover", target]):
        err = _one_line_error(*cli(capsys, *argv))
        assert "is not a shipslog root" in err and "nothing was created or changed there" in err
    assert unchanged(tmp_path) == before


@pytest.mark.parametrize("argv", EVERY_ROOT_COMMAND, ids=_name)
def test_an_unreadable_journal_folder_is_one_line_exit_2(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    healthy_host(root)
    before = unchanged(root)
    real_access = os.access
    journal = os.path.join(root, "journal")
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.fspath(path) == journal else real_access(path, mode, **kw))
    err = _one_line_error(*cli(capsys, *argv[:1], root, *argv[1:]))
    assert f"cannot read the shipslog root {root}: {journal}: this user may not list it" in err
    assert unchanged(root) == before


def test_a_segment_that_is_a_folder_is_one_line_exit_2(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    healthy_host(root)
    segment = os.path.join(root, "journal", f"{99:020d}.log")
    os.mkdir(segment)
    for argv in (["status", root], ["log", root], ["verify", root], ["recover", "--dry-run", root]):
        err = _one_line_error(*cli(capsys, *argv))
        assert f"{segment}: Is a directory (EISDIR)" in err


def _refuse_to_read(monkeypatch: pytest.MonkeyPatch, err: int, *, after: int = 0) -> None:
    """Make the OS refuse to open a journal segment for reading with ``err`` (after ``after`` successful opens)."""
    real = os.open
    calls = [0]

    def refused(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        name = os.fspath(path)
        is_segment = name.endswith(".log") and os.path.basename(os.path.dirname(name)) == "journal"
        if is_segment and not flags & (os.O_WRONLY | os.O_RDWR):
            calls[0] += 1
            if calls[0] > after:
                raise OSError(err, os.strerror(err), name)
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refused)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EIO], ids=["EACCES", "EIO"])
@pytest.mark.parametrize("argv", [["status"], ["log"], ["verify"], ["checkpoints"], ["recover", "--dry-run"]], ids=_name)
def test_an_os_error_while_reading_the_journal_is_one_line_exit_2(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], err: int
) -> None:
    healthy_host(root)
    _refuse_to_read(monkeypatch, err)
    message = _one_line_error(*cli(capsys, *argv[:1], root, *argv[1:]))
    assert f"{segments(root)[0]}: {os.strerror(err)} ({errno.errorcode[err]})" in message


def test_an_os_error_while_streaming_records_is_one_line_exit_2(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    healthy_host(root)
    _refuse_to_read(monkeypatch, errno.EIO, after=1)  # the replay reads; the export's own pass fails
    code, _, err = cli(capsys, "export", root)
    assert code == 2 and err.count("\n") == 1 and "Input/output error (EIO)" in err


def test_an_os_error_while_re_checksumming_is_one_line_exit_2(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    healthy_host(root)
    real = builtins.open

    def failing(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == "model.bin" and "r" in mode:
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(file))
        return real(file, mode, *args, **kw)

    monkeypatch.setattr(builtins, "open", failing)
    err = _one_line_error(*cli(capsys, "verify", root, "--deep"))
    assert "model.bin: Input/output error (EIO)" in err


# -- newer formats ------------------------------------------------------------------------------


def _newer_segment(root: str) -> str:
    path = segments(root)[0]
    rewrite_segment_version(path, FORMAT_VERSION + 1)  # as a newer shipslog writes it, its header crc verifying
    return path


def _newer_snapshot(root: str) -> str:
    with open_engine(root) as e:
        e.save_snapshot()
    folder = os.path.join(root, "snapshots")
    path = os.path.join(folder, max(os.listdir(folder)))
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", SNAPSHOT_VERSION + 1))
    return path


def _newer_event_schema(root: str) -> str:
    with Journal.open(root) as journal:
        journal.append(Registry().encode(SessionOpened(op="session-next", pid=1, host="h", schema=EVENT_SCHEMA_VERSION + 1)))
    return segments(root)[-1]


NEWER: dict[str, tuple[Callable[[str], str], str, int, int]] = {
    "segment": (_newer_segment, "journal segment format version", FORMAT_VERSION + 1, FORMAT_VERSION),
    "event-schema": (_newer_event_schema, "event schema format version", EVENT_SCHEMA_VERSION + 1, EVENT_SCHEMA_VERSION),
}


@pytest.mark.parametrize("argv", READ_ONLY, ids=_name)
def test_a_snapshot_in_a_newer_format_is_no_obstacle_to_reading_the_journal(
    root: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """As for Engine.open (which skips it with a warning): the read-only commands replay the journal whole."""
    _newer_snapshot(healthy_host(root))
    before = unchanged(root)
    code, out, err = cli(capsys, *argv[:1], root, *argv[1:])
    assert code == 0, err
    assert out and "error" not in err
    assert unchanged(root) == before


@pytest.mark.parametrize("argv", EVERY_ROOT_COMMAND, ids=_name)
@pytest.mark.parametrize("kind", sorted(NEWER))
def test_a_root_written_by_a_newer_shipslog_is_one_line_naming_the_file_and_versions(
    root: str, capsys: pytest.CaptureFixture[str], kind: str, argv: list[str]
) -> None:
    make, what, found, supported = NEWER[kind]
    path = make(healthy_host(root))
    if argv[0] == "replay":
        argv = ["replay", "--until", "14"]  # the newer session.opened is record 14; the records before it replay fine
    before = unchanged(root)
    err = _one_line_error(*cli(capsys, *argv[:1], root, *argv[1:]))
    assert err.startswith(f"shipslog: error: {path}: ")
    assert f"{what} {found} is not supported by this shipslog (it reads version {supported})" in err
    assert unchanged(root) == before


def test_a_newer_event_schema_names_the_record_seq(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _newer_event_schema(healthy_host(root))
    _, _, err = cli(capsys, "status", root)
    assert f"{path}: record seq 14: event schema format version" in err


# -- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "99"], "--until 99 is past the end of the journal (last seq 13)"),
        (["--since", "99"], "--since 99 is past the end of the journal (last seq 13)"),
        (["--since", "5", "--until", "3"], "--until 3 is before --since 5"),
        (["--limit", "0"], "expected a number of 1 or more, got 0"),
        (["--kind", "checkpoint.nope"], "known kinds: "),
    ],
    ids=["until-past-end", "since-past-end", "until-before-since", "limit-0", "unknown-kind"],
)
def test_log_arguments_outside_the_journal_are_usage_errors(
    root: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = cli(capsys, "log", healthy_host(root), *args)
    assert code == 2 and out == ""
    assert message in err


def test_log_until_the_last_record_is_fine(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "log", healthy_host(root), "--since", "12", "--until", "13", "--json")
    assert code == 0 and [r["seq"] for r in json.loads(out)] == [12, 13]


# -- --debug ------------------------------------------------------------------------------------


def test_a_shipslog_error_is_one_line_without_debug_and_raises_with_it(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    missing = os.path.join(tmp_path, "nope")
    _one_line_error(*cli(capsys, "status", missing))
    with pytest.raises(NotARootError):
        main(["status", missing, "--debug"])
    with pytest.raises(NotARootError):
        main(["--debug", "status", missing])


def test_an_os_error_while_reading_keeps_its_cause_under_debug(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy_host(root)
    _refuse_to_read(monkeypatch, errno.EACCES)
    with pytest.raises(UnreadableRootError) as info:
        main(["log", root, "--debug"])
    assert isinstance(info.value.__cause__, PermissionError)
    assert isinstance(info.value, OSError) and info.value.errno == errno.EACCES


def test_a_bug_is_not_swallowed(root: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bug is named, gets its own exit code (3), never the findings code; --debug raises it with its traceback."""
    healthy_host(root)

    def broken(self: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(RootView, "status", broken)
    assert main(["status", root]) == 3
    assert "internal error (RuntimeError: a bug)" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", "status", root])


def test_unreadable_and_newer_format_errors_are_shipslog_errors() -> None:
    from shipslog.journal import ShipslogError

    assert issubclass(UnreadableRootError, ShipslogError) and issubclass(UnreadableRootError, OSError)
    assert issubclass(UnsupportedFormatError, ShipslogError)


# -- a reader that closes stdout early ----------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.parametrize("command", ["log", "export"])
def test_a_reader_closing_stdout_early_ends_the_command_quietly_with_0(root: str, command: str) -> None:
    import subprocess
    import sys

    with open_engine(root) as e:
        for i in range(400):  # far more output than a pipe buffer holds
            with e.checkpoint(f"step-{i}", step=i) as ck:
                ck.write_bytes("a.bin", b"x")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipslog", command, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert first and err == ""
