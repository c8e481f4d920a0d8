"""Helpers for the command-line tests: running ``main`` with captured output, host roots, and the root's bytes."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import pytest
from _engine_helpers import commit_checkpoint, open_engine, tree

from shipslog.tools import main

__all__ = ["TTY", "cli", "healthy_host", "keep_logging", "unchanged"]


class TTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The command line configures the root logger; put it back as pytest had it."""
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    yield
    root_logger.handlers[:] = handlers
    root_logger.setLevel(level)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``shipslog argv`` in this process: (exit code, stdout, stderr); a usage error's SystemExit gives its code."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def healthy_host(root: str) -> str:
    """A cleanly closed root: checkpoints step-100..300 and pointer 'current' -> step-300."""
    e = open_engine(root)
    for step in (100, 200, 300):
        commit_checkpoint(e, f"step-{step}", step=step)
    e.set_pointer("current", "step-300")
    e.close()
    return root


def unchanged(root: str) -> dict[str, object]:
    """Every byte under ``root`` but LOCK (which any opener rewrites): compare before and after a command."""
    return tree(os.fspath(root), skip=("LOCK",))
