"""Every failure of a command is one line with the README's exit code: interrupted (130), a file it may not read
or write (2, the path named), and a bug (3, asking for --debug); --debug shows the traceback instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from _cli_helpers import cli, keep_logging  # noqa: F401  (keep_logging: autouse fixture)
from _engine_helpers import crash, open_engine

from shipslog.journal import set_crash_hook
from shipslog.tools import EXIT_CODES


def _needs_recovery(root: str) -> None:
    e = open_engine(root)
    ck = e.checkpoint("step-1", step=1)
    ck.write_bytes("model.bin", b"weights")
    crash(e)


@contextmanager
def _raising_during_recovery(exc: BaseException) -> Iterator[None]:
    def hook(name: str) -> None:
        if name == "recovery.after_begun":
            raise exc

    previous = set_crash_hook(hook)
    try:
        yield
    finally:
        set_crash_hook(previous)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_ctrl_c_is_one_line_and_exit_130(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_recovery(root)
    with _raising_during_recovery(KeyboardInterrupt()):
        code, _out, err = cli(capsys, "recover", root)
    assert code == 130 and 130 in EXIT_CODES
    assert "interrupted" in _one_line(err)


def test_a_file_it_may_not_write_is_one_line_naming_it_and_exit_2(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_recovery(root)
    denied = os.path.join(root, "staging")
    with _raising_during_recovery(PermissionError(13, "Permission denied", denied)):
        code, _out, err = cli(capsys, "recover", root)
    assert code == 2
    line = _one_line(err)
    assert "Permission denied" in line and denied in line


def test_a_bug_is_one_line_asking_for_debug_and_exit_3(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_recovery(root)
    with _raising_during_recovery(RuntimeError("something impossible")):
        code, _out, err = cli(capsys, "recover", root)
    assert code == 3 and 3 in EXIT_CODES
    line = _one_line(err)
    assert "internal error" in line and "RuntimeError: something impossible" in line and "--debug" in line


def test_debug_shows_the_traceback_instead(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_recovery(root)
    with _raising_during_recovery(RuntimeError("something impossible")), pytest.raises(RuntimeError, match="impossible"):
        cli(capsys, "--debug", "recover", root)
