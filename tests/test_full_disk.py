"""A full disk: the root still opens and gc frees space; a write that needs space fails as InsufficientSpaceError
naming its path, never a bare OSError(28).  Faults injected through FileSystem subclasses."""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import pytest
from _engine_helpers import commit_checkpoint, kinds, open_engine

from shipslog.journal import FileSystem, InsufficientSpaceError


class FullDisk(FileSystem):
    """Nothing that needs new space succeeds: no reservation, no write past a file's end (a file's existing
    bytes, such as a segment's reserved zeros, can still be overwritten; removals free space)."""

    def __init__(self) -> None:
        super().__init__(sync=False)

    def preallocate(self, fd: int, size: int) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_all(self, fd: int, data: Any, offset: int | None = None) -> None:
        start = offset if offset is not None else os.lseek(fd, 0, os.SEEK_CUR)
        if start + len(memoryview(data).cast("B")) > os.fstat(fd).st_size:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write_all(fd, data, offset)


class FullFor(FileSystem):
    """ENOSPC for every write into a file whose name contains ``part``."""

    def __init__(self, part: str) -> None:
        super().__init__(sync=False)
        self.part = part
        self.paths: dict[int, str] = {}

    def open(self, path: Any, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = os.fspath(path)
        return fd

    def write_all(self, fd: int, data: Any, offset: int | None = None) -> None:
        if self.part in os.path.basename(self.paths.get(fd, "")):
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write_all(fd, data, offset)


def _three_checkpoints(root: str) -> None:
    with open_engine(root) as e:
        for step in (1, 2, 3):
            commit_checkpoint(e, f"step-{step}", step=step)


def test_a_root_on_a_full_disk_opens_and_gc_frees_space(root: str, caplog: pytest.LogCaptureFixture) -> None:
    _three_checkpoints(root)
    with caplog.at_level(logging.WARNING), open_engine(root, fs=FullDisk()) as e:
        plan = e.retain(keep_last=1)
    assert sorted(plan.delete) == ["checkpoints/step-1", "checkpoints/step-2"]
    assert sorted(os.listdir(os.path.join(root, "checkpoints"))) == ["step-3"]
    assert kinds(root)[-3:] == ["retention.intended", "retention.deleted", "session.closed"]
    assert "holder's note" in caplog.text  # the lock was taken without its note: best-effort


def test_opening_on_a_full_disk_appends_without_a_reservation(root: str, caplog: pytest.LogCaptureFixture) -> None:
    with open_engine(root, preallocate=False) as e:  # a segment without a reservation
        commit_checkpoint(e, "step-1", step=1)

    class NoReservation(FileSystem):
        def preallocate(self, fd: int, size: int) -> bool:
            raise OSError(errno.ENOSPC, "No space left on device")

    with caplog.at_level(logging.WARNING), open_engine(root, fs=NoReservation(sync=False)) as e:
        commit_checkpoint(e, "step-2", step=2)
    assert "appending without a reservation" in caplog.text
    with open_engine(root) as again:
        assert sorted(again.state.checkpoints) == ["step-1", "step-2"]


def test_a_pointer_write_on_a_full_disk_is_insufficient_space_naming_the_pointer(root: str) -> None:
    _three_checkpoints(root)
    with open_engine(root, fs=FullFor("best")) as e:
        with pytest.raises(InsufficientSpaceError) as info:
            e.set_pointer("best", "step-2")
        assert os.path.join("pointers", "best") in str(info.value) and info.value.errno == errno.ENOSPC
        assert "best" not in e.state.pointers
    assert not any(name.startswith(".best") for name in os.listdir(os.path.join(root, "pointers")))


def test_a_manifest_write_on_a_full_disk_is_insufficient_space_naming_the_manifest(root: str) -> None:
    with open_engine(root, fs=FullFor("MANIFEST")) as e:
        with pytest.raises(InsufficientSpaceError) as info, e.checkpoint("step-1", step=1) as ck:
            ck.write_bytes("model.bin", b"weights")
        assert "MANIFEST" in str(info.value)
        assert "step-1" not in e.state.checkpoints
    assert kinds(root)[-2:] == ["checkpoint.aborted", "session.closed"]
