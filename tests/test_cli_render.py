"""How the command line draws: rich tables and a progress bar on a terminal, the plain columns everywhere else.

The decision is :func:`shipslog.tools.use_rich`; these tests check it
directly, then run each command on a stream that is a terminal or a pipe and
look at what it prints.
Piped output and ``NO_COLOR`` never hold an escape code; ``--json`` is the same
on a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable

import pytest
from _cli_helpers import TTY, cli, healthy_host, keep_logging, unchanged  # noqa: F401  (keep_logging: autouse fixture)
from _engine_helpers import commit_checkpoint, crash, open_engine
from test_recovery_faults import left_durable

from shipslog import Engine
from shipslog.recovery import check_invariants
from shipslog.tools import (
    ByteProgress,
    Printer,
    event_style,
    main,
    plain_table,
    printable,
    use_rich,
)

ESC = "\x1b["
BOX = ("╭", "│", "╰")


Terminal = Callable[..., tuple[int, str, str]]
"""Runs ``shipslog argv`` with stdout and stderr on terminals: (exit code, stdout, stderr)."""


def _on_a_terminal(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str, str]:
    out, err = TTY(), TTY()
    with monkeypatch.context() as m:
        m.setattr(sys, "stdout", out)
        m.setattr(sys, "stderr", err)
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def _a_terminal(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    """The environment of a colour terminal ``columns`` wide: no NO_COLOR, a TERM that is not dumb."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", str(columns))


