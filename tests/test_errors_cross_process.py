"""Errors cross process boundaries intact: every kind of shipslog error pickles back to an equal one.

A rank's failure reaches the coordinator, and a worker's its supervisor, as a
pickle; an error whose constructor takes its own arguments must not turn
into a ``TypeError`` on the way.
"""

from __future__ import annotations

import errno
import pickle

import pytest

from shipslog.engine import IntegrityError, MissingDependencyError, NotFoundError
from shipslog.journal import (
    InsufficientSpaceError,
    JournalBrokenError,
    JournalLockedError,
    JournalWriteError,
    PathEscapeError,
    ShipslogError,
)

_ERRORS = [
    IntegrityError("/root/checkpoints/a/x.bin", "CRC-32 0x00000001", "0x00000002"),
    NotFoundError("checkpoint", "step-4", "it was deleted"),
    MissingDependencyError("torch", "gpu"),
    InsufficientSpaceError("/root", 10, 5),
    JournalBrokenError("the journal failed to sync"),
    JournalWriteError(errno.EIO, "Input/output error", "/root/journal/000001.seg"),
    PathEscapeError("/root", "/etc/passwd", "file", "outside the root"),
    JournalLockedError("/root", "pid 4"),
]


@pytest.mark.parametrize("error", _ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_pickles_back_to_the_same_message_and_attributes(error: ShipslogError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args and vars(back) == vars(error)
    if isinstance(error, OSError):
        assert isinstance(back, OSError)
        assert (back.errno, back.strerror, back.filename) == (error.errno, error.strerror, error.filename)