@pytest.fixture
def rich_everywhere(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Commands run with stdout and stderr on a colour terminal 200 columns wide (see :data:`Terminal`)."""
    _a_terminal(monkeypatch, 200)
    return lambda *argv: _on_a_terminal(monkeypatch, *argv)


# -- the decision -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tty", "environ", "expected"),
    [
        (True, {}, True),
        (True, {"TERM": "xterm-256color"}, True),
        (True, {"NO_COLOR": ""}, True),  # no-color.org: only a non-empty value counts
        (True, {"NO_COLOR": "1"}, False),
        (True, {"TERM": "dumb"}, False),
        (False, {}, False),
    ],
    ids=["tty", "tty-xterm", "tty-empty-no-color", "tty-no-color", "tty-dumb", "pipe"],
)
def test_use_rich_only_on_a_terminal_without_no_color_or_a_dumb_term(tty: bool, environ: dict[str, str], expected: bool) -> None:
    import io

    stream = TTY() if tty else io.StringIO()
    assert use_rich(stream, environ) is expected


def test_use_rich_says_no_for_a_closed_stream_or_one_without_isatty() -> None:
    import io

    closed = io.StringIO()
    closed.close()  # its isatty raises ValueError
    assert use_rich(closed, {}) is False
    assert use_rich(object(), {}) is False  # type: ignore[arg-type]


# -- plain output ---------------------------------------------------------------------------


def test_plain_table_pads_each_column_to_its_widest_cell() -> None:
    text = plain_table(["pointer", "target"], [["current", "checkpoints/step-300"], ["b", "x"]], indent="  ")
    assert text == "  pointer  target\n  current  checkpoints/step-300\n  b        x\n"


def test_printer_pairs_pad_keys_to_the_longest() -> None:
    import io

    stream = io.StringIO()
    Printer(stream, environ={}).pairs([("root", "/r"), ("global step", "3")])
    assert stream.getvalue() == "root        /r\nglobal step 3\n"


@pytest.mark.parametrize(
    "argv", [["status"], ["log"], ["tail"], ["checkpoints"], ["pointers"], ["verify"], ["recover", "--dry-run"]],
    ids="-".join,
)
def test_piped_output_has_no_escape_codes_or_boxes(root: str, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = cli(capsys, *argv[:1], healthy_host(root), *argv[1:])
    assert code == 0 and out
    assert ESC not in out and not any(c in out for c in BOX)


def test_pointers_piped_is_the_plain_columns(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "pointers", healthy_host(root))
    header, row = out.splitlines()
    assert header == "pointer  target                set at seq  time"
    assert row.startswith("current  checkpoints/step-300  12          ")


def test_no_color_on_a_terminal_prints_what_a_pipe_gets(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def steady(text: str) -> str:  # the free bytes on the disk move while the suite runs
        return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("disk "))

    healthy_host(root)
    piped = {cmd: cli(capsys, cmd, root)[1] for cmd in ("status", "log", "checkpoints", "pointers")}
    monkeypatch.setenv("NO_COLOR", "1")
    for cmd, expected in piped.items():
        terminal = TTY()
        monkeypatch.setattr(sys, "stdout", terminal)
        assert cli(capsys, cmd, root)[0] == 0
        assert steady(terminal.getvalue()) == steady(expected), cmd


# -- rich output ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "style"),
    [("checkpoint.committed", "green"), ("consolidation.pointer-set", "green"), ("worker.spawn-failed", "red"),
     ("session.crashed", "red"), ("checkpoint.begun", ""), ("custom.thing", "")],
)
def test_event_style_colours_completed_events_green_and_failed_ones_red(kind: str, style: str) -> None:
    assert event_style(kind) == style


def test_rich_text_shows_brackets_in_data_as_they_are() -> None:
    stream = TTY()
    Printer(stream, environ={}).line("[bold]step-1[/bold]")
    assert "[bold]step-1[/bold]" in stream.getvalue()


@pytest.mark.parametrize(
    ("width", "expected"), [(80, [True, True, False, True]), (60, [True, False, False, True]), (20, [True, False, False, False])]
)
def test_a_narrow_terminal_keeps_the_narrow_columns_whole_and_wraps_the_rest(
    monkeypatch: pytest.MonkeyPatch, width: int, expected: list[bool]
) -> None:
    """At 80 columns seq, time and path stay on one line and details wraps; at 60 the time gives way
    before the (narrower) path; at 20 nothing longer than seq fits on one line."""
    _a_terminal(monkeypatch, width)
    headers = ["seq", "time", "details", "path"]
    rows = [["10", "2026-11-23T18:04:56.378", "name=current old=None new=checkpoints/step-300", "checkpoints/step-300"]]
    stream = TTY()
    Printer(stream, environ={}).table(headers, rows)
    drawn = stream.getvalue()
    assert "╭" in drawn
    assert [cell in drawn for cell in rows[0]] == expected  # a cell kept whole is on one line of the table


@pytest.mark.parametrize("command", ["log", "checkpoints", "pointers"])
def test_a_terminal_gets_box_tables_with_the_same_data(root: str, rich_everywhere: Terminal, command: str) -> None:
    code, out, _ = rich_everywhere(command, healthy_host(root))
    assert code == 0
    assert all(c in out for c in BOX) and ESC in out
    assert "step-300" in out or "pointer.set" in out


def test_log_on_a_terminal_colours_committed_events_green(root: str, rich_everywhere: Terminal) -> None:
    _, out, _ = rich_everywhere("log", healthy_host(root), "--kind", "checkpoint.committed")
    assert f"{ESC}32mcheckpoint.committed" in out


def test_status_on_a_terminal_shows_findings_in_red(root: str, rich_everywhere: Terminal) -> None:
    e = open_engine(healthy_host(root))
    e.checkpoint("half", step=400)
    crash(e)
    code, out, _ = rich_everywhere("status", root)
    assert code == 1
    assert f"{ESC}1;31mFINDING" in out and "global step" in out


def test_tail_on_a_terminal_keeps_one_line_per_record(root: str, rich_everywhere: Terminal) -> None:
    code, out, _ = rich_everywhere("tail", healthy_host(root), "-n", "3")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4 and all(ESC in line for line in lines)
    assert "session.closed" in lines[-1]


def test_recover_plan_on_a_terminal_is_a_box_table(root: str, rich_everywhere: Terminal) -> None:
    op, _staging = left_durable(root)
    before = unchanged(root)
    code, out, _ = rich_everywhere("recover", "--dry-run", root)
    assert code == 0 and all(c in out for c in BOX)
    assert op in out and "checkpoint.roll-forward" in out and "dry run: nothing was changed" in out
    assert unchanged(root) == before


@pytest.mark.parametrize("command", ["status", "log", "checkpoints", "pointers", "verify"])
def test_json_on_a_terminal_is_plain_json(root: str, capsys: pytest.CaptureFixture[str], rich_everywhere: Terminal, command: str) -> None:
    def steady(text: str) -> object:  # the free bytes on the disk move while the suite runs
        data = json.loads(text)
        if isinstance(data, dict):
            data.pop("free_bytes", None)
        return data

    healthy_host(root)
    terminal_out = rich_everywhere(command, root, "--json")[1]
    piped_out = cli(capsys, command, root, "--json")[1]
    assert ESC not in terminal_out and steady(terminal_out) == steady(piped_out)


# -- progress -------------------------------------------------------------------------------


def test_progress_on_a_terminal_draws_a_bar_and_counts_files_and_bytes() -> None:
    stream = TTY()
    with ByteProgress("re-checksumming", 100, stream=stream, environ={}) as progress:
        progress.advance("a", 60)
        progress.advance("b", 40)
    assert (progress.files, progress.bytes) == (2, 100)
    assert "re-checksumming" in stream.getvalue() and ESC in stream.getvalue()


def test_progress_off_a_terminal_prints_nothing_and_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    import io

    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger="shipslog.tools")
    with ByteProgress("re-checksumming", 10, stream=stream, environ={}) as progress:
        progress.advance("a", 10)
    assert stream.getvalue() == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "shipslog.tools"]
    assert len(messages) == 1 and messages[0].startswith("re-checksumming: 1 file(s), 10 bytes in ")


def test_verify_deep_draws_its_progress_on_stderr_only(root: str, rich_everywhere: Terminal) -> None:
    code, out, err = rich_everywhere("verify", healthy_host(root), "--deep")
    assert code == 0 and "every invariant verify (every checksum)" in out
    assert "re-checksumming committed files" in err and "re-checksumming" not in out


def test_verify_deep_with_v_logs_the_files_and_bytes_checked(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "-v", "verify", healthy_host(root), "--deep")
    assert code == 0
    line = next(line for line in err.splitlines() if "re-checksumming committed files" in line)
    assert ": 3 file(s), 57 bytes in " in line


def test_check_invariants_calls_on_file_for_each_verified_file_only_when_deep(root: str) -> None:
    with Engine.open(healthy_host(root), fsync=False) as e:
        commit_checkpoint(e, "two-files", step=400, files={"a.bin": b"12345", "b/c.bin": b"xy"})
        state, registry, session = e.state, e.registry, e.session
        seen: list[tuple[str, int]] = []
        assert check_invariants(root, state, registry=registry, live_session=session, deep=False, on_file=lambda p, n: seen.append((p, n))) == []
        assert seen == []
        assert check_invariants(root, state, registry=registry, live_session=session, deep=True, on_file=lambda p, n: seen.append((p, n))) == []
    arts = [*state.checkpoints.values(), *state.models.values()]
    assert sum(n for _, n in seen) == sum(a.bytes for a in arts)
    assert sorted(os.path.relpath(p, root) for p, _ in seen if "two-files" in p) == ["checkpoints/two-files/a.bin", "checkpoints/two-files/b/c.bin"]


def test_read_only_commands_on_a_terminal_change_no_byte_of_a_live_root(root: str, rich_everywhere: Terminal) -> None:
    healthy_host(root)
    with Engine.open(root, fsync=False) as live:
        commit_checkpoint(live, "step-400", step=400)
        before = unchanged(root)
        lock = os.path.join(root, "LOCK")
        with open(lock, "rb") as f:
            lock_bytes = f.read()
        for argv in (["status", root], ["tail", root], ["verify", root, "--deep"], ["log", root], ["checkpoints", root]):
            code, _, err = rich_everywhere(*argv)
            assert code == 0, (argv, err)
        assert unchanged(root) == before
        with open(lock, "rb") as f:
            assert f.read() == lock_bytes


# -- text read from disk never reaches the terminal as control characters ---------------------------


HOSTILE = "\x1b]0;owned\x07\x1b[2J\rover\x9b31m"


def _hostile_root(root: str) -> None:
    """A root whose journal holds a record whose fields carry escape sequences (a run's data file path, a raw field)."""
    import msgspec

    from shipslog.journal import Journal

    open_engine(root).close()
    with Journal.open(root, fsync=False, segment_bytes=1 << 20) as journal:
        journal.append(msgspec.msgpack.encode({"kind": "run.validated", "op": "run-x", "data_file": HOSTILE, "lines": 1, "size": 1, "crc32": 0}))
        journal.append(msgspec.msgpack.encode({"kind": "mine.thing", "op": "m-1", "note": HOSTILE}))


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
@pytest.mark.parametrize("argv", [["log"], ["tail", "-n", "5"], ["status"]], ids=["log", "tail", "status"])
def test_control_characters_from_the_journal_are_escaped_in_every_output(
    root: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, terminal: bool, argv: list[str]
) -> None:
    _hostile_root(root)
    if terminal:
        _a_terminal(monkeypatch, 400)
        _code, out, _err = _on_a_terminal(monkeypatch, argv[0], root, *argv[1:])
    else:
        _code, out, _err = cli(capsys, argv[0], root, *argv[1:])
    for char in ("\x07", "\r", "\x9b", "\x1b]"):
        assert char not in out
    if not terminal:
        assert "\x1b" not in out
    if argv[0] != "status":
        assert "\\x1b]0;owned\\x07" in out


def test_printable_escapes_c0_del_and_c1_and_keeps_newlines_only_when_asked() -> None:
    assert printable("a\x00b\x7fc\x85d\te") == "a\\x00b\\x7fc\\x85d\\x09e"
    assert printable("one\ntwo") == "one\\x0atwo"
    assert printable("one\ntwo", newlines=True) == "one\ntwo"
    assert printable("plain [bold] é") == "plain [bold] é"
